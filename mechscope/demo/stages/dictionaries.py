"""Stage ``dictionaries``: cache one block's activations over the corpus, train an attention-output
SAE (on ``blocks.L.attn.hook_z``, heads concatenated) and an MLP transcoder
(``blocks.L.ln2.hook_normalized`` -> ``blocks.L.hook_mlp_out``) in one pass with the project's
trainer, then score both on the held-out split (FVU, L0, dead fraction, CE / KL splice scores).

The block is the one the organism's verified circuit runs through (its MLP), so the next stages
can relate features to circuit heads."""

from __future__ import annotations

import time

from mechscope.demo.context import DemoContext
from mechscope.report import Section

KEY = "dictionaries"
TITLE = "Dictionaries: attention-output SAE and MLP transcoder"
EVAL_KEYS = ("fvu", "explained_variance", "mse", "l0", "dead_frac", "dense_frac", "cosine", "ce_clean", "ce_spliced", "ce_zero",
             "ce_score", "kl_score", "ce_delta", "tokens", "predictions")


def circuit_layer(nodes: list[str], n_layers: int) -> int:
    """The block whose MLP is in the verified circuit (the transcoder replaces it); else the last
    block with a circuit head (``"L.H"``); else the last block."""
    mlps = [int(n[3:]) for n in nodes if n.startswith("mlp")]
    if mlps:
        return mlps[0]
    heads = [int(n.split(".")[0]) for n in nodes if n[:1].isdigit()]
    return max(heads) if heads else n_layers - 1


def _configs(ctx: DemoContext, store, layer: int) -> dict:
    """role -> DictionaryConfig, sized from the store's row widths."""
    from mechscope.dictionaries import DictionaryConfig

    z, ln2, mlp_out = f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"
    s, meta = ctx.sizes, {"model": ctx.model.name, "corpus": ctx.train_stream.corpus.name, "made_by": "mechscope demo"}
    d_mlp = ctx.model.module.cfg.d_mlp
    return {
        "attention_sae": DictionaryConfig(d_in=store.d(z), n_latents=s.sae_expansion * store.d(z), activation="topk", k=s.k,
                                          hook_in=z, act_shape=store.act_shape(z), meta=meta),
        "transcoder": DictionaryConfig(d_in=store.d(ln2), d_out=store.d(mlp_out), n_latents=s.transcoder_expansion * d_mlp,
                                       kind="transcoder", activation="topk", k=s.k, hook_in=ln2, hook_out=mlp_out, meta=meta),
    }


def _last_training_record(metrics_jsonl, name: str) -> dict:
    import json

    rows = [json.loads(line) for line in metrics_jsonl.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if name in r]
    if not rows:
        return {}
    return {"step": rows[-1]["step"]} | {k: rows[-1][name][k] for k in ("fvu", "l0", "dead_frac")}


