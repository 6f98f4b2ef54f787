"""Constructed models with known transcoder circuits, for tests and demos (no training).

* :func:`tiny_model` — a small random ``HookedTransformer`` with MLPs whose LayerNorm weights and
  biases, value / output biases are perturbed away from their defaults (so every term of the
  exact decomposition is exercised); :func:`random_transcoders` — untrained transcoders for it
  (the decomposition is exact whatever the weights).
* :func:`planted_path_model` — hand-set weights in which one path dominates the logit difference:
  token ``t`` -> feature ``a`` of layer 0 -> (optionally head ``1.0`` moving it from an earlier
  position) -> feature ``b`` of layer 1 -> the logit direction ``e_good - e_bad``; everything else
  is small random noise.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from mechscope.dictionaries import Dictionary, DictionaryConfig
from mechscope.models.model import Model
from mechscope.transcoders.replacement import TranscoderSet


def tiny_model(*, d_vocab: int = 64, d_model: int = 32, n_layers: int = 2, n_heads: int = 4, d_mlp: int = 64,
               normalization: str | None = "LN", dtype: torch.dtype = torch.float64, seed: int = 0, tokenizer=None, **cfg_extra) -> Model:
    """A random model with perturbed norm weights and biases; ``cfg_extra`` goes to the TL config
    (e.g. ``n_key_value_heads=2`` for grouped-query attention)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=d_model, n_heads=n_heads, d_head=d_model // n_heads, n_ctx=64,
                                  d_vocab=d_vocab, d_mlp=d_mlp, act_fn="gelu", normalization_type=normalization, seed=seed,
                                  device="cpu", dtype=dtype, **cfg_extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = HookedTransformer(cfg)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if ".ln" in name or name.startswith("ln_final"):
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
            elif name.endswith(("b_V", "b_O", "b_U", "b_in", "b_out")):
                p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    if tokenizer is not None:
        module.tokenizer = tokenizer
    return Model(module=module.eval(), name=f"tiny-{normalization}-{n_layers}l-seed{seed}", kind="transformer_lens", tokenizer=tokenizer)


def random_transcoders(model: Model, *, n_latents: int = 96, activation: str = "relu", kind: str = "transcoder", k: int = 12,
                       hook_in: str = "normalized", dtype: str = "float64", seed: int = 0) -> TranscoderSet:
    """One untrained transcoder per layer; ``b_enc`` raised so that many latents fire."""
    from mechscope.transcoders.train import hooks_for

    cfg = model.module.cfg
    out = []
    for l in range(cfg.n_layers):
        hin, hout = hooks_for(l, hook_in, bool(cfg.parallel_attn_mlp))
        c = DictionaryConfig(d_in=cfg.d_model, n_latents=n_latents, kind=kind, activation=activation, k=k, hook_in=hin,
                             hook_out=hout, dtype=dtype)
        d = Dictionary(c, seed=seed + l)
        gen = torch.Generator().manual_seed(seed + 100 + l)
        with torch.no_grad():
            d.b_enc.fill_(0.2)
            d.b_dec.copy_(0.3 * torch.randn(d.b_dec.shape, generator=gen, dtype=torch.float64).to(d.b_dec.dtype))
            if kind == "skip_transcoder":
                d.W_skip.copy_(0.1 * torch.randn(d.W_skip.shape, generator=gen, dtype=torch.float64).to(d.W_skip.dtype))
        out.append(d)
    return TranscoderSet.from_list(out)


@dataclass
class Planted:
    model: Model
    transcoders: TranscoderSet
    tokens: torch.Tensor  # [1, pos]
    token: int  # t
    source_pos: int  # where t sits
    feature_a: int  # layer 0
    feature_b: int  # layer 1
    good: int
    bad: int
    via_head: tuple[int, int] | None

    @property
    def expected(self) -> list[str]:
        """Node names of the planted path, root's first contributor first."""
        P = self.tokens.shape[1] - 1
        s = self.source_pos
        if self.via_head is None:
            return [f"mlp1.f{self.feature_b}@{P}", f"mlp0.f{self.feature_a}@{P}", f"embed[{self.token}]@{P}"]
        l, h = self.via_head
        return [f"mlp1.f{self.feature_b}@{P}", f"{l}.{h}@{P}<-{s}", f"mlp0.f{self.feature_a}@{s}", f"embed[{self.token}]@{s}"]


