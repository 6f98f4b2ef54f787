"""Exact attribution through transcoders: with attention patterns, LayerNorm scales and feature
activations frozen, every contribution sums to the target — checked against the model's own
logits and the transcoder's own pre-activations, on real TransformerLens forwards."""

from __future__ import annotations

import pytest
import torch

from mechscope.errors import ConfigError
from mechscope.transcoders import (ReplacementRun, TranscoderError, TranscoderSet, attribute, child_target, deembedding,
                                   feature_target, feature_to_feature, logit_target, through_head, to_logits, token_direction,
                                   top_connections)
from mechscope.transcoders.planted import random_transcoders, tiny_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matrices: one thread is far faster than contended multi-threading on small CI machines."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


TOKENS = torch.tensor([[1, 17, 5, 33, 8, 2, 40, 11], [3, 9, 9, 60, 21, 4, 2, 7]])
PARALLEL = dict(parallel_attn_mlp=True, positional_embedding_type="rotary", rotary_dim=4)
# Gemma-2-style: RMSNorm after attention and after the MLP (ln1_post / ln2_post), soft-capped attention
# scores and output logits (the cap small enough to bend these logits), grouped-query attention, rotary
GEMMA2 = dict(use_normalization_before_and_after=True, attn_scores_soft_cap=5.0, output_logits_soft_cap=2.0, n_key_value_heads=2,
              positional_embedding_type="rotary", gated_mlp=True)
# OLMo-2-style: no norm before attention or MLP, ln1 / ln2 normalize their outputs (TransformerLens's post-norm architectures)
OLMO2 = dict(original_architecture="Olmo2ForCausalLM", positional_embedding_type="rotary", gated_mlp=True)


def _rel(a: float, b: float, scale: float) -> float:
    return abs(a - b) / max(abs(scale), 1e-12)


def _scale(att) -> float:
    """Sum of absolute contributions: the size the tolerance is relative to."""
    return sum(abs(v) for _, v in att.entries()) + abs(att.target.const)


@pytest.mark.parametrize("normalization,kind,activation,hook_in,extra", [
    ("LN", "transcoder", "relu", "normalized", {}),
    ("LN", "skip_transcoder", "topk", "normalized", {}),
    ("RMS", "transcoder", "jumprelu", "normalized", {}),
    ("LN", "transcoder", "relu", "resid", {}),
    # Llama-style: grouped-query attention (each query head reads its group's value head), rotary, gated MLP
    ("RMS", "transcoder", "relu", "normalized", dict(n_key_value_heads=2, positional_embedding_type="rotary", gated_mlp=True)),
    # GPT-NeoX / Pythia-style: parallel attention and MLP (the MLP reads the block's input), rotary
    ("LN", "transcoder", "relu", "normalized", PARALLEL),
    ("LN", "skip_transcoder", "topk", "resid", PARALLEL),
    ("RMS", "transcoder", "relu", "normalized", GEMMA2),
    ("RMS", "skip_transcoder", "topk", "resid", GEMMA2),
    ("RMS", "transcoder", "relu", "resid", OLMO2),
    ("RMS", "skip_transcoder", "topk", "resid", OLMO2),
])
@pytest.mark.parametrize("splice", [True, False])
def test_contributions_sum_exactly_to_logit_and_feature_targets(normalization, kind, activation, hook_in, extra, splice):
    model = tiny_model(normalization=normalization, seed=1, **extra)
    ts = random_transcoders(model, kind=kind, activation=activation, hook_in=hook_in, seed=2)
    run = ReplacementRun(model, ts, TOKENS, splice=splice)
    u = token_direction(run, [3, 5], [7, 8, 9])
    for b in range(TOKENS.shape[0]):
        for pos in (3, TOKENS.shape[1] - 1):
            # logit direction through ln_final (frozen scale) and W_U, against the model's own logits
            att = attribute(run, logit_target(run, b, pos, u))
            model_value = float(run.logits[b, pos].double() @ u)
            assert _rel(att.total(), model_value, _scale(att)) < 1e-9
            assert _rel(att.value, model_value, _scale(att)) < 1e-9
            assert att.heads and att.features and att.error  # every kind of term took part
            # a layer-1 feature's pre-activation, against the transcoder applied to its real input
            d = ts[1]
            x = run.x_tc[1][b, pos]
            pre = (x @ d.W_enc.detach().double().T + d.b_enc.detach().double())
            j = int(pre.abs().argmax())
            att = attribute(run, feature_target(run, 1, j, b, pos))
            assert _rel(att.total(), float(pre[j]), _scale(att)) < 1e-9
            assert set(att.features) == {0} and set(att.heads) == ({0} if extra.get("parallel_attn_mlp") else {0, 1})
            if splice:
                assert max(abs(v) for v in att.error.values()) < 1e-9
            else:
                assert abs(att.error[0]) > 1e-6  # untrained transcoders: the MLP's error is a real term


