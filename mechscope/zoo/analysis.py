"""Measuring a circuit in a small TransformerLens model: mean-ablation, path patching,
exhaustive circuit search and edges. Used to write and verify the zoo's model cards; works on
any HookedTransformer small enough to enumerate (<= 16 components).

Definitions (all on one :class:`~mechscope.tasks.Task`, metric ``m`` = the task's default):

* **Components**: every attention head ``"L.H"`` (its output ``blocks.L.attn.hook_z[:, :, H]``)
  and every MLP ``"mlpL"`` (``blocks.L.hook_mlp_out``). Embeddings and unembedding are always kept.
* **Mean-ablation**: a component's output is replaced, at every position, by its mean at that
  position over a *reference* set of clean prompts from the same distribution (drawn with a
  different seed from the evaluation prompts).
* **Faithfulness** of a kept set C: ``f(C) = (m(C) - m(none)) / (m(all) - m(none))``, where
  ``m(C)`` is the metric with every component outside C mean-ablated; ``f(all) = 1``, ``f(none) = 0``.
* **Circuit search** (exhaustive): ``f`` is measured for all ``2^K`` subsets. A subset is
  *sufficient* when ``f(C) >= 0.9`` and *necessary* when ablating it leaves
  ``f(complement) <= 0.2``. The circuit is the smallest subset that is both (ties broken by higher
  ``f(C)``, then lower ``f(complement)``); the smallest merely-sufficient subsets are recorded too.
  Because every subset is measured, the minimum is exact for these prompts — not a heuristic.
  In an attention-only model the last layer's heads are combined at the answer position instead
  of re-running the model for each of their masks (exact: 2^(K-H) forwards instead of 2^K; 2 layers
  x 8 heads: 168 s instead of ~150 min on 2 cores).
* **Path patching, direct** (component -> logits): the component's output is swapped from the
  corrupted run into the clean run *only* along its direct path to the logits: the clean final
  residual at the answer position gets ``out_corrupt - out_clean`` added, the final LayerNorm
  keeps its clean scale (so the path is linear), and the effect is
  ``(m(patched) - m(clean)) / (m(corrupt) - m(clean))`` (1 = the whole corruption effect).
* **Activation patching, total**: the component's output is swapped from the corrupted run at
  every position and the rest of the network runs on (all paths); same normalisation.
* **Edges** (sender -> receiver input): the sender's ``out_corrupt - out_clean`` is added only to
  the receiver's query / key / value input (``blocks.L.hook_{q,k,v}_input[:, :, H]``) or MLP input
  (``blocks.L.hook_mlp_in``); every other reader sees the clean sender; same normalisation.
  ``embed`` (token + position embeddings) can be a sender and ``logits`` a receiver (= direct effect).
"""

from __future__ import annotations

from typing import Callable

import torch

from mechscope.errors import ConfigError
from mechscope.models import Model, run_with_cache, run_with_hooks
from mechscope.tasks import Task, parse_node
from mechscope.tasks.ground_truth import node_sort_key

MAX_COMPONENTS = 16


def component_names(model: Model) -> list[str]:
    """Heads ``"L.H"`` and MLPs ``"mlpL"`` in forward order."""
    cfg = model.module.cfg
    out: list[str] = []
    for layer in range(cfg.n_layers):
        out += [f"{layer}.{h}" for h in range(cfg.n_heads)]
        if not cfg.attn_only:
            out.append(f"mlp{layer}")
    return out


def all_masks(k: int) -> torch.Tensor:
    """``[2^k, k]`` bool: row ``i`` keeps component ``j`` when bit ``j`` of ``i`` is set."""
    return ((torch.arange(2**k)[:, None] >> torch.arange(k)[None]) & 1).bool()


def _hook_name(node: str) -> str:
    kind, layer, _ = parse_node(node)
    return f"blocks.{layer}.attn.hook_z" if kind == "head" else f"blocks.{layer}.hook_mlp_out"


