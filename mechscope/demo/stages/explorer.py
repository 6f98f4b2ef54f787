"""Stage ``explorer``: the ``mechscope serve`` command that opens the explorer on what the demo
wrote (the organism, both dictionaries, every circuit scored against the verified one, the
digits map), checked by loading that very workspace and running one task prompt through it."""

from __future__ import annotations

import os
import shlex

from mechscope.demo.context import DemoContext
from mechscope.report import Section

KEY = "explorer"
TITLE = "Explorer: open the results"


def serve_args(ctx: DemoContext) -> list[str]:
    """``mechscope serve`` arguments for the demo's outputs."""
    args = ["mechscope", "serve", "--model", f"zoo:{ctx.organism}"]
    for d in ctx.need("dictionary_dirs", "dictionaries").values():
        args += ["--dictionary", d]
    for c in ctx.need("circuit_files", "circuits").values():
        args += ["--circuit", c]
    args += ["--ground-truth", f"zoo:{ctx.organism}"]
    if ctx.linear_map_dir:
        args += ["--linear-map", ctx.linear_map_dir]
    return args


def run(ctx: DemoContext) -> dict:
    from mechscope.explorer.config import ExplorerConfig
    from mechscope.explorer.workspace import Workspace

    args = serve_args(ctx)
    env = os.environ.get("MECHSCOPE_ZOO_PATH")
    command = (f"MECHSCOPE_ZOO_PATH={shlex.quote(env)} " if env else "") + shlex.join(args)
    ctx.say("checking that the explorer loads the results")
    ws = Workspace(ExplorerConfig(model=f"zoo:{ctx.organism}", dictionaries=list(ctx.dictionary_dirs.values()),
                                  circuits=list(ctx.circuit_files.values()), ground_truths=[f"zoo:{ctx.organism}"],
                                  linear=ctx.linear_map_dir, device="cpu"))
    info = ws.info()
    prompt = "The war lasted from the year 1732 to the year 17"
    run_ = ws.run(prompt)
    top = int(run_.logits[-1].argmax())
    return {"command": command, "url": "http://127.0.0.1:8765", "dictionaries": [d["name"] for d in info["dictionaries"]],
            "circuits": [{"name": c["name"], "method": c["method"], "scored": c["has_ground_truth"]} for c in info["circuits"]],
            "linear": info["linear"], "check_prompt": {"prompt": prompt, "tokens": int(run_.tokens.numel()),
                                                       "top_prediction": ws.model.tokenizer.decode([top]),
                                                       "active_features": {ws.dictionaries[i].name: int((c[-1] > 0).sum()) for i, c in run_.codes.items()}}}


def headline(f: dict) -> str:
    return (f"workspace loads: {len(f['dictionaries'])} dictionaries, {len(f['circuits'])} circuits, linear view "
            f"{'on' if f['linear']['available'] else 'off'}; the `mechscope serve` command is printed below")


def section(f: dict) -> Section:
    p = f["check_prompt"]
    text = (f"Open the explorer on these results (then browse {f['url']}):\n\n{f['command']}\n\n"
            f"Checked here by loading that workspace: {len(f['dictionaries'])} dictionaries, {len(f['circuits'])} circuits "
            f"({sum(c['scored'] for c in f['circuits'])} scored against the verified circuit), linear view "
            f"{'on: ' + f['linear']['description'] if f['linear']['available'] else 'off'}. The prompt {p['prompt']!r} "
            f"({p['tokens']} tokens) is completed with {p['top_prediction']!r}; active features at its last token: "
            + ", ".join(f"{k}: {v}" for k, v in p["active_features"].items()) + ".")
    return Section(KEY, TITLE, text=text, tables=[("circuits the explorer shows", f["circuits"])])
