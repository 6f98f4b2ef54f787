"""Input-invariant connections between transcoder features (Dunefsky et al. 2024, §3.2):
how strongly one feature's decoder writes into another's encoder, whatever the input.

Residual-space encoder directions. A transcoder reading ``blocks.L.ln2.hook_normalized`` (the
LayerNorm output before its weight and bias, as TransformerLens hooks it) computes
``pre_i = W_enc[i] · C(x) / s + b_enc[i]``. The input-invariant direction is ``C(W_enc[i])``:
centring is linear and kept, the per-token scale ``1 / s`` is positive and input-dependent, so it is
dropped (every connection below is exact up to that positive factor at the reading position).
RMS norms do not centre; a transcoder reading the raw residual (``hook_resid_mid``) uses
``W_enc[i]`` itself. (``W_enc[i]`` is row i of our ``[n_latents, d_in]`` encoder — the column
``W_enc[:, i]`` in SAELens' ``[d_in, n_latents]`` layout.)

* **feature -> feature** (layer l < L): ``W_dec^l[j] · C(W_enc^L[i])``.
* **de-embedding**: ``W_E[t] · C(W_enc^L[i])`` — the direct path from token t to feature i (and
  ``W_pos[p] · ...`` for positions).
* **through head h of layer m** (l < m <= L, or the embeddings for any m <= L; m < L in parallel
  blocks, whose MLP does not see its own layer's attention): the head reads its
  input through ``ln1``: ``(C(v) ⊙ w1) W_V^h W_O^h · C(W_enc^L[i])`` for a writer ``v``
  (``W_dec^l[j]`` or ``W_E[t]``); the attention pattern (input-dependent) is left out: this is
  the connection *if* the head attended fully to the writer's position. Post-norm models (Gemma 2)
  multiply the head's write by ``ln1_post``'s weight (its scale dropped like ``ln2``'s).
* **to the logits**: ``W_dec^l[j] · C(w_f ⊙ W_U[:, t])`` (through ``ln_final``'s weight; an output
  soft-cap is left out, its gain is input-dependent).

:func:`top_connections` lists the strongest of each kind, upstream and downstream, for one feature.

Relation to the input-dependent attribution (:mod:`mechscope.transcoders.attribution`): at one
position, feature j's contribution to feature i's pre-activation is
``a_j · feature_to_feature[j, i] / s2`` — the weight times j's activation times ln2's frozen ``1/s``.
"""

from __future__ import annotations

from torch import Tensor

from mechscope.errors import ConfigError
from mechscope.models.model import as_model
from mechscope.models.model import sublayer_norms
from mechscope.transcoders.replacement import TranscoderSet, _weight, attention_input_read, check_model, read_direction


class _Weights:
    """Model and transcoder weights in float64 on CPU."""

    def __init__(self, model, ts: TranscoderSet):
        self.model = as_model(model)
        self.cfg = check_model(self.model)
        self.norms = sublayer_norms(self.cfg)
        ts.check(self.model)
        self.ts = ts
        self._c: dict = {}

    def w(self, name: str, layer: int | None = None) -> Tensor:
        key = (name, layer)
        if key not in self._c:
            self._c[key] = _weight(self.model.module, self.cfg, name, layer)
        return self._c[key]

    def heads_before(self, layer: int) -> range:
        """The layers whose heads write into MLP ``layer``'s input (its own too, unless blocks are parallel)."""
        return range(layer if getattr(self.cfg, "parallel_attn_mlp", False) else layer + 1)

    def enc(self, layer: int) -> Tensor:
        """``[n_latents, d_model]`` input-invariant residual-space encoder directions."""
        key = ("enc", layer)
        if key not in self._c:
            W = self.ts[layer].W_enc.detach().double().cpu()
            self._c[key] = read_direction(W, self.cfg) if self.ts.input_is_normalized(layer) else W
        return self._c[key]

    def dec(self, layer: int) -> Tensor:
        return self.ts[layer].W_dec.detach().double().cpu()

    def ov_read(self, writers: Tensor, layer: int, head: int) -> Tensor:
        """``(C(writers) ⊙ w1) W_V^h W_O^h``: what head ``head`` of ``layer`` writes when it attends
        fully to a position holding each writer vector (times ``ln1_post``'s weight ``w1p`` in
        post-norm models; its scale dropped like the others). ``writers [n, d_model] -> [n, d_model]``."""
        x = attention_input_read(writers, self.cfg, self.norms) * self.w("ln1_w", layer)
        out = (x @ self.w("W_V", layer)[head]) @ self.w("W_O", layer)[head]
        return out * self.w("ln1_post_w", layer) if self.norms.attn_out else out


