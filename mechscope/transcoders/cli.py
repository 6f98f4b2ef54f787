"""CLI: ``mechscope transcoder train | attribute | paths | connections | faithfulness``."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  # one transcoder per MLP layer of the greater-than organism (corpus + task prompts, a few CPU minutes)
  mechscope transcoder train --model zoo:greater-than-2l --out runs/tc-gt --steps 3000
  # exact attribution of the logit difference of prompt 0 of the organism's task
  mechscope transcoder attribute --model zoo:greater-than-2l --transcoders runs/tc-gt --index 0
  # ... or of a feature's pre-activation, on your own text
  mechscope transcoder attribute --model zoo:greater-than-2l --transcoders runs/tc-gt --prompt "The war lasted from the year 1732 to the year 17" --target feature:1:42
  # beam search from the logit difference back to the embeddings; circuit scored against the card's circuit
  mechscope transcoder paths --model zoo:greater-than-2l --transcoders runs/tc-gt --n 16 --out gt.circuit.json --json
  # input-invariant connections of one feature
  mechscope transcoder connections --model zoo:greater-than-2l --transcoders runs/tc-gt --feature mlp1.f42
  # metric kept with the top-k path features vs top-k MLP neurons
  mechscope transcoder faithfulness --model zoo:greater-than-2l --transcoders runs/tc-gt --plot faith.png --json"""


def register(sub: argparse._SubParsersAction) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("transcoder", help="transcoder circuits: attribution, connections, path search, faithfulness",
                       epilog=EXAMPLES, formatter_class=fmt,
                       description="Transcoder circuits (Dunefsky et al. 2024): a transcoder on each MLP layer, exact attribution "
                                   "through frozen attention patterns and LayerNorm scales, input-invariant feature connections, "
                                   "greedy path search scored against a verified circuit, and faithfulness curves.")
    ts = p.add_subparsers(dest="transcoder_action", metavar="<action>")

    a = ts.add_parser("train", help="train a transcoder per MLP layer", epilog=EXAMPLES, formatter_class=fmt)
    _model_args(a, transcoders=False)
    a.add_argument("--out", required=True, help="output directory (one sub-directory per transcoder + training.json)")
    a.add_argument("--layers", type=int, nargs="+", default=None, help="MLP layers (default: all)")
    a.add_argument("--n-task", type=int, default=2048, help="train-split task prompts added to the rows (0: corpus only)")
    a.add_argument("--n-contexts", type=int, default=1024, help="corpus contexts (stdlib train split)")
    a.add_argument("--context-len", type=int, default=64)
    a.add_argument("--eval-contexts", type=int, default=128, help="held-out corpus contexts for the reported FVU / L0")
    a.add_argument("--n-latents", type=int, default=None)
    a.add_argument("--expansion", type=int, default=8, help="latents = expansion x d_model (without --n-latents)")
    a.add_argument("--activation", default="topk", choices=["relu", "topk", "batchtopk", "jumprelu"])
    a.add_argument("--k", type=int, default=16)
    a.add_argument("--kind", default="transcoder", choices=["transcoder", "skip_transcoder"])
    a.add_argument("--hook-in", default="normalized", choices=["normalized", "resid"],
                   help="normalized: blocks.L.ln2.hook_normalized (default); resid: blocks.L.hook_resid_mid (parallel blocks: hook_mlp_in)")
    a.add_argument("--steps", type=int, default=2000)
    a.add_argument("--batch-size", type=int, default=1024)
    a.add_argument("--lr", type=float, default=1e-3)
    a.set_defaults(func=_train)

    a = ts.add_parser("attribute", help="exact attribution of a logit direction or a feature to everything upstream",
                      epilog=EXAMPLES, formatter_class=fmt)
    _model_args(a)
    a.add_argument("--prompt", default=None, help="text (BOS prepended); default: a prompt of the task (--index)")
    a.add_argument("--index", type=int, default=0, help="task prompt index (without --prompt)")
    a.add_argument("--target", default="logit-diff",
                   help="logit-diff (the task's; needs the task), token:ID[,ID..][-ID,..] (good minus bad tokens), or feature:L:J")
    a.add_argument("--pos", type=int, default=None, help="position (default: the answer position / the last token)")
    a.add_argument("--top", type=int, default=20)
    a.set_defaults(func=_attribute)

    a = ts.add_parser("paths", help="beam search for paths from the logit difference to the embeddings; the union as a circuit",
                      epilog=EXAMPLES, formatter_class=fmt)
    _model_args(a)
    a.add_argument("--n", type=int, default=16, help="prompts searched")
    a.add_argument("--beam", type=int, default=12)
    a.add_argument("--top-k", type=int, default=6, help="contributors expanded per node")
    a.add_argument("--paths", type=int, default=10, help="paths kept per prompt")
    a.add_argument("--max-depth", type=int, default=None)
    a.add_argument("--rank", default="value", choices=["value", "min"], help="beam ranking: path contribution, or its bottleneck")
    a.add_argument("--no-error", action="store_true", help="do not let reconstruction errors end a path")
    a.add_argument("--ground-truth", default="auto", help="auto (the zoo card's circuit), zoo:NAME, a shipped name, a JSON file, or none")
    a.add_argument("--out", default=None, help="write the circuit JSON here")
    a.set_defaults(func=_paths)

    a = ts.add_parser("connections", help="input-invariant connections of a feature (weights only)", epilog=EXAMPLES, formatter_class=fmt)
    _model_args(a, task=False)
    a.add_argument("--feature", required=True, help="mlpL.fJ or L:J")
    a.add_argument("--top", type=int, default=10)
    a.set_defaults(func=_connections)

    a = ts.add_parser("faithfulness", help="task metric kept with the top-k path features vs the top-k MLP neurons",
                      epilog=EXAMPLES, formatter_class=fmt)
    _model_args(a)
    a.add_argument("--n", type=int, default=128, help="evaluation prompts")
    a.add_argument("--n-paths", type=int, default=16, help="prompts searched for path features")
    a.add_argument("--beam", type=int, default=12)
    a.add_argument("--top-k", type=int, default=6)
    a.add_argument("--paths", type=int, default=10)
    a.add_argument("--ks", type=int, nargs="+", default=None, help="k values (default 0 1 2 4 ... 1024)")
    a.add_argument("--ablation", default="mean", choices=["mean", "zero"])
    a.add_argument("--keep-error", action="store_true", help="add the transcoders' reconstruction errors back")
    a.add_argument("--no-neurons", action="store_true", help="skip the MLP-neuron baseline")
    a.add_argument("--plot", default=None, help="write the curves as a PNG here")
    a.set_defaults(func=_faithfulness)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _model_args(a: argparse.ArgumentParser, transcoders: bool = True, task: bool = True) -> None:
    a.add_argument("--model", required=True, help="zoo name, model directory, or TransformerLens name")
    if transcoders:
        a.add_argument("--transcoders", nargs="+", required=True, help="transcoder directories (or a training run's --out)")
        a.add_argument("--no-splice", action="store_true", help="run the original MLPs; reconstruction errors become explicit terms")
    if task:
        a.add_argument("--task", default="auto", help="task name (auto: the zoo organism's task)")
        a.add_argument("--variant", default=None)
        a.add_argument("--seed", type=int, default=0, help="task prompt seed (train: also the training seed)")
        a.add_argument("--split", default=None, choices=["train", "heldout"], help="task split (default: heldout; train for `train`)")
    a.add_argument("--device", default="cpu")
    a.add_argument("--json", action="store_true", help="print the result as JSON")


