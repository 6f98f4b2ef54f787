"""Faithfulness of transcoder circuits: with the transcoders spliced in place of the MLPs, keep
only the top-k features and ablate the rest; how much of the task metric survives as k grows —
against keeping the top-k neurons of the original MLPs.

Definitions (one :class:`~mechscope.tasks.Task`, its default metric unless ``metric`` is given):

* **Spliced model**: every MLP with a transcoder outputs ``codes @ W_dec + b_dec (+ W_skip x)``
  instead of its own output, at every position (``keep_error=True`` adds the reconstruction error
  ``mlp_out - transcoder(x)`` back, so that keeping every feature gives the original model).
* **Keeping features** ``K`` (``(layer, feature)`` pairs): every other feature's activation is
  replaced at every position by its per-position mean over the reference prompts (``ablation="mean"``)
  or by 0 (``"zero"``); the skip path (skip-transcoders) is kept.
* **Keeping neurons** ``K`` (``(layer, neuron)`` pairs of the *original* MLPs,
  ``blocks.L.mlp.hook_post``): the same, on the original model.
* **Metric kept**: ``f(k) = (m(top k) - m(k = 0)) / (m(original) - m(k = 0))``; ``m(k = 0)`` ablates
  every feature (every neuron) of the covered layers. ``f`` of the spliced model with every
  feature kept is below 1 by the transcoders' own error.

Rankings:

* ``features_paths``: features on the paths found by :mod:`mechscope.transcoders.paths`, by
  path score (then nothing: the curve stops at the number of features on paths);
* ``features_attribution`` / ``neurons_attribution``: attribution patching — ``|mean over prompts of
  sum over positions of (a - mean a) · d metric / d a|`` (the first-order estimate of ablating
  the unit), features in the spliced model, neurons in the original one.
"""

from __future__ import annotations

import time
from typing import Sequence

import torch
from torch import Tensor

from mechscope.errors import ConfigError
from mechscope.models import run_with_hooks
from mechscope.models.model import as_model
from mechscope.transcoders.replacement import TranscoderSet, check_model

