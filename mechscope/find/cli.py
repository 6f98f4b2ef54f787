"""``mechscope find …``: generate suites, run interpreters, score and list.

Every subverb is a thin shell over :mod:`mechscope.find`; heavy imports happen inside handlers.
"""

from __future__ import annotations

import argparse
import json
import sys

EPILOG_GENERATE = """examples:
  mechscope find generate --seed 0 --n-per-family 2 --out suite.jsonl
  mechscope find generate --seed 7 --categories numeric --families numeric:poly,sine,corrupted --out num.jsonl --json
"""
EPILOG_RUN = """examples:
  mechscope find run --suite suite.jsonl --interpreter offline --out results.json
  mechscope find run --suite gen:1:2 --interpreter offline --category string --json
  MECHSCOPE_LLM_BASE_URL=http://127.0.0.1:8000/v1 MECHSCOPE_LLM_MODEL=qwen \\
      mechscope find run --suite suite.jsonl --interpreter llm --transcripts runs/transcripts --judge
  mechscope find run --suite suite.jsonl --interpreter mypkg.interp:MyInterpreter
The suite is a JSONL path, or gen:SEED[:N_PER_FAMILY] to generate one in memory.
"""
EPILOG_SCORE = """examples:
  mechscope find score --results results.json
  mechscope find score --results results.json --suite suite.jsonl --judge --json
"""
EPILOG_LIST = """examples:
  mechscope find list                      # families and interpreters
  mechscope find list --suite suite.jsonl  # the functions of a suite
"""


