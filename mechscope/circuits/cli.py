"""CLI: ``mechscope circuit find | compare | score | robustness``."""

from __future__ import annotations

import argparse
import json

EXAMPLES = """examples:
  mechscope circuit find --model zoo:ioi-2l --method discrete_codes --out ioi.circuit.json
  mechscope circuit find --model zoo:docstring-2l --task docstring --method eap --json
  mechscope circuit find --model zoo:ioi-2l --method acdc --param n_thresholds=12 --param metric=kl
  mechscope circuit find --model gpt2-small --task ioi --method eap_ig    # needs the GPT-2 weights locally
  mechscope circuit compare                                # every method x every zoo organism -> table
  mechscope circuit compare --methods discrete_codes eap acdc --json --out compare.json
  mechscope circuit compare --methods discrete_codes --param discrete_codes.normalize=unit
  mechscope circuit compare --models gpt2-small attn-only-4l   # the paper's setting, published ground truths
  mechscope circuit score ioi.circuit.json --ground-truth zoo:ioi-2l
  mechscope circuit robustness --model zoo:ioi-2l --json   # discrete-code AUC under each parameter change"""


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("circuit", help="find circuits (discrete SAE codes, ablation, patching, EAP, EAP-IG, ACDC) and score them",
                       description="Circuit discovery and scoring against ground truths (zoo model cards, published circuits).",
                       epilog=EXAMPLES, formatter_class=fmt)
    cs = p.add_subparsers(dest="circuit_action", metavar="<action>")

    a = cs.add_parser("find", help="run one method on one model and task", epilog=EXAMPLES, formatter_class=fmt)
    a.add_argument("--model", required=True, help="zoo:NAME, a model directory, or a TransformerLens name")
    a.add_argument("--task", default=None, help="task name (default: a zoo organism's own task; for gpt2-small / attn-only-4l, "
                                               "their first published one)")
    a.add_argument("--method", required=True, help="discrete_codes, ablation_zero, ablation_mean, ablation_resample, patching, eap, eap_ig, acdc")
    a.add_argument("--variant", default=None, help="task variant (default: the organism's, else the task's default)")
    a.add_argument("--n", type=int, default=64, help="number of prompts (default 64)")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--split", default="heldout", choices=["train", "heldout"])
    a.add_argument("--param", action="append", default=[], metavar="KEY=VALUE", help="method parameter (JSON value), repeatable")
    a.add_argument("--ground-truth", default=None, help="score against this ground truth (zoo:NAME, a shipped name, or a JSON file); "
                                                        "zoo organisms are scored against their own card, gpt2-small / attn-only-4l "
                                                        "against the published circuit of the task, by default")
    a.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's); 1 is fastest on a busy machine")
    a.add_argument("--out", default=None, help="write the circuit as JSON here")
    a.add_argument("--json", action="store_true", help="print the result as JSON")
    a.set_defaults(func=_find)

    a = cs.add_parser("compare", help="every method on every zoo organism (and published settings) -> table", epilog=EXAMPLES, formatter_class=fmt)
    a.add_argument("--models", nargs="+", default=None, help="model specs (default: every shipped zoo organism)")
    a.add_argument("--methods", nargs="+", default=None, help="methods (default: all)")
    a.add_argument("--n", type=int, default=64)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE",
                   help="a parameter of one method (JSON value), repeatable: discrete_codes.normalize=unit, acdc.n_thresholds=12")
    a.add_argument("--threads", type=int, default=None)
    a.add_argument("--out", default=None, help="also write the JSON result here")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_compare)

    a = cs.add_parser("score", help="score a saved circuit against a ground truth", epilog=EXAMPLES, formatter_class=fmt)
    a.add_argument("file", help="a circuit JSON written by `circuit find --out`")
    a.add_argument("--ground-truth", required=True, help="zoo:NAME, a shipped name (ioi-gpt2-small, ...), or a JSON file")
    a.add_argument("--k", type=int, default=None, help="also report precision / recall at this many nodes")
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_score)

    a = cs.add_parser("robustness", help="discrete-code AUC under one-at-a-time parameter changes", epilog=EXAMPLES, formatter_class=fmt)
    a.add_argument("--model", required=True, help="zoo:NAME (or gpt2-small / attn-only-4l with local weights)")
    a.add_argument("--task", default=None)
    a.add_argument("--n", type=int, default=64)
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--threads", type=int, default=None)
    a.add_argument("--json", action="store_true")
    a.set_defaults(func=_robustness)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _threads(n: int | None) -> None:
    if n is not None:
        import torch

        from mechscope.errors import ConfigError

        if n < 1:
            raise ConfigError(f"--threads must be a positive integer; found {n}")

        torch.set_num_threads(n)


