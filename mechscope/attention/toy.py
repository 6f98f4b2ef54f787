"""A hand-built 2-layer attention-only TransformerLens model whose circuit is known by
construction — a ground truth for the attention analyses.

Residual stream (no LayerNorm) = orthogonal one-hot subspaces: ``TOK`` (current token), ``POS``
(position), ``PREV`` (previous token, written by head 0.0), ``PREV2`` (the token two back,
written by head 0.1) and ``OUT`` (predicted token, read by the unembedding).

* 0.0 — previous-token head: attends from ``q`` to ``q-1``; copies ``TOK`` into ``PREV``.
* 0.1 — previous-previous-token head: attends to ``q-2``; copies ``TOK`` into ``PREV2``.
* 0.2 — current-token head: attends to ``q`` itself; writes nothing.
* 1.0 — short-prefix induction head: query ``TOK[q]`` matches key ``PREV[k]``, so it attends to the
  token *after* an earlier occurrence of the current token (BOS, at half the score, when there
  is none) and copies it into ``OUT``. It only checks one token of prefix.
* 1.1 — previous-token head in layer 1: attends to ``q-1``; writes nothing.
* 1.2 — long-prefix induction head: ``TOK[q]``/``PREV[k]`` and ``PREV[q]``/``PREV2[k]`` each add
  ``long_score`` to the attention logit, BOS gets ``long_score``; so one matching token gives
  partial attention and two give nearly all of it. Copies the attended token into ``OUT``.

Token 0 is BOS. Each layer-1 head's ``z`` is the one-hot of the token it attends to (a mixture
when attention is spread).
"""

from __future__ import annotations

import math
import warnings

import torch


def induction_toy_model(d_vocab: int = 48, n_ctx: int = 40, sharpness: float = 30.0, long_score: float = 3.0, seed: int = 0):
    """The model of the module docstring as a mechscope ``Model`` (no tokenizer: feed token ids;
    0 is BOS). ``sharpness`` is the attention logit of a match for the sharp heads (after TL's
    ``1/sqrt(d_head)``); ``long_score`` the per-token match logit of head 1.2."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from mechscope.models import Model

    V, N = d_vocab, n_ctx
    TOK, POS, PREV, PREV2, OUT = 0, V, V + N, 2 * V + N, 3 * V + N
    d_model = 4 * V + N
    d_head = max(N, 2 * V) + 1
    bos_dim = d_head - 1
    cfg = HookedTransformerConfig(n_layers=2, d_model=d_model, n_heads=3, d_head=d_head, n_ctx=N, d_vocab=V, attn_only=True,
                                  normalization_type=None, positional_embedding_type="standard", seed=seed, device="cpu",
                                  default_prepend_bos=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg)
    scale = math.sqrt(d_head)  # undo TL's 1/sqrt(d_head)
    s, a = sharpness * scale, long_score * scale
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.embed.W_E[:, TOK:TOK + V] = torch.eye(V)
        model.pos_embed.W_pos[:, POS:POS + N] = torch.eye(N)
        a0, a1 = model.blocks[0].attn, model.blocks[1].attn

        def offset_head(attn, h, back):
            """Attend from position p to p - back (to 0 when p < back)."""
            for p in range(N):
                attn.W_Q[h, POS + p, p] = s
                if p + back < N:
                    attn.W_K[h, POS + p, p + back] = 1.0
            for p in range(min(back, N)):
                attn.W_K[h, POS + 0, p] = 1.0

        offset_head(a0, 0, 1)
        offset_head(a0, 1, 2)
        offset_head(a0, 2, 0)
        offset_head(a1, 1, 1)
        for t in range(V):
            for h in range(3):
                a0.W_V[h, TOK + t, t] = 1.0
                a1.W_V[h, TOK + t, t] = 1.0
            a0.W_O[0, t, PREV + t] = 1.0
            a0.W_O[1, t, PREV2 + t] = 1.0
            # 1.0: short-prefix induction
            a1.W_Q[0, TOK + t, t] = s
            a1.W_K[0, PREV + t, t] = 1.0
            a1.W_O[0, t, OUT + t] = 1.0
            # 1.2: long-prefix induction (two matches, separate dims)
            a1.W_Q[2, TOK + t, t] = a
            a1.W_K[2, PREV + t, t] = 1.0
            a1.W_Q[2, PREV + t, V + t] = a
            a1.W_K[2, PREV2 + t, V + t] = 1.0
            a1.W_O[2, t, OUT + t] = 1.0
            model.unembed.W_U[OUT + t, t] = 10.0
        # BOS fallbacks (position 0)
        a1.b_Q[0, bos_dim] = s / 2
        a1.W_K[0, POS + 0, bos_dim] = 1.0
        a1.b_Q[2, bos_dim] = a
        a1.W_K[2, POS + 0, bos_dim] = 1.0
    model.eval()
    return Model(module=model, name="toy:induction-2l", kind="transformer_lens", tokenizer=None,
                 meta={"spec": "mechscope.attention.toy.induction_toy_model", "bos": 0,
                       "roles": {"induction": ["1.0", "1.2"], "long_prefix_induction": ["1.2"], "previous_token": ["0.0", "1.1"],
                                 "previous_previous_token": ["0.1"], "current_token": ["0.2"]}})


def identity_zsae(model, layer: int = 1, threshold: float = 0.5):
    """An SAE on ``blocks.{layer}.attn.hook_z`` whose latents are the coordinates of ``z``
    (``W_enc = W_dec = I``, ``b_enc = -threshold``, ReLU): for the toy model, latent
    ``h * d_head + t`` fires when head ``h`` attends (mostly) to token ``t``."""
    from mechscope.dictionaries import Dictionary, DictionaryConfig

    c = model.module.cfg
    d = c.n_heads * c.d_head
    sae = Dictionary(DictionaryConfig(d_in=d, n_latents=d, activation="relu", hook_in=f"blocks.{layer}.attn.hook_z",
                                      act_shape=[c.n_heads, c.d_head], apply_b_dec_to_input=False))
    with torch.no_grad():
        sae.W_enc.copy_(torch.eye(d))
        sae.W_dec.copy_(torch.eye(d))
        sae.b_enc.fill_(-threshold)
        sae.b_dec.zero_()
    return sae.eval()
