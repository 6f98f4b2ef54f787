"""EAP with integrated gradients (EAP-IG; Hanna, Pezzelle & Belinkov 2024, "Have Faith in
Faithfulness: Going Beyond Circuit Overlap When Finding Model Mechanisms", arXiv:2403.17806).

EAP's gradient at the clean input is replaced by its average along the straight line from the
corrupted to the clean *input embeddings* (token + position, ``blocks.0.hook_resid_pre``):

    score(src -> dst) = (out_src(clean) - out_src(corrupted)) . (1/m) sum_{k=1..m} d metric / d in_dst |_(e_k)
    e_k = e_corrupted + (k/m) (e_clean - e_corrupted)

with ``m = 5`` steps by default (the paper's). Costs m forward + backward passes per batch.
Edge score = ``|estimate|``; node score = ``|sum of its outgoing estimates|``, as in EAP.
"""

from __future__ import annotations

import time

import torch

from mechscope.circuits.circuit import Circuit, select_relative
from mechscope.circuits.eap import scores_from_estimates
from mechscope.circuits.errors import CircuitError
from mechscope.circuits.forward import batches, check_task, receiver_grads, source_outputs, summed_metric
from mechscope.circuits.graph import Graph
from mechscope.models import Model
from mechscope.models.model import as_model
from mechscope.tasks import Task


def edge_estimates_ig(model: Model, task: Task, steps: int = 5, metric: str | None = None, batch_size: int | None = 32) -> torch.Tensor:
    """Signed EAP-IG estimates ``[n_sources, n_receivers]`` (zero where there is no edge)."""
    if steps < 1:
        raise CircuitError(f"steps must be >= 1; found {steps}")
    graph = Graph.of(model)
    total = torch.zeros(len(graph.sources), len(graph.receivers), dtype=torch.float64)
    for sub in batches(task, batch_size):
        clean = source_outputs(model, sub.clean, graph)
        corrupt = source_outputs(model, sub.corrupted, graph)
        e_clean, e_corrupt = clean[:, :, 0], corrupt[:, :, 0]
        mean_grad = None
        for k in range(1, steps + 1):
            emb = e_corrupt + (k / steps) * (e_clean - e_corrupt)
            _, g = receiver_grads(model, sub, summed_metric(sub, metric), graph, embed_override=emb)
            mean_grad = g if mean_grad is None else mean_grad + g
        total += torch.einsum("bpsd,bprd->sr", clean - corrupt, mean_grad / steps).double().cpu()
    return total / len(task) * graph.edge_mask


def find_eap_ig(model: Model, task: Task, steps: int = 5, metric: str | None = None, batch_size: int | None = 32) -> Circuit:
    """EAP-IG scores for every edge and node (see the module docstring)."""
    model = as_model(model)
    check_task(model, task)
    t0 = time.perf_counter()
    graph = Graph.of(model)
    est = edge_estimates_ig(model, task, steps, metric, batch_size)
    nodes, edges = scores_from_estimates(graph, est)
    return Circuit(model=model.name, task=task.name, method="eap_ig", node_scores=nodes, edge_scores=edges, nodes=select_relative(nodes),
                   edges=[list(e.split("->")) for e in select_relative(edges)],
                   params={"steps": steps, "metric": metric or task.default_metric, "n_prompts": len(task), "batch_size": batch_size},
                   runtime_s=time.perf_counter() - t0,
                   metadata={"citation": "Hanna, Pezzelle & Belinkov (2024), arXiv:2403.17806", "selection": "score >= 0.1 x max"})
