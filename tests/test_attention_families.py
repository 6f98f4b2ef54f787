"""Feature families and induction analyses on a model with verified induction heads: the
hand-built toy (mechscope.attention.toy) has previous-token heads 0.0 / 1.1, a previous-previous
head 0.1, a current-token head 0.2, a short-prefix induction head 1.0 and a long-prefix
induction head 1.2 — by construction. The families found by the automatic tests, their head
attribution, and the short/long-prefix verdicts must match that construction."""

from __future__ import annotations

import json

import pytest
import torch

from mechscope.attention import (FamilyConfig, analyze, head_attribution, head_scores, identity_zsae, induction_analysis,
                                 induction_toy_model, label_families, polysemanticity, repeated_sequences)
from mechscope.attention.induction import causal_prefix_test, prefix_length_curve, prefix_prompts
from mechscope.dictionaries import DictionaryConfig, TensorSource, TrainConfig, train
from mechscope.errors import ConfigError
from mechscope.models import run_with_cache

V, N = 48, 40


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def toy():
    return induction_toy_model(d_vocab=V, n_ctx=N)


def random_text(n=32, seed=0):
    """Random-token 'corpus' contexts with BOS (id 0) first."""
    t = torch.randint(1, V, (n, N), generator=torch.Generator().manual_seed(seed))
    t[:, 0] = 0
    return t


def test_the_toy_does_what_it_is_built_to_do(toy):
    s = head_scores(toy, n=16)
    ind, prev = torch.tensor(s["induction"]), torch.tensor(s["previous"])
    assert ind[1, 0] > 0.99 and ind[1, 2] > 0.8 and ind[1, 1] < 0.05 and ind[0].max() < 0.05
    assert prev[0, 0] > 0.99 and prev[1, 1] > 0.99
    # the model predicts the repeated half
    rep = repeated_sequences(toy, 4, 12)
    logits = toy.module(rep)
    assert (logits[:, 13:24].argmax(-1) == rep[:, 14:25]).all()


def test_identity_sae_families_match_the_construction(toy):
    sae = identity_zsae(toy, layer=1)
    d_head = toy.module.cfg.d_head
    fam = label_families(toy, sae, random_text(), FamilyConfig(n_repeats=48))
    attr = head_attribution(sae, toy)
    by_head = fam.by_head(attr.dominant_head())
    # every ordinary token's latent on heads 1.0 and 1.2 is an induction feature; none elsewhere
    assert fam.counts()["induction"] == 2 * (V - 1)
    assert by_head["induction"] == {"1.0": V - 1, "1.2": V - 1}
    assert set(fam.features("induction")) == {h * d_head + t for h in (0, 2) for t in range(1, V)}
    # head 1.1 copies the previous token: its latents are previous-token features
    assert by_head["previous_token"] == {"1.1": V - 1}
    # the token-0 (BOS) latents fire when nothing matches: BOS features
    assert {0, d_head, 2 * d_head} <= set(fam.features("bos"))
    # unused coordinates never fire
    assert fam.counts()["dead"] == 3 * d_head - fam.n_live
    assert sum(fam.shares.values()) == pytest.approx(1.0, abs=1e-3)
    for f in fam.features("induction"):
        r = fam.stats[f]["repeat"]
        assert r["target_share"] > 0.99 and r["target_attention"] > 0.8 and r["mean_act_first"] == 0
        assert r["dfa_head"] in ("1.0", "1.2")
    poly = polysemanticity(attr, fam.labels, n_top=V, live=fam.live)
    assert poly["1.1"]["families"].get("previous_token") == V - 1 and "induction" not in poly["1.1"]["families"]
    assert poly["1.0"]["families"]["induction"] == V - 1


def test_layer0_sae_has_no_induction_features(toy):
    """Negative control: layer 0 cannot do induction; its heads are previous-token (0.0),
    previous-previous (0.1: short range) and current-token (0.2)."""
    sae = identity_zsae(toy, layer=0)
    fam = label_families(toy, sae, random_text(16), FamilyConfig(n_repeats=16))
    by_head = fam.by_head(head_attribution(sae, toy).dominant_head())
    assert fam.counts()["induction"] == 0 and fam.counts()["duplicate_token"] == 0
    assert by_head["previous_token"] == {"0.0": V - 1}
    assert by_head["short_range"] == {"0.1": V - 1}
    assert by_head["current_token"] == {"0.2": V - 1}


