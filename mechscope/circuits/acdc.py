"""Edge-level ACDC (Conmy et al. 2023, "Towards Automated Circuit Discovery for Mechanistic
Interpretability", arXiv:2304.14997), with a threshold sweep that turns it into scores.

One run at threshold tau: start from the full graph; visit receivers from the logits backwards
(reverse forward order); for each receiver, try removing each incoming edge (sources in reverse
order). Removing an edge means the receiver reads the source's *corrupted* output inside an
otherwise running forward pass: ``input = current_input - src_current + src_corrupted``. The
removal stays when the distance from the full model grows by less than tau:

* ``metric="kl"`` (ACDC's default): KL(p_clean || p_patched) of the next-token distribution at
  the answer position, mean over prompts;
* ``metric="task"``: ``|m(clean) - m(patched)|`` with the task metric.

A node none of whose outgoing edges survived cannot affect the output, so its incoming edges
are removed without testing (as ACDC does).

Scores: runs at ``n_thresholds`` values of tau (default 20, as many as auto-circuit's default
sweep), log-spaced from ``tau_min`` to ``tau_max`` (1e-4 .. 0.5) times the distance of the fully
corrupted model. An edge's score is the largest tau at which it
survives (0 if it never does); a node's, the largest tau at which it keeps an outgoing edge.
The selected circuit is the one at ``tau`` (default: the middle of the sweep).
"""

from __future__ import annotations

import math
import time

import torch

from mechscope.circuits.circuit import Circuit, receiver_node
from mechscope.circuits.errors import CircuitError
from mechscope.circuits.forward import CleanStart, answer_logits, check_task, patched_logits, source_outputs
from mechscope.circuits.graph import Graph
from mechscope.models import Model
from mechscope.models.model import as_model
from mechscope.tasks import Task

ACDC_METRICS = ("kl", "task")


class _Distance:
    """Distance of a patched forward from the clean model (KL or |task metric change|)."""

    def __init__(self, model: Model, task: Task, metric: str, task_metric: str | None):
        if metric not in ACDC_METRICS:
            raise CircuitError(f"ACDC metric must be one of {ACDC_METRICS}; found {metric!r}")
        self.task, self.metric, self.task_metric = task, metric, task_metric
        with torch.no_grad():
            logits = answer_logits(model, task.clean, task.answer_pos)
        self.clean_logp = logits.log_softmax(-1)
        self.clean_m = float(task.metric(logits, task_metric))
        self.calls = 0

    def __call__(self, logits: torch.Tensor) -> float:
        self.calls += 1
        if self.metric == "kl":
            logp = logits.log_softmax(-1)
            return float((self.clean_logp.exp() * (self.clean_logp - logp)).sum(-1).mean())
        return abs(self.clean_m - float(self.task.metric(logits, self.task_metric)))


@torch.no_grad()
def acdc_run(model: Model, task: Task, tau: float, corrupt_src: torch.Tensor, distance: _Distance, graph: Graph,
             start: CleanStart | None = None) -> torch.Tensor:
    """One ACDC pass at threshold ``tau``; returns the *kept* edges ``[n_sources, n_receivers]`` (bool)."""
    valid = graph.edge_mask
    removed = torch.zeros_like(valid)
    current = distance(patched_logits(model, task, removed, corrupt_src, graph))
    si = graph.source_index
    for r in reversed(range(len(graph.receivers))):
        node = receiver_node(graph.receivers[r])
        parents = valid[:, r].nonzero().flatten().tolist()
        if node != "logits" and not bool((valid[si[node]] & ~removed[si[node]]).any()):
            removed[parents, r] = True  # the node reaches nothing: its inputs cannot matter
            continue
        # every removed edge so far enters this receiver's block or a later one, so the pass
        # can start from the clean residual stream at this block (as auto-circuit's ACDC does)
        layer = min(int(graph.receiver_layer(graph.receivers[r])), graph.n_layers - 1)
        for s in reversed(parents):
            removed[s, r] = True
            new = distance(patched_logits(model, task, removed, corrupt_src, graph, start, layer))
            if new - current < tau:
                current = new
            else:
                removed[s, r] = False
    return valid & ~removed