def register(subparsers) -> None:
    p = subparsers.add_parser("find", help="function-interpretation benchmark (FIND-style)",
                              description="Function-interpretation benchmark: suites of black-box functions, "
                                          "interpreters that query them, and scorers.")
    sub = p.add_subparsers(dest="find_cmd", metavar="<subverb>")
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])

    g = sub.add_parser("generate", help="generate a suite (JSONL)", epilog=EPILOG_GENERATE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--n-per-family", type=int, default=2)
    g.add_argument("--categories", default="numeric,string,neuron", help="comma-separated subset of numeric,string,neuron")
    g.add_argument("--families", action="append", default=[], metavar="CATEGORY:F1,F2",
                   help="restrict a category to some families (repeatable)")
    g.add_argument("--out", required=True, help="suite JSONL to write")
    g.add_argument("--json", action="store_true", help="print a JSON summary")
    g.set_defaults(func=_generate)

    r = sub.add_parser("run", help="run an interpreter over a suite and print a leaderboard", epilog=EPILOG_RUN,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    r.add_argument("--suite", required=True, help="suite JSONL path or gen:SEED[:N]")
    r.add_argument("--interpreter", default="offline", help="offline | symbolic | string | neuron | llm | module:Attr")
    r.add_argument("--out", default=None, help="results JSON (rewritten after every function; resumed if present)")
    r.add_argument("--no-resume", action="store_true", help="start over even if --out exists")
    r.add_argument("--budget", type=int, default=None, help="query budget per function (default: per category)")
    r.add_argument("--category", default=None, help="only functions of this category")
    r.add_argument("--ids", default=None, help="comma-separated function ids")
    r.add_argument("--limit", type=int, default=None, help="at most this many functions")
    r.add_argument("--llm-config", default=None, help="JSON file with base_url, model, api_key, ... (else MECHSCOPE_LLM_* env)")
    r.add_argument("--transcripts", default=None, help="directory for LLM agent transcripts")
    r.add_argument("--no-warm-start", action="store_true", help="llm: start the agent with no results (default: f on a spread of inputs)")
    r.add_argument("--check-rounds", type=int, default=2,
                   help="llm: times a final answer that disagrees with the queried outputs is sent back (0: never; default 2)")
    r.add_argument("--judge", action="store_true", help="score descriptions with the configured LLM")
    r.add_argument("--json", action="store_true", help="print the leaderboard as JSON")
    r.set_defaults(func=_run)

    s = sub.add_parser("score", help="summarise (and optionally LLM-judge) a results file", epilog=EPILOG_SCORE,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("--results", required=True)
    s.add_argument("--suite", default=None, help="the suite the results came from (needed for --judge)")
    s.add_argument("--judge", action="store_true", help="(re)score descriptions with the configured LLM")
    s.add_argument("--llm-config", default=None)
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_score)

    ls = sub.add_parser("list", help="list families and interpreters, or a suite's functions", epilog=EPILOG_LIST,
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ls.add_argument("--suite", default=None)
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=_list)


def _load(spec: str):
    from mechscope.errors import ConfigError
    from mechscope.find.suite import generate_suite, load_suite

    if spec.startswith("gen:"):
        parts = spec.split(":")[1:]
        try:
            seed = int(parts[0])
            n = int(parts[1]) if len(parts) > 1 else 2
        except (ValueError, IndexError):
            raise ConfigError(f"--suite gen:SEED[:N] expects integers, found {spec!r}") from None
        return generate_suite(seed, n)
    return load_suite(spec)


def _families(specs: list[str]) -> dict:
    from mechscope.errors import ConfigError

    out = {}
    for s in specs:
        cat, sep, fams = s.partition(":")
        if not sep or not fams:
            raise ConfigError(f"--families expects CATEGORY:F1,F2, found {s!r}")
        out[cat] = fams.split(",")
    return out


def _generate(args) -> int:
    from mechscope.cli import emit
    from mechscope.find.suite import generate_suite, save_suite

    suite = generate_suite(args.seed, args.n_per_family, tuple(c for c in args.categories.split(",") if c),
                           _families(args.families))
    save_suite(suite, args.out)
    emit({"out": args.out, "functions": len(suite), "categories": suite.categories(), "seed": args.seed}, args.json)
    return 0


def _llm_config(path):
    from mechscope.find.llm import LLMConfig

    return LLMConfig.from_file(path) if path else LLMConfig.from_env()


def _run(args) -> int:
    from mechscope.errors import ConfigError
    from mechscope.find.interpreters import get_interpreter
    from mechscope.find.llm import LLMJudge
    from mechscope.find.runner import run_suite

    kw = {}
    if args.interpreter == "llm":
        if args.check_rounds < 0:
            raise ConfigError(f"--check-rounds must be >= 0; found {args.check_rounds}")
        kw = {"config": _llm_config(args.llm_config), "transcript_dir": args.transcripts, "warm_start": not args.no_warm_start,
              "check_rounds": args.check_rounds}
    interp = get_interpreter(args.interpreter, **kw)
    judge = LLMJudge(_llm_config(args.llm_config)) if args.judge else None
    suite = _load(args.suite).select(args.category, args.ids.split(",") if args.ids else None, args.limit)
    res = run_suite(suite, interp, out=args.out, budget=args.budget, judge=judge, resume=not args.no_resume,
                    progress=not args.json and sys.stderr.isatty(), suite_name=args.suite)
    _print_board(res, args.json)
    return 0


def _score(args) -> int:
    from mechscope.errors import ConfigError
    from mechscope.files import read_json, write_json
    from mechscope.find.llm import LLMJudge
    from mechscope.find.runner import RESULTS_FORMAT, leaderboard

    res = read_json(args.results)
    if not isinstance(res, dict) or res.get("format") != RESULTS_FORMAT:
        from mechscope.errors import FormatError

        raise FormatError(f"{args.results}: expected a {RESULTS_FORMAT} file, found something else")
    if args.judge:
        if not args.suite:
            raise ConfigError("--judge needs --suite (the reference descriptions live in the suite)")
        judge = LLMJudge(_llm_config(args.llm_config))
        by_id = {f.id: f for f in _load(args.suite)}
        for rec in res["records"]:
            f = by_id.get(rec["id"])
            if f is not None and f.description:
                rec["description_judge"] = judge.score(f.description, rec["interpretation"]["description"])
    res["leaderboard"] = leaderboard(res["records"])
    if args.judge:
        write_json(args.results, res)
    _print_board(res, args.json)
    return 0


def _print_board(res: dict, as_json: bool) -> None:
    board = res["leaderboard"]
    if as_json:
        print(json.dumps({"interpreter": res["interpreter"], "suite": res.get("suite"), "leaderboard": board}, indent=2))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"find leaderboard — {res['interpreter']} on {res.get('suite') or 'suite'}")
    for col in ("category", "n", "score", "metric", "queries", "s/fn", "errors"):
        t.add_column(col, justify="left" if col in ("category", "metric") else "right")
    for cat, row in board.items():
        if cat == "numeric":
            c = row["corrupted"]
            metric = (f"nMSE_ss med {row['nmse_ss'].get('median', float('nan')):.2g} · nMSE_var med "
                      f"{row['nmse_var'].get('median', float('nan')):.2g} · IoU {c['iou_mean'] if c['iou_mean'] is None else round(c['iou_mean'], 3)} (n={c['n']})")
        elif cat == "string":
            metric = f"exact {row['exact_mean']:.3f}"
        else:
            metric = f"corr {row['corr_mean']:.3f}"
        if "description_keyword_mean" in row:
            metric += f" · desc kw {row['description_keyword_mean']:.2f}"
        if "description_judge_mean" in row:
            metric += f" · desc judge {row['description_judge_mean']:.2f}"
        t.add_row(cat, str(row["n"]), f"{row['score']:.3f}", metric, f"{row['queries_mean']:.0f}",
                  f"{row['seconds_mean']:.2f}", str(row["errors"]))
    Console().print(t)


def _list(args) -> int:
    from mechscope.cli import emit
    from mechscope.find.generators import NEURON_FAMILIES, NUMERIC_FAMILIES, STRING_FAMILIES
    from mechscope.find.interpreters import BUILTIN

    if args.suite:
        suite = _load(args.suite)
        rows = [{"id": f.id, "category": f.category, "family": f.family, "difficulty": f.difficulty,
                 "description": f.description[:100]} for f in suite]
        if args.json:
            print(json.dumps({"suite": args.suite, "functions": rows, "categories": suite.categories()}, indent=2))
        else:
            from rich.console import Console
            from rich.table import Table

            t = Table(title=f"{args.suite}: {len(rows)} functions")
            for col in ("id", "category", "family", "difficulty", "description"):
                t.add_column(col)
            for r in rows:
                t.add_row(*(str(r[c]) for c in ("id", "category", "family", "difficulty", "description")))
            Console().print(t)
        return 0
    emit({"families": {"numeric": NUMERIC_FAMILIES, "string": STRING_FAMILIES, "neuron": NEURON_FAMILIES},
          "interpreters": list(BUILTIN) + ["module:Attribute"]}, args.json)
    return 0