def _component_hooks(model: Model) -> list[str]:
    return list(dict.fromkeys(_hook_name(c) for c in component_names(model)))


@torch.no_grad()
def mean_activations(model: Model, tokens: torch.Tensor, batch_size: int = 512) -> dict[str, torch.Tensor]:
    """Per-position means over ``tokens`` of every component hook: ``hook_z`` -> ``[pos, head, d_head]``,
    ``hook_mlp_out`` -> ``[pos, d_model]``."""
    cache = run_with_cache(model, tokens, _component_hooks(model), batch_size=batch_size)
    return {k: v.mean(0) for k, v in cache.items()}


@torch.no_grad()
def answer_logits(model: Model, tokens: torch.Tensor, answer_pos: torch.Tensor, hooks: list | None = None) -> torch.Tensor:
    """Logits ``[n, vocab]`` at ``answer_pos`` only (the unembedding is applied to one position per row)."""
    module = model.module
    resid = run_with_hooks(model, tokens, hooks or [], stop_at_layer=module.cfg.n_layers)
    return _unembed(module, resid[torch.arange(resid.shape[0], device=resid.device), answer_pos.to(resid.device)])


def _unembed(module, resid: torch.Tensor) -> torch.Tensor:
    """``ln_final`` (when the model has one) and the unembedding of final residuals ``[..., d_model]``."""
    x = module.ln_final(resid) if module.cfg.normalization_type is not None else resid
    return x @ module.W_U + module.b_U


def _ablation_hooks(model: Model, keep_rows: torch.Tensor, components: list[str], means: dict[str, torch.Tensor]) -> list:
    """Hooks that mean-ablate, row by row, the components whose ``keep_rows[row, k]`` is False."""
    by_hook: dict[str, list[tuple[int, int | None]]] = {}
    for k, c in enumerate(components):
        kind, _, head = parse_node(c)
        by_hook.setdefault(_hook_name(c), []).append((k, head))
    hooks = []
    for name, cols in by_hook.items():
        mean = means[name]
        if name.endswith("hook_z"):
            heads = torch.tensor([h for _, h in cols])
            ks = torch.tensor([k for k, _ in cols])

            def fn(z, hook, mean=mean, heads=heads, ks=ks):
                keep = torch.ones(z.shape[0], z.shape[2], dtype=torch.bool, device=z.device)
                keep[:, heads] = keep_rows[:, ks].to(z.device)
                return torch.where(keep[:, None, :, None], z, mean[None, : z.shape[1]].to(z.dtype))
        else:
            k = cols[0][0]

            def fn(out, hook, mean=mean, k=k):
                return torch.where(keep_rows[:, k].to(out.device)[:, None, None], out, mean[None, : out.shape[1]].to(out.dtype))
        hooks.append((name, fn))
    return hooks


def _check_means(task: Task, means: dict[str, torch.Tensor]) -> None:
    pos = next(iter(means.values())).shape[0]
    if pos < task.seq_len:
        raise ConfigError(f"reference means cover {pos} positions; the task's prompts have {task.seq_len}. Draw the reference from the same task.")