def thresholds(full_distance: float, n: int, tau_min: float, tau_max: float) -> list[float]:
    """``n`` thresholds log-spaced over ``[tau_min, tau_max] x full_distance``."""
    if n < 1 or not (0 < tau_min <= tau_max):
        raise CircuitError(f"need n_thresholds >= 1 and 0 < tau_min <= tau_max; found {n}, {tau_min}, {tau_max}")
    if n == 1:
        return [tau_min * full_distance]
    lo, hi = math.log(tau_min), math.log(tau_max)
    return [full_distance * math.exp(lo + (hi - lo) * i / (n - 1)) for i in range(n)]


def find_acdc(model: Model, task: Task, metric: str = "kl", n_thresholds: int = 20, tau_min: float = 1e-4, tau_max: float = 0.5,
              taus: list[float] | None = None, tau: float | None = None, task_metric: str | None = None) -> Circuit:
    """ACDC with a threshold sweep (see the module docstring). ``taus`` (absolute) overrides the
    log-spaced grid."""
    model = as_model(model)
    check_task(model, task)
    t0 = time.perf_counter()
    graph = Graph.of(model)
    corrupt_src = source_outputs(model, task.corrupted, graph)
    start = CleanStart(model, task.clean, graph)
    distance = _Distance(model, task, metric, task_metric)
    with torch.no_grad():
        full = distance(patched_logits(model, task, graph.edge_mask, corrupt_src, graph))
    if not full > 0:
        raise CircuitError(f"the fully corrupted model is at distance {full} from the clean one; clean and corrupted prompts do not differ for this model")
    grid = sorted(taus) if taus is not None else thresholds(full, n_thresholds, tau_min, tau_max)
    edge_score = torch.zeros(len(graph.sources), len(graph.receivers), dtype=torch.float64)
    node_score = torch.zeros(len(graph.sources), dtype=torch.float64)
    runs, kept_at = [], {}
    for t in grid:
        calls = distance.calls
        kept = acdc_run(model, task, t, corrupt_src, distance, graph, start)
        edge_score = torch.where(kept, torch.full_like(edge_score, t), edge_score)
        alive = kept.any(1)
        node_score = torch.where(alive, torch.full_like(node_score, t), node_score)
        kept_at[t] = kept
        runs.append({"tau": t, "edges": int(kept.sum()), "nodes": [graph.sources[i] for i in alive.nonzero().flatten().tolist() if i > 0],
                     "forwards": distance.calls - calls})
    chosen = grid[len(grid) // 2] if tau is None else min(grid, key=lambda g: abs(g - tau))
    kept = kept_at[chosen]
    edges = [[graph.sources[s], graph.receivers[r]] for s, r in kept.nonzero().tolist()]
    nodes = [graph.sources[i] for i in kept.any(1).nonzero().flatten().tolist() if i > 0]
    return Circuit(model=model.name, task=task.name, method="acdc",
                   node_scores={n: float(node_score[graph.source_index[n]]) for n in graph.nodes},
                   edge_scores=graph.edge_scores_from_matrix(edge_score), nodes=nodes, edges=edges,
                   params={"metric": metric, "task_metric": task_metric or task.default_metric, "n_thresholds": len(grid),
                           "tau_min": tau_min, "tau_max": tau_max, "taus": grid, "tau": chosen, "n_prompts": len(task)},
                   runtime_s=time.perf_counter() - t0,
                   metadata={"citation": "Conmy et al. (2023), arXiv:2304.14997", "full_distance": full, "sweep": runs,
                             "forwards": distance.calls, "selection": f"edges kept at tau={chosen:.4g}"})
