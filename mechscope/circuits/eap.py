"""Edge attribution patching (EAP; Syed, Rager & Conmy 2023, "Attribution Patching Outperforms
Automated Circuit Discovery", arXiv:2310.10348).

A first-order estimate of what patching one edge from the corrupted run would do to the metric:

    score(src -> dst) = mean over prompts of  sum over positions of
                        (out_src(corrupted) - out_src(clean)) . d metric / d in_dst (clean)

from one clean forward + backward (gradients at every receiver's input: head q/k/v inputs,
MLP inputs, the final residual) and one corrupted forward (every source's output; a head's is
``z @ W_O``). Edge score = ``|estimate|``; node score = ``|sum of its outgoing estimates|``
(= the estimate for patching the node's output everywhere, since its write reaches every reader).
"""

from __future__ import annotations

import time

import torch

from mechscope.circuits.circuit import Circuit, select_relative
from mechscope.circuits.forward import batches, check_task, receiver_grads, source_outputs, summed_metric
from mechscope.circuits.graph import Graph
from mechscope.models import Model
from mechscope.models.model import as_model
from mechscope.tasks import Task


def edge_estimates(model: Model, task: Task, metric: str | None = None, batch_size: int | None = 32) -> torch.Tensor:
    """Signed EAP estimates ``[n_sources, n_receivers]`` (zero where there is no edge)."""
    graph = Graph.of(model)
    total = torch.zeros(len(graph.sources), len(graph.receivers), dtype=torch.float64)
    for sub in batches(task, batch_size):
        clean = source_outputs(model, sub.clean, graph)
        corrupt = source_outputs(model, sub.corrupted, graph)
        _, grads = receiver_grads(model, sub, summed_metric(sub, metric), graph)
        total += torch.einsum("bpsd,bprd->sr", corrupt - clean, grads).double().cpu()
    return total / len(task) * graph.edge_mask


def scores_from_estimates(graph: Graph, est: torch.Tensor) -> tuple[dict[str, float], dict[str, float]]:
    """``(node scores, edge scores)`` from signed edge estimates: ``|node's summed outgoing|``, ``|edge|``."""
    edge_scores = graph.edge_scores_from_matrix(est.abs())
    out = est.sum(1)
    node_scores = {n: abs(float(out[graph.source_index[n]])) for n in graph.nodes}
    return node_scores, edge_scores


def find_eap(model: Model, task: Task, metric: str | None = None, batch_size: int | None = 32) -> Circuit:
    """EAP scores for every edge and node (see the module docstring)."""
    model = as_model(model)
    check_task(model, task)
    t0 = time.perf_counter()
    graph = Graph.of(model)
    est = edge_estimates(model, task, metric, batch_size)
    nodes, edges = scores_from_estimates(graph, est)
    return Circuit(model=model.name, task=task.name, method="eap", node_scores=nodes, edge_scores=edges, nodes=select_relative(nodes),
                   edges=[list(e.split("->")) for e in select_relative(edges)],
                   params={"metric": metric or task.default_metric, "n_prompts": len(task), "batch_size": batch_size},
                   runtime_s=time.perf_counter() - t0,
                   metadata={"citation": "Syed, Rager & Conmy (2023), arXiv:2310.10348", "selection": "score >= 0.1 x max",
                             "embed_effect": float(est.sum(1)[0])})
