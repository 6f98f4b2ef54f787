"""Direct feature attribution (DFA) by source position for attention-output SAEs.

An SAE on ``blocks.L.attn.hook_z`` reads the concatenated head outputs ``z [head, d_head]`` at
a query position ``q``. Each head's ``z`` is a pattern-weighted sum of value vectors::

    z[b, q, h, :] = sum_k pattern[b, h, q, k] * v[b, k, h, :],    v = LN1(x) @ W_V[h] + b_V[h]

and the SAE's pre-activation is linear in ``z`` (see :class:`mechscope.dictionaries.Dictionary`)::

    pre[f] = (z_flat - b_dec) @ W_enc[f] + b_enc[f]        (b_dec only when cfg.apply_b_dec_to_input)

so it splits *exactly* into one term per (head, source position) plus bias terms::

    pre[f] = sum_{h,k} pattern[h,q,k] * (v[k,h] - b_V[h]) . W_enc[f, h-block]     (sources)
           + sum_h   (sum_k pattern[h,q,k]) * b_V[h] . W_enc[f, h-block]          (value_bias; rows sum to 1)
           + b_enc[f]                                                               (encoder_bias)
           - b_dec . W_enc[f]                                                       (centering)

:class:`DFA` holds those terms for a set of (batch, query, feature) rows; ``DFA.error()`` is the
largest gap between their sum and the SAE's own pre-activation (float tolerance).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from mechscope.errors import ConfigError

CHUNK = 4096  # positions encoded at once
BATCH_CHUNK = 16  # prompts whose value vectors go through the encoder at once
_HOOK_Z = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")


@dataclass(frozen=True)
class ZSAEInfo:
    """Where an attention-output SAE reads: hook, layer, and the head structure of its input."""

    hook: str
    layer: int
    n_heads: int
    d_head: int


def zsae_info(sae, model=None) -> ZSAEInfo:
    """Check that ``sae`` is an SAE on ``blocks.L.attn.hook_z`` and return its layer and head shape.

    The head structure comes from ``sae.cfg.act_shape`` (``[n_heads, d_head]``), or from the
    model's config when the SAE does not record it (e.g. a SAELens import).
    """
    cfg = sae.cfg
    if cfg.kind != "sae":
        raise ConfigError(f"attention-output analyses need an SAE on attn.hook_z; found a {cfg.kind}")
    m = _HOOK_Z.match(cfg.hook_in or "")
    if not m:
        raise ConfigError(f"expected an SAE on 'blocks.L.attn.hook_z' (heads concatenated); this one reads {cfg.hook_in!r}")
    layer = int(m.group(1))
    shape = list(cfg.act_shape) if cfg.act_shape else None
    mcfg = getattr(getattr(model, "module", model), "cfg", None) if model is not None else None
    if mcfg is not None:
        want = [mcfg.n_heads, mcfg.d_head]
        if shape is not None and shape != want:
            raise ConfigError(f"SAE act_shape {shape} does not match the model's hook_z shape {want}")
        if layer >= mcfg.n_layers:
            raise ConfigError(f"SAE reads layer {layer} but the model has {mcfg.n_layers} layers")
        shape = want
    if shape is None or len(shape) != 2:
        raise ConfigError(f"cannot tell the head structure of {cfg.hook_in!r}: act_shape is {cfg.act_shape}; pass the model")
    if shape[0] * shape[1] != cfg.d_in:
        raise ConfigError(f"[n_heads, d_head] = {shape} has {shape[0] * shape[1]} elements; the SAE's d_in is {cfg.d_in}")
    return ZSAEInfo(cfg.hook_in, layer, int(shape[0]), int(shape[1]))


def preactivations(sae, z: Tensor, dtype: torch.dtype = torch.float64) -> Tensor:
    """The SAE's encoder pre-activation ``[..., n_latents]`` for ``z [..., n_heads, d_head]`` (or
    ``[..., d_in]``), computed exactly as :meth:`Dictionary.encode` does before its activation."""
    d_in = sae.cfg.d_in
    x = (z if z.shape[-1] == d_in else z.flatten(-2)).to(dtype)
    if x.shape[-1] != d_in:
        raise ConfigError(f"expected z of shape [..., n_heads, d_head] with {d_in} elements per position; found {list(z.shape)}")
    if sae.cfg.apply_b_dec_to_input:
        x = x - sae.b_dec.detach().to(dtype)
    return x @ sae.W_enc.detach().to(dtype).t() + sae.b_enc.detach().to(dtype)


def encoder_blocks(sae, info: ZSAEInfo, dtype: torch.dtype = torch.float64) -> Tensor:
    """``W_enc`` as per-head blocks ``[n_latents, n_heads, d_head]``."""
    return sae.W_enc.detach().to(dtype).reshape(sae.n_latents, info.n_heads, info.d_head)


def bias_terms(sae, dtype: torch.dtype = torch.float64) -> tuple[Tensor, Tensor]:
    """``(encoder_bias [n_latents], centering [n_latents])``: ``b_enc`` and ``-b_dec . W_enc[f]``
    (zero when the SAE does not subtract ``b_dec`` from its input)."""
    b_enc = sae.b_enc.detach().to(dtype)
    if sae.cfg.apply_b_dec_to_input:
        centering = -(sae.W_enc.detach().to(dtype) @ sae.b_dec.detach().to(dtype))
    else:
        centering = torch.zeros_like(b_enc)
    return b_enc, centering


@dataclass
class AttentionInputs:
    """One forward pass's attention at a layer. Shapes: ``pattern [batch, head, query, key]``,
    ``v [batch, key, head, d_head]`` (with ``b_V``), ``z [batch, query, head, d_head]``,
    ``b_V [head, d_head]``."""

    tokens: Tensor
    layer: int
    pattern: Tensor
    v: Tensor
    z: Tensor
    b_V: Tensor


def _per_head(t: Tensor, n_heads: int, dim: int) -> Tensor:
    """Grouped-query attention: repeat key/value heads so there is one per query head."""
    if t.shape[dim] == n_heads:
        return t
    if n_heads % t.shape[dim]:
        raise ConfigError(f"{t.shape[dim]} key/value heads do not divide {n_heads} query heads")
    return t.repeat_interleave(n_heads // t.shape[dim], dim=dim)


@torch.no_grad()
def attention_inputs(model, tokens: Tensor, layer: int) -> AttentionInputs:
    """Run ``model`` on ``tokens [batch, pos]`` and keep layer ``layer``'s pattern, values and z."""
    from mechscope.models import run_with_cache
    from mechscope.models.model import require_hooked_transformer

    model = require_hooked_transformer(model, "DFA")
    names = [f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_v", f"blocks.{layer}.attn.hook_z"]
    cache = run_with_cache(model, tokens, names)
    n_heads = model.module.cfg.n_heads
    attn = model.module.blocks[layer].attn
    b_V = getattr(attn, "b_V", None)
    v = _per_head(cache[names[1]], n_heads, 2)
    b_V = torch.zeros(n_heads, v.shape[-1], dtype=v.dtype, device=v.device) if b_V is None else _per_head(b_V.detach(), n_heads, 0)
    return AttentionInputs(tokens=tokens, layer=layer, pattern=cache[names[0]], v=v, z=cache[names[2]], b_V=b_V)


@dataclass
class DFA:
    """Direct feature attribution for ``n`` (batch, query, feature) rows.

    ``rows [n, 3]`` — (batch index, query position, feature); ``sources [n, head, key]``;
    ``value_bias [n, head]``; ``encoder_bias [n]``; ``centering [n]``; ``pre [n]`` — the SAE's
    pre-activation on the model's own ``z``; ``act [n]`` — the SAE's code (after its activation).
    ``sources.sum((1, 2)) + value_bias.sum(1) + encoder_bias + centering == pre``.
    """

    hook: str
    rows: Tensor
    sources: Tensor
    value_bias: Tensor
    encoder_bias: Tensor
    centering: Tensor
    pre: Tensor
    act: Tensor

    def __len__(self) -> int:
        return self.rows.shape[0]

    def total(self) -> Tensor:
        """``[n]`` the sum of every term: equals ``pre`` up to float error."""
        return self.sources.sum((1, 2)) + self.value_bias.sum(1) + self.encoder_bias + self.centering

    def error(self) -> float:
        """Largest ``|total - pre|`` over the rows."""
        return float((self.total() - self.pre).abs().max()) if len(self) else 0.0

    def by_head(self) -> Tensor:
        """``[n, head]`` each head's share: its sources plus its value-bias term."""
        return self.sources.sum(2) + self.value_bias

    def by_source(self) -> Tensor:
        """``[n, key]`` each source position's share, summed over heads."""
        return self.sources.sum(1)

    def by_distance(self) -> Tensor:
        """``[n, key]`` source contributions indexed by distance ``q - k`` (0 = the query itself)."""
        n, _, K = self.sources.shape
        src = self.by_source()
        q = self.rows[:, 1]
        d = torch.arange(K, device=src.device)
        k = q[:, None] - d[None, :]
        valid = k >= 0
        out = torch.zeros_like(src)
        out[valid] = src.gather(1, k.clamp_min(0))[valid]
        return out

    def select(self, mask: Tensor) -> "DFA":
        return DFA(self.hook, self.rows[mask], self.sources[mask], self.value_bias[mask], self.encoder_bias[mask],
                   self.centering[mask], self.pre[mask], self.act[mask])

    def to_dict(self, i: int, tokens: Tensor | None = None, top: int = 8, decode=None) -> dict:
        """One row as JSON-ready data: the top (head, source) terms and the bias terms."""
        b, q, f = (int(x) for x in self.rows[i])
        s = self.sources[i]
        flat = s.flatten()
        order = flat.abs().argsort(descending=True)[:top]
        K = s.shape[1]
        terms = []
        for j in order.tolist():
            if float(flat[j]) == 0.0:
                break
            h, k = divmod(j, K)
            t = {"head": h, "source": k, "distance": q - k, "value": round(float(flat[j]), 6)}
            if tokens is not None:
                t["token_id"] = int(tokens[b, k])
                if decode is not None:
                    t["token"] = decode(int(tokens[b, k]))
            terms.append(t)
        return {"batch": b, "query": q, "feature": f, "pre": round(float(self.pre[i]), 6), "act": round(float(self.act[i]), 6),
                "by_head": [round(float(x), 6) for x in self.by_head()[i]], "top_terms": terms,
                "value_bias": round(float(self.value_bias[i].sum()), 6), "encoder_bias": round(float(self.encoder_bias[i]), 6),
                "centering": round(float(self.centering[i]), 6), "error": float((self.total()[i] - self.pre[i]).abs())}


def _as_rows(rows) -> Tensor:
    rows = torch.as_tensor(rows, dtype=torch.long)
    if rows.dim() != 2 or rows.shape[1] != 3:
        raise ConfigError(f"expected rows of (batch, query, feature) triples, shape [n, 3]; found {list(rows.shape)}")
    return rows


@torch.no_grad()
def dfa_rows(sae, inputs: AttentionInputs, rows, *, info: ZSAEInfo | None = None, dtype: torch.dtype = torch.float64) -> DFA:
    """DFA for chosen ``rows [n, 3]`` = (batch, query, feature) given one forward pass's
    :class:`AttentionInputs` (from :func:`attention_inputs`). Works in ``dtype`` (float64 by
    default, so the sum check is limited only by the model's own float32 ``z``)."""
    info = info or zsae_info(sae)
    rows = _as_rows(rows).to(inputs.pattern.device)
    B, H, Q, K = inputs.pattern.shape
    if H != info.n_heads:
        raise ConfigError(f"the pattern has {H} heads; the SAE expects {info.n_heads}")
    if len(rows) and (rows[:, 0].max() >= B or rows[:, 1].max() >= Q or rows[:, 2].max() >= sae.n_latents or rows.min() < 0):
        raise ConfigError(f"rows out of range: batch < {B}, query < {Q}, feature < {sae.n_latents}")
    W = encoder_blocks(sae, info, dtype).to(rows.device)  # [M, H, D]
    b_enc, centering = bias_terms(sae, dtype)
    n, K = len(rows), inputs.pattern.shape[-1]
    sources = torch.zeros(n, H, K, dtype=dtype, device=rows.device)
    value_bias = torch.zeros(n, H, dtype=dtype, device=rows.device)
    b_V = inputs.b_V.to(dtype)
    # per chunk of prompts: value vectors through each needed feature's encoder blocks
    for b0 in range(0, B, BATCH_CHUNK):
        sel = ((rows[:, 0] >= b0) & (rows[:, 0] < b0 + BATCH_CHUNK)).nonzero().squeeze(1)
        if not len(sel):
            continue
        r = rows[sel]
        feats, inv = torch.unique(r[:, 2], return_inverse=True)
        v_nob = inputs.v[b0 : b0 + BATCH_CHUNK].to(dtype) - b_V  # [b, K, H, D]
        vW = torch.einsum("bkhd,fhd->bfhk", v_nob, W[feats])  # [b, F_u, H, K]
        pat = inputs.pattern[r[:, 0], :, r[:, 1], :].to(dtype)  # [n_sel, H, K]
        sources[sel] = pat * vW[r[:, 0] - b0, inv]
        value_bias[sel] = pat.sum(-1) * torch.einsum("hd,fhd->fh", b_V, W[feats])[inv]
    # The SAE's own numbers on the model's z: pre-activation (exactly Dictionary.encode's) and code.
    pos, pos_inv = torch.unique(rows[:, :2], dim=0, return_inverse=True)
    z = inputs.z[pos[:, 0], pos[:, 1]].flatten(1)  # [n_pos, d_in]
    xe = z.to(dtype) - (sae.b_dec.detach().to(dtype) if sae.cfg.apply_b_dec_to_input else 0)
    pre = (xe[pos_inv] * sae.W_enc.detach().to(dtype)[rows[:, 2]]).sum(-1) + b_enc[rows[:, 2]]
    act = torch.empty_like(pre)
    for s in range(0, len(pos), CHUNK):
        codes = sae.encode(z[s : s + CHUNK].to(sae.W_enc.dtype)).to(dtype)  # [chunk, M]
        sel = (pos_inv >= s) & (pos_inv < s + CHUNK)
        act[sel] = codes[pos_inv[sel] - s, rows[sel, 2]]
    return DFA(info.hook, rows, sources, value_bias, b_enc[rows[:, 2]], centering[rows[:, 2]], pre, act)


@torch.no_grad()
def direct_feature_attribution(model, sae, tokens: Tensor, *, features: Sequence[int] | Tensor | None = None,
                               queries: Sequence[int] | None = None, inputs: AttentionInputs | None = None,
                               dtype: torch.dtype = torch.float64) -> DFA:
    """DFA of ``features`` (default: all) at ``queries`` (default: every position) for every
    prompt of ``tokens [batch, pos]``. Rows come in (batch, query, feature) order; for large
    grids prefer :func:`dfa_rows` on the rows you need (e.g. where features fire)."""
    info = zsae_info(sae, model)
    tokens = torch.as_tensor(tokens)
    if tokens.dim() == 1:
        tokens = tokens[None]
    inputs = inputs or attention_inputs(model, tokens, info.layer)
    B, _, Q, _ = inputs.pattern.shape
    f = torch.arange(sae.n_latents) if features is None else torch.as_tensor(features, dtype=torch.long).flatten()
    qs = torch.arange(Q) if queries is None else torch.as_tensor(queries, dtype=torch.long).flatten()
    grid = torch.cartesian_prod(torch.arange(B), qs, f).reshape(-1, 3)
    return dfa_rows(sae, inputs, grid, info=info, dtype=dtype)
