"""Run an interpreter over a suite, score it, and keep a resumable results file.

:func:`run_suite` evaluates every function (a fresh :class:`BlackBoxHandle` each), scores the
interpretation (:mod:`.scoring`), and rewrites the results JSON atomically after every
function, so an interrupted run resumes where it stopped. :func:`leaderboard` summarises
records per category (and per difficulty). :func:`evaluate` does the same for any callable.
"""

from __future__ import annotations

import math
import os
import time
import traceback
from pathlib import Path
from typing import Any, Callable

import numpy as np

from mechscope.errors import ConfigError, FormatError
from mechscope.files import read_json, write_json
from mechscope.find.functions import Function
from mechscope.find.llm import LLMError
from mechscope.find.protocol import DEFAULT_BUDGETS, BlackBoxHandle, Interpretation
from mechscope.find.scoring import score_interpretation
from mechscope.find.suite import Suite

RESULTS_FORMAT = "mechscope.find.results"


def make_handle(function: Function, budget: int | None = None, truth: Callable | None = None) -> BlackBoxHandle:
    """A handle on ``function`` (its compiled code, or ``truth``) with the category's default budget."""
    return BlackBoxHandle(truth or function.compile(), function.category, function.domain,
                          budget or DEFAULT_BUDGETS[function.category], noise=function.noise, seed=function.seed,
                          label=function.id)


def evaluate_function(function: Function, interpreter, budget: int | None = None, judge=None,
                      truth: Callable | None = None) -> dict:
    """Interpret and score one function; returns a flat record.

    An exception inside the interpreter is recorded (``error`` with the traceback, score 0)
    rather than stopping a whole benchmark run; configuration and endpoint errors propagate.
    """
    handle = make_handle(function, budget, truth)
    t0 = time.time()
    rec: dict[str, Any] = {"id": function.id, "category": function.category, "family": function.family,
                           "difficulty": function.difficulty, "interpreter": getattr(interpreter, "name", type(interpreter).__name__)}
    try:
        interp = interpreter.interpret(handle)
        if not isinstance(interp, Interpretation):
            raise FormatError(f"interpreter returned {type(interp).__name__}, expected an Interpretation")
        rec["error"] = None
    except (ConfigError, LLMError):
        raise  # a broken setup (bad config, unreachable endpoint) would fail every function: stop now
    except Exception as e:  # recorded with its traceback: one failing function must not end the run
        interp = Interpretation("", "", None)
        rec["error"] = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=3)}"
    rec["seconds"] = time.time() - t0
    rec["queries"] = handle.used
    try:
        scores = score_interpretation(function, interp, handle, judge=judge, truth=truth)
    except FormatError as e:
        scores = {"score": 0.0, "score_error": str(e)}
    rec.update(scores)
    rec["interpretation"] = interp.to_dict()
    return rec


def _stats(vals: list[float]) -> dict:
    v = np.array([x for x in vals if x is not None and math.isfinite(x)], float)
    if not len(v):
        return {}
    return {"mean": float(v.mean()), "median": float(np.median(v))}


def leaderboard(records: list[dict]) -> dict:
    """Per-category summary: mean score, and the metrics behind it (see :mod:`.scoring`)."""
    out: dict[str, Any] = {}
    for cat in sorted({r["category"] for r in records}):
        rs = [r for r in records if r["category"] == cat]
        row: dict[str, Any] = {"n": len(rs), "score": float(np.mean([r.get("score", 0.0) for r in rs])),
                               "errors": sum(bool(r.get("error")) for r in rs),
                               "queries_mean": float(np.mean([r.get("queries", 0) for r in rs])),
                               "seconds_mean": float(np.mean([r.get("seconds", 0.0) for r in rs]))}
        if cat == "numeric":
            row["nmse_ss"] = _stats([r.get("nmse_ss") for r in rs])
            row["nmse_var"] = _stats([r.get("nmse_var") for r in rs])
            ious = [r["iou"] for r in rs if r.get("iou") is not None]
            row["corrupted"] = {"n": len(ious), "iou_mean": float(np.mean(ious)) if ious else None,
                                "false_positives": sum(bool(r.get("false_corruption")) for r in rs)}
        elif cat == "string":
            row["exact_mean"] = float(np.mean([r.get("exact", 0.0) for r in rs]))
        else:
            row["corr_mean"] = float(np.mean([r.get("corr", 0.0) for r in rs]))
        for key in ("description_keyword", "description_judge"):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                row[f"{key}_mean"] = float(np.mean(vals))
        row["by_difficulty"] = {d: {"n": sum(r["difficulty"] == d for r in rs),
                                    "score": float(np.mean([r.get("score", 0.0) for r in rs if r["difficulty"] == d]))}
                                for d in sorted({r["difficulty"] for r in rs})}
        out[cat] = row
    return out