def _weights(model, ts) -> _Weights:
    return model if isinstance(model, _Weights) else _Weights(model, ts)


def feature_to_feature(model, ts: TranscoderSet, src_layer: int, dst_layer: int) -> Tensor:
    """``[n_src, n_dst]``: ``W_dec^src[j] · C(W_enc^dst[i])`` (``src_layer < dst_layer``)."""
    W = _weights(model, ts)
    if not src_layer < dst_layer:
        raise ConfigError(f"feature -> feature connections run forward: src_layer ({src_layer}) must be < dst_layer ({dst_layer})")
    return W.dec(src_layer) @ W.enc(dst_layer).T


def deembedding(model, ts: TranscoderSet, layer: int) -> Tensor:
    """``[d_vocab, n_latents]``: ``W_E[t] · C(W_enc[i])`` (the direct path token -> feature)."""
    W = _weights(model, ts)
    return W.w("W_E") @ W.enc(layer).T


def position_embedding(model, ts: TranscoderSet, layer: int) -> Tensor | None:
    """``[n_ctx, n_latents]`` for models with learned (standard) position embeddings, else None."""
    W = _weights(model, ts)
    if W.cfg.positional_embedding_type != "standard":
        return None
    return W.w("W_pos") @ W.enc(layer).T


def through_head(model, ts: TranscoderSet, src_layer: int | None, head_layer: int, head: int, dst_layer: int) -> Tensor:
    """Connections through one head's OV circuit: ``[n_src, n_dst]`` from the features of
    ``src_layer`` (``None``: the token embeddings, ``[d_vocab, n_dst]``) to those of ``dst_layer``.
    Requires ``src_layer < head_layer <= dst_layer``."""
    W = _weights(model, ts)
    if head_layer not in W.heads_before(dst_layer) or (src_layer is not None and not src_layer < head_layer):
        later = f"> {head_layer} (parallel blocks)" if getattr(W.cfg, "parallel_attn_mlp", False) else f">= {head_layer}"
        raise ConfigError(f"a head in layer {head_layer} connects features of earlier layers (< {head_layer}) to features of "
                          f"layers {later}; found src_layer={src_layer}, dst_layer={dst_layer}")
    if not 0 <= head < W.cfg.n_heads:
        raise ConfigError(f"head {head} out of range (the model has {W.cfg.n_heads} heads per layer)")
    writers = W.w("W_E") if src_layer is None else W.dec(src_layer)
    return W.ov_read(writers, head_layer, head) @ W.enc(dst_layer).T


def to_logits(model, ts: TranscoderSet, layer: int) -> Tensor:
    """``[n_latents, d_vocab]``: ``W_dec[j] · C(w_f ⊙ W_U[:, t])`` (direct path to the logits)."""
    W = _weights(model, ts)
    U = (W.w("W_U") * W.w("lnf_w")[:, None]).T  # [vocab, d_model]
    return W.dec(layer) @ read_direction(U, W.cfg).T


def _top(values: Tensor, k: int, label) -> list[dict]:
    flat = values.flatten()
    k = min(k, flat.numel())
    idx = flat.abs().topk(k).indices
    return [{**label(int(i)), "weight": float(flat[i])} for i in idx]


