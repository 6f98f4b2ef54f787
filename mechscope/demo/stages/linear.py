"""Stage ``linear``: the linear interpreter. For one held-out task prompt, the organism becomes an
exact affine map from its token embeddings ``[pos, d_model]`` to the task's logit difference
(attention patterns, LayerNorm scales and MLP gains frozen at that prompt); the check is
``||A x0 + c - f(x0)|| / ||f(x0)||`` against the model's own forward pass. Then the same on the
in-project digits CNN (trained once in seconds, cached), whose map is saved for the explorer."""

from __future__ import annotations

from mechscope.demo.context import DemoContext
from mechscope.report import Section

KEY = "linear"
TITLE = "Linear interpreter: exact affine maps"


def _common(s: dict) -> dict:
    return {"in_shape": s["in_shape"], "out_shape": s["out_shape"], "exactness": s["exact_vs_model"],
            "rel_error": s["exactness"]["rel_error"], "self_check": s["meta"].get("verify", {}),
            "bias_share": s.get("bias_share"), "linearize_seconds": s["linearize_seconds"],
            "map_dir": s.get("map_dir"), "figures": s["figures"]}


def run(ctx: DemoContext) -> dict:
    from mechscope.linear.report import run_image_demo, run_transformer_demo

    out = ctx.out / "linear"
    ctx.say("linearizing the organism at a task prompt")
    s = run_transformer_demo(out / "transformer", model_spec=f"zoo:{ctx.organism}", k=1)
    attr = s["token_attribution"]
    decode = (lambda i: ctx.model.tokenizer.decode([i])) if ctx.model is not None else str
    facts = {"transformer": _common(s) | {
        "model": s["model_spec"], "task": s["task"], "tokens": s["tokens"], "logit_diff": s["logit_diff"],
        "answer": s["meta"]["answer"], "wrong": s["meta"]["wrong"], "position": s["meta"]["position"],
        "answer_token": decode(s["meta"]["answer"]), "wrong_token": decode(s["meta"]["wrong"]),
        "token_contribution": attr["contribution"], "linear_part": attr["linear_part"], "bias": attr["bias"]}}
    if ctx.sizes.linear_digits:
        ctx.say("linearizing the digits CNN")
        d = run_image_demo("digits", out / "digits", k=8)
        facts["digits"] = _common(d) | {"model_metrics": d["model_metrics"], "label": d["label"], "prediction": d["prediction"],
                                        "model_cache": d["model_cache"]}
        ctx.linear_map_dir = d.get("map_dir")
    return facts


def headline(f: dict) -> str:
    parts = [f"{name} map exact to {m['exactness']:.1e}" for name, m in f.items()]
    return "; ".join(parts)


def section(f: dict) -> Section:
    t = f["transformer"]
    tok = t["tokens"]
    contrib = t["token_contribution"]
    top = sorted(range(len(tok)), key=lambda i: -abs(contrib[i]))[:3]
    top_text = ", ".join(f"{tok[i]!r} ({contrib[i]:+.3f})" for i in top)
    text = (f"{t['model']} on a held-out {t['task']} prompt: logit difference (answer {t['answer_token']!r} vs {t['wrong_token']!r}) = "
            f"{t['logit_diff']:.4f}, reproduced by the affine map to a relative error of {t['exactness']:.1e}. "
            f"It splits into the linear part over the embeddings ({t['linear_part']:.3f}) and the bias ({t['bias']:.3f}); "
            f"the positions contributing most: {top_text}.")
    rows = [{"map": name, "in shape": m["in_shape"], "out shape": m["out_shape"], "||Ax0+c-f(x0)||/||f(x0)||": m["exactness"],
             "linearity error": m["self_check"].get("linearity_error"), "adjoint error": m["self_check"].get("adjoint_error"),
             "bias share": (m["bias_share"] or {}).get("total_bias_share"), "seconds": m["linearize_seconds"]} for name, m in f.items()]
    figs = [(f"{name}: {fig.rsplit('/', 1)[-1].removesuffix('.png').replace('_', ' ')}", fig) for name, m in f.items() for fig in m["figures"]]
    if "digits" in f:
        d = f["digits"]
        text += (f"\n\nDigits CNN (test accuracy {d['model_metrics'].get('test_accuracy', float('nan')):.3f}): label {d['label']}, "
                 f"prediction {d['prediction']}; its 10 logits are an exact affine map of the 64 pixels (error {d['exactness']:.1e}).")
    return Section(KEY, TITLE, text=text, tables=[("maps", rows)],
                   figures=figs)