# ------------------------------------------------------------------------------------------
def _at_least(lo: int, **values) -> None:
    """A ConfigError naming the flag when a count is below ``lo``."""
    from mechscope.errors import ConfigError

    for flag, v in values.items():
        vs = v if isinstance(v, (list, tuple)) else [v]
        bad = [x for x in vs if x is not None and x < lo]
        if bad:
            raise ConfigError(f"--{flag.replace('_', '-')} must be >= {lo}; found {bad[0] if len(bad) == 1 else bad}")


def _target_ids(spec: str, vocab: int) -> tuple[list[int], list[int]]:
    """``token:GOOD[,GOOD..][-BAD,..]`` -> (good ids, bad ids), each checked against the vocabulary."""
    from mechscope.errors import ConfigError

    good, _, bad = spec[6:].partition("-")
    try:
        g, b = ([int(x) for x in part.split(",") if x] for part in (good, bad))
    except ValueError:
        raise ConfigError(f"--target token: expects token ids, e.g. token:17-42 or token:5,6-7; found {spec!r}") from None
    out = [i for i in g + b if not 0 <= i < vocab]
    if not g or out:
        raise ConfigError(f"--target token: expects at least one good token id, all in [0, {vocab}); found {spec!r}")
    return g, b


def _load(args, transcoders: bool = True):
    from mechscope.models import load_model

    model = load_model(args.model, device=args.device)
    ts = None
    if transcoders:
        from mechscope.transcoders.replacement import TranscoderSet

        ts = TranscoderSet.load(args.transcoders, device=args.device)
        ts.check(model)
    return model, ts


