"""CLI: ``mechscope linear demo | analyze | bench`` — thin shells over :mod:`mechscope.linear`."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  mechscope linear demo digits --out runs/lin-digits          # train (cached) + linearize + figures
  mechscope linear demo superres --out runs/lin-sr --k 6 --json
  mechscope linear demo denoise --out runs/lin-dn --steps 200 --seed 1
  mechscope linear demo transformer --out runs/lin-tl          # a random tiny HookedTransformer
  mechscope linear demo transformer --task ioi --variant code --out runs/lin-ioi
  mechscope linear demo transformer --model ioi-2l --out runs/lin-ioi2  # a zoo organism, its own task
  mechscope linear analyze runs/lin-digits/map --out runs/lin-digits/again --k 4
  mechscope linear bench --quick --json                        # time vs torch.func.jacrev

Each run writes summary.json, PNG figures (pixel votes, columns, rows, singular vectors, bias
share, token attributions) and the map itself (map/: cfg.json + map.safetensors)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("linear", help="linear interpreter: freeze a network at x0 into y = A x + c",
                       description="Freeze every non-linearity of a network at one input and study the exact "
                                   "affine map y = A x + c (rows, columns, SVD, bias share).",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="linear_verb", metavar="<demo|analyze|bench>")

    d = verbs.add_parser("demo", help="train/load a demo model, linearize it at a held-out input, write figures",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("name", choices=["digits", "superres", "denoise", "transformer"])
    d.add_argument("--out", required=True, help="output directory (summary.json, *.png, map/)")
    d.add_argument("--steps", type=int, default=None, help="training steps (image demos; default 400)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--index", type=int, default=0, help="which held-out example / task prompt to linearize at")
    d.add_argument("--k", type=int, default=None, help="singular triplets to compute (default 8; 1 for transformer)")
    d.add_argument("--cache-dir", default=None, help="where trained demo weights are cached "
                                                     "(default $MECHSCOPE_CACHE/linear or ~/.cache/mechscope/linear)")
    d.add_argument("--model", default="tiny-random", help="transformer: 'tiny-random' or a mechscope model spec "
                                                          "(zoo name, model directory)")
    d.add_argument("--task", default=None, help="transformer: a task name (ioi, induction, ...) for prompt and answers "
                                                "(a zoo organism defaults to its own task)")
    d.add_argument("--variant", default=None, help="transformer: the task's variant (e.g. 'code' for ioi)")
    d.add_argument("--no-map", action="store_true", help="do not save the map")
    d.add_argument("--json", action="store_true", help="print the summary as JSON")
    d.set_defaults(func=_demo)

    a = verbs.add_parser("analyze", help="analyse a saved map (SVD, bias share, figures)",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("map_dir", help="a directory written by AffineMap.save (or a demo's map/)")
    a.add_argument("--out", required=True)
    a.add_argument("--k", type=int, default=8)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_analyze)

    b = verbs.add_parser("bench", help="time the full map vs torch.func.jacrev and the matrix-free SVD vs a dense SVD",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("--quick", action="store_true", help="random-init models, one run per timing")
    b.add_argument("--repeat", type=int, default=None)
    b.add_argument("--k", type=int, default=8)
    b.add_argument("--threads", type=int, default=2)
    b.add_argument("--cases", nargs="*", default=None, help="only these cases (digits, superres, denoise, "
                                                             "transformer_logit_diff, transformer_logits)")
    b.add_argument("--out", default=None, help="also write the JSON here")
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=_bench)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _short(summary: dict) -> dict:
    keep = ("demo", "in_shape", "out_shape", "exactness", "exact_vs_model", "adjoint_error", "bias_share", "svd",
            "model_metrics", "label", "prediction", "logit_diff", "figures", "map_dir")
    return {k: summary[k] for k in keep if k in summary}


def _demo(args) -> int:
    from mechscope.cli import emit
    from mechscope.linear import report

    if args.name == "transformer":
        summary = report.run_transformer_demo(args.out, model_spec=args.model, task=args.task, variant=args.variant,
                                              prompt_index=args.index, seed=args.seed, k=args.k or 1,
                                              save_map=not args.no_map)
    else:
        from rich.progress import Progress

        with Progress(transient=True, console=_err_console()) as progress:
            task = None

            def on_step(step, steps, loss):
                nonlocal task
                if task is None:
                    task = progress.add_task(f"training {args.name}", total=steps)
                progress.update(task, completed=step + 1, description=f"training {args.name} (loss {loss:.4f})")

            summary = report.run_image_demo(args.name, args.out, steps=args.steps, seed=args.seed, index=args.index,
                                            k=args.k or 8, cache_dir=args.cache_dir, save_map=not args.no_map,
                                            on_step=on_step)
    emit(summary if args.json else _short(summary), args.json)
    return 0


def _analyze(args) -> int:
    from mechscope.cli import emit
    from mechscope.linear import report
    from mechscope.linear.affine_map import AffineMap

    amap = AffineMap.load(args.map_dir)
    summary = report.analyze_map(amap, args.out, k=args.k, save_map=False)
    emit(summary if args.json else _short(summary), args.json)
    return 0


def _bench(args) -> int:
    import json

    from mechscope.cli import emit
    from mechscope.files import write_json
    from mechscope.linear.bench import run_benchmark

    repeat = args.repeat or (1 if args.quick else 3)
    with _err_console().status("benchmarking the linear interpreter…"):
        result = run_benchmark(quick=args.quick, repeat=repeat, k=args.k, threads=args.threads, cases=args.cases)
    if args.out:
        write_json(args.out, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        emit(result["summary"] | {"cases": [{k: r[k] for k in ("case", "speedup_vs_jacrev", "rel_diff_vs_jacrev",
                                                                   "matrix_free_svd_s", "max_rel_singular_value_diff")}
                                              for r in result["cases"]]}, False)
    return 0


def _err_console():
    from rich.console import Console

    return Console(file=sys.stderr)
