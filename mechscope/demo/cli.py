"""CLI: ``mechscope demo [--quick] [--out DIR] [--json] [--threads N]``."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  mechscope demo                       # the full run (a few minutes on 2 CPU cores) into runs/demo
  mechscope demo --quick --out /tmp/d  # the CI-sized run (about a minute)
  mechscope demo --quick --json        # the summary as JSON on stdout

Runs on zoo organism greater-than-2l and the embedded corpus, nothing downloaded: activation cache,
attention-output SAE + MLP transcoder (trained and evaluated), head attribution, circuit methods
scored against the organism's verified circuit, the linear interpreter, a FIND-style benchmark.
Writes summary.json, report.html (one self-contained file) and every artifact under --out, and
prints the `mechscope serve` command that opens the explorer on them. Exits 1 if any stage failed."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the workbench end to end on the embedded default", epilog=EXAMPLES,
                       description="The main job: every capability of mechscope on a zoo organism, one HTML report.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smaller sizes (for CI)")
    p.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON (and no progress bars)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: the demo's models are tiny, so more threads only add overhead, "
                        "and on a busy machine they make it several times slower)")
    p.set_defaults(func=_run)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _run(args) -> int:
    from mechscope.demo import run_demo

    import torch

    from mechscope.errors import ConfigError

    if args.threads < 1:
        raise ConfigError(f"--threads must be a positive integer; found {args.threads}")
    torch.set_num_threads(args.threads)
    summary = run_demo(args.out, quick=args.quick, progress=not args.json, say=_say)
    if args.json:
        from mechscope.cli import emit

        emit(summary, True)
    else:
        from rich.console import Console

        from mechscope.demo.report import circuits_table, summary_table

        console = Console()
        console.print(summary_table(summary))
        table = circuits_table(summary)
        if table is not None:
            console.print(table)
        console.print(f"report:  {summary['report']}\nsummary: {summary['summary']}")
        if summary["explorer_command"]:
            console.print(f"explorer: {summary['explorer_command']}", soft_wrap=True, markup=False, highlight=False)
    if not summary["ok"]:
        _say(f"mechscope demo: {len(summary['failed'])} stage(s) failed: {', '.join(summary['failed'])}; "
             f"see {summary['report']} (errors and tracebacks are in {summary['summary']})")
        return 1
    return 0