def test_trained_sae_induction_family_is_attributed_to_the_induction_heads(toy):
    """A small TopK SAE trained for a few seconds on the toy's layer-1 z (random text + repeated
    sequences) finds induction features, carried by heads 1.0 / 1.2 and not by 1.1."""
    text = random_text(192, seed=1)
    rep = repeated_sequences(toy, 192, 19, seed=1)
    z = torch.cat([run_with_cache(toy, x, ["blocks.1.attn.hook_z"])["blocks.1.attn.hook_z"][:, 1:].flatten(0, 1) for x in (text, rep)])
    cfg = DictionaryConfig(d_in=z.shape[1] * z.shape[2], n_latents=128, activation="topk", k=4, hook_in="blocks.1.attn.hook_z")
    [sae] = train([cfg], TensorSource({"blocks.1.attn.hook_z": z.flatten(1)}, act_shapes={"blocks.1.attn.hook_z": list(z.shape[1:])}),
                  TrainConfig(steps=150, batch_size=512, lr=3e-3, warmup_steps=20, dead_tokens=20_000, log_every=0),
                  progress=False, device="cpu")
    sae.eval()
    assert sae.cfg.act_shape == [3, toy.module.cfg.d_head]
    fam = label_families(toy, sae, random_text(32), FamilyConfig(n_repeats=32))
    attr = head_attribution(sae, toy)
    ind = fam.features("induction")
    assert len(ind) >= 20, fam.counts()
    dfa_heads = [fam.stats[f]["repeat"]["dfa_head"] for f in ind]
    assert sum(h in ("1.0", "1.2") for h in dfa_heads) >= 0.9 * len(ind)
    # decoder weight of induction features sits on the induction heads, of previous-token features on 1.1
    frac, dom = attr.fractions, attr.dominant_head()
    assert sum(int(dom[f]) in (0, 2) for f in ind) >= 0.9 * len(ind)
    assert float(frac[ind][:, [0, 2]].sum(1).mean()) > 0.6
    prev = fam.features("previous_token")
    assert len(prev) >= 10 and sum(int(dom[f]) == 1 for f in prev) >= 0.9 * len(prev)


def test_long_and_short_prefix_induction_heads(toy):
    ia = induction_analysis(toy, n=24, max_prefix=6)
    assert ia.heads_source == "model roles" and [tuple(h) for h in ia.heads] == [(1, 0), (1, 2)]
    curve = ia.curve["attention_to_target"]
    assert min(curve["1.0"]) > 0.99  # one matching token is enough
    assert curve["1.2"][0] < 0.5 and min(curve["1.2"][1:]) > 0.8  # needs two
    c = ia.causal["heads"]
    assert c["1.0"]["drop_minus2"] == pytest.approx(0.0, abs=1e-3) and c["1.0"]["drop_minus1"] > 0.99
    assert c["1.2"]["relative_drop_minus2"] > 0.5 and abs(c["1.2"]["drop_far"]) < 1e-3
    assert ia.verdicts["1.0"]["kind"] == "short_prefix" and ia.verdicts["1.2"]["kind"] == "long_prefix"
    assert ia.long_prefix_heads() == ["1.2"]
    assert ia.causal["target_logit_drop"]["minus1"] > 1.0
    # without roles, the heads are found by their induction score
    toy2 = induction_toy_model(d_vocab=V, n_ctx=N)
    toy2.meta.pop("roles")
    ia2 = induction_analysis(toy2, n=16, max_prefix=4)
    assert ia2.heads_source.startswith("induction score") and [tuple(h) for h in ia2.heads] == [(1, 0), (1, 2)]
    json.dumps(ia2.to_dict())


def test_prefix_prompts_layout(toy):
    p = prefix_prompts(toy, 3, 8, max_prefix=5, seed=2)
    t = p.tokens
    assert (t[:, 0] == 0).all() and (t[:, p.q0 - 2 : p.q0 + 1] == t[:, p.t0 - 3 : p.t0]).all()
    assert (t[:, p.q0 - 3] != t[:, p.t0 - 4]).all() and (p.target == t[:, p.t0]).all()
    for row in t.tolist():  # only the prefix is repeated
        assert len(set(row)) == len(row) - 3
    with pytest.raises(ConfigError, match="prefix_len >= 2"):
        causal_prefix_test(toy, [(1, 0)], prefix_len=1)
    with pytest.raises(ConfigError, match="L.H"):
        prefix_length_curve(toy, ["x"], max_prefix=2)


