"""Activation patching per node, corrupted -> clean: on the clean prompts, one head's (or MLP's)
output is replaced by its value on the paired corrupted prompt, at every position, and the rest
of the network runs on (the node's total effect). Node score = ``|m(clean) - m(patched)|``.
"""

from __future__ import annotations

import time

from mechscope.circuits.ablation import component_cache, node_effects
from mechscope.circuits.circuit import Circuit, select_relative
from mechscope.circuits.forward import check_task
from mechscope.circuits.graph import Graph
from mechscope.models import Model
from mechscope.models.model import as_model
from mechscope.tasks import Task


def find_patching(model: Model, task: Task, metric: str | None = None) -> Circuit:
    """Score every node by its activation-patching effect (see the module docstring)."""
    model = as_model(model)
    check_task(model, task)
    t0 = time.perf_counter()
    graph = Graph.of(model, for_edges=False)
    corrupt = component_cache(model, task.corrupted, graph)
    effects = node_effects(model, task, lambda node, hook, head: corrupt[hook] if head is None else corrupt[hook][:, :, head], metric, graph)
    scores = {n: abs(v) for n, v in effects.items()}
    return Circuit(model=model.name, task=task.name, method="patching", node_scores=scores, nodes=select_relative(scores),
                   params={"metric": metric or task.default_metric, "n_prompts": len(task)}, runtime_s=time.perf_counter() - t0,
                   metadata={"signed_effects": effects, "selection": "score >= 0.1 x max"})
