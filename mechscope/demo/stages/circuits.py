"""Stage ``circuits``: find the organism's circuit for its task with the discrete-code method and
every baseline (:data:`mechscope.circuits.METHODS`), score each against the verified circuit of the
organism's model card, and save each circuit as JSON (for ``mechscope serve --circuit``)."""

from __future__ import annotations

import time

from mechscope.demo.context import DemoContext
from mechscope.report import Section

KEY = "circuits"
TITLE = "Circuits: discrete codes and baselines vs the verified circuit"


def method_params(ctx: DemoContext) -> dict[str, dict]:
    """Keyword arguments per method: ACDC's threshold sweep is the only one sized by the run."""
    return {"acdc": {"n_thresholds": ctx.sizes.acdc_thresholds}}


def run(ctx: DemoContext) -> dict:
    from mechscope.circuits import METHODS, Graph, find_circuit, load_task_and_truth
    from mechscope.circuits.compare import comparison_row

    spec, n = f"zoo:{ctx.organism}", ctx.sizes.circuit_prompts
    model, task, truth = load_task_and_truth(spec, n=n, seed=0, split="heldout")
    graph = Graph.of(model)
    out = ctx.out / "circuits"
    out.mkdir(parents=True, exist_ok=True)
    params, rows, files = method_params(ctx), [], {}
    for method in METHODS:
        ctx.say(f"circuit: {method}")
        t = time.perf_counter()
        circuit = find_circuit(model, task, method, **params.get(method, {}))
        circuit.metadata["task_spec"] = {"name": task.name, "variant": task.variant, "n": len(task), "seed": 0, "split": "heldout"}
        row = comparison_row(spec, task, circuit, truth, graph)
        row["wall_seconds"] = round(time.perf_counter() - t, 3)
        row["top_nodes"] = circuit.ranked_nodes()[: len(truth.nodes)]
        rows.append(row)
        path = out / f"{method}.circuit.json"
        circuit.save(path)
        files[method] = str(path)
    ctx.circuit_files = files
    best = max(rows, key=lambda r: (r["node_auc"] if r["node_auc"] is not None else -1))
    return {"model": spec, "task": task.name, "variant": task.variant, "metric": task.default_metric, "n_prompts": len(task),
            "ground_truth": {"nodes": truth.nodes, "edges": truth.edges}, "graph": repr(graph), "params": params,
            "rows": rows, "files": files, "best_node_auc": {"method": best["method"], "node_auc": best["node_auc"]}}


def headline(f: dict) -> str:
    by = {r["method"]: r for r in f["rows"]}
    dc = by.get("discrete_codes")
    dc_text = f"discrete codes node AUC {dc['node_auc']:.3f}" if dc and dc["node_auc"] is not None else ""
    return f"{len(f['rows'])} methods; {dc_text}; best node AUC {f['best_node_auc']['node_auc']:.3f} ({f['best_node_auc']['method']})"


COLUMNS = [("method", "method"), ("node_auc", "node AUC"), ("edge_auc", "edge AUC"), ("node_precision_at_gt", "node P@gt"),
           ("node_recall_at_gt", "node R@gt"), ("edge_precision_at_gt", "edge P@gt"), ("edge_recall_at_gt", "edge R@gt"),
           ("seconds", "seconds"), ("top_nodes", "top nodes")]


def table_rows(f: dict) -> list[dict]:
    """One row per method; ``None`` where a method scores no edges."""
    return [{label: (", ".join(r[key]) if key == "top_nodes" else r[key]) for key, label in COLUMNS} for r in f["rows"]]


def section(f: dict) -> Section:
    gt = f["ground_truth"]
    text = (f"{f['model']} on {f['task']} ({f['variant']} variant), {f['n_prompts']} held-out prompts, metric {f['metric']}. "
            f"Ground truth (model card): nodes {', '.join(gt['nodes'])}; edges "
            f"{', '.join(a + ' -> ' + b for a, b in gt['edges'] or [])}. Candidates: {f['graph']}.\n\n"
            "AUC: probability that a ground-truth node (edge) scores above a non-member, ties counted half. P/R@gt: precision "
            "and recall of the top-|ground truth| nodes (edges), ties at the cut split evenly. Methods that score no edges "
            "have no edge AUC. Seconds: the method's own runtime.")
    rows = [{k: ("-" if v is None else v) for k, v in r.items()} for r in table_rows(f)]
    return Section(KEY, TITLE, text=text, tables=[("circuit methods scored against the verified circuit", rows)])
