"""Direct feature attribution on attention-output SAEs is exact: per-head, per-source terms
plus the bias terms sum to the SAE's own pre-activation (random TL models with and without
LayerNorm and b_V; SAEs with and without b_dec centering); recursive DFA trees sum exactly at
every node, residual-SAE splits included; decoder-norm head attribution."""

from __future__ import annotations

import warnings

import pytest
import torch

from mechscope.attention import (direct_feature_attribution, dfa_rows, head_attribution, preactivations, recursive_dfa,
                                 attention_inputs)
from mechscope.dictionaries import Dictionary, DictionaryConfig
from mechscope.errors import ConfigError
from mechscope.models import Model, run_with_cache


pytestmark = pytest.mark.usefixtures("one_thread")


def random_model(normalization_type="LN", b_V=True, attn_only=True, seed=0, n_layers=2, pos="standard", **extra):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(n_layers=n_layers, d_model=24, n_heads=4, d_head=6, n_ctx=16, d_vocab=40, attn_only=attn_only,
                                  d_mlp=None if attn_only else 32, act_fn=None if attn_only else "gelu",
                                  normalization_type=normalization_type, positional_embedding_type=pos, seed=seed, device="cpu", **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = HookedTransformer(cfg).eval()
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # non-trivial biases and LN gains, so every term is exercised
        for name, p in module.named_parameters():
            if name.endswith(("b_Q", "b_K", "b_O", ".b", "b_in", "b_out")) or (name.endswith("b_V") and b_V):
                p.add_(0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith(".w"):
                p.mul_(1 + 0.3 * torch.randn(p.shape, generator=g))
    return Model(module=module, name=f"random-{normalization_type}-{b_V}", kind="transformer_lens")


def random_zsae(model, layer=1, activation="topk", center=True, seed=0, n_latents=64):
    c = model.module.cfg
    sae = Dictionary(DictionaryConfig(d_in=c.n_heads * c.d_head, n_latents=n_latents, activation=activation, k=8,
                                      hook_in=f"blocks.{layer}.attn.hook_z", act_shape=[c.n_heads, c.d_head],
                                      apply_b_dec_to_input=center), seed=seed)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        sae.b_enc.copy_(0.2 * torch.randn(sae.b_enc.shape, generator=g))
        sae.b_dec.copy_(0.5 * torch.randn(sae.b_dec.shape, generator=g))
        sae.W_enc.mul_(1 + 0.5 * torch.rand(sae.W_enc.shape, generator=g))
    return sae.eval()


def tokens(n=3, pos=12, seed=0, vocab=40):
    return torch.randint(0, vocab, (n, pos), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("norm,b_V,activation,center", [
    ("LN", True, "topk", True),
    ("LN", False, "relu", False),
    (None, True, "relu", True),
    ("RMS", True, "topk", False),
])
def test_dfa_sums_exactly_to_the_sae_preactivation(norm, b_V, activation, center):
    model = random_model(norm, b_V)
    sae = random_zsae(model, activation=activation, center=center)
    toks = tokens()
    d = direct_feature_attribution(model, sae, toks)
    B, P, M, H = 3, 12, sae.n_latents, 4
    assert len(d) == B * P * M
    assert d.sources.shape == (B * P * M, H, P) and d.value_bias.shape == (B * P * M, H)
    # the terms sum to the pre-activation (float64 sum vs float64 pre on the model's float32 z)
    assert d.error() < 1e-5
    # ... and that pre-activation is the Dictionary's own, computed in float32 by its encoder
    z = run_with_cache(model, toks, ["blocks.1.attn.hook_z"])["blocks.1.attn.hook_z"]
    flat = z.reshape(B * P, -1)
    own = torch.addmm(sae.b_enc, flat - sae.b_dec if center else flat, sae.W_enc.t()).detach()
    assert torch.allclose(d.pre.reshape(B * P, M).float(), own, atol=1e-5)
    assert torch.allclose(d.total().reshape(B * P, M).float(), own, atol=1e-5)
    # the activation recorded is the SAE's code for that feature
    codes = sae.encode(flat).detach()
    assert torch.allclose(d.act.reshape(B * P, M).float(), codes, atol=1e-6)
    if activation == "relu":
        assert torch.allclose(codes, own.relu(), atol=1e-6)
    # bias terms: b_V contributes exactly when the model has one; centering exactly when the SAE centres
    assert (d.value_bias.abs().max() > 1e-3) == b_V
    assert (d.centering.abs().max() > 1e-3) == center
    # causality: no contribution from sources after the query
    q = d.rows[:, 1]
    future = torch.arange(P)[None, :] > q[:, None]
    assert d.sources.abs().amax(1)[future].max() == 0
    # the per-head split sums to the same as the per-source split
    assert torch.allclose(d.by_head().sum(1), d.by_source().sum(1) + d.value_bias.sum(1), atol=1e-10)
    assert torch.allclose(d.by_distance().sum(1), d.by_source().sum(1), atol=1e-10)


def test_dfa_rows_agree_with_the_dense_grid_and_check_inputs():
    model = random_model("LN", True, seed=3)
    sae = random_zsae(model, seed=3)
    toks = tokens(seed=3)
    dense = direct_feature_attribution(model, sae, toks, features=[5, 9, 40], queries=[0, 7, 11])
    rows = dense.rows[[0, 4, 13, 26]]
    sparse = dfa_rows(sae, attention_inputs(model, toks, 1), rows)
    idx = torch.tensor([0, 4, 13, 26])
    assert torch.allclose(sparse.sources, dense.sources[idx]) and torch.allclose(sparse.pre, dense.pre[idx])
    assert sparse.error() < 1e-5
    # query 0 can only attend to itself
    q0 = dense.rows[:, 1] == 0
    assert dense.sources[q0][:, :, 1:].abs().max() == 0
    with pytest.raises(ConfigError, match="rows"):
        dfa_rows(sae, attention_inputs(model, toks, 1), [[0, 99, 1]])
    wrong = Dictionary(DictionaryConfig(d_in=24, n_latents=8, hook_in="blocks.1.hook_resid_pre"))
    with pytest.raises(ConfigError, match="attn.hook_z"):
        direct_feature_attribution(model, wrong, toks)
    z = run_with_cache(model, toks, ["blocks.1.attn.hook_z"])["blocks.1.attn.hook_z"]
    assert preactivations(sae, z).shape == (3, 12, sae.n_latents)
    # more prompts than one encoder chunk: still exact
    many = direct_feature_attribution(model, sae, tokens(40, 12, seed=4), features=[1, 2], queries=[3, 11])
    assert len(many) == 40 * 2 * 2 and many.error() < 1e-5


@pytest.mark.parametrize("norm,attn_only,pos", [("LN", True, "standard"), ("LN", False, "standard"), ("RMS", True, "standard"),
                                                (None, True, "standard"), ("LN", True, "shortformer")])
def test_recursive_dfa_is_exact_at_every_node(norm, attn_only, pos):
    model = random_model(norm, True, attn_only=attn_only, seed=5, n_layers=3, pos=pos)
    sae = random_zsae(model, layer=2, activation="relu", seed=5)
    toks = tokens(1, 12, seed=5)[0]
    pre = direct_feature_attribution(model, sae, toks, features=[11], queries=[10]).pre[0]
    tree = recursive_dfa(model, sae, toks, feature=11, query=10, top_sources=3, min_abs=0.0)
    assert abs(tree.value - float(pre)) < 1e-9
    assert tree.check() < 1e-6
    kinds = {n.kind for n in tree.walk()}
    assert {"head", "source", "embed", "value_bias", "encoder_bias", "centering", "rest"} <= kinds
    if norm == "LN":
        assert "ln_bias" in kinds
    if not attn_only:
        assert "mlp" in kinds
    # shortformer adds positions to queries and keys only: no position term in the values' residual stream
    assert ("pos_embed" in kinds) == (pos == "standard")
    # the recursion reached layer 0's heads and split them into sources
    assert any(n.kind == "source" and n.layer == 0 for n in tree.walk())
    # depth 1: sources split into residual components, earlier heads left as leaves
    shallow = recursive_dfa(model, sae, toks, feature=11, query=10, depth=1, min_abs=0.0)
    assert shallow.check() < 1e-6
    assert not any(n.kind == "source" and n.layer < 2 for n in shallow.walk())
    d = tree.to_dict()
    assert d["kind"] == "feature" and d["children"]


# GPT-NeoX / Pythia-style parallel blocks; Gemma-2-style RMSNorm after attention and MLP (ln1_post / ln2_post);
# OLMo-2-style norms after each sublayer only (attention reads the raw residual)
@pytest.mark.parametrize("norm,extra", [("LN", dict(parallel_attn_mlp=True, rotary_dim=4)),
                                        ("RMS", dict(use_normalization_before_and_after=True, attn_scores_soft_cap=5.0)),
                                        ("RMS", dict(original_architecture="Olmo2ForCausalLM"))])
def test_recursive_dfa_is_exact_on_parallel_and_post_norm_blocks(norm, extra):
    model = random_model(norm, True, attn_only=False, seed=6, n_layers=3, pos="rotary", **extra)
    sae = random_zsae(model, layer=2, activation="relu", seed=6)
    toks = tokens(1, 12, seed=6)[0]
    pre = direct_feature_attribution(model, sae, toks, features=[5], queries=[11]).pre[0]
    tree = recursive_dfa(model, sae, toks, feature=5, query=11, top_sources=3, min_abs=0.0)
    assert abs(tree.value - float(pre)) < 1e-9
    assert tree.check() < 1e-6  # every source's residual split (earlier heads through ln1_post, b_O, MLPs) sums exactly
    assert any(n.kind == "source" and n.layer == 0 for n in tree.walk()) and any(n.kind == "mlp" for n in tree.walk())


def test_recursive_dfa_with_a_residual_sae_splits_exactly():
    model = random_model("LN", True, seed=9)
    sae = random_zsae(model, layer=1, seed=9)
    resid = Dictionary(DictionaryConfig(d_in=24, n_latents=48, activation="topk", k=6, hook_in="blocks.1.hook_resid_pre"), seed=1).eval()
    toks = tokens(1, 10, seed=9)[0]
    codes = sae.encode(run_with_cache(model, toks[None], ["blocks.1.attn.hook_z"])["blocks.1.attn.hook_z"][0, 9])
    f = int(codes.argmax())
    tree = recursive_dfa(model, sae, toks, feature=f, query=9, resid_saes={"blocks.1.hook_resid_pre": resid}, min_abs=0.0)
    alts = [n for n in tree.walk() if "resid_sae" in n.alternatives]
    assert alts, "sources at layer 1 carry the residual-SAE split"
    assert tree.check() < 1e-6
    assert any(c.kind == "resid_sae_feature" for c in alts[0].alternatives["resid_sae"])
    with pytest.raises(ConfigError, match="resid_pre"):
        recursive_dfa(model, sae, toks, feature=f, query=9, resid_saes={"blocks.1.attn.hook_z": sae})


def test_head_attribution_splits_decoder_norms():
    model = random_model("LN", True)
    sae = random_zsae(model)
    attr = head_attribution(sae, model)
    assert attr.norms.shape == (sae.n_latents, 4)
    assert torch.allclose(attr.fractions.sum(1), torch.ones(sae.n_latents))
    blocks = sae.W_dec.detach().reshape(sae.n_latents, 4, 6)
    assert torch.allclose(attr.norms, blocks.norm(dim=-1))
    # a decoder row living in one head's block is attributed wholly to that head
    with torch.no_grad():
        sae.W_dec[3] = 0
        sae.W_dec[3, 12:18] = 1.0  # head 2
    attr = head_attribution(sae, model)
    assert attr.dominant_head()[3] == 2 and float(attr.fractions[3, 2]) == pytest.approx(1.0)
    assert 3 in attr.top_features(2, n=sae.n_latents)
    assert sum(attr.head_counts()) == sae.n_latents
