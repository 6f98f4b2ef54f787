"""Recursive direct feature attribution: follow a feature's source contributions back through
earlier attention layers (and, optionally, residual-stream SAEs) with attention patterns and
LayerNorm scales frozen at their values on the prompt.

With patterns and LN scales frozen, every step is linear, so each node's value splits exactly
into its children's values:

* **feature** ``f`` at query ``q`` (layer ``L``): ``pre[f]`` = per-head nodes + ``encoder_bias`` + ``centering``.
* **head** ``(l, h)`` at position ``q`` read along a direction ``w`` of its ``z`` space:
  ``z[q, h] . w`` = one **source** node per key ``k`` (``pattern[h,q,k] * (v[k,h] - b_V[h]) . w``) + ``value_bias``.
* **source** ``(l, h, q -> k)``: ``pattern * LN_l(x_k) @ W_V[h] . w`` = ``ln_bias`` + the residual
  stream ``x_k`` (input of layer ``l``) dotted with ``d = centre(g * (W_V[h] w) / scale_k) * pattern``,
  split into its components: ``embed``, ``pos_embed``, every earlier layer's heads (each a
  **head** node read along ``W_O[h'] d`` — the recursion), ``b_O`` and MLP outputs (leaves).
  The residual is the same sum in parallel blocks (GPT-NeoX / Pythia). With a norm after attention
  (Gemma 2's ``ln1_post``, OLMo 2's ``ln1``; scale frozen) earlier heads and ``b_O`` are read along
  ``w ⊙ d / s``; ``hook_mlp_out`` already includes the norm after the MLP. OLMo 2's attention reads
  the raw residual, so its sources have no ``ln1`` scale or bias.
* If a residual-stream SAE on ``blocks.l.hook_resid_pre`` is given, a source node also carries an
  alternative exact split of ``x_k . d`` into SAE features, ``b_dec`` and the reconstruction error
  (``Node.alternatives["resid_sae"]``); the recursion follows the component split.

Small terms are pruned into a ``rest`` node (values stay exact); ``Node.check()`` returns the
largest ``|sum(children) - value|`` in the tree.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from mechscope.attention.dfa import bias_terms, encoder_blocks, preactivations, zsae_info
from mechscope.errors import ConfigError
from mechscope.models.model import as_model, sublayer_norms


@dataclass
class Node:
    """One term of a recursive DFA tree. ``value`` is exact; ``children`` (when present) sum to it."""

    kind: str  # feature | head | source | value_bias | ln_bias | embed | pos_embed | b_O | mlp | encoder_bias | centering | rest | resid_sae_* | residual
    value: float
    layer: int | None = None
    head: int | None = None
    position: int | None = None
    source: int | None = None
    token: int | None = None
    label: str = ""
    children: list["Node"] = field(default_factory=list)
    alternatives: dict[str, list["Node"]] = field(default_factory=dict)

    def check(self) -> float:
        """Largest ``|sum(children) - value|`` over this node and its descendants (0 for leaves);
        alternative splits are checked too."""
        err = 0.0
        for kids in ([self.children] if self.children else []) + list(self.alternatives.values()):
            err = max(err, abs(sum(c.value for c in kids) - self.value))
        for c in self.children:
            err = max(err, c.check())
        return err

    def walk(self):
        yield self
        for c in self.children:
            yield from c.walk()

    def to_dict(self, max_depth: int | None = None) -> dict:
        d = {"kind": self.kind, "label": self.label, "value": round(self.value, 6)}
        for k in ("layer", "head", "position", "source", "token"):
            v = getattr(self, k)
            if v is not None:
                d[k] = v
        if self.children and (max_depth is None or max_depth > 0):
            d["children"] = [c.to_dict(None if max_depth is None else max_depth - 1) for c in self.children]
        if self.alternatives:
            d["alternatives"] = {k: [c.to_dict(0) for c in v] for k, v in self.alternatives.items()}
        return d

    def render(self, max_depth: int = 4, min_abs: float = 0.0, indent: str = "") -> str:
        """A text tree (children sorted by |value|)."""
        lines = [f"{indent}{self.value:+.4f}  {self.label or self.kind}"]
        if max_depth > 0:
            for c in sorted(self.children, key=lambda n: -abs(n.value)):
                if abs(c.value) >= min_abs:
                    lines.append(c.render(max_depth - 1, min_abs, indent + "  "))
        return "\n".join(lines)


class _Ctx:
    """Everything one prompt's frozen forward pass provides, in float64."""

    def __init__(self, model, tokens: Tensor, layer: int, resid_saes: dict, dtype: torch.dtype):
        from mechscope.models import run_with_cache
        from mechscope.models.model import require_hooked_transformer

        model = require_hooked_transformer(model, "recursive DFA")
        self.model, self.m, self.dtype = model, model.module, dtype
        cfg = self.m.cfg
        self.cfg = cfg
        if cfg.positional_embedding_type not in ("standard", "rotary", "shortformer", "alibi"):
            raise ConfigError(f"unsupported positional embedding {cfg.positional_embedding_type!r}")
        if cfg.normalization_type not in (None, "LN", "LNPre", "RMS", "RMSPre"):
            raise ConfigError(f"unsupported normalization {cfg.normalization_type!r}")
        self.norms = sublayer_norms(cfg)
        names = ["hook_embed"]
        self.std_pos = cfg.positional_embedding_type == "standard"
        if self.std_pos:
            names.append("hook_pos_embed")
        for l in range(layer + 1):
            names += [f"blocks.{l}.attn.hook_pattern", f"blocks.{l}.attn.hook_v", f"blocks.{l}.attn.hook_z", f"blocks.{l}.hook_resid_pre"]
            if self.norms.attn_in:
                names.append(f"blocks.{l}.ln1.hook_scale")
            if not cfg.attn_only and l < layer:
                names.append(f"blocks.{l}.hook_mlp_out")
            if self.norms.attn_out and l < layer:
                names.append(f"blocks.{l}.{self.norms.attn_out}.hook_scale")
        names += [h for h in resid_saes if h not in names]
        self.cache = {k: v[0].to(dtype) for k, v in run_with_cache(model, tokens, names).items()}
        self.tokens = tokens[0]
        self.resid_saes = resid_saes

    def p(self, t: Tensor) -> Tensor:
        return t.detach().to(self.dtype)

    def attn(self, l: int):
        return self.m.blocks[l].attn

    def W_V(self, l: int) -> Tensor:
        from mechscope.attention.dfa import _per_head

        return _per_head(self.p(self.attn(l).W_V), self.cfg.n_heads, 0)  # [H, d_model, D]

    def b_V(self, l: int) -> Tensor:
        from mechscope.attention.dfa import _per_head

        b = getattr(self.attn(l), "b_V", None)
        return torch.zeros(self.cfg.n_heads, self.cfg.d_head, dtype=self.dtype) if b is None else _per_head(self.p(b), self.cfg.n_heads, 0)

    def pattern(self, l: int) -> Tensor:
        return self.cache[f"blocks.{l}.attn.hook_pattern"]  # [H, Q, K]

    def v(self, l: int) -> Tensor:
        from mechscope.attention.dfa import _per_head

        return _per_head(self.cache[f"blocks.{l}.attn.hook_v"], self.cfg.n_heads, 1)  # [K, H, D]

    def attention_read(self, l: int, k: int, d: Tensor) -> Tensor:
        """The direction along which layer ``l``'s summed attention output (before any post-norm)
        is read at position ``k`` when the residual is read along ``d``: ``w ⊙ d / s`` through the norm
        after attention (Gemma 2's ``ln1_post``, OLMo 2's ``ln1``; scale frozen), ``d`` without one."""
        post = self.norms.attn_out
        if post is None:
            return d
        return d * self.p(getattr(self.m.blocks[l], post).w) / self.cache[f"blocks.{l}.{post}.hook_scale"][k].reshape(())

    def ln(self, l: int, k: int) -> tuple[Tensor | None, Tensor | None, Tensor | None, bool]:
        """``(gain, bias, scale, centre)`` of layer ``l``'s attention-input norm at position ``k``."""
        nt = self.cfg.normalization_type
        if self.norms.attn_in is None:  # attention reads the raw residual
            return None, None, None, False
        ln = self.m.blocks[l].ln1
        scale = self.cache[f"blocks.{l}.ln1.hook_scale"][k].reshape(())
        g = self.p(ln.w) if hasattr(ln, "w") else None
        b = self.p(ln.b) if hasattr(ln, "b") else None
        return g, b, scale, nt in ("LN", "LNPre")


