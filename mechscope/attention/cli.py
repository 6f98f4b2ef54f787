"""CLI: ``mechscope attention analyze | induction | dfa | train-sae`` — thin shells over
:mod:`mechscope.attention`."""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  # train an attention-output SAE on layer 1's hook_z over the embedded corpus (a few CPU minutes)
  mechscope attention train-sae --model zoo:ioi-2l --layer 1 --out runs/attn-sae --steps 1500
  # every analysis: head attribution, families, DFA, recursive DFA, induction heads -> JSON + PNG
  mechscope attention analyze --model zoo:ioi-2l --sae runs/attn-sae/sae/blocks.1.attn.hook_z --out runs/attn
  mechscope attention analyze --model zoo:ioi-2l --sae runs/attn-sae/sae/blocks.1.attn.hook_z --json > summary.json
  # induction heads only: scores, attention vs repeated-prefix length, the causal t0-2 test
  mechscope attention induction --model zoo:ioi-2l --out runs/ind --json
  mechscope attention induction --model zoo:ioi-2l --heads 1.0 1.3 --max-prefix 6
  # exact DFA of one feature at one position of a prompt (add --recursive for the tree)
  mechscope attention dfa --model zoo:ioi-2l --sae runs/attn-sae/sae/blocks.1.attn.hook_z \\
      --text "def f(x):\\n    return x + f(x" --feature 12 --position -1 --recursive"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("attention", help="attention-output SAEs: head attribution, DFA, feature families, induction heads",
                       description="Analyse SAEs on attention outputs (blocks.L.attn.hook_z, heads concatenated): "
                                   "head attribution, exact direct feature attribution by source position, recursive DFA, "
                                   "automatically labelled feature families, and short- vs long-prefix induction heads.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    verbs = p.add_subparsers(dest="attention_verb", metavar="<analyze|induction|dfa|train-sae>")

    a = verbs.add_parser("analyze", help="all analyses of one attention-output SAE -> attention_analysis.json + PNG figures",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    a.add_argument("--model", required=True, help="zoo name (zoo:ioi-2l), model directory, or TransformerLens name")
    a.add_argument("--sae", required=True, help="SAE directory on blocks.L.attn.hook_z (native, SAELens or sparsify)")
    a.add_argument("--out", default=None, help="output directory (attention_analysis.json, *.png)")
    a.add_argument("--n-contexts", type=int, default=128, help="held-out corpus contexts for the family tests")
    a.add_argument("--n-repeats", type=int, default=64, help="repeated random sequences for the induction test")
    a.add_argument("--repeat-len", type=int, default=None, help="length of the repeated sequence (default: min(32, (n_ctx-1)//2))")
    a.add_argument("--induction-offsets", type=int, nargs="+", default=[1], metavar="S",
                   help="induction target positions, as offsets after the earlier occurrence (default: 1, the token right after it; "
                        "e.g. 3 4 for a lagged induction circuit)")
    a.add_argument("--heads", nargs="*", default=None, help="induction heads to study, as L.H (default: found by score)")
    a.add_argument("--no-induction", action="store_true", help="skip the induction-head analysis")
    a.add_argument("--seed", type=int, default=0)
    a.add_argument("--device", default="cpu")
    a.add_argument("--json", action="store_true", help="print the full summary as JSON")
    a.set_defaults(func=_analyze)

    i = verbs.add_parser("induction", help="induction heads: scores, attention vs repeated-prefix length, causal t0-2 test",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    i.add_argument("--model", required=True)
    i.add_argument("--heads", nargs="*", default=None, help="heads as L.H (default: induction score >= --threshold)")
    i.add_argument("--threshold", type=float, default=0.3)
    i.add_argument("--max-prefix", type=int, default=8)
    i.add_argument("--n", type=int, default=64, help="prompts per measurement")
    i.add_argument("--repeat-len", type=int, default=None, help="repeated-sequence length for the induction scores (default: min(32, (n_ctx-1)//2))")
    i.add_argument("--induction-offsets", type=int, nargs="+", default=[1], metavar="S",
                   help="induction target positions, as offsets after the earlier occurrence (default: 1)")
    i.add_argument("--seed", type=int, default=0)
    i.add_argument("--out", default=None, help="write induction.json and the figures here")
    i.add_argument("--device", default="cpu")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=_induction)

    d = verbs.add_parser("dfa", help="exact DFA of one feature at one position of a prompt (optionally recursive)",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    d.add_argument("--model", required=True)
    d.add_argument("--sae", required=True)
    g = d.add_mutually_exclusive_group(required=True)
    g.add_argument("--text", help="prompt text (BOS is prepended)")
    g.add_argument("--tokens", type=int, nargs="+", help="prompt token ids")
    d.add_argument("--feature", type=int, required=True)
    d.add_argument("--position", type=int, default=-1, help="query position (negative counts from the end)")
    d.add_argument("--recursive", action="store_true", help="follow the sources back through earlier layers")
    d.add_argument("--depth", type=int, default=None)
    d.add_argument("--top", type=int, default=8, help="terms to show")
    d.add_argument("--device", default="cpu")
    d.add_argument("--json", action="store_true")
    d.set_defaults(func=_dfa)

    t = verbs.add_parser("train-sae", help="cache hook_z over the embedded corpus and train a TopK SAE on it",
                         epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("--model", required=True)
    t.add_argument("--layer", type=int, required=True)
    t.add_argument("--out", required=True, help="run directory: acts/ (store) and sae/<hook>/ (the dictionary)")
    t.add_argument("--n-latents", type=int, default=None, help="default: --expansion x d_in")
    t.add_argument("--expansion", type=int, default=8)
    t.add_argument("--k", type=int, default=16)
    t.add_argument("--activation", default="topk", choices=["topk", "batchtopk", "relu", "jumprelu"])
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--batch-size", type=int, default=1024)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--n-contexts", type=int, default=4096, help="corpus contexts to cache")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--json", action="store_true")
    t.set_defaults(func=_train_sae)
    p.set_defaults(func=lambda args: (p.print_help(), 0)[1])


def _load(args):
    from mechscope.models import load_model

    return load_model(args.model, device=args.device)


def _load_sae(args, model):
    from mechscope.dictionaries import check_trained_on, load_dictionary

    sae = load_dictionary(args.sae, device=args.device)
    check_trained_on(sae, model)
    return sae


def _positive(**values) -> None:
    from mechscope.errors import ConfigError

    for flag, v in values.items():
        if v is not None and v < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be a positive integer; found {v}")


def _analyze(args) -> int:
    from mechscope.attention.families import FamilyConfig
    from mechscope.attention.report import analyze, summary_text
    from mechscope.cli import emit
    from mechscope.files import ensure_dir

    _positive(n_contexts=args.n_contexts, n_repeats=args.n_repeats, repeat_len=args.repeat_len)
    _positive(induction_offsets=min(args.induction_offsets))
    if args.out:
        ensure_dir(args.out)  # before the analysis, not after it
    model = _load(args)
    sae = _load_sae(args, model)
    say = None if args.json else (lambda msg: print(f"[attention] {msg}", flush=True))
    s = analyze(model, sae, out_dir=args.out, n_contexts=args.n_contexts, heads=args.heads, induction=not args.no_induction,
                family_config=FamilyConfig(n_repeats=args.n_repeats, repeat_len=args.repeat_len, seed=args.seed,
                                           target_offsets=tuple(args.induction_offsets)), seed=args.seed,
                progress=say)
    if args.json:
        emit(s, True)
    else:
        print(summary_text(s))
        if args.out:
            print(f"wrote {args.out}/attention_analysis.json and {len(s.get('figures', []))} figures")
    return 0


def _induction(args) -> int:
    from pathlib import Path

    from mechscope.attention.induction import induction_analysis
    from mechscope.cli import emit
    from mechscope.files import ensure_dir, write_json

    _positive(n=args.n, max_prefix=args.max_prefix, repeat_len=args.repeat_len)
    _positive(induction_offsets=min(args.induction_offsets))
    if args.out:
        ensure_dir(args.out)
    model = _load(args)
    ia = induction_analysis(model, args.heads, max_prefix=args.max_prefix, n=args.n, seed=args.seed, threshold=args.threshold,
                            repeat_len=args.repeat_len, target_offsets=tuple(args.induction_offsets))
    d = {"model": model.name, **ia.to_dict()}
    if args.out:
        out = Path(args.out)
        ensure_dir(out)
        from mechscope.attention.report import induction_figures

        d["figures"] = induction_figures(d, out)
        write_json(out / "induction.json", d)
    if args.json:
        emit(d, True)
    else:
        emit({"induction_heads": d["induction_heads"], "heads_source": d["heads_source"], "long_prefix_heads": d["long_prefix_heads"],
              "attention_to_target": d["prefix_length_curve"].get("attention_to_target"),
              "causal_test": {h: {k: v for k, v in x.items() if k.startswith(("attention", "relative"))}
                              for h, x in (d["causal_test"].get("heads") or {}).items()}}, False)
    return 0


def _dfa(args) -> int:
    import torch

    from mechscope.attention.dfa import direct_feature_attribution
    from mechscope.attention.recursive_dfa import recursive_dfa
    from mechscope.cli import emit
    from mechscope.errors import ConfigError

    _positive(top=args.top)
    model = _load(args)
    sae = _load_sae(args, model)
    if args.tokens is not None:
        vocab = model.module.cfg.d_vocab
        bad = [t for t in args.tokens if not 0 <= t < vocab]
        if bad:
            raise ConfigError(f"--tokens must be token ids in [0, {vocab}) for model {model.name!r}; found {bad}")
    if not 0 <= args.feature < sae.n_latents:
        raise ConfigError(f"--feature must be in [0, {sae.n_latents}) for this SAE of {sae.n_latents} latents; found {args.feature}")
    tokens = model.to_tokens(args.text) if args.text is not None else torch.tensor([args.tokens])
    n = tokens.shape[1]
    q = args.position + n if args.position < 0 else args.position
    if not 0 <= q < n:
        raise ConfigError(f"--position must be in [-{n}, {n}) for this {n}-token prompt; found {args.position}")
    decode = (lambda i: model.tokenizer.decode([i])) if model.tokenizer is not None else None
    d = direct_feature_attribution(model, sae, tokens, features=[args.feature], queries=[q])
    out = {"model": model.name, "sae": sae.cfg.hook_in, "tokens": tokens[0].tolist(), **d.to_dict(0, tokens, top=args.top, decode=decode),
           "sum_check": d.error()}
    if args.recursive:
        tree = recursive_dfa(model, sae, tokens[0], args.feature, q, depth=args.depth, decode=decode)
        out["recursive"] = tree.to_dict()
        out["recursive_check"] = tree.check()
        if not args.json:
            print(tree.render(max_depth=8, min_abs=0.02 * abs(tree.value)))
    emit(out if args.json else {k: v for k, v in out.items() if k != "recursive"}, args.json)
    return 0


def _train_sae(args) -> int:
    from mechscope.attention.sae import train_attention_sae
    from mechscope.cli import emit
    from mechscope.files import ensure_dir
    from mechscope.models import load_model

    model = load_model(args.model, device="cpu")
    ensure_dir(args.out)
    sae = train_attention_sae(model, args.layer, args.out, n_latents=args.n_latents, expansion=args.expansion, k=args.k,
                              activation=args.activation, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                              n_contexts=args.n_contexts, seed=args.seed, progress=not args.json)
    emit({"sae": f"{args.out}/sae/{sae.cfg.hook_in}", "dictionary": repr(sae)}, args.json)
    return 0
