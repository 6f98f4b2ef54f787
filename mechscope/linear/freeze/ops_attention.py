"""Handler of ``scaled_dot_product_attention``: the attention pattern is frozen.

On ``x0`` the pattern ``P = softmax(q k^T * scale + mask)`` (``[..., L, S]``, with causal and GQA
handling) is recorded; the replays compute ``P @ v`` (``[..., L, E_v]``), linear in the values.
Queries and keys then only reach the output through ``P``; input-dependent masks and attention
dropout are ``POISON``.
"""

from __future__ import annotations

import math

import torch

from mechscope.linear.freeze.calls import _bind, _call, _register
from mechscope.linear.freeze.taints import _C, _L, _P, _X, LINEAR, _pattern


# -- attention


def _attention_pattern(q, k, attn_mask, is_causal, scale, enable_gqa):
    L, S = q.size(-2), k.size(-2)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    if enable_gqa and k.size(-3) != q.size(-3):
        k = k.repeat_interleave(q.size(-3) // k.size(-3), dim=-3)
    scores = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        causal = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return torch.softmax(scores, dim=-1)


def _h_sdpa(m, c):
    p = _bind(lambda query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
              enable_gqa=False: None, c)
    tq, tk, tv = m.taint(p["query"]), m.taint(p["key"]), m.taint(p["value"])
    if isinstance(p["attn_mask"], torch.Tensor) and m.taint(p["attn_mask"]).kind != _C:
        return _call(c), m.poison("scaled_dot_product_attention with an input-dependent mask")
    if tv.kind == _X:
        return _call(c), tv
    if tq.kind == _C and tk.kind == _C:
        return _call(c), tv
    if p["dropout_p"] > 0:
        return _call(c), m.poison("attention dropout is random; call model.eval() / pass dropout_p=0")
    if tv.kind == _P:
        return _call(c), m.poison("attention whose values are a frozen softmax output")
    taint = LINEAR if tv.kind == _L else _pattern(f"attention output {m.where()} depends on the input only "
                                                  "through its frozen pattern")
    if m.phase == "record":
        P = _attention_pattern(p["query"].detach(), p["key"].detach(), p["attn_mask"], p["is_causal"],
                               p["scale"], p["enable_gqa"])
        m.save(c, "attention", P)
        return _call(c), taint
    P = m.load(c, "attention")
    v = p["value"]
    if p["enable_gqa"] and v.size(-3) != P.size(-3):
        v = v.repeat_interleave(P.size(-3) // v.size(-3), dim=-3)
    return P @ v, taint


_register(["scaled_dot_product_attention"], _h_sdpa)
