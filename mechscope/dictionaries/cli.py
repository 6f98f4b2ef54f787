"""CLI: ``mechscope train`` (train dictionaries) and ``mechscope eval`` (score them)."""

from __future__ import annotations

import argparse

TRAIN_EXAMPLES = """examples:
  # a TopK SAE on a cached store
  mechscope train --store runs/acts --hooks blocks.1.hook_resid_post --n-latents 4096 --k 32 --steps 2000 --out runs/sae
  # attention-output SAEs on every layer's hook_z, streamed from the model (one forward pass feeds all)
  mechscope train --model zoo:ioi-2l --hooks 'blocks.*.attn.hook_z' --activation batchtopk --out runs/attn
  # a skip-transcoder for layer 0's MLP
  mechscope train --store runs/acts --kind skip_transcoder --hooks blocks.0.ln2.hook_normalized:blocks.0.hook_mlp_out --out runs/tc
  # data parallel on 2 processes (gloo on CPU), or one dictionary per rank
  torchrun --nproc_per_node 2 -m mechscope train --store runs/acts --hooks ... --out runs/ddp --distributed ddp
  torchrun --nproc_per_node 2 -m mechscope train --store runs/acts --hooks h1 h2 --out runs/pr --distributed per_rank
A rerun with the same --out resumes from the latest checkpoint (--overwrite starts over)."""

EVAL_EXAMPLES = """examples:
  mechscope eval runs/sae/blocks.1.hook_resid_post --store runs/heldout --json
  mechscope eval runs/sae/blocks.1.hook_resid_post --model zoo:ioi-2l --histogram density.png
  mechscope eval path/to/saelens_dir --model ./my_model --n-contexts 64   # SAELens / sparsify dirs work too"""


def _source_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data (a store, or a model streamed over a corpus)")
    g.add_argument("--store", help="activation store directory (mechscope cache)")
    g.add_argument("--model", help="zoo name, model directory, or TransformerLens name (streaming, and CE/KL scores in eval)")
    g.add_argument("--corpus", default="stdlib", help="with --model: 'stdlib' (default), a text file/dir, a .jsonl file, or hf:NAME")
    g.add_argument("--split", default=None, choices=["train", "heldout", "all"], help="corpus split (train: train; eval: heldout)")
    g.add_argument("--context-len", type=int, default=None,
                   help="tokens per context when streaming (default: 128, or the model's n_ctx when that is shorter)")
    g.add_argument("--device", default=None)


def register(sub: argparse._SubParsersAction) -> None:
    from mechscope.dictionaries.config import ACTIVATIONS, KINDS

    p = sub.add_parser("train", help="train SAEs / transcoders on hook points", epilog=TRAIN_EXAMPLES,
                       description="Train sparse dictionaries (SAEs, transcoders, skip-transcoders) from a store or a model.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    _source_args(p)
    p.add_argument("--hooks", nargs="+", required=True, help="hook names or globs; transcoders take IN:OUT pairs")
    p.add_argument("--out", required=True, help="run directory: checkpoints, metrics.jsonl, one directory per dictionary")
    p.add_argument("--kind", default="sae", choices=KINDS)
    p.add_argument("--activation", default="topk", choices=ACTIVATIONS)
    p.add_argument("--n-latents", type=int, default=None, help="latents per dictionary (default: --expansion x d_in)")
    p.add_argument("--expansion", type=int, default=8)
    p.add_argument("--k", type=int, default=32, help="active latents per row (topk / batchtopk)")
    p.add_argument("--l1-coeff", type=float, default=1.0, help="relu: L1 coefficient")
    p.add_argument("--l0-coeff", type=float, default=0.1, help="jumprelu: L0 coefficient")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--warmup-steps", type=int, default=100)
    p.add_argument("--sparsity-warmup-steps", type=int, default=0)
    p.add_argument("--auxk-coeff", type=float, default=1 / 32)
    p.add_argument("--dead-tokens", type=int, default=1_000_000)
    p.add_argument("--resample-every", type=int, default=0)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--checkpoint-every", type=int, default=0)
    p.add_argument("--log-every", type=int, default=10)
    p.add_argument("--buffer-tokens", type=int, default=262_144, help="with --model: rows per shuffle-buffer refill")
    p.add_argument("--until", type=int, default=None, help="stop after this many steps (resume later with the same --out)")
    p.add_argument("--overwrite", action="store_true", help="discard existing checkpoints in --out")
    p.add_argument("--distributed", choices=["ddp", "per_rank"], default=None, help="under torchrun: data parallel or one dictionary per rank")
    p.add_argument("--wandb", default=None, metavar="PROJECT", help="also log to Weights & Biases")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_train)

    e = sub.add_parser("eval", help="evaluate dictionaries (MSE, FVU, L0, dead/dense, CE and KL scores)", epilog=EVAL_EXAMPLES,
                       description="Evaluate dictionaries on held-out activations and by splicing them into the model.",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("dictionaries", nargs="+", help="dictionary directories (native, SAELens or sparsify)")
    _source_args(e)
    e.add_argument("--n-tokens", type=int, default=65_536, help="rows for the reconstruction metrics")
    e.add_argument("--batch-size", type=int, default=4096)
    e.add_argument("--n-contexts", type=int, default=32, help="contexts for the CE / KL scores (needs --model)")
    e.add_argument("--no-splice", action="store_true", help="skip the CE / KL scores")
    e.add_argument("--histogram", default=None, help="write the feature-density histogram PNG here (one dictionary) or into this dir")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=_eval)