def run(ctx: DemoContext) -> dict:
    from mechscope.activations import cache_activations
    from mechscope.demo.figures import training_curves
    from mechscope.dictionaries import StoreSource, TrainConfig, evaluate, train

    model, stream = ctx.need("model", "corpus"), ctx.need("train_stream", "corpus")
    s = ctx.sizes
    layer = circuit_layer(ctx.card["circuit"]["nodes"], model.module.cfg.n_layers)
    hooks = [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.ln2.hook_normalized", f"blocks.{layer}.hook_mlp_out"]
    ctx.say(f"caching {', '.join(hooks)} over {s.cache_contexts} contexts")
    t = time.perf_counter()
    store = cache_activations(model, stream, hooks, ctx.out / "activations", n_contexts=s.cache_contexts, contexts_per_shard=64,
                              batch_size=32, overwrite=True, progress=ctx.progress)
    cache_s = time.perf_counter() - t
    store.verify()
    facts: dict = {"layer": layer, "store": {"path": str(store.root), "rows": store.n_rows, "shards": len(store.manifest.shards),
                                             "hooks": {h: store.act_shape(h) for h in hooks}, "seconds": round(cache_s, 2),
                                             "tokens_per_s": round(store.n_rows / max(cache_s, 1e-9))}}
    configs = _configs(ctx, store, layer)
    tcfg = TrainConfig(steps=s.train_steps, batch_size=s.batch_size, lr=s.lr, warmup_steps=max(1, s.train_steps // 10),
                       dead_tokens=s.batch_size * 50, log_every=max(1, s.train_steps // 50), seed=0)
    ctx.say(f"training {len(configs)} dictionaries for {s.train_steps} steps of {s.batch_size} rows")
    run_dir = ctx.out / "dictionaries"
    t = time.perf_counter()
    trained = train(list(configs.values()), StoreSource(store, hooks), tcfg, out_dir=run_dir, overwrite=True,
                    progress=ctx.progress, device="cpu")
    facts["training"] = {"steps": s.train_steps, "batch_size": s.batch_size, "tokens": s.train_steps * s.batch_size, "lr": s.lr,
                         "seconds": round(time.perf_counter() - t, 2), "run_dir": str(run_dir)}
    facts["dictionaries"], made = {}, {}
    for role, d in zip(configs, trained):
        ctx.say(f"evaluating {role} on held-out text")
        name = d.cfg.name
        t = time.perf_counter()
        ev = evaluate(d, model=model, stream=ctx.need("eval_stream", "corpus"), n_tokens=s.eval_tokens, n_contexts=s.eval_contexts,
                      histogram=run_dir / f"{role}.density.png")
        c = d.cfg
        facts["dictionaries"][role] = {
            "name": name, "path": str(run_dir / name), "kind": c.kind, "activation": c.activation, "k": c.k,
            "hook_in": c.hook_in, "hook_out": c.target_hook, "d_in": c.d_in, "d_out": c.d_out, "n_latents": c.n_latents,
            "train_final": _last_training_record(run_dir / "metrics.jsonl", name),
            "eval": {k: ev[k] for k in EVAL_KEYS if k in ev}, "eval_seconds": round(time.perf_counter() - t, 2),
            "histogram": ev.get("histogram"),
        }
        made[role] = d
    ctx.dictionaries = made
    ctx.dictionary_dirs = {role: d["path"] for role, d in facts["dictionaries"].items()}
    facts["figures"] = {"training_curves": training_curves(run_dir / "metrics.jsonl", {v["name"]: k for k, v in facts["dictionaries"].items()},
                                                           run_dir / "training_curves.png")}
    return facts


def headline(f: dict) -> str:
    parts = [f"{role} FVU {d['eval']['fvu']:.3f} L0 {d['eval']['l0']:.1f} CE score {d['eval']['ce_score']:.3f}"
             for role, d in f["dictionaries"].items()]
    return "; ".join(parts)


def section(f: dict) -> Section:
    recon, splice = [], []
    for role, d in f["dictionaries"].items():
        e = d["eval"]
        recon.append({"dictionary": role, "hook in": d["hook_in"], "hook out": d["hook_out"], "latents": d["n_latents"], "k": d["k"],
                      "FVU": e["fvu"], "explained var": e["explained_variance"], "L0": e["l0"], "dead frac": e["dead_frac"],
                      "dense frac": e["dense_frac"], "cosine": e["cosine"]})
        splice.append({"dictionary": role, "CE clean": e["ce_clean"], "CE spliced": e["ce_spliced"], "CE zero-ablated": e["ce_zero"],
                       "CE score": e["ce_score"], "KL score": e["kl_score"], "predictions": e["predictions"]})
    st, tr = f["store"], f["training"]
    text = (f"Block {f['layer']} (the block of the verified circuit's MLP). Activations: {st['rows']:,} rows in {st['shards']} "
            f"shards ({st['tokens_per_s']:,} tokens/s). Training: {tr['steps']} steps x {tr['batch_size']} rows "
            f"({tr['tokens']:,} tokens, {tr['seconds']:.1f} s), TopK, one pass feeding both dictionaries.\n\n"
            "Scored on held-out text: FVU = 1 - explained variance; L0 = active latents per token; dead = never active on the "
            "held-out rows; CE score = (CE_zero - CE_spliced) / (CE_zero - CE_clean) with the reconstruction spliced into the "
            "model (1: nothing lost; 0: as bad as zero-ablating the activation); KL score likewise with KL(clean || run).")
    figs = [("training curves", f["figures"]["training_curves"])]
    figs += [(f"feature density: {role}", d["histogram"]) for role, d in f["dictionaries"].items() if d.get("histogram")]
    return Section(KEY, TITLE, text=text, tables=[("held-out reconstruction", recon), ("spliced into the model (held-out text)", splice)],
                   figures=figs)