def _task_spec(args, model) -> tuple[str, str | None, dict]:
    from mechscope.errors import ConfigError

    if args.task != "auto":
        return args.task, args.variant, {}
    if model.name.startswith("zoo:"):
        from mechscope.zoo.cards import load_card

        t = load_card(model.name[4:])["task"]
        return t["name"], args.variant or t["variant"], dict(t.get("kwargs") or {})
    raise ConfigError(f"--task auto needs a zoo organism (its card names the task); {model.name!r} is not one: pass --task NAME")


def _task(args, model, n: int, split: str, seed: int | None = None):
    from mechscope.tasks import make_task

    name, variant, kw = _task_spec(args, model)
    return make_task(name, model.tokenizer, n=n, seed=args.seed if seed is None else seed, split=args.split or split, variant=variant, **kw)


def _ground_truth(args, model):
    from pathlib import Path

    from mechscope.tasks import GroundTruth, load_ground_truth

    gt = args.ground_truth
    if gt == "none":
        return None
    if gt == "auto":
        if not model.name.startswith("zoo:"):
            return None
        from mechscope.zoo.cards import organism_ground_truth

        return organism_ground_truth(model.name[4:])
    if Path(gt).is_file():
        return GroundTruth.load(gt)
    return load_ground_truth(gt)


def _progress(args, what: str):
    if args.json:
        return None
    return lambda i, n: print(f"\r[{what}] {i}/{n}", end="" if i < n else "\n", flush=True)


def _train(args) -> int:
    from mechscope.cli import emit
    from mechscope.transcoders.train import train_transcoders

    _at_least(0, n_task=args.n_task)
    _at_least(1, n_contexts=args.n_contexts, eval_contexts=args.eval_contexts, context_len=args.context_len)
    model, _ = _load(args, transcoders=False)
    task = heldout = None
    # task rows: an explicit --task, or the zoo organism's own task; a non-zoo model with --task auto trains on the corpus only
    if args.n_task > 0 and (args.task != "auto" or model.name.startswith("zoo:")):
        task = _task(args, model, args.n_task, "train")
        heldout = _task(args, model, 256, "heldout", seed=args.seed + 1000)
    ts, report = train_transcoders(model, args.out, layers=args.layers, task=task, heldout_task=heldout, n_contexts=args.n_contexts,
                                   context_len=args.context_len, n_latents=args.n_latents, expansion=args.expansion,
                                   activation=args.activation, k=args.k, kind=args.kind, hook_in=args.hook_in, steps=args.steps,
                                   batch_size=args.batch_size, lr=args.lr, seed=args.seed, eval_contexts=args.eval_contexts,
                                   progress=not args.json)
    emit({"out": args.out, "layers": report["layers"], "rows": report["rows"], "train_seconds": report["train_seconds"],
          "heldout": report["heldout"]}, args.json)
    return 0


def _attribute(args) -> int:
    from mechscope.cli import emit
    from mechscope.errors import ConfigError
    from mechscope.transcoders.attribution import attribute, feature_target, logit_target, task_direction, token_direction
    from mechscope.transcoders.replacement import ReplacementRun

    _at_least(0, index=args.index)
    _at_least(1, top=args.top)
    model, ts = _load(args)
    task = None
    if args.prompt is not None:
        tokens = model.to_tokens(args.prompt).cpu()
        pos = tokens.shape[1] - 1 if args.pos is None else args.pos
    else:
        task = _task(args, model, args.index + 1, "heldout").subset([args.index])
        tokens = task.clean
        pos = int(task.answer_pos[0]) if args.pos is None else args.pos
    run = ReplacementRun(model, ts, tokens, splice=not args.no_splice)
    t = args.target
    if t == "logit-diff":
        if task is None:
            raise ConfigError("--target logit-diff needs a task prompt (drop --prompt) or use token:GOOD-BAD")
        target = logit_target(run, 0, pos, task_direction(run, task, 0), label="logit_diff")
    elif t.startswith("token:"):
        good, bad = _target_ids(t, model.module.cfg.d_vocab)
        target = logit_target(run, 0, pos, token_direction(run, good, bad or None), label=t)
    elif t.startswith("feature:"):
        try:
            _, layer, feat = t.split(":")
            layer, feat = int(layer), int(feat)
        except ValueError:
            raise ConfigError(f"--target feature: expects feature:LAYER:INDEX, e.g. feature:1:42; found {t!r}") from None
        target = feature_target(run, layer, feat, 0, pos)
    else:
        raise ConfigError(f"--target must be logit-diff, token:IDS[-IDS] or feature:L:J; found {t!r}")
    att = attribute(run, target)
    out = att.to_dict(args.top)
    out["tokens"] = tokens[0].tolist()
    if model.tokenizer is not None:
        out["text"] = [model.tokenizer.decode([i]) for i in out["tokens"]]
    out.update(exactness(att, model))
    emit(out, args.json)
    return 0


