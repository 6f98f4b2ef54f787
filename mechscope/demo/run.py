"""``run_demo``: every stage in order, each timed, its facts (or its error) recorded; then
``summary.json`` and one self-contained ``report.html`` built from those facts.

A failing stage does not stop the others that do not need it; its error and traceback go into
the summary and its report section, and ``summary["ok"]`` is False (the CLI then exits non-zero).
"""

from __future__ import annotations

import time
import traceback
from pathlib import Path
from typing import Callable

from mechscope.demo.context import DemoContext, require_organism
from mechscope.demo.sizes import FULL, ORGANISM, QUICK
from mechscope.files import ensure_dir, write_json
from mechscope.report import Section


def run_stage(stage, ctx: DemoContext) -> tuple[dict, Section]:
    """One stage's record (``ok``, ``seconds``, ``headline``, ``facts`` — or ``error`` and
    ``traceback``) and its report section. Building the section and the headline counts as part
    of the stage: a failure there is the stage's failure."""
    t = time.perf_counter()
    try:
        facts = stage.run(ctx)
        seconds = round(time.perf_counter() - t, 2)
        section = stage.section(facts)
        return {"ok": True, "seconds": seconds, "headline": stage.headline(facts), "facts": facts}, section
    except Exception as e:  # recorded in the summary and the report, and the run exits non-zero
        error, tb = f"{type(e).__name__}: {e}", traceback.format_exc(limit=8)
        record = {"ok": False, "seconds": round(time.perf_counter() - t, 2), "error": error, "traceback": tb}
        return record, Section(stage.KEY, stage.TITLE, text=tb, error=error)


def run_demo(out_dir: str | Path = "runs/demo", quick: bool = False, progress: bool = True,
             say: Callable[[str], None] | None = None) -> dict:
    """Run every stage on zoo organism ``greater-than-2l`` and the embedded corpus; write
    ``summary.json`` and ``report.html`` under ``out_dir``; return the summary.

    Raises :class:`~mechscope.errors.ModelSpecError` before doing anything when the organism is
    not installed (the message says how to train it).
    """
    from mechscope.demo.report import build_report
    from mechscope.demo.stages import STAGES

    require_organism(ORGANISM)
    out = Path(out_dir)
    ensure_dir(out)
    sizes = QUICK if quick else FULL
    ctx = DemoContext(out=out, sizes=sizes, progress=progress, say=say or (lambda msg: None))
    t0 = time.perf_counter()
    stages, sections = {}, []
    for stage in STAGES:
        ctx.say(f"[{stage.KEY}] {stage.TITLE}")
        stages[stage.KEY], section = run_stage(stage, ctx)
        sections.append(section)
        if not stages[stage.KEY]["ok"]:
            ctx.say(f"[{stage.KEY}] FAILED: {stages[stage.KEY]['error']}")
    summary = {"format": "mechscope.demo.summary", "version": 1, "organism": f"zoo:{ORGANISM}", "quick": quick,
               "sizes": sizes.to_dict(), "out": str(out), "ok": all(s["ok"] for s in stages.values()),
               "failed": [k for k, s in stages.items() if not s["ok"]], "seconds": round(time.perf_counter() - t0, 2),
               "stages": stages, "report": str(out / "report.html"), "summary": str(out / "summary.json")}
    summary["explorer_command"] = stages.get("explorer", {}).get("facts", {}).get("command")
    build_report(summary, sections).write(out / "report.html")
    write_json(out / "summary.json", summary)
    return summary