def run_suite(suite: Suite, interpreter, out: str | os.PathLike | None = None, budget: int | None = None, judge=None,
              resume: bool = True, progress: bool = False, suite_name: str = "") -> dict:
    """Evaluate ``interpreter`` on every function of ``suite``; returns the results object.

    With ``out``, the results JSON is rewritten atomically after each function; with
    ``resume`` an existing file for the same interpreter is continued (its done ids skipped).
    """
    name = getattr(interpreter, "name", type(interpreter).__name__)
    records: list[dict] = []
    if out is not None and resume and Path(out).exists():
        prev = read_json(out)
        if not isinstance(prev, dict) or prev.get("format") != RESULTS_FORMAT:
            raise FormatError(f"{out}: expected a {RESULTS_FORMAT} file to resume, found something else")
        if prev.get("interpreter") != name:
            raise ConfigError(f"{out}: holds results of interpreter {prev.get('interpreter')!r}, not {name!r}; "
                              "choose another --out or disable resuming")
        ids = {f.id for f in suite}
        records = [r for r in prev.get("records", []) if r["id"] in ids]
    done = {r["id"] for r in records}
    todo = [f for f in suite if f.id not in done]

    def result() -> dict:
        return {"format": RESULTS_FORMAT, "version": 1, "suite": suite_name, "suite_meta": suite.meta,
                "interpreter": name, "budget": budget, "leaderboard": leaderboard(records) if records else {},
                "records": records}

    bar = task = None
    if progress and todo:
        from rich.progress import Progress

        bar = Progress(transient=True)
        bar.start()
        task = bar.add_task(f"find run ({name})", total=len(todo))
    try:
        for f in todo:
            records.append(evaluate_function(f, interpreter, budget, judge))
            if out is not None:
                write_json(out, result())
            if bar is not None:
                bar.update(task, advance=1, description=f"{f.id} score={records[-1].get('score', 0):.2f}")
    finally:
        if bar is not None:
            bar.stop()
    res = result()
    if out is not None:
        write_json(out, res)
    return res


def evaluate(fn: Callable, interpreter, category: str = "numeric", domain: Any = None, budget: int | None = None,
             noise: float = 0.0, description: str = "", corrupted_interval: tuple[float, float] | None = None,
             seed: int = 0, judge=None) -> dict:
    """Interpret any Python callable with any interpreter and score the result against the callable.

    ``domain`` is ``(lo, hi)`` for numeric functions or a string-input distribution name.
    Returns the same record as :func:`evaluate_function`.
    """
    if not callable(fn):
        raise ConfigError(f"evaluate expects a callable function, found {type(fn).__name__}")
    if not hasattr(interpreter, "interpret"):
        raise ConfigError(f"evaluate expects an interpreter with interpret(handle), found {type(interpreter).__name__}")
    f = Function(id=getattr(fn, "__name__", "callable"), category=category, code="", description=description,
                 seed=seed, domain=domain, corrupted_interval=corrupted_interval, noise=noise)
    return evaluate_function(f, interpreter, budget, judge, truth=fn)