def test_analyze_writes_json_and_figures(toy, tmp_path):
    sae = identity_zsae(toy, layer=1)
    s = analyze(toy, sae, corpus_tokens=random_text(16), out_dir=tmp_path, family_config=FamilyConfig(n_repeats=48))
    data = json.loads((tmp_path / "attention_analysis.json").read_text())
    f = data["findings"]
    assert f["n_induction_features"] == 2 * (V - 1) and f["induction_features_by_head"] == {"1.0": V - 1, "1.2": V - 1}
    assert f["long_prefix_heads"] == ["1.2"] and f["head_kinds"] == {"1.0": "short_prefix", "1.2": "long_prefix"}
    assert f["dfa_check_max_error"] < 1e-6
    assert data["recursive_dfa"]["check"] < 1e-6
    ex = data["dfa_examples"][0]
    assert ex["top_terms"][0]["source"] == ex["induction_target"]
    for name in ("head_attribution.png", "families.png", "polysemanticity.png", "dfa_example.png", "prefix_length.png",
                 "causal_prefix.png"):
        assert (tmp_path / name).stat().st_size > 1000, name
    assert set(s["figures"]) >= {"families.png", "prefix_length.png"}


def test_lagged_induction_family_of_the_induction_organism():
    """A trained organism: zoo:induction-2l's layer-1 heads 1.0 / 1.3 copy the tokens 3-4 after
    the earlier occurrence (a lagged induction circuit, see its card and test_zoo_organisms). An
    SAE trained for seconds on its layer-1 z (corpus + repeated sequences) has induction features
    at target offsets (3, 4), carried by those heads; the textbook offset 1 finds far fewer."""
    from mechscope.data import TokenStream, stdlib_corpus
    from mechscope.models import load_model
    from mechscope.zoo.cards import load_card

    model = load_model("zoo:induction-2l", device="cpu")
    heads = {n for n in load_card("induction-2l")["circuit"]["nodes"] if n.startswith("1.")}
    hook = "blocks.1.attn.hook_z"
    corpus = TokenStream(stdlib_corpus("heldout"), model.tokenizer, context_len=64).batch(0, 160)
    rep = repeated_sequences(model, 160, 10, seed=1)
    z = torch.cat([run_with_cache(model, x, [hook])[hook][:, 1:].flatten(0, 1) for x in (corpus[:128], rep)])
    cfg = DictionaryConfig(d_in=z.shape[1] * z.shape[2], n_latents=256, activation="topk", k=8, hook_in=hook, act_shape=list(z.shape[1:]))
    [sae] = train([cfg], TensorSource({hook: z.flatten(1)}, act_shapes={hook: list(z.shape[1:])}),
                  TrainConfig(steps=200, batch_size=512, lr=3e-3, warmup_steps=20, dead_tokens=20_000, log_every=0),
                  progress=False, device="cpu")
    sae.eval()
    lagged = label_families(model, sae, corpus[128:], FamilyConfig(n_repeats=32, repeat_len=10, target_offsets=(3, 4)))
    ind = lagged.features("induction")
    assert len(ind) >= 5, lagged.counts()
    assert sum(lagged.stats[f]["repeat"]["dfa_head"] in heads for f in ind) >= 0.9 * len(ind)
    textbook = label_families(model, sae, corpus[128:], FamilyConfig(n_repeats=32, repeat_len=10))
    assert len(textbook.features("induction")) <= len(ind) / 2, textbook.counts()
    with pytest.raises(ConfigError, match="target_offsets"):
        FamilyConfig(target_offsets=(0,))
    # its induction heads, scored at the same offsets: found, and both need only one matching token
    ia = induction_analysis(model, n=16, max_prefix=4, repeat_len=10, target_offsets=(3, 4))
    assert heads <= {f"{l}.{h}" for l, h in ia.heads}, ia.scores
    assert all(ia.verdicts[h]["kind"] == "short_prefix" for h in heads)
    assert all(ia.causal["heads"][h]["relative_drop_minus1"] > 0.8 for h in heads)