ABLATIONS = ("mean", "zero")
DEFAULT_KS = (0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def _splice_hooks(ts: TranscoderSet, keep: dict[int, Tensor] | None = None, fill: dict[int, Tensor] | None = None,
                  keep_error: bool = False, leaves: dict[int, Tensor] | None = None) -> list:
    """Hooks that replace each covered MLP output by its transcoder's output. ``keep[l] [n_latents]``
    bool: features kept (others set to ``fill[l] [pos, n_latents]``). ``leaves``: when given, the
    codes are made leaves requiring grad and stored there (for attribution patching)."""
    captured: dict[int, Tensor] = {}
    hooks = []
    for l, d in ts.transcoders.items():
        def cap(act, hook, l=l):
            captured[l] = act
            return None

        def out(act, hook, l=l, d=d):
            x = captured.pop(l)
            P = x.shape[1]
            z = d.encode(x.to(d.device, d.W_enc.dtype)).detach()
            if keep is not None:
                f = fill[l][:P].to(z) if fill is not None else torch.zeros_like(z[0])
                z = torch.where(keep[l].to(z.device)[None, None], z, f[None])
            if leaves is not None:
                z = z.clone().requires_grad_(True)
                leaves[l] = z
            rec = z @ d.W_dec + d.b_dec
            if d.cfg.kind == "skip_transcoder":
                rec = rec + x.to(d.W_skip.dtype) @ d.W_skip.T
            rec = rec.to(act.dtype)
            if keep_error:
                with torch.no_grad():
                    err = act - d.reconstruct(x.to(d.device, d.W_enc.dtype)).to(act.dtype)
                rec = rec + err
            return rec

        hooks += [(d.cfg.hook_in, cap), (f"blocks.{l}.hook_mlp_out", out)]
    return hooks


def _neuron_hooks(layers: Sequence[int], keep: dict[int, Tensor] | None = None, fill: dict[int, Tensor] | None = None,
                  leaves: dict[int, Tensor] | None = None) -> list:
    hooks = []
    for l in layers:
        def fn(act, hook, l=l):
            a = act
            if keep is not None:
                f = fill[l][: a.shape[1]].to(a) if fill is not None else torch.zeros_like(a[0])
                a = torch.where(keep[l].to(a.device)[None, None], a, f[None])
            if leaves is not None:
                a = a.detach().clone().requires_grad_(True)
                leaves[l] = a
            return a
        hooks.append((f"blocks.{l}.mlp.hook_post", fn))
    return hooks


@torch.no_grad()
def _metric(model, task, hooks, metric: str | None, batch_size: int = 256) -> float:
    total = 0.0
    for s in range(0, len(task), batch_size):
        part = task.subset(slice(s, s + batch_size))
        logits = run_with_hooks(model, part.clean, hooks)
        total += float(part.metric(logits, metric)) * len(part)
    return total / len(task)


@torch.no_grad()
def feature_means(model, ts: TranscoderSet, tokens: Tensor) -> dict[int, Tensor]:
    """Per-position mean codes ``{layer: [pos, n_latents]}`` of the spliced model over ``tokens``."""
    sums: dict[int, Tensor] = {}
    leaves: dict[int, Tensor] = {}
    with torch.enable_grad():
        run_with_hooks(model, tokens, _splice_hooks(ts, leaves=leaves))
    for l, z in leaves.items():
        sums[l] = z.detach().mean(0)
    return sums


@torch.no_grad()
def neuron_means(model, layers: Sequence[int], tokens: Tensor) -> dict[int, Tensor]:
    from mechscope.models import run_with_cache

    cache = run_with_cache(model, tokens, [f"blocks.{l}.mlp.hook_post" for l in layers])
    return {l: cache[f"blocks.{l}.mlp.hook_post"].mean(0) for l in layers}


def _attribution_scores(model, task, hooks_with_leaves, leaves: dict[int, Tensor], means: dict[int, Tensor] | None,
                        metric: str | None) -> dict[int, Tensor]:
    """``{layer: [n_units]}``: |mean over prompts of sum over positions of (a - fill) * grad|."""
    with torch.enable_grad():
        logits = run_with_hooks(model, task.clean, hooks_with_leaves)
        m = task.metric(logits, metric)
        grads = torch.autograd.grad(m, [leaves[l] for l in leaves])
    out = {}
    for (l, a), g in zip(leaves.items(), grads):
        base = means[l][None, : a.shape[1]] if means is not None else 0.0
        out[l] = ((a.detach() - base) * g).sum(1).mean(0).abs()
    return out


def _rank(scores: dict[int, Tensor]) -> list[tuple[int, int]]:
    flat = [(float(v), l, i) for l, t in scores.items() for i, v in enumerate(t.tolist())]
    flat.sort(key=lambda x: -x[0])
    return [(l, i) for _, l, i in flat]


def _keep_mask(sizes: dict[int, int], chosen: Sequence[tuple[int, int]]) -> dict[int, Tensor]:
    keep = {l: torch.zeros(n, dtype=torch.bool) for l, n in sizes.items()}
    for l, i in chosen:
        keep[l][i] = True
    return keep


def faithfulness_curves(model, ts: TranscoderSet, task, *, path_features: Sequence[tuple[int, int]] | None = None,
                        reference=None, ks: Sequence[int] = DEFAULT_KS, ablation: str = "mean", metric: str | None = None,
                        keep_error: bool = False, neurons: bool = True, progress=None) -> dict:
    """Metric kept as the top-k features (and, for comparison, top-k MLP neurons) are kept
    (module docstring). ``path_features``: ``(layer, feature)`` in path-score order (from
    :meth:`PathSearchResult.ranked_features`); ``reference``: prompts for the means (default: ``task``)."""
    t0 = time.perf_counter()
    model = as_model(model)
    cfg = check_model(model)
    ts.check(model)
    if ablation not in ABLATIONS:
        raise ConfigError(f"ablation must be one of {ABLATIONS}; found {ablation!r}")
    say = progress or (lambda msg: None)
    ref = reference if reference is not None else task
    if ablation == "mean" and ref.seq_len < task.seq_len:
        raise ConfigError(f"reference prompts have {ref.seq_len} positions; the task needs {task.seq_len}")
    layers = ts.layers
    f_sizes = {l: ts[l].n_latents for l in layers}
    n_sizes = {l: cfg.d_mlp for l in layers}
    f_means = feature_means(model, ts, ref.clean) if ablation == "mean" else None
    n_means = neuron_means(model, layers, ref.clean) if ablation == "mean" and neurons else None

    say("baselines")
    m_orig = _metric(model, task, [], metric)
    m_splice = _metric(model, task, _splice_hooks(ts, keep_error=keep_error), metric)
    m_f0 = _metric(model, task, _splice_hooks(ts, _keep_mask(f_sizes, []), f_means, keep_error), metric)
    result = {"metric": metric or task.default_metric, "n_prompts": len(task), "ablation": ablation, "keep_error": keep_error,
              "layers": layers, "original": m_orig, "spliced_all_features": m_splice, "all_features_ablated": m_f0,
              "n_features": sum(f_sizes.values()), "curves": {}}

    def curve(name: str, order: list[tuple[int, int]], hooks_for, m0: float, total: int) -> None:
        pts = []
        span = m_orig - m0
        for k in sorted({min(k, len(order)) for k in ks} | {len(order)}):
            m = _metric(model, task, hooks_for(order[:k]), metric)
            pts.append({"k": k, "metric": m, "fraction": (m - m0) / span if abs(span) > 1e-12 else float("nan")})
        result["curves"][name] = {"n_candidates": total, "n_ranked": len(order), "points": pts}
        say(f"{name}: {len(pts)} points")

    fhooks = lambda chosen: _splice_hooks(ts, _keep_mask(f_sizes, chosen), f_means, keep_error)  # noqa: E731
    if path_features is not None:
        bad = [(l, i) for l, i in path_features if l not in f_sizes or not 0 <= i < f_sizes[l]]
        if bad:
            raise ConfigError(f"path features {bad[:5]} are not features of this transcoder set (layers {layers})")
        curve("features_paths", list(dict.fromkeys(map(tuple, path_features))), fhooks, m_f0, sum(f_sizes.values()))
    leaves: dict[int, Tensor] = {}
    scores = _attribution_scores(model, task, _splice_hooks(ts, leaves=leaves, keep_error=keep_error), leaves, f_means, metric)
    curve("features_attribution", _rank(scores), fhooks, m_f0, sum(f_sizes.values()))
    if neurons:
        nhooks = lambda chosen: _neuron_hooks(layers, _keep_mask(n_sizes, chosen), n_means)  # noqa: E731
        m_n0 = _metric(model, task, nhooks([]), metric)
        result["all_neurons_ablated"] = m_n0
        result["n_neurons"] = sum(n_sizes.values())
        leaves = {}
        nscores = _attribution_scores(model, task, _neuron_hooks(layers, leaves=leaves), leaves, n_means, metric)
        curve("neurons_attribution", _rank(nscores), nhooks, m_n0, sum(n_sizes.values()))
    result["runtime_s"] = round(time.perf_counter() - t0, 2)
    return result


def plot_curves(result: dict, path) -> str:
    """Metric kept (fraction) against k for every curve, log-x, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mechscope.files import atomic_write

    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    for name, c in result["curves"].items():
        pts = c["points"]
        ax.plot([max(p["k"], 0.5) for p in pts], [p["fraction"] for p in pts], marker="o", label=name)
    ax.set_xscale("log")
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("units kept (k; 0 plotted at 0.5)")
    ax.set_ylabel(f"fraction of {result['metric']} kept")
    ax.set_title(f"transcoder faithfulness ({result['ablation']}-ablation, {result['n_prompts']} prompts)", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return str(path)
