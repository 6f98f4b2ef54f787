"""Run every attention-output SAE analysis on one (model, SAE) pair and write the results as
data (``attention_analysis.json``) and figures (PNG), ready for the explorer.

    summary = analyze(model, sae, out_dir="runs/attn-analysis")
    summary["findings"]   # induction features, their heads, long-prefix heads, family shares

Compute lives in the other modules; this one only runs them, collects numbers and draws.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from mechscope.attention.dfa import attention_inputs, dfa_rows, zsae_info
from mechscope.attention.families import FAMILIES, FamilyConfig, label_families, repeated_sequences
from mechscope.attention.head_attribution import head_attribution, polysemanticity
from mechscope.attention.induction import head_name, induction_analysis
from mechscope.attention.recursive_dfa import recursive_dfa
from mechscope.files import ensure_dir, write_json
from mechscope.models.model import as_model

FORMAT = "mechscope.attention_analysis"
VERSION = 1


def _decoder(model) -> Callable[[int], str] | None:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return None
    return lambda i: tok.decode([i])


def _card(model) -> dict | None:
    """The zoo card's circuit (nodes, edges, roles if recorded) for a zoo organism."""
    name = str(model.name)
    if not name.startswith("zoo:"):
        return None
    from mechscope.errors import MechscopeError
    from mechscope.zoo.cards import load_card

    try:
        card = load_card(name.removeprefix("zoo:"))
    except MechscopeError:
        return None
    c = card.get("circuit", {})
    return {"name": card.get("name"), "nodes": c.get("nodes"), "edges": c.get("edges"), "faithfulness": c.get("faithfulness"),
            "roles": card.get("roles") or c.get("roles"), "heldout": card.get("metrics", {}).get("heldout")}


def default_corpus_tokens(model, n_contexts: int = 128, split: str = "heldout"):
    """``[n_contexts, n_ctx]`` contexts of the embedded corpus (held-out split by default)."""
    from mechscope.attention.sae import corpus_stream

    stream = corpus_stream(model, split)
    return stream.batch(0, min(n_contexts, len(stream)))


