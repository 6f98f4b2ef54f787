"""CLI: ``mechscope serve`` — the explorer, a local web app over a model, its dictionaries and
circuits. A thin shell over :func:`mechscope.explorer.create_app`."""

from __future__ import annotations

import argparse
import sys

EXAMPLES = """examples:
  mechscope serve --model zoo:ioi-2l
  mechscope serve --model zoo:ioi-2l --dictionary runs/sae/blocks.1.attn.hook_z \\
                  --circuit runs/ioi.eap.circuit.json --ground-truth zoo:ioi-2l
  mechscope serve --model runs/my-model --dictionary runs/sae/a --dictionary runs/sae/b --port 8800
  mechscope serve --model gpt2-small --circuit ioi.circuit.json --ground-truth ioi-gpt2-small
  mechscope serve --model zoo:ioi-2l --linear-demo digits      # + the linear-interpreter view
  mechscope serve --sample runs/explorer-sample                      # a tiny self-contained workspace

Dashboards (top contexts, histogram, density, logit effects) are computed the first time a
feature of a dictionary is opened, then cached under --cache-dir; --precompute does it at start.
The server binds 127.0.0.1 (this machine only) unless --host says otherwise; it reads only the
files named on this command line (and its cache)."""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="the explorer: a local web app from prompt to features, heads and circuits",
                       description="Start the explorer web app: prompt view (tokens, predictions, features, head split "
                                   "and DFA), feature dashboards, circuit view and linear-interpreter view.",
                       epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="model spec: zoo:NAME, a model directory, or a TransformerLens name")
    p.add_argument("--dictionary", action="append", default=[], metavar="DIR",
                   help="a dictionary directory (native, SAELens or sparsify); repeatable")
    p.add_argument("--circuit", action="append", default=[], metavar="FILE", help="a circuit JSON file; repeatable")
    p.add_argument("--ground-truth", action="append", default=[], metavar="NAME|FILE",
                   help="a ground truth (JSON file, shipped name such as ioi-gpt2-small, or zoo:NAME); repeatable; "
                        "each circuit is scored against the one with its task")
    p.add_argument("--linear-demo", choices=["digits", "superres", "denoise"], default=None,
                   help="show the linear interpreter on an in-project image model (trained once, cached)")
    p.add_argument("--linear-map", metavar="DIR", default=None, help="show a saved AffineMap directory in the linear view")
    p.add_argument("--linear-steps", type=int, default=None, help="training steps for --linear-demo (default: the demo's)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument("--cache-dir", default=None, help="dashboard cache (default $MECHSCOPE_CACHE/explorer or ~/.cache/mechscope/explorer)")
    p.add_argument("--corpus", default="stdlib", help="dashboard corpus: stdlib (embedded), a text file/dir, a .jsonl, hf:NAME")
    p.add_argument("--corpus-split", default="heldout", choices=["train", "heldout", "all"])
    p.add_argument("--dashboard-contexts", type=int, default=512, help="contexts of the corpus slice dashboards cover")
    p.add_argument("--context-len", type=int, default=64, help="tokens per dashboard context")
    p.add_argument("--precompute", action="store_true", help="compute every dictionary's dashboards before serving")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--sample", metavar="DIR", default=None,
                   help="build (if needed) and serve a tiny sample workspace in DIR: model, two SAEs, a circuit, a linear map")
    p.add_argument("--json", action="store_true", help="print the workspace summary as JSON before serving")
    p.set_defaults(func=_serve)


def _serve(args) -> int:
    from pathlib import Path

    from mechscope.cli import emit
    from mechscope.errors import ConfigError
    from mechscope.explorer.app import create_app, serve
    from mechscope.explorer.config import DashboardConfig, ExplorerConfig
    from mechscope.explorer.workspace import Workspace

    model, dictionaries, circuits, truths, linear = args.model, list(args.dictionary), list(args.circuit), list(args.ground_truth), None
    if args.linear_demo and args.linear_map:
        raise ConfigError("give --linear-demo or --linear-map, not both")
    if args.linear_demo:
        linear = f"demo:{args.linear_demo}"
    elif args.linear_map:
        linear = args.linear_map
    if args.sample:
        from mechscope.explorer.sample import build_sample

        root = Path(args.sample)
        if not (root / "linear-map" / "cfg.json").exists():
            _say(f"building the sample workspace in {root} …")
            build_sample(root)
        model = model or str(root / "model")
        dictionaries = dictionaries or [str(root / "sae-resid"), str(root / "sae-attn")]
        circuits = circuits or [str(root / "circuit.json")]
        truths = truths or [str(root / "ground_truth.json")]
        linear = linear or str(root / "linear-map")
    if not model:
        raise ConfigError("--model is required (or --sample DIR); e.g. mechscope serve --model zoo:NAME")
    config = ExplorerConfig(
        model=model, dictionaries=dictionaries, circuits=circuits, ground_truths=truths, cache_dir=args.cache_dir,
        linear=linear, linear_steps=args.linear_steps, device=args.device,
        dashboards=DashboardConfig(corpus=args.corpus, split=args.corpus_split, n_contexts=args.dashboard_contexts,
                                   context_len=args.context_len))
    _say(f"loading {model} …")
    ws = Workspace(config)
    if args.precompute:
        from rich.progress import Progress

        with Progress(transient=True, console=_err_console()) as progress:
            for ld in ws.dictionaries:
                task = progress.add_task(f"dashboards {ld.name}", total=1.0)
                ws.dashboards(ld.id, progress=lambda what, frac, task=task, name=ld.name:
                              progress.update(task, completed=frac, description=f"dashboards {name}: {what}"))
    info = ws.info()
    if args.json:
        emit(info, True)
    else:
        _say(f"model {info['model']['name']} · {len(info['dictionaries'])} dictionaries · {len(info['circuits'])} circuits · "
             f"linear view {'on' if info['linear']['available'] else 'off'}")
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        _say(f"warning: binding {args.host} exposes the explorer to other machines; it has no authentication")
    app = create_app(workspace=ws, host=args.host)
    serve(app, args.host, args.port, on_ready=lambda url: _say(f"mechscope explorer at {url}  (Ctrl+C to stop)"))
    return 0


def _err_console():
    from rich.console import Console

    return Console(file=sys.stderr)


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
