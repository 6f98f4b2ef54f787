"""CLI: ``mechscope cache`` (write a store) and ``mechscope store info|verify`` (inspect one)."""

from __future__ import annotations

import argparse

CACHE_EXAMPLES = """examples:
  mechscope cache --model zoo:ioi-2l --hooks blocks.1.attn.hook_z --out runs/acts --n-contexts 2048
  mechscope cache --model ./my_model_dir --hooks 'blocks.*.hook_resid_post' --corpus ./texts --dtype bfloat16 --out runs/acts
  mechscope cache ... --max-bytes 1e9        # stop cleanly before the store passes 1 GB
A killed run resumes where it stopped when given the same arguments."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cache", help="cache activations of hook points to a sharded on-disk store",
                       description="Cache activations of one or more hook points over a token stream.",
                       epilog=CACHE_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="zoo name, model directory, or TransformerLens name")
    p.add_argument("--hooks", nargs="+", required=True, help="hook names or globs (e.g. 'blocks.*.attn.hook_z')")
    p.add_argument("--out", required=True, help="store directory (resumed if it exists with the same settings)")
    p.add_argument("--corpus", default="stdlib", help="'stdlib' (default), a text file/dir, a .jsonl file, or hf:NAME")
    p.add_argument("--split", default="train", choices=["train", "heldout", "all"])
    p.add_argument("--context-len", type=int, default=None,
                   help="tokens per context (default: 128, or the model's n_ctx when that is shorter)")
    p.add_argument("--n-contexts", type=int, default=None, help="contexts to cache (default: all)")
    p.add_argument("--contexts-per-shard", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    p.add_argument("--keep-bos", action="store_true", help="also store the BOS position")
    p.add_argument("--max-bytes", type=float, default=None, help="size cap for the store's shards")
    p.add_argument("--overwrite", action="store_true", help="delete an existing store first")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=_cache)

    s = sub.add_parser("store", help="inspect or verify an activation store",
                       epilog="examples:\n  mechscope store info runs/acts --json\n  mechscope store verify runs/acts",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("action", choices=["info", "verify"])
    s.add_argument("path")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=_store)


def _summary(store) -> dict:
    m = store.manifest
    return {"path": str(store.root), "model": m.model, "hooks": {h: i.act_shape for h, i in m.hooks.items()}, "dtype": m.dtype,
            "rows": m.n_rows, "shards": len(m.shards), "context_len": m.context_len, "skip_bos": m.skip_bos,
            "corpus": m.corpus, "corpus_hash": m.corpus_hash[:16], "complete": m.complete}


def _cache(args) -> int:
    from mechscope.activations import cache_activations
    from mechscope.cli import emit
    from mechscope.data import TokenStream, load_corpus
    from mechscope.data.tokenizer import default_tokenizer
    from mechscope.errors import ConfigError
    from mechscope.models import load_model
    from mechscope.models.model import resolve_context_len

    model = load_model(args.model, device=args.device)
    tokenizer = model.tokenizer or default_tokenizer()
    if model.tokenizer is None and args.corpus != "stdlib":
        raise ConfigError(f"model {model.name!r} has no tokenizer; only the stdlib corpus (with the default tokenizer) can be used")
    stream = TokenStream(load_corpus(args.corpus, args.split), tokenizer, resolve_context_len(model, args.context_len))
    store = cache_activations(model, stream, args.hooks, args.out, n_contexts=args.n_contexts,
                              contexts_per_shard=args.contexts_per_shard, batch_size=args.batch_size, dtype=args.dtype,
                              skip_bos=not args.keep_bos, max_bytes=None if args.max_bytes is None else int(args.max_bytes),
                              overwrite=args.overwrite, progress=not args.json)
    emit(_summary(store), args.json)
    return 0


def _store(args) -> int:
    from mechscope.activations import ActivationStore
    from mechscope.cli import emit

    store = ActivationStore(args.path, allow_incomplete=args.action == "info")
    if args.action == "verify":
        store.verify()
    emit({**_summary(store), "verified": args.action == "verify"}, args.json)
    return 0