@torch.no_grad()
def _induction_examples(model, sae, fam, info, n_examples: int, seed: int, decode) -> tuple[list[dict], dict | None]:
    """One DFA row per top induction feature, on the repeated-sequence prompt where it fires most."""
    feats = fam.features("induction")
    if not feats:
        return [], None
    feats = sorted(feats, key=lambda f: -(fam.stats[f]["repeat"]["mean_act_second"] or 0))[:n_examples]
    L = fam.config.repeat_len or min(32, (model.module.cfg.n_ctx - 1) // 2)
    tokens = repeated_sequences(model, 16, L, seed + 7)
    inputs = attention_inputs(model, tokens, info.layer)
    codes = sae.encode(inputs.z.flatten(2).to(sae.W_enc.dtype))  # [b, pos, M]
    rows = []
    for f in feats:
        a = codes[:, L + 1 :, f]
        b, q = divmod(int(a.argmax()), a.shape[1])
        rows.append((b, q + L + 1, f))
    d = dfa_rows(sae, inputs, rows, info=info)
    out = []
    for i, (b, q, f) in enumerate(rows):
        ex = d.to_dict(i, tokens, top=6, decode=decode)
        ex["induction_target"] = q - L + 1
        ex["repeat_len"] = L
        out.append(ex)
    best = 0
    grid = {"feature": rows[best][2], "query": rows[best][1], "induction_target": rows[best][1] - L + 1,
            "sources": [[round(float(x), 5) for x in row] for row in d.sources[best]],
            "tokens": tokens[rows[best][0]].tolist(), "prompt": rows[best][0], "repeat_len": L}
    return out, grid


@torch.no_grad()
def analyze(model, sae, *, out_dir: str | Path | None = None, corpus_tokens=None, n_contexts: int = 128,
            family_config: FamilyConfig | None = None, induction: bool = True, heads: list | None = None, n_top: int = 10,
            min_fraction: float = 0.4, seed: int = 0, figures: bool = True, progress: Callable[[str], None] | None = None) -> dict:
    """Head attribution, feature families (+ per-head polysemanticity), DFA examples, a recursive
    DFA tree and the induction-head analysis, for an SAE on ``blocks.L.attn.hook_z``.

    Args:
        corpus_tokens: ``[n, pos]`` text contexts (default: ``n_contexts`` held-out contexts of the
            embedded corpus with the model's tokenizer).
        heads: induction heads to study (default: from the model's roles, else by induction score).
        n_top / min_fraction: a head's top features for the polysemanticity estimate are its
            ``n_top`` live features with the largest decoder-norm share on it, share >= ``min_fraction``.
        out_dir: where to write ``attention_analysis.json`` and the PNG figures (nothing written if None).
    Returns the summary dict (the JSON's content).
    """
    t0 = time.perf_counter()
    say = progress or (lambda msg: None)
    model = as_model(model)
    sae = sae.eval()
    info = zsae_info(sae, model)
    decode = _decoder(model)
    if corpus_tokens is None:
        say(f"corpus: {n_contexts} held-out contexts of the embedded corpus")
        corpus_tokens = default_corpus_tokens(model, n_contexts)
    cfg = family_config or FamilyConfig(seed=seed)
    say("head attribution")
    attr = head_attribution(sae, model)
    say("feature families")
    fam = label_families(model, sae, corpus_tokens, cfg, progress=say)
    dom = attr.dominant_head()
    ind_feats = fam.features("induction")
    dfa_heads = {}
    for f in ind_feats:
        h = fam.stats[f]["repeat"]["dfa_head"]
        dfa_heads[h] = dfa_heads.get(h, 0) + 1
    by_head_dec = {f"{info.layer}.{h}": c for h, c in enumerate(attr.head_counts(ind_feats)) if c}
    say("DFA examples")
    examples, grid = _induction_examples(model, sae, fam, info, 5, seed, decode)
    tree = None
    if examples:
        ex = examples[0]
        say(f"recursive DFA of feature {ex['feature']}")
        L = ex["repeat_len"]
        tokens = repeated_sequences(model, 16, L, seed + 7)[grid["prompt"]]
        node = recursive_dfa(model, sae, tokens, ex["feature"], ex["query"], decode=decode)
        tree = {"feature": ex["feature"], "query": ex["query"], "check": node.check(), "tree": node.to_dict(max_depth=6),
                "text": node.render(max_depth=6, min_abs=0.02 * abs(node.value))}
    ind = None
    if induction:
        say("induction heads: scores, prefix-length curves, causal test")
        ind = induction_analysis(model, heads, seed=seed, repeat_len=fam.config.repeat_len, target_offsets=fam.config.target_offsets)
    fam_dict = fam.to_dict()
    summary = {
        "format": FORMAT, "version": VERSION,
        "model": model.name,
        "sae": {"hook": info.hook, "layer": info.layer, "n_heads": info.n_heads, "d_head": info.d_head, "n_latents": sae.n_latents,
                "activation": sae.cfg.activation, "k": sae.cfg.k, "meta": sae.cfg.meta},
        "corpus": {"n_contexts": int(corpus_tokens.shape[0]), "context_len": int(corpus_tokens.shape[1])},
        "head_attribution": {**attr.to_dict(fam.live, n_top), "fractions": [[round(float(x), 4) for x in row] for row in attr.fractions]},
        "families": {k: v for k, v in fam_dict.items() if k != "features"},
        "family_by_head": fam.by_head(dom),
        "polysemanticity": polysemanticity(attr, fam.labels, n_top=n_top, live=fam.live, min_fraction=min_fraction),
        "induction_features": {"count": len(ind_feats), "features": ind_feats, "by_head_decoder_norm": by_head_dec,
                               "by_head_dfa": dict(sorted(dfa_heads.items()))},
        "dfa_examples": examples,
        "dfa_example_grid": grid,
        "recursive_dfa": tree,
        "induction_heads": ind.to_dict() if ind is not None else None,
        "card": _card(model),
        "features": fam_dict["features"],
    }
    summary["findings"] = _findings(summary)
    summary["seconds"] = round(time.perf_counter() - t0, 1)
    if out_dir is not None:
        out = Path(out_dir)
        ensure_dir(out)
        if figures:
            say("figures")
            summary["figures"] = write_figures(summary, out)
        write_json(out / "attention_analysis.json", summary)
    return summary


def _findings(s: dict) -> dict:
    ind = s["induction_heads"] or {}
    shares = s["families"]["shares_of_live"]
    return {
        "n_live": s["families"]["n_live"], "n_latents": s["sae"]["n_latents"],
        "n_induction_features": s["induction_features"]["count"],
        "induction_features_by_head": s["induction_features"]["by_head_decoder_norm"],
        "induction_features_by_dfa_head": s["induction_features"]["by_head_dfa"],
        "family_shares_of_live": {k: v for k, v in shares.items() if v > 0},
        "induction_heads": ind.get("induction_heads"),
        "long_prefix_heads": ind.get("long_prefix_heads"),
        "head_kinds": {k: v["kind"] for k, v in (ind.get("verdicts") or {}).items()},
        "polysemanticity": {h: v["n_families"] for h, v in s["polysemanticity"].items()},
        "dfa_check_max_error": max([e["error"] for e in s["dfa_examples"]], default=None),
        "card_circuit": (s.get("card") or {}).get("nodes"),
    }


# -- figures --------------------------------------------------------------------------------
def _figure_writer(out_dir: str | Path):
    """``(pyplot, save(fig, name), written)``: ``save`` lays out, writes ``out_dir/name`` as PNG,
    closes the figure and appends ``name`` to the ``written`` list."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out_dir)
    ensure_dir(out)
    written: list[str] = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        written.append(name)

    return plt, save, written


def write_figures(summary: dict, out_dir: str | Path) -> list[str]:
    """Draw the PNG figures of a summary from :func:`analyze` into ``out_dir``; returns their names."""
    plt, save, written = _figure_writer(out_dir)

    layer = summary["sae"]["layer"]
    n_heads = summary["sae"]["n_heads"]
    heads = [f"{layer}.{h}" for h in range(n_heads)]
    labels = summary["families"]["labels"]
    frac = torch.tensor(summary["head_attribution"]["fractions"])
    live = [i for i, lab in enumerate(labels) if lab != "dead"]
    colors = dict(zip(FAMILIES, plt.get_cmap("tab10").colors))

    # 1. head attribution heatmap: live features sorted by dominant head, then family
    if live:
        order = sorted(live, key=lambda f: (int(frac[f].argmax()), FAMILIES.index(labels[f]), -float(frac[f].max())))
        fig, ax = plt.subplots(figsize=(max(4, 0.6 * n_heads + 2.5), 5))
        im = ax.imshow(frac[order].numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks(range(n_heads), heads)
        ax.set_xlabel("head")
        ax.set_ylabel(f"live features ({len(live)}), by dominant head")
        ax.set_title("decoder-norm share per head")
        fig.colorbar(im, ax=ax, fraction=0.05)
        save(fig, "head_attribution.png")

    # 2. families per head (dominant head by decoder norm) and overall shares
    by_head = summary["family_by_head"]
    fams = [f for f in FAMILIES if f != "dead" and f in by_head]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    bottom = [0] * n_heads
    for f in fams:
        vals = [by_head[f].get(h, 0) for h in heads]
        a1.bar(heads, vals, bottom=bottom, label=f, color=colors[f])
        bottom = [b + v for b, v in zip(bottom, vals)]
    a1.set_xlabel("dominant head")
    a1.set_ylabel("live features")
    a1.set_title("feature families per head")
    if fams:
        a1.legend(fontsize=7)
    shares = summary["families"]["shares_of_live"]
    names = [f for f in FAMILIES if f != "dead"]
    a2.barh(names, [shares.get(f, 0) for f in names], color=[colors[f] for f in names])
    a2.invert_yaxis()
    a2.set_xlabel("share of live features")
    a2.set_title(f"families ({summary['families']['n_live']} live of {summary['sae']['n_latents']})")
    save(fig, "families.png")

    # 3. polysemanticity
    poly = summary["polysemanticity"]
    fig, ax = plt.subplots(figsize=(max(4, 0.8 * n_heads + 2), 3.2))
    ax.bar(list(poly), [v["n_families"] for v in poly.values()], color="#4c72b0", label="distinct families")
    ax.plot(list(poly), [v["effective_families"] for v in poly.values()], "o-", color="#dd8452", label="exp(entropy)")
    ax.set_ylabel("families among top features")
    ax.set_title("per-head polysemanticity")
    ax.legend(fontsize=7)
    save(fig, "polysemanticity.png")

    # 4. DFA example: head x source for the top induction feature
    grid = summary.get("dfa_example_grid")
    if grid:
        src = torch.tensor(grid["sources"])
        q = grid["query"]
        src = src[:, : q + 1]
        lim = float(src.abs().max()) or 1.0
        fig, ax = plt.subplots(figsize=(max(6, 0.18 * (q + 1) + 2), 2.4 + 0.3 * n_heads))
        im = ax.imshow(src.numpy(), aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.axvline(grid["induction_target"], color="k", lw=0.8, ls="--")
        ax.set_yticks(range(n_heads), heads)
        ax.set_xlabel(f"source position (dashed: induction target {grid['induction_target']}; query {q})")
        ax.set_title(f"DFA of feature {grid['feature']} at position {q} (repeated sequence, L={grid['repeat_len']})")
        fig.colorbar(im, ax=ax, fraction=0.03)
        save(fig, "dfa_example.png")

    ind = summary.get("induction_heads")
    if ind and ind.get("prefix_length_curve"):
        written += induction_figures(ind, out_dir)
    return written



def induction_figures(ind: dict, out_dir: str | Path) -> list[str]:
    """``prefix_length.png`` and ``causal_prefix.png`` from an induction analysis dict
    (:meth:`InductionAnalysis.to_dict`)."""
    plt, save, written = _figure_writer(out_dir)

    if not ind.get("prefix_length_curve"):
        return written
    c = ind["prefix_length_curve"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
    for h, ys in c["attention_to_target"].items():
        kind = ind["verdicts"][h]["kind"].replace("_", " ")
        a1.plot(c["prefix_lengths"], ys, "o-", label=f"{h} ({kind})")
    a1.set_xlabel("repeated prefix length")
    a1.set_ylabel("attention to induction target")
    a1.set_ylim(0, 1.02)
    a1.legend(fontsize=7)
    a1.set_title("attention vs prefix length")
    a2.plot(c["prefix_lengths"], c["target_logit"], "o-", color="k")
    a2.set_xlabel("repeated prefix length")
    a2.set_ylabel("target logit (minus mean logit)")
    a2.set_title("model output")
    save(fig, "prefix_length.png")
    causal = ind["causal_test"]
    hs = list(causal["heads"])
    variants = ["clean", "far", "minus2", "minus1"]
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(hs) + 2), 3.4))
    w = 0.8 / len(variants)
    for i, v in enumerate(variants):
        ax.bar([j + i * w for j in range(len(hs))], [causal["heads"][h][f"attention_{v}"] for h in hs], w, label=v)
    ax.set_xticks([j + 0.4 - w / 2 for j in range(len(hs))], hs)
    ax.set_ylabel("attention to target")
    ax.set_title(f"causal test, prefix {causal['prefix_len']}: token t0-2 (minus2), t0-1 (minus1) or a far one corrupted",
                 fontsize=9)
    ax.legend(fontsize=7)
    save(fig, "causal_prefix.png")
    return written


def summary_text(summary: dict) -> str:
    """A few lines for people."""
    f = summary["findings"]
    lines = [f"{summary['model']} / {summary['sae']['hook']}: {f['n_live']} live of {f['n_latents']} features",
             f"induction features: {f['n_induction_features']} (dominant head by decoder norm: {f['induction_features_by_head']}; "
             f"by DFA: {f['induction_features_by_dfa_head']})",
             "family shares of live features: " + ", ".join(f"{k} {v:.1%}" for k, v in f["family_shares_of_live"].items()),
             f"induction heads: {f['induction_heads']}; long-prefix: {f['long_prefix_heads'] or 'none'} ({f['head_kinds']})",
             "polysemanticity (families among top features): " + ", ".join(f"{h}: {n}" for h, n in f["polysemanticity"].items())]
    return "\n".join(lines)


__all__ = ["analyze", "write_figures", "induction_figures", "summary_text", "default_corpus_tokens", "head_name"]
