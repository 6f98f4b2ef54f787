"""End-to-end runs behind ``mechscope linear demo`` / ``analyze``: linearize, check, analyse,
write PNG figures, a ``summary.json`` and the saved map. Every function returns the summary dict.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from mechscope.errors import ConfigError, ModelSpecError
from mechscope.files import write_json
from mechscope.linear import analyses, figures
from mechscope.linear.affine_map import AffineMap


def _image_like(shape: tuple[int, ...]) -> bool:
    s = list(shape)
    while len(s) > 2 and s[0] == 1:
        s = s[1:]
    return len(s) in (2, 3) and s[-1] >= 4 and s[-2] >= 4


def analyze_map(amap: AffineMap, out: str | Path, *, k: int = 8, labels: list[str] | None = None,
                tokens: list[str] | None = None, save_map: bool = True, grid: int = 3) -> dict:
    """Checks, analyses and figures for any map; writes ``out/summary.json`` (+ ``out/map/``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict = {"in_shape": list(amap.in_shape), "out_shape": list(amap.out_shape),
                     "map_type": type(amap).__name__, "exact": amap.exact, "meta": amap.meta, "figures": []}
    figs = summary["figures"]
    if amap.x0 is not None and amap.y0 is not None:
        summary["exactness"] = amap.exactness()
    summary["adjoint_error"] = amap.adjoint_error()
    if amap.x0 is not None:
        share = analyses.bias_share(amap)
        summary["bias_share"] = share.summary()
        figs.append(str(figures.plot_bias_share(share, out / "bias_share.png", _image_like(amap.out_shape))))
    in_img, out_img = _image_like(amap.in_shape), _image_like(amap.out_shape)
    if amap.out_numel <= 64 and in_img and amap.x0 is not None and tokens is None:
        votes = analyses.pixel_votes(amap)
        summary["pixel_votes"] = {"residual": votes.residual(),
                                  "top_output": int(votes.outputs[int(votes.output.argmax())])}
        figs.append(str(figures.plot_pixel_votes(votes, amap.x0, out / "pixel_votes.png", labels)))
    if in_img and out_img:
        pos, cols = analyses.basis_images(amap, grid=grid)
        figs.append(str(figures.plot_columns(pos, cols, amap.x0, out / "columns.png")))
        pos, rows = analyses.filter_rows(amap, grid=grid)
        figs.append(str(figures.plot_rows(pos, rows, out / "rows.png")))
    if tokens is not None and amap.out_numel == 1 and len(amap.in_shape) == 2 and amap.x0 is not None:
        attr = analyses.token_attribution(amap)
        summary["token_attribution"] = {"contribution": [round(float(v), 5) for v in attr["contribution"]],
                                        "linear_part": attr["linear_part"], "bias": attr["bias"],
                                        "output": attr["output"]}
        figs.append(str(figures.plot_token_attribution(attr, tokens, out / "token_attribution.png")))
    kk = min(k, amap.in_numel, amap.out_numel)
    t = time.perf_counter()
    svd = amap.svd(kk)
    summary["svd"] = {"k": kk, "singular_values": [float(s) for s in svd.S], "iterations": svd.iterations,
                      "seconds": round(time.perf_counter() - t, 3)}
    if in_img and kk > 1:
        out_shape = amap.out_shape if out_img else (1, amap.out_numel)
        figs.append(str(figures.plot_singular_vectors(svd, amap.in_shape, out_shape, out / "singular_vectors.png")))
    if save_map:
        try:
            amap.save(out / "map")
            summary["map_dir"] = str(out / "map")
        except ConfigError as e:  # too large to store densely: a truncated SVD instead
            amap.save(out / "map", rank=kk)
            summary["map_dir"] = str(out / "map")
            summary["map_saved_as"] = f"rank-{kk} SVD ({e})"
    write_json(out / "summary.json", summary)
    return summary


def run_image_demo(name: str, out: str | Path, *, steps: int | None = None, seed: int = 0, index: int = 0,
                   k: int = 8, cache_dir: str | Path | None = None, save_map: bool = True,
                   on_step: Callable | None = None) -> dict:
    """Train (or load) demo model ``name``, linearize it at a held-out input, analyse it."""
    from mechscope.linear import demos
    from mechscope.linear.linearize import linearize

    demo = demos.load_or_train(name, steps=steps, seed=seed, cache_dir=cache_dir, index=index, on_step=on_step)
    t = time.perf_counter()
    amap = linearize(demo.model, demo.x0)
    lin_s = time.perf_counter() - t
    with torch.no_grad():
        y_true = demo.model(demo.x0)
    amap.meta.update({"demo": name, "index": index, "seed": seed})
    labels = [str(i) for i in range(10)] if name == "digits" else None
    summary = analyze_map(amap, out, k=k, labels=labels, save_map=save_map)
    summary.update({"demo": name, "model_metrics": demo.metrics, "model_cache": str(demo.path),
                    "linearize_seconds": round(lin_s, 3),
                    "exact_vs_model": float((amap.apply(amap.x0) + amap.bias - y_true).norm() / y_true.norm())})
    if name == "digits":
        summary["label"] = int(demo.target)
        summary["prediction"] = int(y_true.argmax())
    write_json(Path(out) / "summary.json", summary)
    return summary


def tiny_random_transformer(d_vocab: int = 64, seed: int = 0, normalization_type: str = "LN", attn_only: bool = False):
    """A seeded, randomly initialised 2-layer HookedTransformer (no download)."""
    import warnings

    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=64, d_vocab=d_vocab,
                                  attn_only=attn_only, d_mlp=None if attn_only else 64,
                                  act_fn=None if attn_only else "gelu_new", normalization_type=normalization_type,
                                  seed=seed, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return HookedTransformer(cfg).eval()


def _organism_task(model_spec: str) -> tuple[str, str | None, dict] | None:
    """(task, variant, task kwargs) of a zoo organism's recipe, or None."""
    try:
        from mechscope.zoo.specs import SPECS
    except ImportError:
        return None
    spec = SPECS.get(model_spec.removeprefix("zoo:"))
    return None if spec is None else (spec.task, spec.variant, dict(spec.task_kwargs))


def run_transformer_demo(out: str | Path, *, model_spec: str = "tiny-random", task: str | None = None,
                         variant: str | None = None, prompt_index: int = 0, seed: int = 0, k: int = 1,
                         save_map: bool = True) -> dict:
    """Linearize a HookedTransformer from its token embeddings to a logit difference.

    ``model_spec``: ``tiny-random`` (a seeded random model; the map is exact but the logit
    difference means nothing) or any spec :func:`mechscope.models.load_model` accepts (a zoo
    organism name, a saved model directory). ``task``: a :func:`mechscope.tasks.make_task` name
    (``ioi``, ``induction``…): the prompt, answer, distractor and position come from its
    ``prompt_index``-th prompt (``variant`` picks the task's template family). A zoo organism
    defaults to its own task and variant. Without a task: seeded random tokens and the model's two
    top predictions at the last position.
    """
    from mechscope.linear.linearize import linearize_transformer, logit_diff

    tokenizer = None
    if model_spec == "tiny-random":
        if task is not None:
            from mechscope.data import default_tokenizer

            tokenizer = default_tokenizer()
            module = tiny_random_transformer(d_vocab=len(tokenizer), seed=seed)
        else:
            module = tiny_random_transformer(seed=seed)
    else:
        from mechscope.models import load_model

        model = load_model(model_spec, device="cpu")
        module, tokenizer = model.module, model.tokenizer
        if type(module).__name__ != "HookedTransformer":
            raise ModelSpecError(f"{model_spec!r} loads a {type(module).__name__}; the transformer demo "
                                 "expects a TransformerLens HookedTransformer")
    task_kwargs: dict = {}
    if task is None and model_spec != "tiny-random":
        recipe = _organism_task(model_spec)
        if recipe is not None:
            task, variant, task_kwargs = recipe[0], variant or recipe[1], recipe[2]
    if task is not None:
        from mechscope.tasks import make_task

        if tokenizer is None:
            raise ConfigError(f"model {model_spec!r} has no tokenizer; task {task!r} needs one")
        tk = make_task(task, tokenizer, n=max(8, prompt_index + 1), seed=seed, split="heldout", variant=variant,
                       **task_kwargs)
        i = prompt_index
        tokens = tk.clean[i]
        answer, wrong, position = int(tk.answer_ids[i]), int(tk.wrong_ids[i, 0]), int(tk.answer_pos[i])
        tokens = tokens[: position + 1]
    else:
        g = torch.Generator().manual_seed(seed)
        tokens = torch.randint(0, module.cfg.d_vocab, (12,), generator=g)
        with torch.no_grad():
            top = module(tokens[None])[0, -1].topk(2).indices
        answer, wrong, position = int(top[0]), int(top[1]), -1
    t = time.perf_counter()
    amap = linearize_transformer(module, tokens, logit_diff(answer, wrong, position))
    lin_s = time.perf_counter() - t
    with torch.no_grad():
        logits = module(tokens[None])[0]
    true_ld = float(logits[position, answer] - logits[position, wrong])
    if tokenizer is not None:
        try:
            tok_strs = [tokenizer.decode([int(t)]) for t in tokens]
        except Exception:  # tokenizers differ in decode signatures; ids are a fine fallback
            tok_strs = [str(int(t)) for t in tokens]
    else:
        tok_strs = [str(int(t)) for t in tokens]
    amap.meta.update({"answer": answer, "wrong": wrong, "position": position, "model_spec": model_spec,
                      "task": task, "variant": variant})
    summary = analyze_map(amap, out, k=k, tokens=tok_strs, save_map=save_map)
    summary.update({"demo": "transformer", "model_spec": model_spec, "task": task, "variant": variant, "tokens": tok_strs,
                    "logit_diff": true_ld, "linearize_seconds": round(lin_s, 3),
                    "exact_vs_model": abs(float(amap.apply(amap.x0) + amap.bias) - true_ld) / max(abs(true_ld), 1e-12)})
    write_json(Path(out) / "summary.json", summary)
    return summary
