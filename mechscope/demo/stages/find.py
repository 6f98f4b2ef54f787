"""Stage ``find``: a short function-interpretation benchmark (FIND-style, our own generator) with the
offline interpreter: symbolic search for numeric functions, program search for string functions
(and concept probing for synthetic neurons when listed). Each function is a black box behind a
query budget; the interpretation is scored against the hidden ground-truth code."""

from __future__ import annotations

from mechscope.demo.context import DemoContext
from mechscope.report import Section

KEY = "find"
TITLE = "Function interpretation (FIND-style benchmark)"


def _families(ctx: DemoContext) -> dict[str, list[str] | None]:
    """category -> families to run (None: all of them); categories listed as ``()`` are left out."""
    s = ctx.sizes
    wanted = {"numeric": s.find_numeric, "string": s.find_string, "neuron": s.find_neuron}
    return {cat: (list(f) if f is not None else None) for cat, f in wanted.items() if f is None or len(f) > 0}


def run(ctx: DemoContext) -> dict:
    from mechscope.find import generate_suite, get_interpreter, run_suite

    fams = _families(ctx)
    suite = generate_suite(seed=0, n_per_family=ctx.sizes.find_per_family, categories=tuple(fams),
                           families={c: f for c, f in fams.items() if f is not None})
    out = ctx.out / "find"
    out.mkdir(parents=True, exist_ok=True)
    suite.save(out / "suite.jsonl")
    ctx.say(f"FIND: {len(suite)} functions with the offline interpreter")
    result = run_suite(suite, get_interpreter("offline"), out=out / "results.json", resume=False, progress=ctx.progress,
                       suite_name="mechscope demo")
    truth = {f.id: f.description for f in suite}
    records = [{"id": r["id"], "category": r["category"], "family": r["family"], "difficulty": r["difficulty"],
                "score": r.get("score", 0.0), "queries": r.get("queries"), "seconds": round(r.get("seconds", 0.0), 3),
                "truth": truth.get(r["id"], ""), "interpretation": (r.get("interpretation") or {}).get("description", ""),
                "error": (r.get("error") or "").split("\n")[0] or None} for r in result["records"]]
    board = result["leaderboard"]
    scores = [r["score"] for r in records]
    return {"interpreter": result["interpreter"], "n_functions": len(records), "categories": suite.categories(),
            "mean_score": sum(scores) / len(scores), "errors": sum(r["error"] is not None for r in records),
            "leaderboard": board, "records": records, "files": {"suite": str(out / "suite.jsonl"), "results": str(out / "results.json")}}


def headline(f: dict) -> str:
    per = ", ".join(f"{cat} {row['score']:.3f}" for cat, row in f["leaderboard"].items())
    return f"{f['n_functions']} functions, mean score {f['mean_score']:.3f} ({per}); {f['errors']} interpreter errors"


def section(f: dict) -> Section:
    board = [{"category": cat, "functions": row["n"], "mean score": row["score"], "errors": row["errors"],
              "queries (mean)": row["queries_mean"], "seconds (mean)": row["seconds_mean"]} for cat, row in f["leaderboard"].items()]
    rows = [{k: r[k] for k in ("id", "family", "difficulty", "score", "queries", "truth", "interpretation")} | ({"error": r["error"]} if r["error"] else {})
            for r in f["records"]]
    text = (f"Interpreter {f['interpreter']!r} on {f['n_functions']} generated functions ({', '.join(f'{n} {c}' for c, n in f['categories'].items())}). "
            "Score in [0, 1] on held-out inputs: numeric functions exp(-nMSE / 0.1) with nMSE = MSE / var(f) of the "
            "interpretation's code (1: exact, 0.37 at 90% variance explained), string functions the exact-match rate, "
            "neurons the correlation of predicted and true activations (clipped at 0).")
    return Section(KEY, TITLE, text=text, tables=[("per category", board), ("per function", rows)])