def _tok(ctx: _Ctx, k: int, decode) -> str:
    t = int(ctx.tokens[k])
    return f"{decode(t)!r}" if decode else f"#{t}"


def _prune(nodes: list[Node], keep: int, min_abs: float, label: str) -> list[Node]:
    """Keep the ``keep`` largest |value| nodes with |value| >= min_abs; fold the others into one ``rest`` node."""
    order = sorted(nodes, key=lambda n: -abs(n.value))
    kept = [n for n in order[:keep] if abs(n.value) >= min_abs]
    rest = [n for n in nodes if all(n is not k for k in kept)]
    out = sorted(kept, key=lambda n: (n.source if n.source is not None else -1))
    if rest:
        out.append(Node("rest", float(sum(n.value for n in rest)), label=f"{len(rest)} other {label}"))
    return out


def _head_node(ctx: _Ctx, l: int, h: int, q: int, w: Tensor, depth: int, opts: dict, decode) -> Node:
    """``z[l, q, h] . w`` split over source positions (+ the value-bias term); sources expanded."""
    pat = ctx.pattern(l)[h, q]  # [K]
    v = ctx.v(l)[:, h]  # [K, D]
    bV = ctx.b_V(l)[h]
    per_src = pat * ((v - bV) @ w)  # [K]
    value = float(ctx.cache[f"blocks.{l}.attn.hook_z"][q, h] @ w)
    node = Node("head", value, layer=l, head=h, position=q, label=f"head {l}.{h} at {q} ({_tok(ctx, q, decode)})")
    sources = []
    for k in range(q + 1):
        if float(pat[k]) == 0.0:
            continue
        src = Node("source", float(per_src[k]), layer=l, head=h, position=q, source=k, token=int(ctx.tokens[k]),
                   label=f"{l}.{h}: {q} <- {k} {_tok(ctx, k, decode)} (attn {float(pat[k]):.3f})")
        src._direction = float(pat[k]) * (ctx.W_V(l)[h] @ w)  # [d_model], in LN-output space
        sources.append(src)
    kept = _prune(sources, opts["top_sources"], opts["min_abs"], "sources")
    for s in kept:
        if s.kind == "source" and depth > 0 and abs(s.value) >= opts["min_abs"]:
            _expand_source(ctx, s, depth, opts, decode)
        if hasattr(s, "_direction"):
            del s._direction
    vb = float(pat.sum() * (bV @ w))
    node.children = kept + [Node("value_bias", vb, layer=l, head=h, position=q, label=f"b_V of {l}.{h}")]
    return node


