"""CLI: ``mechscope zoo list | show NAME | train NAME | verify NAME``."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  mechscope zoo list                          # shipped organisms, their tasks, circuits and held-out accuracy
  mechscope zoo show ioi-2l                   # the model card (markdown)
  mechscope zoo show ioi-2l --json            # the card as JSON: .circuit.nodes, .metrics.heldout, ...
  mechscope zoo train docstring-2l --out runs/docstring-2l   # re-create an organism from its seed (+ its card)
  mechscope zoo train greater-than-2l         # overwrite the shipped organism in place
  mechscope zoo verify greater-than-2l --json # re-measure metrics, ablations, search and edges; compare with the card"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("zoo", help="model organisms with verified circuits", epilog=EXAMPLES,
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Small transformers trained in-project, shipped with model cards whose circuits were "
                                   "measured by exhaustive mean-ablation search and path patching.")
    zs = p.add_subparsers(dest="zoo_action", metavar="<action>")
    a = zs.add_parser("list", help="list organisms", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_list)
    a = zs.add_parser("show", help="show an organism's card", epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("name")
    a.add_argument("--json", action="store_true", help="the whole card as JSON (with .circuit.nodes and .metrics)")
    a.set_defaults(func=_show)
    a = zs.add_parser("train", help="(re)train an organism from its recipe and write its card", epilog=EXAMPLES,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("name")
    a.add_argument("--out", default=None, help="output directory (default: the shipped location, mechscope/zoo/organisms/NAME)")
    a.add_argument("--seed", type=int, default=None, help="override the recipe's seed")
    a.add_argument("--steps", type=int, default=None, help="override the recipe's number of steps")
    a.add_argument("--no-card", action="store_true", help="skip measuring the card (weights only)")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_train)
    a = zs.add_parser("verify", help="re-measure an organism and compare with its card", epilog=EXAMPLES,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("name")
    a.add_argument("--tolerance", type=float, default=0.02)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_verify)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _list(args) -> int:
    from mechscope.cli import emit
    from mechscope.zoo.cards import load_card
    from mechscope.zoo.registry import organism_names
    from mechscope.zoo.specs import SPECS

    rows = []
    for name in dict.fromkeys([*organism_names(), *SPECS]):
        shipped = name in organism_names()
        row = {"name": name, "shipped": shipped}
        if name in SPECS:
            s = SPECS[name]
            row.update(task=s.task, variant=s.variant, layers=s.n_layers, heads=s.n_heads, mlps=not s.attn_only)
        if shipped:
            try:
                card = load_card(name)
                row.update(circuit=card["circuit"]["nodes"], faithfulness=card["circuit"]["faithfulness"],
                           heldout_accuracy=card["metrics"]["heldout"]["accuracy"], metric=card["task"]["metric"],
                           heldout_metric=card["metrics"]["heldout"][card["task"]["metric"]])
            except Exception as e:  # a card that cannot be read is reported, not hidden
                row["card_error"] = f"{type(e).__name__}: {e}"
        rows.append(row)
    if args.json:
        emit(rows, True)
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table(title="mechscope zoo")
    for col in ("name", "task", "layers x heads", "circuit", "faithfulness", "held-out acc", "shipped"):
        table.add_column(col)
    for r in rows:
        table.add_row(r["name"], f"{r.get('task', '?')}/{r.get('variant', '?')}", f"{r.get('layers', '?')}x{r.get('heads', '?')}"
                      + (" +MLP" if r.get("mlps") else ""), ", ".join(r.get("circuit", [])) or r.get("card_error", "-"),
                      str(r.get("faithfulness", "-")), str(r.get("heldout_accuracy", "-")), "yes" if r["shipped"] else "no")
    Console().print(table)
    return 0


def _show(args) -> int:
    from mechscope.cli import emit
    from mechscope.zoo.cards import load_card, render_markdown

    card = load_card(args.name)
    if args.json:
        emit(card, True)
    else:
        print(render_markdown(card))
    return 0


def _train(args) -> int:
    from pathlib import Path

    from mechscope.cli import emit
    from mechscope.zoo.registry import SHIPPED
    from mechscope.zoo.specs import get_spec
    from mechscope.errors import ConfigError
    from mechscope.zoo.workflow import make_organism

    spec = get_spec(args.name)
    if args.steps is not None and args.steps < 1:
        raise ConfigError(f"--steps must be a positive integer (the recipe has {spec.steps}); found {args.steps}")
    out = Path(args.out) if args.out else SHIPPED / spec.name
    result = make_organism(spec, out, seed=args.seed, steps=args.steps, card=not args.no_card, progress=not args.json)
    emit(result, args.json)
    return 0


def _verify(args) -> int:
    from mechscope.cli import emit
    from mechscope.errors import ConfigError
    from mechscope.zoo.cards import verify_organism

    if not args.tolerance >= 0:
        raise ConfigError(f"--tolerance must be >= 0 (a relative difference, e.g. 0.02); found {args.tolerance}")
    progress = None if args.json else (lambda msg: print(f"[verify {args.name}] {msg}", flush=True))
    result = verify_organism(args.name, tolerance=args.tolerance, progress=progress)
    if args.json:
        emit(result, True)
    else:
        emit({k: v for k, v in result.items() if k != "checks"}, False)
    return 0 if result["ok"] else 1