@torch.no_grad()
def evaluate_masks(model: Model, task: Task, keep: torch.Tensor, means: dict[str, torch.Tensor], metric: str | list[str] | None = None,
                   max_rows: int = 8192) -> torch.Tensor:
    """Metric ``[S]`` for ``S`` kept-component masks ``keep [S, K]`` (K = ``component_names``), all else
    mean-ablated; ``[S, M]`` when ``metric`` is a list of M metric names.

    Masks are evaluated in chunks of ``max_rows // n`` at once (the prompts are repeated per mask).
    """
    metrics = metric if isinstance(metric, list) else [metric]
    components = component_names(model)
    if keep.dim() != 2 or keep.shape[1] != len(components):
        raise ConfigError(f"keep must be [n_masks, {len(components)}] (one column per component), found {tuple(keep.shape)}")
    _check_means(task, means)
    n = len(task)
    per = max(1, max_rows // n)
    out = []
    for s in range(0, keep.shape[0], per):
        chunk = keep[s : s + per]
        rows = chunk.repeat_interleave(n, 0)
        tokens = task.clean.repeat(chunk.shape[0], 1)
        pos = task.answer_pos.repeat(chunk.shape[0])
        logits = answer_logits(model, tokens, pos, _ablation_hooks(model, rows, components, means))
        logits = logits.view(chunk.shape[0], n, -1)
        out.append(torch.stack([torch.stack([task.metric(lg, m) for m in metrics]) for lg in logits]))
    res = torch.cat(out)
    return res if isinstance(metric, list) else res[:, 0]


@torch.no_grad()
def _search_metrics_last_layer(model: Model, task: Task, means: dict[str, torch.Tensor], metric: str | None,
                               progress: Callable[[int, int], None] | None = None, max_rows: int = 8192) -> torch.Tensor:
    """The metric of all ``2^K`` masks ``[2^K]`` (indexed as in :func:`exhaustive_search`) for an
    attention-only model, exactly, in ``2^(K - H)`` forward passes instead of ``2^K``.

    The last layer's heads read only earlier components and write only to the final residual, so
    for each mask of the earlier components one forward records the last layer's input residual and
    its per-head ``z`` at the answer position; every mask of the last layer's ``H`` heads is then
    ``resid_pre + b_O + sum_h (z_h or mean z_h) @ W_O[h]`` followed by ``ln_final`` and the
    unembedding at that one position — what :func:`evaluate_masks` computes with a full forward.
    """
    module = model.module
    L, H = module.cfg.n_layers - 1, module.cfg.n_heads
    components = component_names(model)
    K, E = len(components), len(components) - H  # the last H components are layer L's heads
    n = len(task)
    pos = task.answer_pos
    z_name, r_name = f"blocks.{L}.attn.hook_z", f"blocks.{L}.hook_resid_pre"
    W_O, b_O = module.blocks[L].attn.W_O, module.blocks[L].attn.b_O  # [H, d_head, d], [d]
    mean_out = torch.einsum("nhe,hed->nhd", means[z_name][pos], W_O)  # [n, H, d] ablated heads' writes
    last = all_masks(H).to(mean_out.dtype)  # [2^H, H]
    early = all_masks(E)  # [2^E, E]
    out = torch.empty(2**H, 2**E)
    per = max(1, max_rows // n)
    for s in range(0, 2**E, per):
        chunk = early[s : s + per]
        c = chunk.shape[0]
        keep = torch.cat([chunk, torch.ones(c, H, dtype=torch.bool)], 1).repeat_interleave(n, 0)
        grab: dict[str, torch.Tensor] = {}
        hooks = [h for h in _ablation_hooks(model, keep, components, means) if h[0] != z_name]
        hooks += [(name, lambda x, hook: grab.__setitem__(hook.name, x)) for name in (z_name, r_name)]
        run_with_hooks(model, task.clean.repeat(c, 1), hooks, stop_at_layer=module.cfg.n_layers)
        at = (torch.arange(c * n), pos.repeat(c))
        kept_out = torch.einsum("nhe,hed->nhd", grab[z_name][at], W_O).view(c, n, H, -1)
        base = grab[r_name][at].view(c, n, -1) + b_O + mean_out.sum(1)  # every last-layer head ablated
        delta = kept_out - mean_out  # [c, n, H, d]
        for j in range(c):
            logits = _unembed(module, base[j] + torch.einsum("lh,nhd->lnd", last, delta[j]))  # [2^H, n, vocab]
            out[:, s + j] = torch.stack([task.metric(lg, metric) for lg in logits])
        if progress:
            progress(min((s + c) * 2**H, 2**K), 2**K)
    return out.flatten()  # index = last mask * 2^E + early mask = bit k for component k


def nodes_to_mask(model: Model, nodes: list[str]) -> torch.Tensor:
    components = component_names(model)
    unknown = [x for x in nodes if x not in components]
    if unknown:
        raise ConfigError(f"nodes {unknown} are not components of this model; components: {components}")
    return torch.tensor([c in nodes for c in components], dtype=torch.bool)


@torch.no_grad()
def circuit_faithfulness(model: Model, task: Task, nodes: list[str], means: dict[str, torch.Tensor] | None = None,
                         reference: Task | None = None, metric: str | None = None) -> dict:
    """Faithfulness of keeping only ``nodes`` and of ablating only ``nodes`` (everything else kept).

    Means come from ``means``, else from ``reference.clean``, else from ``task.clean`` itself.
    Returns the metric for all / none / circuit / complement, both faithfulness values, and the
    top-1 and binary (answer over wrong answer) accuracies of each.
    """
    if means is None:
        means = mean_activations(model, (reference or task).clean)
    c = nodes_to_mask(model, nodes)
    keep = torch.stack([torch.ones_like(c), torch.zeros_like(c), c, ~c])
    both = evaluate_masks(model, task, keep, means, [metric or task.default_metric, "accuracy", "binary_accuracy"])
    m, acc, bin_acc = both[:, 0], both[:, 1], both[:, 2]
    span = float(m[0] - m[1])
    return {
        "metric": metric or task.default_metric, "full": float(m[0]), "all_ablated": float(m[1]), "circuit_only": float(m[2]),
        "circuit_ablated": float(m[3]), "faithfulness": float(m[2] - m[1]) / span, "complement_faithfulness": float(m[3] - m[1]) / span,
        "accuracy_full": float(acc[0]), "accuracy_all_ablated": float(acc[1]), "accuracy_circuit_only": float(acc[2]),
        "accuracy_circuit_ablated": float(acc[3]),
        "binary_accuracy_full": float(bin_acc[0]), "binary_accuracy_all_ablated": float(bin_acc[1]),
        "binary_accuracy_circuit_only": float(bin_acc[2]), "binary_accuracy_circuit_ablated": float(bin_acc[3]),
    }


@torch.no_grad()
def subset_metrics(model: Model, task: Task, means: dict[str, torch.Tensor], metric: str | None = None,
                   progress: Callable[[int, int], None] | None = None) -> tuple[list[str], torch.Tensor, torch.Tensor]:
    """The task metric with only each subset of components kept (the rest mean-ablated).

    Returns ``(components, keep [2^K, K] bool, metric [2^K])``, ``keep[i, k] = i >> k & 1``.
    """
    components = component_names(model)
    K = len(components)
    if K > MAX_COMPONENTS:
        raise ConfigError(f"exhaustive search over {K} components (2^{K} subsets) is too large; at most {MAX_COMPONENTS}")
    keep = all_masks(K)
    if model.module.cfg.attn_only:
        _check_means(task, means)
        return components, keep, _search_metrics_last_layer(model, task, means, metric, progress)
    chunks, step = [], 256
    for s in range(0, 2**K, step):
        chunks.append(evaluate_masks(model, task, keep[s : s + step], means, metric))
        if progress:
            progress(min(s + step, 2**K), 2**K)
    return components, keep, torch.cat(chunks)


def exhaustive_search(model: Model, task: Task, means: dict[str, torch.Tensor], metric: str | None = None, threshold: float = 0.9,
                      necessity: float = 0.2, progress: Callable[[int, int], None] | None = None) -> dict:
    """Measure every subset of components (see the module docstring) and return the circuit,
    the minimal sufficient sets (ties), runners-up and the whole faithfulness table.

    ``table[i]`` is f of the subset whose bit k (``i >> k & 1``) says component k is kept.
    """
    components, keep, m = subset_metrics(model, task, means, metric, progress)
    K = len(components)
    idx = torch.arange(2**K)
    full, empty = float(m[-1]), float(m[0])
    if full - empty <= 0:
        raise ConfigError(f"the full model's metric ({full:.4f}) does not beat the all-ablated baseline ({empty:.4f}); no circuit to find")
    f = (m - empty) / (full - empty)
    comp_f = f[(2**K - 1) ^ idx]
    size = keep.sum(1)
    suff = f >= threshold
    nec = comp_f <= necessity
    as_nodes = lambda i: [components[k] for k in range(K) if i >> k & 1]  # noqa: E731
    entry = lambda i: {"nodes": as_nodes(int(i)), "faithfulness": round(float(f[i]), 4), "complement_faithfulness": round(float(comp_f[i]), 4)}  # noqa: E731

    def best(mask: torch.Tensor) -> list[int]:
        if not bool(mask.any()):
            return []
        s = int(size[mask].min())
        ids = torch.nonzero(mask & (size == s)).flatten().tolist()
        return sorted(ids, key=lambda i: (-float(f[i]), float(comp_f[i])))

    min_suff = best(suff)
    circuit = best(suff & nec)
    if not circuit:
        raise ConfigError("no subset is both sufficient and necessary at these thresholds; the behaviour is spread over redundant components")
    c = circuit[0]
    cs = int(size[c])
    smaller = torch.nonzero(size == cs - 1).flatten()
    runner_smaller = int(smaller[f[smaller].argmax()]) if len(smaller) else None
    same = [i for i in torch.nonzero(size == cs).flatten().tolist() if i != c]
    runner_same = max(same, key=lambda i: float(f[i])) if same else None
    return {
        "method": "exhaustive",
        "n_subsets": 2**K,
        "components": components,
        "metric": metric or task.default_metric,
        "threshold": threshold,
        "necessity_threshold": necessity,
        "metric_full": full,
        "metric_all_ablated": empty,
        "circuit": entry(c),
        "circuit_ties": [entry(i) for i in circuit[1:] if abs(float(f[i]) - float(f[c])) < 1e-9] ,
        "other_sufficient_and_necessary_same_size": [entry(i) for i in circuit[1:]],
        "minimal_sufficient": [entry(i) for i in min_suff],
        "runner_up_smaller": None if runner_smaller is None else entry(runner_smaller),
        "runner_up_same_size": None if runner_same is None else entry(runner_same),
        "single_ablation": {components[k]: round(float(f[(2**K - 1) ^ (1 << k)]), 4) for k in range(K)},
        "single_kept": {components[k]: round(float(f[1 << k]), 4) for k in range(K)},
        "table": [round(float(x), 4) for x in f],
    }


def _sender_deltas(model: Model, clean: dict, corrupt: dict, sender: str) -> torch.Tensor:
    """``out_corrupt - out_clean`` of a sender, ``[n, pos, d_model]``."""
    module = model.module
    if sender == "embed":
        return corrupt["blocks.0.hook_resid_pre"] - clean["blocks.0.hook_resid_pre"]
    kind, layer, head = parse_node(sender)
    if kind == "head":
        dz = corrupt[f"blocks.{layer}.attn.hook_z"][:, :, head] - clean[f"blocks.{layer}.attn.hook_z"][:, :, head]
        return dz @ module.W_O[layer, head]
    return corrupt[f"blocks.{layer}.hook_mlp_out"] - clean[f"blocks.{layer}.hook_mlp_out"]


def _patch_runs(model: Model, task: Task) -> tuple[dict, dict, float, float, str, torch.Tensor]:
    cfg = model.module.cfg
    names = _component_hooks(model) + ["blocks.0.hook_resid_pre", f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    if cfg.normalization_type is not None:
        names.append("ln_final.hook_scale")
    clean = run_with_cache(model, task.clean, names, stop_early=False)
    corrupt = run_with_cache(model, task.corrupted, names, stop_early=False)
    return clean, corrupt, names


@torch.no_grad()
def patching_effects(model: Model, task: Task, metric: str | None = None, nodes: list[str] | None = None,
                     edge_threshold: float = 0.1) -> dict:
    """Per-component direct (path-patching to logits) and total (activation-patching) effects, and
    edges between ``nodes`` (default: none) — see the module docstring for the definitions."""
    module = model.module
    cfg = module.cfg
    metric = metric or task.default_metric
    clean, corrupt, _ = _patch_runs(model, task)
    n = len(task)
    rows = torch.arange(n)
    pos = task.answer_pos
    m_clean = float(task.metric(answer_logits(model, task.clean, pos), metric))
    m_corrupt = float(task.metric(answer_logits(model, task.corrupted, pos), metric))
    span = m_corrupt - m_clean
    if abs(span) < 1e-9:
        raise ConfigError("clean and corrupted prompts give the same metric; patching effects are undefined")
    resid = clean[f"blocks.{cfg.n_layers - 1}.hook_resid_post"][rows, pos]
    if cfg.normalization_type is not None:
        scale = clean["ln_final.hook_scale"][rows, pos]
        w, b = module.ln_final.w, module.ln_final.b

        def unembed(x):
            x = x - x.mean(-1, keepdim=True)
            return (x / scale * w + b) @ module.W_U + module.b_U
    else:
        def unembed(x):
            return x @ module.W_U + module.b_U

    direct, total = {}, {}
    for c in component_names(model):
        d = _sender_deltas(model, clean, corrupt, c)[rows, pos]
        direct[c] = round((float(task.metric(unembed(resid + d), metric)) - m_clean) / span, 4)
        kind, layer, head = parse_node(c)
        name = _hook_name(c)
        src = corrupt[name]

        def swap(act, hook, src=src, head=head):
            act = act.clone()
            if head is None:
                act[:] = src
            else:
                act[:, :, head] = src[:, :, head]
            return act

        total[c] = round((float(task.metric(answer_logits(model, task.clean, pos, [(name, swap)]), metric)) - m_clean) / span, 4)
    edges = []
    if nodes:
        nodes = sorted(nodes, key=node_sort_key)
        for sender in ["embed", *nodes]:
            delta = _sender_deltas(model, clean, corrupt, sender)
            s_kind, s_layer, _ = ("embed", -1, None) if sender == "embed" else parse_node(sender)
            for recv in nodes:
                r_kind, r_layer, r_head = parse_node(recv)
                ok = s_layer < r_layer or (r_kind == "mlp" and s_kind == "head" and s_layer == r_layer)
                if not ok:
                    continue
                channels = ["q", "k", "v"] if r_kind == "head" else ["in"]
                for ch in channels:
                    hook = f"blocks.{r_layer}.hook_{ch}_input" if r_kind == "head" else f"blocks.{r_layer}.hook_mlp_in"

                    def add(x, hook_, delta=delta, head=r_head):
                        x = x.clone()
                        if head is None:
                            x += delta
                        else:
                            x[:, :, head] += delta
                        return x

                    eff = (float(task.metric(answer_logits(model, task.clean, pos, [(hook, add)]), metric)) - m_clean) / span
                    dst = f"{recv}.{ch}" if r_kind == "head" else recv
                    edges.append({"src": sender, "dst": dst, "effect": round(eff, 4)})
            if sender != "embed":
                edges.append({"src": sender, "dst": "logits", "effect": direct[sender]})
    return {
        "metric": metric, "metric_clean": m_clean, "metric_corrupted": m_corrupt,
        "direct": direct, "total": total, "edges_measured": edges, "edge_threshold": edge_threshold,
        "edges": [[e["src"], e["dst"]] for e in edges if abs(e["effect"]) >= edge_threshold],
    }
