"""Run every circuit method on every (model, task, ground truth) setting and tabulate the scores.

Settings: every shipped zoo organism on its own task, scored against the circuit in its model
card; and, for users who have the weights locally, the paper setting — GPT-2 small on IOI and
greater-than, attn-only-4l on docstring — scored against the published circuits shipped in
``mechscope/tasks/ground_truth``. All methods of a setting share one task (the same prompts,
the same corruption, the task's default metric).
"""

from __future__ import annotations

import time
from typing import Callable

from mechscope.circuits.errors import CircuitError
from mechscope.circuits.graph import Graph
from mechscope.circuits.methods import METHODS, find_circuit
from mechscope.circuits.scoring import score_circuit

# model spec -> [(task name, variant, published ground truth)]
PUBLISHED = {
    "gpt2-small": [("ioi", "paper", "ioi-gpt2-small"), ("greater_than", "paper", "greater_than-gpt2-small")],
    "attn-only-4l": [("docstring", "paper", "docstring-attn-only-4l")],
}
DEFAULT_N = 64
DEFAULT_SPLIT = "heldout"


def published_tasks(spec: str) -> list[str]:
    """The tasks with a published circuit for model ``spec`` (``[]`` for any other model)."""
    return [o[0] for o in PUBLISHED.get(spec, [])]


def settings(include_published: bool = False) -> list[str]:
    """Model specs ``compare`` runs by default: every zoo organism (``zoo:NAME``) with a model card
    (its verified circuit is the ground truth; one whose training has not finished has none), plus
    the published models when asked."""
    from mechscope.zoo.registry import find_organism, organism_names

    out = [f"zoo:{n}" for n in organism_names() if (find_organism(n) / "card.json").exists()]
    return out + (list(PUBLISHED) if include_published else [])


def load_task_and_truth(spec: str, task: str | None = None, n: int = DEFAULT_N, seed: int = 0, split: str = DEFAULT_SPLIT,
                        device: str = "cpu", model=None):
    """``(model, task, ground truth)`` for a zoo organism (``zoo:NAME``; its card's task and circuit)
    or a published model (``gpt2-small`` / ``attn-only-4l``; ``task`` picks IOI or greater-than).
    ``model``: ``spec``'s model when the caller has already loaded it (not loaded again)."""
    from mechscope.models import load_model
    from mechscope.tasks import load_ground_truth, make_task

    if spec.startswith("zoo:"):
        from mechscope.zoo.cards import load_card, organism_ground_truth

        name = spec[4:]
        card = load_card(name)
        t = card["task"]
        if task is not None and task.replace("-", "_") != t["name"]:
            raise CircuitError(f"organism {name!r} has a verified circuit for task {t['name']!r}, not {task!r}")
        model = model if model is not None else load_model(spec, device=device)
        built = make_task(t["name"], model.tokenizer, n=n, seed=seed, split=split, variant=t["variant"], **(t.get("kwargs") or {}))
        return model, built, organism_ground_truth(name)
    if spec not in PUBLISHED:
        raise CircuitError(f"no ground truth known for model {spec!r}; expected zoo:NAME or one of {sorted(PUBLISHED)}")
    options = PUBLISHED[spec]
    if task is None:
        task = options[0][0]
    match = [o for o in options if o[0] == task.replace("-", "_")]
    if not match:
        raise CircuitError(f"{spec!r} has published circuits for {published_tasks(spec)}, not {task!r}")
    name, variant, gt = match[0]
    model = model if model is not None else load_model(spec, device=device)
    return model, make_task(name, model.tokenizer, n=n, seed=seed, split=split, variant=variant), load_ground_truth(gt)


