"""The demo's outputs for people: the HTML report (an overview section, then one section per
stage) and the rich summary table printed at the end. Both are built from the summary dict."""

from __future__ import annotations

from mechscope.report import Report, Section


def overview_rows(summary: dict) -> list[dict]:
    """One row per stage: status, seconds, and its headline (or its error)."""
    return [{"stage": key, "status": "ok" if s["ok"] else "FAILED", "seconds": s["seconds"],
             "result": s["headline"] if s["ok"] else s["error"]} for key, s in summary["stages"].items()]


def build_report(summary: dict, sections: list[Section]) -> Report:
    mode = "quick" if summary["quick"] else "full"
    status = "every stage succeeded" if summary["ok"] else f"FAILED stages: {', '.join(summary['failed'])}"
    report = Report(title="mechscope demo",
                    intro=f"The workbench end to end on {summary['organism']} and the embedded corpus ({mode} run, "
                          f"{summary['seconds']:.0f} s; {status}). Numbers come from summary.json next to this file.")
    text = ""
    if summary.get("explorer_command"):
        text = f"Open the explorer on these results:\n\n{summary['explorer_command']}"
    report.add(Section("overview", "Overview", text=text, tables=[("stages", overview_rows(summary))],
                       error=None if summary["ok"] else status))
    for section in sections:
        report.add(section)
    return report


def summary_table(summary: dict):
    """A :class:`rich.table.Table` of the stages (for the terminal)."""
    from rich.table import Table

    mode = "quick" if summary["quick"] else "full"
    table = Table(title=f"mechscope demo ({mode}, {summary['organism']}, {summary['seconds']:.0f} s)", show_lines=False)
    table.add_column("stage")
    table.add_column("status")
    table.add_column("s", justify="right")
    table.add_column("result", overflow="fold")
    for row in overview_rows(summary):
        style = "green" if row["status"] == "ok" else "bold red"
        table.add_row(row["stage"], f"[{style}]{row['status']}[/]", f"{row['seconds']:.1f}", row["result"])
    return table


SHORT = {"node AUC": "AUC", "edge AUC": "eAUC", "node P@gt": "P@gt", "node R@gt": "R@gt", "edge P@gt": "eP@gt",
         "edge R@gt": "eR@gt", "seconds": "s"}


def circuits_table(summary: dict):
    """The circuit scores as a :class:`rich.table.Table`, or None when the stage failed."""
    from rich import box
    from rich.table import Table

    from mechscope.demo.stages.circuits import table_rows

    stage = summary["stages"].get("circuits", {})
    if not stage.get("ok"):
        return None
    f = stage["facts"]
    table = Table(title=f"circuits vs the verified circuit ({f['task']}, {f['n_prompts']} prompts)",
                  caption="AUC, P/R@gt: node ROC AUC, precision / recall at the ground truth's size; eAUC, eP, eR: edges",
                  box=box.SIMPLE_HEAD)
    table.add_column("method", no_wrap=True)
    for label in SHORT.values():
        table.add_column(label, justify="right", no_wrap=True)
    for r in table_rows(f):
        cells = [r[k] for k in SHORT]
        table.add_row(r["method"], *("-" if v is None else f"{v:.3f}" if k != "seconds" else f"{v:.1f}" for k, v in zip(SHORT, cells)))
    return table
