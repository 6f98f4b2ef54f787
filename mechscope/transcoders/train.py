"""Train one transcoder per MLP layer of a model (``blocks.L.ln2.hook_normalized`` ->
``blocks.L.hook_mlp_out``) with :mod:`mechscope.dictionaries`, on rows from the embedded code
corpus plus (optionally) a task's prompts, then measure them.

Rows: every position of ``n_contexts`` corpus contexts (BOS included — the replacement model is
spliced at every position, and BOS rows are a fixed point the transcoder learns at once) and of
``n_task`` train-split task prompts, all from one forward pass per batch, so a transcoder's input
and output rows are aligned. A held-out slice (corpus held-out split + held-out task prompts)
gives the reported FVU / L0, and the task metric is measured with every transcoder spliced in.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Sequence

import torch

from mechscope.dictionaries import Dictionary, DictionaryConfig, TensorSource, TrainConfig, train
from mechscope.errors import ConfigError
from mechscope.files import write_json
from mechscope.models import run_with_cache
from mechscope.models.model import as_model, sublayer_norms
from mechscope.transcoders.replacement import TranscoderSet, check_model

HOOK_IN = {"normalized": "blocks.{l}.ln2.hook_normalized", "resid": "blocks.{l}.hook_resid_mid"}
PARALLEL_RESID = "blocks.{l}.hook_mlp_in"  # a parallel block has no resid_mid: its MLP reads the block's input


def hooks_for(layer: int, hook_in: str = "normalized", parallel: bool = False) -> tuple[str, str]:
    """``(input hook, output hook)`` of the transcoder for MLP ``layer``."""
    if hook_in not in HOOK_IN:
        raise ConfigError(f"hook_in must be one of {sorted(HOOK_IN)}; found {hook_in!r}")
    pattern = PARALLEL_RESID if (parallel and hook_in == "resid") else HOOK_IN[hook_in]
    return pattern.format(l=layer), f"blocks.{layer}.hook_mlp_out"


def _parallel(model) -> bool:
    return bool(getattr(getattr(as_model(model).module, "cfg", None), "parallel_attn_mlp", False))


@torch.no_grad()
def collect_rows(model, layers: Sequence[int], tokens: torch.Tensor, hook_in: str = "normalized", batch_size: int = 64) -> dict[str, torch.Tensor]:
    """``{hook: [rows, d_model]}`` for every position of ``tokens [n, pos]`` (row-aligned across hooks)."""
    cfg = getattr(as_model(model).module, "cfg", None)
    if hook_in == "normalized" and cfg is not None and sublayer_norms(cfg).mlp_in is None:
        raise ConfigError("the model has no norm before its MLPs (no norm at all, or OLMo 2's norms after each sublayer), so "
                          "ln2.hook_normalized is not the MLP's input; train on the raw residual instead: hook_in='resid' "
                          "(CLI: --hook-in resid)")
    names = [h for l in layers for h in hooks_for(l, hook_in, _parallel(model))]
    parts: dict[str, list[torch.Tensor]] = {h: [] for h in names}
    for s in range(0, tokens.shape[0], batch_size):
        cache = run_with_cache(model, tokens[s : s + batch_size], names)
        for h in names:
            parts[h].append(cache[h].reshape(-1, cache[h].shape[-1]).float().cpu())
    return {h: torch.cat(p) for h, p in parts.items()}


def corpus_tokens(tokenizer, n_contexts: int, context_len: int, split: str = "train", corpus: str = "stdlib") -> torch.Tensor:
    from mechscope.data import TokenStream, load_corpus

    stream = TokenStream(load_corpus(corpus, split), tokenizer, context_len)
    n = min(n_contexts, len(stream))
    return stream.batch(0, n)


def transcoder_configs(model, layers: Sequence[int], *, n_latents: int | None = None, expansion: int = 8, activation: str = "topk",
                       k: int = 16, kind: str = "transcoder", hook_in: str = "normalized", l1_coeff: float = 1.0,
                       l0_coeff: float = 0.1) -> list[DictionaryConfig]:
    cfg = check_model(model)
    out = []
    for l in layers:
        hin, hout = hooks_for(l, hook_in, _parallel(model))
        out.append(DictionaryConfig(d_in=cfg.d_model, d_out=cfg.d_model, n_latents=n_latents or expansion * cfg.d_model, kind=kind,
                                    activation=activation, k=k, l1_coeff=l1_coeff, l0_coeff=l0_coeff, hook_in=hin, hook_out=hout,
                                    meta={"model": as_model(model).name, "room": "transcoders"}))
    return out


def train_transcoders(model, out_dir: str | Path | None = None, *, layers: Sequence[int] | None = None, task=None, heldout_task=None,
                      n_contexts: int = 1024, context_len: int = 64, n_latents: int | None = None, expansion: int = 8,
                      activation: str = "topk", k: int = 16, kind: str = "transcoder", hook_in: str = "normalized",
                      steps: int = 2000, batch_size: int = 1024, lr: float = 1e-3, seed: int = 0, l1_coeff: float = 1.0,
                      l0_coeff: float = 0.1, eval_contexts: int = 128, overwrite: bool = True,
                      progress: bool = True) -> tuple[TranscoderSet, dict]:
    """Train a transcoder per MLP layer (module docstring). ``task`` / ``heldout_task``: tasks
    whose clean prompts are added to the training / evaluation rows. Returns the set and a report
    (also written to ``out_dir/training.json``)."""
    t0 = time.perf_counter()
    model = as_model(model)
    cfg = check_model(model)
    layers = list(range(cfg.n_layers)) if layers is None else sorted(set(layers))
    if model.tokenizer is None:
        raise ConfigError("training transcoders on the corpus needs a model with a tokenizer")
    tokens = corpus_tokens(model.tokenizer, n_contexts, context_len, "train")
    rows = collect_rows(model, layers, tokens, hook_in)
    n_corpus = next(iter(rows.values())).shape[0]
    n_task = 0
    if task is not None:
        trows = collect_rows(model, layers, task.clean, hook_in)
        n_task = next(iter(trows.values())).shape[0]
        rows = {h: torch.cat([rows[h], trows[h]]) for h in rows}
    source = TensorSource(rows, name=f"{model.name} corpus+task rows")
    configs = transcoder_configs(model, layers, n_latents=n_latents, expansion=expansion, activation=activation, k=k, kind=kind,
                                 hook_in=hook_in, l1_coeff=l1_coeff, l0_coeff=l0_coeff)
    tcfg = TrainConfig(steps=steps, batch_size=min(batch_size, n_corpus + n_task), lr=lr, seed=seed, warmup_steps=min(100, steps // 10),
                       dead_tokens=max(50_000, 20 * batch_size), log_every=max(1, steps // 20))
    trained = train(configs, source, tcfg, out_dir=out_dir, overwrite=overwrite, progress=progress, device="cpu")
    ts = TranscoderSet.from_list(trained)
    report = {"model": model.name, "layers": layers, "rows": {"corpus": n_corpus, "task": n_task}, "train": tcfg.to_dict(),
              "dictionaries": {l: ts[l].cfg.to_dict() for l in layers}, "train_seconds": round(time.perf_counter() - t0, 1)}
    report["heldout"] = evaluate_transcoders(model, ts, heldout_task=heldout_task, n_contexts=eval_contexts, context_len=context_len,
                                             hook_in=hook_in)
    if out_dir is not None:
        write_json(Path(out_dir) / "training.json", report)
    return ts, report


@torch.no_grad()
def evaluate_transcoders(model, ts: TranscoderSet, *, heldout_task=None, n_contexts: int = 128, context_len: int = 64,
                         hook_in: str = "normalized") -> dict:
    """Per layer: FVU, L0, dead fraction on held-out corpus (+ task) rows; the task metric with
    every transcoder spliced in vs the original model."""
    from mechscope.dictionaries import reconstruction_metrics
    from mechscope.transcoders.faithfulness import _metric, _splice_hooks

    model = as_model(model)
    tokens = corpus_tokens(model.tokenizer, n_contexts, context_len, "heldout")
    out: dict = {"layers": {}}
    rows = collect_rows(model, ts.layers, tokens, hook_in)
    if heldout_task is not None:
        trows = collect_rows(model, ts.layers, heldout_task.clean, hook_in)
        rows = {h: torch.cat([rows[h], trows[h]]) for h in rows}
    for l in ts.layers:
        d: Dictionary = ts[l]
        batch = {d.cfg.hook_in: rows[d.cfg.hook_in], d.cfg.hook_out: rows[d.cfg.hook_out]}
        m = reconstruction_metrics(d, [batch])
        out["layers"][l] = {k: round(v, 5) if isinstance(v, float) else v for k, v in m.items()}
    if heldout_task is not None:
        out["task_metric"] = heldout_task.default_metric
        out["metric_original"] = _metric(model, heldout_task, [], None)
        out["metric_spliced"] = _metric(model, heldout_task, _splice_hooks(ts), None)
        out["accuracy_original"] = _metric(model, heldout_task, [], "accuracy")
        out["accuracy_spliced"] = _metric(model, heldout_task, _splice_hooks(ts), "accuracy")
    return out