def comparison_row(spec: str, task, circuit, truth, graph: Graph) -> dict:
    """One row of :func:`compare`'s table: ``circuit`` (found on ``task`` with model ``spec``) scored
    against ``truth`` — node / edge AUC, precision and recall at the ground-truth size, seconds."""
    s = score_circuit(circuit, truth, graph)
    e = s["edges"]
    return {
        "model": spec, "task": task.name, "method": circuit.method,
        "node_auc": s["nodes"]["auc"], "edge_auc": e["auc"] if e else None,
        "component_edge_auc": e["by_component"]["auc"] if e else None,
        "node_precision_at_gt": s["nodes"]["at_gt_size"]["precision"], "node_recall_at_gt": s["nodes"]["at_gt_size"]["recall"],
        "edge_precision_at_gt": e["at_gt_size"]["precision"] if e else None, "edge_recall_at_gt": e["at_gt_size"]["recall"] if e else None,
        "seconds": round(circuit.runtime_s, 3), "gt_nodes": s["nodes"]["n_truth"], "candidate_nodes": s["nodes"]["n_candidates"],
        "gt_edges": e["n_truth"] if e else None, "candidate_edges": e["n_candidates"] if e else None,
    }


def compare(models: list[str] | None = None, methods: list[str] | None = None, n: int = DEFAULT_N, seed: int = 0,
            split: str = DEFAULT_SPLIT, params: dict[str, dict] | None = None, include_published: bool = False,
            progress: Callable[[str], None] | None = None, tasks: dict[str, list[str]] | None = None) -> dict:
    """Every method on every setting; returns ``{"rows": [...], "settings": {...}}`` (one row per
    model x task x method: node / edge AUC, precision and recall at the ground-truth size, seconds).

    ``params`` maps a method to keyword arguments for it; ``tasks`` maps a published model to the
    tasks to run (default: all its published ones).
    """
    from mechscope.circuits.errors import UnknownMethodError

    methods = list(methods or METHODS)
    for m in methods:
        if m not in METHODS:
            raise UnknownMethodError(m, list(METHODS))
    models = list(models or settings(include_published))
    if not models:
        raise CircuitError("no settings to compare: no zoo organisms are shipped (mechscope zoo list) and no models were given")
    say = progress or (lambda msg: None)
    rows = []
    info = {}
    for spec in models:
        task_names = [None] if spec.startswith("zoo:") else (tasks or {}).get(spec, published_tasks(spec)) or [None]
        model = None  # loaded once per spec, whatever the number of its tasks
        for task_name in task_names:
            model, task, truth = load_task_and_truth(spec, task_name, n=n, seed=seed, split=split, model=model)
            graph = Graph.of(model, for_edges=False)  # scoring names nodes and edges only
            info[f"{spec}/{task.name}"] = {"n_prompts": len(task), "split": split, "seed": seed, "variant": task.variant,
                                           "metric": task.default_metric, "ground_truth_nodes": truth.nodes,
                                           "ground_truth_edges": len(truth.edges or []), "graph": repr(graph)}
            for method in methods:
                say(f"{spec} / {task.name} / {method}")
                t0 = time.perf_counter()
                circuit = find_circuit(model, task, method, **(params or {}).get(method, {}))
                row = comparison_row(spec, task, circuit, truth, graph)
                row["wall_seconds"] = round(time.perf_counter() - t0, 3)
                rows.append(row)
    return {"rows": rows, "settings": info, "n": n, "seed": seed, "split": split, "params": params or {}}


def format_table(result: dict) -> str:
    """A plain-text table of :func:`compare`'s rows."""
    cols = [("model", "model", 22), ("task", "task", 12), ("method", "method", 17), ("node_auc", "node AUC", 8),
            ("edge_auc", "edge AUC", 8), ("component_edge_auc", "head-edge AUC", 13), ("node_precision_at_gt", "P@gt", 5), ("node_recall_at_gt", "R@gt", 5),
            ("edge_precision_at_gt", "eP@gt", 5), ("edge_recall_at_gt", "eR@gt", 5), ("seconds", "seconds", 8)]

    def fmt(v, w):
        if v is None:
            return "-".rjust(w)
        if isinstance(v, float):
            return f"{v:.3f}".rjust(w) if w <= 8 else f"{v:.3f}".ljust(w)
        return str(v).ljust(w)

    lines = ["  ".join(h.ljust(w) if i < 3 else h.rjust(w) for i, (_, h, w) in enumerate(cols))]
    lines.append("  ".join("-" * w for _, _, w in cols))
    for r in result["rows"]:
        lines.append("  ".join(fmt(r[k], w) for k, _, w in cols))
    lines.append("P/R@gt: node precision / recall of the top-|GT| nodes; eP/eR: the same for edges (ties at the cut split evenly).")
    return "\n".join(lines)