def planted_path_model(*, via_head: bool = False, seed: int = 0, d_model: int = 24, d_vocab: int = 40, n_latents: int = 48,
                       seq_len: int = 5, strength: float = 3.0) -> Planted:
    """A 2-layer LN model + ReLU transcoders where the path ``embed[t] -> mlp0.f_a -> [1.0 ->] mlp1.f_b -> logits``
    dominates the logit difference ``e_good - e_bad`` at the last position. With ``via_head`` the token
    sits at position 1 and head 1.0 (uniform attention: W_Q = W_K = 0) carries feature a's output to
    the last position, where its OV circuit writes the direction feature b reads."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, s=1.0: s * torch.randn(*shape, generator=gen, dtype=torch.float64)  # noqa: E731
    cfg = HookedTransformerConfig(n_layers=2, d_model=d_model, n_heads=2, d_head=d_model // 2, n_ctx=16, d_vocab=d_vocab,
                                  d_mlp=32, act_fn="gelu", normalization_type="LN", seed=seed, device="cpu", dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = HookedTransformer(cfg)
    # orthonormal, mean-zero directions (LayerNorm centres the residual)
    basis = torch.linalg.qr(torch.cat([torch.ones(d_model, 1, dtype=torch.float64), rnd(d_model, 5)], 1))[0][:, 1:]
    e_a, e_b, e_c, e_d = basis[:, 0], basis[:, 1], basis[:, 2], basis[:, 3]
    t, good, bad = 7, 3, 11
    a, b = 5, 9
    with torch.no_grad():
        planted = basis[:, :4]  # noise in the embeddings is kept off the planted directions
        off = lambda x: x - (x @ planted) @ planted.T  # noqa: E731
        m.W_E.copy_(off(rnd(d_vocab, d_model, s=1.0)))
        m.W_E[t] += strength * e_a
        m.W_pos.copy_(off(rnd(16, d_model, s=0.3)))
        for blk in m.blocks:
            blk.attn.W_Q.zero_()
            blk.attn.W_K.zero_()  # uniform causal attention
            blk.attn.W_V.copy_(rnd(*blk.attn.W_V.shape, s=0.05))
            blk.attn.W_O.copy_(rnd(*blk.attn.W_O.shape, s=0.05))
        if via_head:
            # head 1.0 reads e_b at its source and writes e_d; feature b reads e_d
            dh = cfg.d_head
            V = torch.zeros(d_model, dh, dtype=torch.float64)
            V[:, 0] = e_b
            O = torch.zeros(dh, d_model, dtype=torch.float64)
            O[0] = e_d * strength * 2
            m.blocks[1].attn.W_V[0] = V
            m.blocks[1].attn.W_O[0] = O
        m.W_U.copy_(rnd(d_model, d_vocab, s=0.1))
        m.W_U[:, good] += strength * e_c
        m.W_U[:, bad] -= strength * e_c
    ts = []
    for layer, (f, read, write) in enumerate([(a, e_a, e_b), (b, e_d if via_head else e_b, e_c)]):
        c = DictionaryConfig(d_in=d_model, n_latents=n_latents, kind="transcoder", activation="relu",
                             hook_in=f"blocks.{layer}.ln2.hook_normalized", hook_out=f"blocks.{layer}.hook_mlp_out", dtype="float64")
        d = Dictionary(c, seed=seed + layer)
        with torch.no_grad():
            d.W_enc.copy_(rnd(n_latents, d_model, s=0.1))
            d.b_enc.fill_(0.02)
            d.W_dec.copy_(rnd(n_latents, d_model, s=0.1))
            d.b_dec.zero_()
            d.W_enc[f] = read * 2.0
            d.b_enc[f] = -1.0
            d.W_dec[f] = write * strength
        ts.append(d)
    src = 1 if via_head else seq_len - 1
    tokens = torch.randint(0, d_vocab, (1, seq_len), generator=gen)
    tokens[tokens == t] = t + 1
    tokens[0, src] = t
    model = Model(module=m.eval(), name=f"planted{'-head' if via_head else ''}", kind="transformer_lens")
    return Planted(model, TranscoderSet.from_list(ts), tokens, t, src, a, b, good, bad, (1, 0) if via_head else None)
