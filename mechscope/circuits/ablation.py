"""Node ablation: replace one head's or MLP's output and measure how far the task metric moves.

For every node (head ``L.H`` via ``blocks.L.attn.hook_z[:, :, H]``; MLP via
``blocks.L.hook_mlp_out``), on the clean prompts, the node's output is replaced by:

* ``zero``: zeros;
* ``mean``: its per-position mean over a reference distribution — the corrupted prompts by
  default (``reference="clean"`` for the clean ones); positions past a prompt's end are left
  out of the mean;
* ``resample``: its value on another prompt of the reference distribution (a seeded
  permutation; ``n_samples`` permutations averaged).

Node score = ``|m(clean) - m(ablated)|`` with ``m`` the task metric (default: the task's own).
Node methods score no edges.
"""

from __future__ import annotations

import time

import torch

from mechscope.circuits.circuit import Circuit, select_relative
from mechscope.circuits.errors import CircuitError
from mechscope.circuits.forward import answer_logits, check_task
from mechscope.circuits.graph import Graph
from mechscope.models import Model, run_with_cache
from mechscope.models.model import as_model
from mechscope.tasks import Task, parse_node

ABLATIONS = ("zero", "mean", "resample")


def node_hook(node: str) -> tuple[str, int | None]:
    """``"1.3"`` -> ``("blocks.1.attn.hook_z", 3)``; ``"mlp1"`` -> ``("blocks.1.hook_mlp_out", None)``."""
    kind, layer, head = parse_node(node)
    return (f"blocks.{layer}.attn.hook_z", head) if kind == "head" else (f"blocks.{layer}.hook_mlp_out", None)


def component_cache(model: Model, tokens: torch.Tensor, graph: Graph) -> dict[str, torch.Tensor]:
    """``hook_z`` ``[n, pos, head, d_head]`` and ``hook_mlp_out`` ``[n, pos, d_model]`` of every layer."""
    names = list(dict.fromkeys(node_hook(n)[0] for n in graph.nodes))
    return run_with_cache(model, tokens, names)


def valid_positions(task: Task) -> torch.Tensor:
    """``[n, pos]`` bool: position p is a real token of prompt i (p <= answer_pos[i])."""
    return torch.arange(task.seq_len)[None, :] <= task.answer_pos[:, None].cpu()


def masked_position_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``x [n, pos, ...]`` -> per-position mean over the prompts that reach that position ``[pos, ...]``."""
    w = valid.to(x.dtype).to(x.device)
    w = w.view(*w.shape, *([1] * (x.dim() - 2)))
    return (x * w).sum(0) / w.sum(0).clamp(min=1)


def replace_hook(value: torch.Tensor, head: int | None):
    """A hook that writes ``value`` (broadcastable to the activation's slice) into one head / the MLP."""

    def fn(act, hook):
        act = act.clone()
        if head is None:
            act[:] = value
        else:
            act[:, :, head] = value
        return act

    return fn


@torch.no_grad()
def node_effects(model: Model, task: Task, replacement, metric: str | None = None, graph: Graph | None = None) -> dict[str, float]:
    """``{node: m(clean) - m(node replaced)}``; ``replacement(node, hook, head)`` gives the value."""
    graph = graph or Graph.of(model, for_edges=False)
    base = float(task.metric(answer_logits(model, task.clean, task.answer_pos), metric))
    out = {}
    for node in graph.nodes:
        hook, head = node_hook(node)
        logits = answer_logits(model, task.clean, task.answer_pos, [(hook, replace_hook(replacement(node, hook, head), head))])
        out[node] = base - float(task.metric(logits, metric))
    return out


def find_ablation(model: Model, task: Task, ablation: str = "mean", reference: str = "corrupted", n_samples: int = 1,
                  metric: str | None = None, seed: int = 0) -> Circuit:
    """Score every node by the metric change when it alone is ablated (see the module docstring)."""
    if ablation not in ABLATIONS:
        raise CircuitError(f"unknown ablation {ablation!r}; expected one of {ABLATIONS}")
    if reference not in ("corrupted", "clean"):
        raise CircuitError(f"reference must be 'corrupted' or 'clean'; found {reference!r}")
    if n_samples < 1:
        raise CircuitError(f"n_samples must be >= 1; found {n_samples}")
    model = as_model(model)
    check_task(model, task)
    t0 = time.perf_counter()
    graph = Graph.of(model, for_edges=False)
    ref_tokens = task.corrupted if reference == "corrupted" else task.clean
    effects: dict[str, float] = {}
    if ablation == "zero":
        effects = node_effects(model, task, lambda node, hook, head: 0.0, metric, graph)
    else:
        cache = component_cache(model, ref_tokens, graph)
        if ablation == "mean":
            valid = valid_positions(task)
            means = {h: masked_position_mean(v, valid) for h, v in cache.items()}
            effects = node_effects(model, task, lambda node, hook, head: means[hook][None] if head is None else means[hook][None, :, head],
                                   metric, graph)
        else:
            gen = torch.Generator().manual_seed(seed)
            runs = []
            for _ in range(n_samples):
                perm = torch.randperm(len(task), generator=gen)
                runs.append(node_effects(model, task, lambda node, hook, head, perm=perm: cache[hook][perm] if head is None else cache[hook][perm][:, :, head],
                                         metric, graph))
            effects = {n: sum(r[n] for r in runs) / n_samples for n in graph.nodes}
    scores = {n: abs(v) for n, v in effects.items()}
    return Circuit(model=model.name, task=task.name, method=f"ablation_{ablation}", node_scores=scores, nodes=select_relative(scores),
                   params={"ablation": ablation, "reference": reference, "n_samples": n_samples, "metric": metric or task.default_metric,
                           "seed": seed, "n_prompts": len(task)},
                   runtime_s=time.perf_counter() - t0, metadata={"signed_effects": effects, "selection": "score >= 0.1 x max"})