def _expand_source(ctx: _Ctx, node: Node, depth: int, opts: dict, decode) -> None:
    """Split a source node's value over the residual stream at its source position."""
    l, k, u = node.layer, node.source, node._direction
    g, b, scale, centre = ctx.ln(l, k)
    kids: list[Node] = []
    if b is not None:
        kids.append(Node("ln_bias", float(b @ u), layer=l, position=k, label=f"ln1 bias of layer {l}"))
    d = u * g if g is not None else u.clone()
    if scale is not None:
        d = d / scale
    if centre:
        d = d - d.mean()
    c = ctx.cache
    kids.append(Node("embed", float(c["hook_embed"][k] @ d), position=k, token=int(ctx.tokens[k]),
                     label=f"token embedding {_tok(ctx, k, decode)} at {k}"))
    if ctx.std_pos:
        kids.append(Node("pos_embed", float(c["hook_pos_embed"][k] @ d), position=k, label=f"position embedding {k}"))
    for lp in range(l):
        W_O = ctx.p(ctx.attn(lp).W_O)  # [H, D, d_model]
        da = ctx.attention_read(lp, k, d)
        heads = []
        for hp in range(ctx.cfg.n_heads):
            w = W_O[hp] @ da
            if depth - 1 > 0:
                heads.append(_head_node(ctx, lp, hp, k, w, depth - 1, opts, decode))
            else:
                heads.append(Node("head", float(c[f"blocks.{lp}.attn.hook_z"][k, hp] @ w), layer=lp, head=hp, position=k,
                                  label=f"head {lp}.{hp} at {k} (not expanded)"))
        kids += heads
        b_O = getattr(ctx.attn(lp), "b_O", None)
        if b_O is not None:
            kids.append(Node("b_O", float(ctx.p(b_O) @ da), layer=lp, label=f"b_O of layer {lp}"))
        if not ctx.cfg.attn_only:
            kids.append(Node("mlp", float(c[f"blocks.{lp}.hook_mlp_out"][k] @ d), layer=lp, position=k,
                             label=f"MLP {lp} output at {k} (frozen)"))
    node.children = kids
    resid = c[f"blocks.{l}.hook_resid_pre"][k]
    sae = ctx.resid_saes.get(f"blocks.{l}.hook_resid_pre")
    if sae is not None:
        node.alternatives["resid_sae"] = _sae_split(sae, resid, d, kids[0] if b is not None else None, opts, decode)