def _stream(args, model, split: str):
    from mechscope.data import TokenStream, load_corpus
    from mechscope.data.tokenizer import default_tokenizer

    from mechscope.models.model import resolve_context_len

    context_len = resolve_context_len(model, args.context_len)
    return TokenStream(load_corpus(args.corpus, split), model.tokenizer or default_tokenizer(), context_len)


def _pairs(hooks: list[str], kind: str, source_hooks_of) -> list[tuple[str, str | None]]:
    from mechscope.errors import ConfigError

    out = []
    for h in hooks:
        if kind == "sae":
            if ":" in h:
                raise ConfigError(f"an SAE takes one hook per entry; found the pair {h!r} (use --kind transcoder)")
            out += [(x, None) for x in source_hooks_of(h)]
        else:
            if ":" not in h:
                raise ConfigError(f"a {kind} needs IN:OUT hook pairs, e.g. blocks.0.ln2.hook_normalized:blocks.0.hook_mlp_out; found {h!r}")
            a, b = h.split(":", 1)
            out.append((a, b))
    return out


def _train(args) -> int:
    import fnmatch

    from mechscope.cli import emit
    from mechscope.dictionaries import distributed as D
    from mechscope.dictionaries.config import DictionaryConfig, TrainConfig
    from mechscope.dictionaries.sources import ModelSource, StoreSource
    from mechscope.errors import ConfigError

    if bool(args.store) == bool(args.model):
        raise ConfigError("train needs exactly one data source: --store DIR or --model SPEC")
    dist = D.init_from_env(args.distributed) if args.distributed else D.current()
    if args.store:
        from mechscope.activations import ActivationStore

        store = ActivationStore(args.store)

        def expand(h):
            hits = [x for x in store.hooks if fnmatch.fnmatchcase(x, h)] if any(c in h for c in "*?[") else [h]
            if not hits:
                raise ConfigError(f"no hook of the store matches {h!r}; it holds {store.hooks}")
            return hits
        pairs = _pairs(args.hooks, args.kind, expand)
        source = StoreSource(store, list(dict.fromkeys(x for p in pairs for x in p if x)))
    else:
        from mechscope.models import load_model, resolve_hooks

        model = load_model(args.model, device=args.device)
        pairs = _pairs(args.hooks, args.kind, lambda h: resolve_hooks(model, h))
        source = ModelSource(model, _stream(args, model, args.split or "train"), list(dict.fromkeys(x for p in pairs for x in p if x)),
                             buffer_tokens=args.buffer_tokens)
    configs = []
    for hin, hout in pairs:
        d_in = source.d(hin)
        shape = source.act_shape(hin)
        configs.append(DictionaryConfig(
            d_in=d_in, d_out=source.d(hout) if hout else d_in, n_latents=args.n_latents or args.expansion * d_in, kind=args.kind,
            activation=args.activation, k=args.k, l1_coeff=args.l1_coeff, l0_coeff=args.l0_coeff, hook_in=hin, hook_out=hout,
            act_shape=shape if len(shape) > 1 else None, meta={"model": args.model or source.store.manifest.model}))
    tcfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup_steps,
                       sparsity_warmup_steps=args.sparsity_warmup_steps, auxk_coeff=args.auxk_coeff, dead_tokens=args.dead_tokens,
                       resample_every=args.resample_every, grad_clip=args.grad_clip, seed=args.seed,
                       checkpoint_every=args.checkpoint_every, log_every=args.log_every, buffer_tokens=args.buffer_tokens,
                       wandb_project=args.wandb)
    kw = dict(out_dir=args.out, overwrite=args.overwrite, until=args.until, progress=not args.json, device=args.device)
    if dist.world_size > 1:
        trained = D.train_distributed(configs, source, tcfg, mode=dist.mode, **kw)
    else:
        from mechscope.dictionaries.trainer import train

        trained = train(configs, source, tcfg, **kw)
    if dist.rank == 0 or dist.mode == "per_rank":
        emit({"out": args.out, "rank": dist.rank, "dictionaries": [repr(d) for d in trained],
              "steps": min(tcfg.steps, args.until or tcfg.steps)}, args.json)
    return 0


def _eval(args) -> int:
    from pathlib import Path

    from mechscope.cli import emit
    from mechscope.dictionaries.evaluate import evaluate
    from mechscope.dictionaries.formats import check_trained_on, load_dictionary
    from mechscope.errors import ConfigError
    from mechscope.files import ensure_dir

    if not args.store and not args.model:
        raise ConfigError("eval needs --store DIR (reconstruction metrics) and/or --model SPEC (streamed metrics, CE / KL scores)")
    model = stream = None
    if args.model:
        from mechscope.models import load_model

        model = load_model(args.model, device=args.device)
        stream = _stream(args, model, args.split or "heldout")
    results = []
    for path in args.dictionaries:
        d = load_dictionary(path, device=args.device or (model.device if model is not None else "cpu"))
        if model is not None:
            check_trained_on(d, model)
        hist = args.histogram
        if hist and len(args.dictionaries) > 1:
            ensure_dir(Path(hist))
            hist = str(Path(hist) / f"{d.cfg.name}.png")
        r = evaluate(d, args.store, n_tokens=args.n_tokens, batch_size=args.batch_size, model=model, stream=stream,
                     n_contexts=args.n_contexts, histogram=hist, splice=not args.no_splice)
        results.append({"path": str(path), **r})
    emit(results if len(results) > 1 else results[0], args.json)
    return 0