def test_child_targets_reproduce_their_contributions_and_decompose_exactly():
    model = tiny_model(seed=3)
    ts = random_transcoders(model, kind="skip_transcoder", seed=4)
    run = ReplacementRun(model, ts, TOKENS[:1])
    root = logit_target(run, 0, 7, token_direction(run, [3], [5]))
    att = attribute(run, root)
    picked = att.top(3, kinds=("feature",)) + att.top(3, kinds=("head",)) + att.top(1, kinds=("skip",))
    assert {n.kind for n, _ in picked} == {"feature", "head", "skip"}
    for node, v in picked:
        child = child_target(run, root, node)
        assert abs(child.value(run) - v) < 1e-9 * max(1.0, abs(v))
        sub = attribute(run, child)
        assert abs(sub.total() - v) < 1e-9 * max(1.0, _scale(sub))
        # one more hop down
        for g, gv in sub.top(2, kinds=("feature", "head")):
            grand = child_target(run, child, g)
            assert abs(attribute(run, grand).total() - gv) < 1e-9 * max(1.0, abs(gv) + _scale(attribute(run, grand)))


def test_float32_model_sums_to_its_logits_within_float_tolerance():
    model = tiny_model(dtype=torch.float32, seed=5)
    ts = random_transcoders(model, dtype="float32", seed=6)
    run = ReplacementRun(model, ts, TOKENS)
    u = token_direction(run, [1], [2])
    for b in range(2):
        att = attribute(run, logit_target(run, b, 7, u))
        assert _rel(att.total(), float(run.logits[b, 7].double() @ u), _scale(att)) < 1e-5


def test_exactness_flag_allows_the_model_dtypes_rounding_only():
    """bfloat16 activations are rounded before they are cached: the sum closes to ~1e-4 of its scale,
    which the CLI's flag accepts; dropping one real term (the heads) is flagged."""
    from dataclasses import replace

    from mechscope.transcoders.cli import exactness

    model = tiny_model(dtype=torch.bfloat16, seed=5)
    run = ReplacementRun(model, random_transcoders(model, dtype="float32", seed=6), TOKENS)
    att = attribute(run, logit_target(run, 0, 7, token_direction(run, [1], [2])))
    ok = exactness(att, model)
    assert ok["exact"] and 0 < ok["sum_gap"] < 1e-3 * _scale(att)
    assert not exactness(replace(att, heads={}), model)["exact"]


@pytest.mark.parametrize("normalization,extra,hook_in", [("LN", {}, "normalized"), ("LN", PARALLEL, "normalized"),
                                                         ("RMS", GEMMA2, "normalized"), ("RMS", OLMO2, "resid")])