def _sae_split(sae, resid: Tensor, d: Tensor, ln_bias: Node | None, opts: dict, decode) -> list[Node]:
    dt = resid.dtype
    codes = sae.encode(resid[None].to(sae.W_enc.dtype)).to(dt)[0]  # [M]
    W_dec = sae.W_dec.detach().to(dt)
    recon = codes @ W_dec + sae.b_dec.detach().to(dt)
    feats = [Node("resid_sae_feature", float(codes[i] * (W_dec[i] @ d)), label=f"resid SAE feature {i} (act {float(codes[i]):.3f})")
             for i in codes.nonzero().squeeze(1).tolist()]
    out = ([ln_bias] if ln_bias is not None else []) + _prune(feats, opts["top_sources"], 0.0, "SAE features")
    out.append(Node("resid_sae_bias", float(sae.b_dec.detach().to(dt) @ d), label="resid SAE b_dec"))
    out.append(Node("resid_sae_error", float((resid - recon) @ d), label="resid SAE reconstruction error"))
    return out


@torch.no_grad()
def recursive_dfa(model, sae, tokens: Tensor, feature: int, query: int, *, depth: int | None = None, top_sources: int = 4,
                  min_abs: float | None = None, resid_saes: dict | None = None, decode=None, dtype: torch.dtype = torch.float64) -> Node:
    """The recursive DFA tree of ``feature`` at position ``query`` of one prompt ``tokens [pos]``.

    Args:
        depth: attention layers whose heads are split into sources (1: the SAE's own layer, its
            sources split into residual components with earlier heads as leaves; default: all
            layers down to 0).
        top_sources: per head node, sources kept (the rest folded into a ``rest`` node).
        min_abs: terms smaller than this are neither kept as sources nor expanded
            (default: 1% of |pre-activation|).
        resid_saes: ``{"blocks.l.hook_resid_pre": Dictionary}`` residual-stream SAEs for an
            alternative split of each source's residual stream.
        decode: ``token id -> str`` for labels (e.g. ``tokenizer.decode``).
    """
    model = as_model(model)
    info = zsae_info(sae, model)
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.shape[0] != 1:
        raise ConfigError(f"recursive DFA explains one prompt; found a batch of {tokens.shape[0]}")
    if not 0 <= query < tokens.shape[1]:
        raise ConfigError(f"query must be in [0, {tokens.shape[1]}); found {query}")
    if not 0 <= feature < sae.n_latents:
        raise ConfigError(f"feature must be in [0, {sae.n_latents}); found {feature}")
    resid_saes = dict(resid_saes or {})
    for h, s in resid_saes.items():
        if not (h.startswith("blocks.") and h.endswith(".hook_resid_pre")) or s.cfg.d_in != model.module.cfg.d_model:
            raise ConfigError(f"residual SAEs must read blocks.l.hook_resid_pre with d_in = d_model; found {h!r} (d_in={s.cfg.d_in})")
    ctx = _Ctx(model, tokens.to(model.device), info.layer, resid_saes, dtype)
    z = ctx.cache[info.hook][query]  # [H, D]
    pre = float(preactivations(sae, z[None], dtype)[0, feature])
    if min_abs is None:
        min_abs = 0.01 * abs(pre)
    opts = {"top_sources": top_sources, "min_abs": min_abs}
    W = encoder_blocks(sae, info, dtype)[feature]  # [H, D]
    b_enc, centering = bias_terms(sae, dtype)
    depth = info.layer + 1 if depth is None else depth
    if depth < 1:
        raise ConfigError(f"depth must be >= 1; found {depth}")
    root = Node("feature", pre, layer=info.layer, position=query, token=int(ctx.tokens[query]),
                label=f"feature {feature} of {info.hook} at {query} ({_tok(ctx, query, decode)})")
    root.children = [_head_node(ctx, info.layer, h, query, W[h], depth, opts, decode) for h in range(info.n_heads)]
    root.children += [Node("encoder_bias", float(b_enc[feature]), label="b_enc"),
                      Node("centering", float(centering[feature]), label="-b_dec . W_enc")]
    _drop_private(root)
    return root


def _drop_private(node: Node) -> None:
    for n in node.walk():
        for attr in ("_direction",):
            if hasattr(n, attr):
                delattr(n, attr)
