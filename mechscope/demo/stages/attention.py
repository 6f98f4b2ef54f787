"""Stage ``attention``: what the attention-output SAE says about the heads (Kissane et al. 2024).

* Weight-based head attribution: each feature's decoder row is one block per head; the block
  norms' shares say which head writes the feature. Counted over the features that fire on
  held-out text.
* Direct feature attribution on the organism's own task: at the answer position of held-out task
  prompts, each active feature's pre-activation splits exactly into per-head (and per-source)
  terms; summed over the active features (weighted by activation) that gives each head's share
  of the SAE's reading of the task — comparable to the verified circuit's heads.
"""

from __future__ import annotations

import torch

from mechscope.demo.context import DemoContext
from mechscope.report import Section

KEY = "attention"
TITLE = "Attention-output SAE: heads behind the features"
N_TASK_PROMPTS = 32
N_CORPUS_CONTEXTS = 32


@torch.no_grad()
def _live_features(model, sae, stream, n_contexts: int) -> torch.Tensor:
    """``[n_latents]`` bool: fires at least once on ``n_contexts`` held-out contexts (BOS excluded)."""
    from mechscope.models import run_with_cache

    tokens = stream.batch(0, n_contexts)
    z = run_with_cache(model, tokens, [sae.cfg.hook_in])[sae.cfg.hook_in][:, 1:]  # [batch, pos, head, d_head]
    codes = sae.encode(z.flatten(2).to(sae.W_enc.dtype))  # [batch, pos, n_latents]
    return (codes > 0).flatten(0, 1).any(0).cpu()


@torch.no_grad()
def _task_dfa(model, sae, task) -> dict:
    """Per-head share of the active features' pre-activations at each prompt's answer position."""
    from mechscope.attention import attention_inputs, dfa_rows, zsae_info

    info = zsae_info(sae, model)
    tokens, q = task.clean, task.answer_pos
    inputs = attention_inputs(model, tokens, info.layer)
    codes = sae.encode(inputs.z[torch.arange(len(q)), q].flatten(1).to(sae.W_enc.dtype))  # [n, n_latents]
    b, f = (codes > 0).nonzero(as_tuple=True)
    rows = torch.stack([b, q[b], f], 1)
    dfa = dfa_rows(sae, inputs, rows, info=info)
    by_head = dfa.by_head().clamp_min(0) * dfa.act[:, None]  # [n_rows, head], positive terms weighted by activation
    share = by_head.sum(0) / by_head.sum().clamp_min(1e-12)
    per_feature = torch.zeros(sae.n_latents, dtype=torch.float64).index_add_(0, f, dfa.act)
    return {"prompts": len(q), "active_per_prompt": round(len(rows) / len(q), 2), "dfa_max_error": dfa.error(),
            "head_share": [round(float(x), 4) for x in share],
            "top_features": [int(i) for i in per_feature.argsort(descending=True)[:8] if per_feature[i] > 0]}


def run(ctx: DemoContext) -> dict:
    from mechscope.attention import head_attribution
    from mechscope.demo.figures import head_share_heatmap
    from mechscope.tasks import make_task

    model, sae = ctx.need("model", "corpus"), ctx.need("dictionaries", "dictionaries")["attention_sae"]
    attr = head_attribution(sae, model)
    live = _live_features(model, sae, ctx.need("eval_stream", "corpus"), N_CORPUS_CONTEXTS)
    t = ctx.card["task"]
    task = make_task(t["name"], model.tokenizer, n=N_TASK_PROMPTS, seed=7, split="heldout", variant=t["variant"], **(t.get("kwargs") or {}))
    dfa = _task_dfa(model, sae, task)
    heads = [f"{attr.layer}.{h}" for h in range(attr.n_heads)]
    circuit = set(ctx.card["circuit"]["nodes"])
    counts = attr.head_counts(live.nonzero().squeeze(1).tolist())
    frac = attr.fractions
    table = [{"head": h, "in verified circuit": h in circuit, "live features it dominates": counts[i],
              "mean share over live features": round(float(frac[live, i].mean()), 4) if bool(live.any()) else None,
              "share of task features' input (DFA)": dfa["head_share"][i]} for i, h in enumerate(heads)]
    top_dfa_head = heads[max(range(len(heads)), key=lambda i: dfa["head_share"][i])]
    figure = head_share_heatmap(frac[live], heads, ctx.out / "attention_head_shares.png", f"live features of the {sae.cfg.hook_in} SAE")
    return {"hook": sae.cfg.hook_in, "layer": attr.layer, "n_latents": sae.n_latents, "live_features": int(live.sum()),
            "live_definition": f"fires on at least one token of {N_CORPUS_CONTEXTS} held-out contexts",
            "head_attribution": attr.to_dict(live=live, n_top=5), "task_dfa": dfa, "heads": table,
            "top_task_head": top_dfa_head, "top_task_head_in_circuit": top_dfa_head in circuit,
            "circuit_heads": sorted(n for n in circuit if n in heads), "figures": {"head_shares": figure}}


def headline(f: dict) -> str:
    return (f"{f['live_features']}/{f['n_latents']} live features; on the task, head {f['top_task_head']} writes "
            f"{max(f['task_dfa']['head_share']):.0%} of the active features' input "
            f"({'in' if f['top_task_head_in_circuit'] else 'not in'} the verified circuit)")


def section(f: dict) -> Section:
    d = f["task_dfa"]
    text = (f"SAE on {f['hook']}: {f['live_features']} of {f['n_latents']} features are live ({f['live_definition']}). "
            "Head attribution: a feature's share on a head is the norm of its decoder block for that head over the sum of "
            f"its blocks' norms (mean largest share over live features: {f['head_attribution']['mean_max_share']}).\n\n"
            f"Direct feature attribution on {d['prompts']} held-out task prompts at the answer position "
            f"({d['active_per_prompt']} active features per prompt; exact to {d['dfa_max_error']:.1e}): head {f['top_task_head']} "
            f"writes the largest share of the active features' pre-activations. Verified circuit heads in this layer: "
            f"{', '.join(f['circuit_heads']) or 'none'}.")
    return Section(KEY, TITLE, text=text, tables=[("heads", f["heads"])], figures=[("decoder-norm share per head", f["figures"]["head_shares"])])