def top_connections(model, ts: TranscoderSet, layer: int, feature: int, k: int = 10, tokenizer=None) -> dict:
    """The strongest input-invariant connections of feature ``feature`` in ``layer``:

    * ``upstream_features``: earlier features by direct ``W_dec · C(W_enc)``;
    * ``upstream_via_heads``: earlier features through each head's OV circuit;
    * ``tokens`` / ``tokens_via_heads``: de-embeddings, direct and through each head;
    * ``downstream_features``: later features it writes to (direct and through heads);
    * ``logits``: the tokens it promotes / suppresses directly.
    """
    W = _weights(model, ts)
    if layer not in ts:
        raise ConfigError(f"no transcoder for layer {layer}; layers: {ts.layers}")
    n_lat = ts[layer].n_latents
    if not 0 <= feature < n_lat:
        raise ConfigError(f"feature {feature} out of range for layer {layer} ({n_lat} latents)")
    tok = tokenizer or getattr(W.model, "tokenizer", None)

    def tname(t: int) -> dict:
        out = {"token": t}
        if tok is not None:
            try:
                out["text"] = tok.decode([t])
            except Exception:  # noqa: BLE001 - a tokenizer that cannot decode one id: leave the text out
                pass
        return out

    enc = W.enc(layer)[feature]  # [d_model]
    dec = W.dec(layer)[feature]
    H = W.cfg.n_heads
    result: dict = {"feature": f"mlp{layer}.f{feature}", "layer": layer, "index": feature,
                    "note": "weights are input-invariant (LayerNorm scales dropped, attention patterns left out)"}
    up = []
    for l in [x for x in ts.layers if x < layer]:
        up += _top(W.dec(l) @ enc, k, lambda j, l=l: {"feature": f"mlp{l}.f{j}", "layer": l, "index": j})
    result["upstream_features"] = sorted(up, key=lambda r: -abs(r["weight"]))[:k]
    via = []
    for m in W.heads_before(layer):
        for h in range(H):
            read = lambda X, m=m, h=h: W.ov_read(X, m, h) @ enc  # noqa: E731
            for l in [x for x in ts.layers if x < m]:
                via += _top(read(W.dec(l)), k, lambda j, l=l, m=m, h=h: {"feature": f"mlp{l}.f{j}", "head": f"{m}.{h}"})
    result["upstream_via_heads"] = sorted(via, key=lambda r: -abs(r["weight"]))[:k]
    result["tokens"] = _top(W.w("W_E") @ enc, k, tname)
    tv = []
    for m in W.heads_before(layer):
        for h in range(H):
            tv += _top(W.ov_read(W.w("W_E"), m, h) @ enc, k, lambda t, m=m, h=h: {**tname(t), "head": f"{m}.{h}"})
    result["tokens_via_heads"] = sorted(tv, key=lambda r: -abs(r["weight"]))[:k]
    down = []
    for L in [x for x in ts.layers if x > layer]:
        down += _top(W.enc(L) @ dec, k, lambda i, L=L: {"feature": f"mlp{L}.f{i}", "layer": L, "index": i})
        for m in (m for m in W.heads_before(L) if m > layer):
            for h in range(H):
                down += _top(W.enc(L) @ W.ov_read(dec[None], m, h)[0], k,
                             lambda i, L=L, m=m, h=h: {"feature": f"mlp{L}.f{i}", "head": f"{m}.{h}"})
    result["downstream_features"] = sorted(down, key=lambda r: -abs(r["weight"]))[:k]
    U = (W.w("W_U") * W.w("lnf_w")[:, None]).T
    logit_w = read_direction(U, W.cfg) @ dec
    result["logits_promoted"] = [{**tname(int(t)), "weight": float(logit_w[t])} for t in logit_w.topk(min(k, len(logit_w))).indices]
    result["logits_suppressed"] = [{**tname(int(t)), "weight": float(logit_w[t])} for t in (-logit_w).topk(min(k, len(logit_w))).indices]
    return result


def connection_matrix(model, ts: TranscoderSet, src: str, dst: str) -> Tensor:
    """A connection matrix by name: ``src`` is ``"embed"`` or ``"mlpL"``; ``dst`` is ``"mlpL"`` or
    ``"logits"``; insert a head with ``"mlp0>1.2>mlp1"``-style strings: ``connection_matrix(m, ts, "mlp0", "1.2>mlp1")``."""
    via = None
    if ">" in dst:
        head, dst = dst.split(">", 1)
        hl, hh = (int(x) for x in head.split("."))
        via = (hl, hh)
    dst_layer = None if dst == "logits" else _mlp_layer(dst)
    src_layer = None if src == "embed" else _mlp_layer(src)
    if via is not None:
        if dst_layer is None:
            raise ConfigError("connections through a head need a feature destination (mlpL), not logits")
        return through_head(model, ts, src_layer, via[0], via[1], dst_layer)
    if dst_layer is None:
        if src_layer is None:
            raise ConfigError("embed -> logits is not a transcoder connection")
        return to_logits(model, ts, src_layer)
    if src_layer is None:
        return deembedding(model, ts, dst_layer)
    return feature_to_feature(model, ts, src_layer, dst_layer)


def _mlp_layer(name: str) -> int:
    if not (name.startswith("mlp") and name[3:].isdigit()):
        raise ConfigError(f"expected 'embed', 'logits' or 'mlpL' (e.g. mlp0); found {name!r}")
    return int(name[3:])