def test_input_invariant_connections_match_input_dependent_attribution(normalization, extra, hook_in):
    model = tiny_model(normalization=normalization, seed=7, **extra)
    parallel = bool(extra.get("parallel_attn_mlp"))
    ts = random_transcoders(model, seed=8, hook_in=hook_in)
    run = ReplacementRun(model, ts, TOKENS[:1])
    b, p, src = 0, 6, 2
    s2 = float(run.s2[1][b, p])
    ff = feature_to_feature(model, ts, 0, 1)
    de = deembedding(model, ts, 1)
    z = run.codes[0][b, p]
    i = int(run.codes[1][b, p].argmax())
    att = attribute(run, feature_target(run, 1, i, b, p))
    # feature -> feature: a_j * W_dec[j] . C(W_enc[i]) / s2
    assert torch.allclose(att.features[0], z * ff[:, i] / s2, rtol=1e-9, atol=1e-12)
    # de-embedding: W_E[t] . C(W_enc[i]) / s2
    assert abs(att.embed - float(de[int(TOKENS[0, p]), i]) / s2) < 1e-9
    # through head 1.h: layer-0 feature j at the source reaches feature i via A * a_j * through_head / (s1 s2)
    from mechscope.transcoders.attribution import Node

    if parallel:  # a parallel MLP does not read its own layer's heads
        with pytest.raises(ConfigError, match="parallel blocks"):
            through_head(model, ts, 0, 1, 0, 1)
        assert all(not r.get("head", "").startswith("1.") for r in top_connections(model, ts, 1, i)["upstream_via_heads"])
    for h in range(model.module.cfg.n_heads if not parallel else 0):
        head = Node("head", 1, h, p, src)
        sub = attribute(run, child_target(run, att.target, head))
        th = through_head(model, ts, 0, 1, h, 1)
        A = float(run.pattern[1][b, h, p, src])
        s1_post = float(run.s1_post[1][b, p])  # ln1_post's frozen scale (1 without post-norms)
        expect = A * run.codes[0][b, src] * th[:, i] / (float(run.s1[1][b, src]) * s2 * s1_post)
        assert torch.allclose(sub.features[0], expect, rtol=1e-9, atol=1e-12)
    if extra.get("output_logits_soft_cap"):
        return  # the direct path to soft-capped logits has an input-dependent gain per logit (tested above)
    # direct path to the logits
    u = token_direction(run, [3], [4])
    att = attribute(run, logit_target(run, b, p, u))
    expect = run.codes[1][b, p] * (to_logits(model, ts, 1) @ u) / float(run.lnf_scale[b, p])
    assert torch.allclose(att.features[1], expect, rtol=1e-9, atol=1e-12)


def test_norm_free_model_needs_the_raw_residual_input():
    """No LayerNorm: no ln2.hook_normalized; training says to read the raw residual, and does so."""
    from mechscope.transcoders.train import collect_rows

    model = tiny_model(normalization=None, seed=0)
    with pytest.raises(ConfigError, match="hook_in='resid'"):
        collect_rows(model, [0], TOKENS)
    rows = collect_rows(model, [0], TOKENS, hook_in="resid")
    assert rows["blocks.0.hook_resid_mid"].shape == (TOKENS.numel(), 32)


def test_post_norm_only_blocks_need_raw_residual_transcoders():
    """OLMo 2's ln2 normalizes the MLP's *output*: a transcoder on ln2.hook_normalized would read the
    wrong thing, so it is refused (training says to read the raw residual)."""
    from mechscope.transcoders.train import collect_rows

    model = tiny_model(normalization="RMS", seed=0, **OLMO2)
    with pytest.raises(TranscoderError, match="reads the raw residual"):
        ReplacementRun(model, random_transcoders(model, hook_in="normalized"), TOKENS)
    with pytest.raises(ConfigError, match="hook_in='resid'"):
        collect_rows(model, [0], TOKENS)


def test_errors_name_what_is_wrong():
    model = tiny_model(seed=0)
    ts = random_transcoders(model)
    with pytest.raises(TranscoderError, match="layer 1"):
        TranscoderSet({0: ts[1]})
    other = tiny_model(d_model=16, seed=0)
    with pytest.raises(TranscoderError, match="d_model is 16"):
        ts.check(other)
    run = ReplacementRun(model, ts, TOKENS[:1])
    with pytest.raises(Exception, match="outside the run"):
        feature_target(run, 1, 0, 0, 99)
    from mechscope.transcoders.attribution import Node

    with pytest.raises(TranscoderError, match="leaf"):
        child_target(run, logit_target(run, 0, 3, token_direction(run, [1])), Node("embed", index=1, pos=3))