def exactness(att, model) -> dict:
    """``exact``: the contributions sum to the target's value within the model dtype's rounding
    (its machine epsilon, at least 1e-6, times the sum of |contributions|); the gap and the
    tolerance are reported with it. A bfloat16 model caches rounded activations, so its sums close
    to about 1e-4 of their scale, not 1e-12."""
    import torch

    scale = sum(abs(v) for _, v in att.entries()) + abs(att.target.const)
    eps = max(torch.finfo(next(model.module.parameters()).dtype).eps, 1e-6)
    gap, tol = abs(att.total() - att.value), eps * max(scale, 1.0)
    return {"exact": gap <= tol, "sum_gap": gap, "tolerance": tol}


def _paths(args) -> int:
    from mechscope.circuits import Graph, score_circuit
    from mechscope.cli import emit
    from mechscope.transcoders.paths import find_transcoder_circuit

    model, ts = _load(args)
    task = _task(args, model, args.n, "heldout")
    circuit, result = find_transcoder_circuit(model, ts, task, n=args.n, splice=not args.no_splice, beam=args.beam, top_k=args.top_k,
                                              n_paths=args.paths, max_depth=args.max_depth, rank=args.rank,
                                              include_error=not args.no_error, progress=_progress(args, "paths"))
    truth = _ground_truth(args, model)
    out = {"model": model.name, "task": task.name, "n_prompts": len(task), "runtime_s": round(circuit.runtime_s, 2),
           "node_scores": {k: round(v, 5) for k, v in sorted(circuit.node_scores.items(), key=lambda kv: -kv[1])},
           "selected_nodes": circuit.nodes, "n_features_on_paths": circuit.metadata["n_features_on_paths"],
           "top_features": dict(list(circuit.metadata["feature_scores"].items())[:15]),
           "example_paths": [str(p) for p in result.paths[0][:5]]}
    if truth is not None:
        score = score_circuit(circuit, truth, Graph.of(model, for_edges=False))
        out["ground_truth"] = {"nodes": truth.nodes, "source": truth.source}
        out["score"] = score
    if args.out:
        circuit.save(args.out)
        out["circuit_file"] = args.out
    emit(out, args.json)
    return 0


def _connections(args) -> int:
    from mechscope.cli import emit
    from mechscope.errors import ConfigError
    from mechscope.transcoders.connections import top_connections

    _at_least(1, top=args.top)
    model, ts = _load(args)
    f = args.feature
    try:
        if f.startswith("mlp"):
            layer, feat = f[3:].split(".f")
        else:
            layer, feat = f.split(":")
        layer, feat = int(layer), int(feat)
    except ValueError as e:
        raise ConfigError(f"--feature must look like mlp1.f42 or 1:42; found {f!r}") from e
    emit(top_connections(model, ts, layer, feat, k=args.top), args.json)
    return 0


def _faithfulness(args) -> int:
    from mechscope.cli import emit
    from mechscope.transcoders.faithfulness import DEFAULT_KS, faithfulness_curves, plot_curves
    from mechscope.transcoders.paths import task_paths

    _at_least(0, ks=args.ks or [])
    model, ts = _load(args)
    task = _task(args, model, args.n, "heldout")
    reference = _task(args, model, args.n, "heldout", seed=args.seed + 1)
    result = task_paths(model, ts, task, n=args.n_paths, splice=not args.no_splice, beam=args.beam, top_k=args.top_k,
                        n_paths=args.paths, progress=_progress(args, "paths"))
    say = None if args.json else (lambda msg: print(f"[faithfulness] {msg}", flush=True))
    out = faithfulness_curves(model, ts, task, path_features=result.ranked_features(), reference=reference,
                              ks=tuple(args.ks) if args.ks else DEFAULT_KS, ablation=args.ablation, keep_error=args.keep_error,
                              neurons=not args.no_neurons, progress=say)
    out["n_path_prompts"] = result.params["n"]
    if args.plot:
        out["plot"] = plot_curves(out, args.plot)
    emit(out, args.json)
    return 0
