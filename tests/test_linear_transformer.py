"""linearize_transformer on tiny random HookedTransformers (LN / RMS, attention-only / MLP /
gated MLP): the map from token embeddings to a logit difference is exact, adjoint, and equals
jacrev of the frozen model."""

from __future__ import annotations

import warnings

import pytest
import torch

from mechscope.errors import ConfigError
from mechscope.linear import linearize_transformer, logit_diff


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(normalization_type="LN", attn_only=False, act_fn="gelu_new", gated=False, seed=0, **extra):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=2, d_model=16, n_heads=4, d_head=4, n_ctx=16, d_vocab=24,
                                  attn_only=attn_only, d_mlp=None if attn_only else 32,
                                  act_fn=None if attn_only else act_fn, normalization_type=normalization_type,
                                  gated_mlp=gated, seed=seed, device="cpu", **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = HookedTransformer(cfg).eval()
    # non-zero biases and norm parameters, so that the bias c is not trivially zero
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith((".b", "b_Q", "b_K", "b_V", "b_O", "b_in", "b_out", "b_U")):
                p.add_(0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith(".w"):
                p.mul_(1 + 0.2 * torch.randn(p.shape, generator=g))
    return model


TOKENS = torch.tensor([1, 5, 9, 2, 5, 9, 3, 7])


@pytest.mark.parametrize("norm,attn_only,act,gated", [
    ("LN", True, None, False), ("RMS", True, None, False), ("LN", False, "gelu_new", False),
    ("RMS", False, "silu", False), ("LN", False, "relu", True), (None, False, "gelu", False)])
def test_logit_diff_map_is_exact(norm, attn_only, act, gated):
    model = tiny(norm, attn_only, act or "gelu", gated)
    amap = linearize_transformer(model, TOKENS, logit_diff(4, 11))
    with torch.no_grad():
        logits = model(TOKENS[None])[0]
    ref = logits[-1, 4] - logits[-1, 11]
    assert amap.in_shape == (8, 16) and amap.out_shape == ()
    y = amap.apply(amap.x0) + amap.bias
    assert abs(float(y - ref)) / max(abs(float(ref)), 1e-3) < 1e-5
    assert amap.adjoint_error() < 1e-5
    frozen = amap.meta["frozen"]
    assert frozen["frozen_hook"] >= 2  # one attention pattern per layer (+ norm scales)
    if not attn_only:
        assert frozen["act_gate" if gated else "act_gain"] == 2


ARCHITECTURES = {
    "neox_parallel_rotary": dict(parallel_attn_mlp=True, positional_embedding_type="rotary", rotary_dim=4),
    "llama_gqa": dict(normalization_type="RMS", act_fn="silu", gated=True, positional_embedding_type="rotary", n_key_value_heads=2),
    "alibi": dict(positional_embedding_type="alibi"),  # builds its bias table on the first call
    "qk_norm": dict(normalization_type="RMS", use_qk_norm=True, positional_embedding_type="rotary"),
    "gemma2_softcaps": dict(normalization_type="RMS", use_normalization_before_and_after=True, attn_scores_soft_cap=5.0,
                            output_logits_soft_cap=3.0),
    "local_attention": dict(use_local_attn=True, window_size=3, attn_types=["local", "global"]),
}


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_other_architectures_are_exact(arch):
    """Parallel blocks, rotary / ALiBi positions, grouped-query attention, QK norms, Gemma 2's
    post-norms and logit soft-cap, local attention: the frozen map reproduces the logits."""
    model = tiny(**ARCHITECTURES[arch])
    amap = linearize_transformer(model, TOKENS)  # verify=True: A x0 + c == f(x0) and A is linear
    with torch.no_grad():
        logits = model(TOKENS[None])[0, -1]
    torch.testing.assert_close(amap.apply(amap.x0) + amap.bias, logits, atol=1e-4, rtol=1e-4)
    assert amap.adjoint_error() < 1e-5


def test_vector_readout_dense_equals_jacrev_and_bias_is_nonzero():
    model = tiny("LN", False, "gelu_new")
    amap = linearize_transformer(model, TOKENS)  # logits at the last position: [d_vocab]
    with torch.no_grad():
        logits = model(TOKENS[None])[0, -1]
    assert amap.out_shape == (24,)
    assert amap.exactness()["rel_error"] < 1e-5
    assert float((amap.apply(amap.x0) + amap.bias - logits).norm() / logits.norm()) < 1e-5
    assert amap.bias.abs().max() > 1e-2
    J = torch.func.jacrev(amap.frozen.affine)(amap.x0).detach().reshape(24, -1)
    D = amap.dense()
    assert torch.allclose(D, J, atol=1e-5 * float(J.abs().max()))
    # the map is a function of the embeddings: a second input goes through the frozen patterns
    x1 = amap.x0 + 0.1 * torch.randn(amap.x0.shape, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(amap(x1), D @ x1.reshape(-1) + amap.bias, atol=1e-4)
    direction = torch.zeros(24)
    direction[4], direction[11] = 1.0, -1.0
    a_dir = linearize_transformer(model, TOKENS, direction)
    a_ld = linearize_transformer(model, TOKENS, logit_diff(4, 11))
    assert torch.allclose(a_dir.row(0), a_ld.row(0), atol=1e-5)


def test_readout_shape_and_token_checks():
    model = tiny("LN", True)
    with pytest.raises(ConfigError, match=r"d_vocab_out=24"):
        linearize_transformer(model, TOKENS, torch.ones(5))
    with pytest.raises(ConfigError, match=r"tokens must be \[pos\] or \[1, pos\]"):
        linearize_transformer(model, TOKENS.view(2, 4))