def _params(items: list[str]) -> dict:
    from mechscope.errors import ConfigError

    out = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--param expects KEY=VALUE, found {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def _method_params(items: list[str]) -> dict[str, dict]:
    """``["acdc.n_thresholds=12", ...]`` -> ``{"acdc": {"n_thresholds": 12}}``."""
    from mechscope.circuits.errors import UnknownMethodError
    from mechscope.circuits.methods import METHODS
    from mechscope.errors import ConfigError

    out: dict[str, dict] = {}
    for item in items:
        method, dot, rest = item.partition(".")
        if not dot or "=" not in rest:
            raise ConfigError(f"--param expects METHOD.KEY=VALUE (e.g. discrete_codes.normalize=unit), found {item!r}")
        if method not in METHODS:
            raise UnknownMethodError(method, list(METHODS))
        out.setdefault(method, {}).update(_params([rest]))
    from mechscope.circuits.methods import check_params

    for method, params in out.items():
        check_params(method, params)  # before the first model is loaded
    return out


def _ground_truth(spec: str):
    from pathlib import Path

    from mechscope.tasks import GroundTruth, load_ground_truth

    return GroundTruth.load(spec) if Path(spec).is_file() else load_ground_truth(spec)


def _summary(circuit, scores) -> dict:
    out = {"method": circuit.method, "model": circuit.model, "task": circuit.task, "runtime_s": round(circuit.runtime_s, 3),
           "selected_nodes": circuit.nodes, "n_selected_edges": len(circuit.edges),
           "top_nodes": [[n, round(circuit.node_scores[n], 6)] for n in circuit.ranked_nodes()[:10]]}
    if scores is not None:
        out["scores"] = scores
    return out


def _find(args) -> int:
    from mechscope.circuits.compare import load_task_and_truth, published_tasks
    from mechscope.circuits.graph import Graph
    from mechscope.circuits.methods import METHODS, find_circuit
    from mechscope.circuits.errors import UnknownMethodError
    from mechscope.circuits.scoring import score_circuit
    from mechscope.cli import emit
    from mechscope.models import load_model
    from mechscope.tasks import make_task

    if args.method not in METHODS:
        raise UnknownMethodError(args.method, list(METHODS))
    from mechscope.circuits.methods import check_params

    check_params(args.method, _params(args.param))  # before the model and task are built
    _threads(args.threads)
    truth = None
    known = published_tasks(args.model)
    published = bool(known) and (args.task is None or args.task.replace("-", "_") in known)
    if (args.model.startswith("zoo:") or published) and args.variant is None:  # other tasks on gpt2-small: no ground truth
        model, task, truth = load_task_and_truth(args.model, args.task, n=args.n, seed=args.seed, split=args.split)
    else:
        from mechscope.errors import ConfigError

        if args.task is None:
            raise ConfigError(f"--task is needed for {args.model!r} (only zoo organisms have a task of their own)")
        model = load_model(args.model, device="cpu")
        if model.tokenizer is None:
            raise ConfigError(f"model {args.model!r} has no tokenizer to build task {args.task!r} with")
        task = make_task(args.task, model.tokenizer, n=args.n, seed=args.seed, split=args.split, variant=args.variant)
    if args.ground_truth:
        truth = _ground_truth(args.ground_truth)
    circuit = find_circuit(model, task, args.method, **_params(args.param))
    circuit.metadata["task_spec"] = {"name": task.name, "variant": task.variant, "n": len(task), "seed": args.seed, "split": args.split}
    scores = score_circuit(circuit, truth, Graph.of(model, for_edges=False)) if truth is not None else None
    if args.out:
        circuit.save(args.out)
    result = _summary(circuit, scores)
    if args.out:
        result["out"] = args.out
    emit(result, args.json)
    return 0


def _compare(args) -> int:
    from mechscope.circuits.compare import compare, format_table

    _threads(args.threads)
    progress = None if args.json else (lambda msg: print(f"[circuit compare] {msg}", flush=True))
    result = compare(models=args.models, methods=args.methods, n=args.n, seed=args.seed, progress=progress,
                     params=_method_params(args.param))
    if args.out:
        from mechscope.files import write_json

        write_json(args.out, result)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_table(result))
    return 0


def _score(args) -> int:
    from mechscope.circuits.circuit import Circuit
    from mechscope.circuits.graph import Graph
    from mechscope.circuits.scoring import score_circuit
    from mechscope.cli import emit

    circuit = Circuit.load(args.file)
    scores = score_circuit(circuit, _ground_truth(args.ground_truth), Graph.of_circuit(circuit), k=args.k)
    emit({"file": args.file, "method": circuit.method, "model": circuit.model, **scores}, args.json)
    return 0


def _robustness(args) -> int:
    from mechscope.circuits.compare import load_task_and_truth
    from mechscope.circuits.discrete_codes import robustness
    from mechscope.cli import emit

    _threads(args.threads)
    model, task, truth = load_task_and_truth(args.model, args.task, n=args.n, seed=args.seed)
    emit(robustness(model, task, truth), args.json)
    return 0
