"""Dictionaries on a real model's activations: a small TransformerLens model over the embedded
corpus. Reconstruction quality, CE / KL scores by splicing into the running model, streaming
several hooks from one forward pass, attention-output SAEs, and the CLI verbs."""

import json

import pytest
import torch
import torch.nn.functional as F

from mechscope.dictionaries import (DictionaryConfig, ModelSource, StoreSource, TrainConfig, evaluate, load_dictionary,
                                    splice_scores, train)

pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")

HOOKS = ["blocks.0.attn.hook_z", "blocks.0.hook_resid_post", "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out",
         "blocks.1.hook_mlp_out"]


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def lm():
    """A 2-layer model (random init, seed 0) with the default tokenizer, and two token streams:
    the corpus's held-out split (training data, as the issue asks) and its train split (evaluation)."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from mechscope.data import TokenStream, default_tokenizer, stdlib_corpus
    from mechscope.models.model import Model

    tok = default_tokenizer()
    cfg = HookedTransformerConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=256, d_vocab=len(tok), n_ctx=64,
                                  act_fn="gelu", normalization_type="LN", seed=0)
    module = HookedTransformer(cfg).eval()
    model = Model(module, "tiny-2l", kind="transformer_lens", tokenizer=tok)
    return model, TokenStream(stdlib_corpus("heldout"), tok, 64), TokenStream(stdlib_corpus("train"), tok, 64)


@pytest.fixture(scope="module")
def store(lm, tmp_path_factory):
    from mechscope.activations import cache_activations

    model, heldout, _ = lm
    torch.set_num_threads(1)
    return cache_activations(model, heldout, HOOKS, tmp_path_factory.mktemp("acts"), n_contexts=512, contexts_per_shard=32,
                             batch_size=32, progress=False)


@pytest.fixture(scope="module")
def mlp_sae(store):
    torch.set_num_threads(1)
    cfg = DictionaryConfig(d_in=64, n_latents=512, activation="topk", k=12, hook_in="blocks.1.hook_mlp_out")
    [d] = train([cfg], store, TrainConfig(steps=500, batch_size=512, lr=4e-3, warmup_steps=20, log_every=0, dead_tokens=30_000),
                progress=False)
    return d


def test_real_activations_reach_low_fvu_at_modest_l0(lm, mlp_sae):
    model, _, other_text = lm
    # evaluated on text the dictionary never saw (the corpus's other split), streamed from the model
    r = evaluate(mlp_sae, None, model=model, stream=other_text, n_tokens=8192, batch_size=1024, splice=False)
    assert r["fvu"] < 0.2, r
    assert r["l0"] <= 12 and r["tokens"] == 8192
    assert r["dead_frac"] < 0.05 and 0 <= r["dense_frac"] < 0.2 and r["cosine"] > 0.9


def _independent_scores(model, tokens, fwd_hooks):
    """CE and KL via TransformerLens's own run_with_hooks (not mechscope's hook machinery)."""
    with torch.no_grad():
        clean = F.log_softmax(model.module(tokens).double(), -1)
        run = F.log_softmax(model.module.run_with_hooks(tokens, fwd_hooks=fwd_hooks).double(), -1)
    ce = -run[:, :-1].gather(-1, tokens[:, 1:, None]).mean()
    kl = (clean.exp() * (clean - run)).sum(-1)[:, :-1].mean()
    return float(ce), float(kl)


def test_ce_and_kl_scores_splice_the_reconstruction_into_the_model(lm, mlp_sae):
    model, _, other_text = lm
    tokens = other_text.batch(0, 12)
    r = splice_scores(mlp_sae, model, tokens, batch_size=5)

    def sae_hook(act, hook):
        out = act.clone()
        out[:, 1:] = mlp_sae.reconstruct(act[:, 1:])
        return out

    def zero_hook(act, hook):
        out = act.clone()
        out[:, 1:] = 0
        return out

    ce_s, kl_s = _independent_scores(model, tokens, [("blocks.1.hook_mlp_out", sae_hook)])
    ce_z, kl_z = _independent_scores(model, tokens, [("blocks.1.hook_mlp_out", zero_hook)])
    ce_c, _ = _independent_scores(model, tokens, [])
    assert r["ce_spliced"] == pytest.approx(ce_s, abs=1e-6) and r["kl_spliced"] == pytest.approx(kl_s, abs=1e-7)
    assert r["ce_zero"] == pytest.approx(ce_z, abs=1e-6) and r["ce_clean"] == pytest.approx(ce_c, abs=1e-6)
    assert r["ce_score"] == pytest.approx((ce_z - ce_s) / (ce_z - ce_c), rel=1e-6)
    assert r["kl_score"] == pytest.approx((kl_z - kl_s) / kl_z, rel=1e-6)
    assert 0 < r["kl_spliced"] < 0.5 * r["kl_zero"]  # the reconstruction keeps most of what zeroing destroys
    assert r["predictions"] == 12 * 63


def test_transcoder_replaces_the_mlp(lm, store):
    model, _, other_text = lm
    cfg = DictionaryConfig(d_in=64, n_latents=256, kind="skip_transcoder", activation="topk", k=16,
                           hook_in="blocks.0.ln2.hook_normalized", hook_out="blocks.0.hook_mlp_out")
    [tc] = train([cfg], store, TrainConfig(steps=150, batch_size=512, lr=4e-3, warmup_steps=10, log_every=0), progress=False)
    tokens = other_text.batch(20, 8)
    r = splice_scores(tc, model, tokens)
    seen = {}

    def grab(act, hook):
        seen["x"] = act

    def replace(act, hook):
        out = act.clone()
        out[:, 1:] = tc.reconstruct(seen["x"][:, 1:])
        return out

    ce_s, kl_s = _independent_scores(model, tokens, [("blocks.0.ln2.hook_normalized", grab), ("blocks.0.hook_mlp_out", replace)])
    assert r["ce_spliced"] == pytest.approx(ce_s, abs=1e-6) and r["kl_spliced"] == pytest.approx(kl_s, abs=1e-7)
    assert r["kl_spliced"] < r["kl_zero"]
    m = evaluate(tc, store, n_tokens=4096, batch_size=1024)
    assert m["fvu"] < 0.5 and m["dictionary"] == "blocks.0.ln2.hook_normalized__blocks.0.hook_mlp_out"


def test_streaming_feeds_several_dictionaries_from_one_forward_pass(lm):
    model, heldout, _ = lm
    calls = []
    handle = model.module.register_forward_pre_hook(lambda *a: calls.append(1))
    try:
        src = ModelSource(model, heldout, ["blocks.0.hook_resid_post", "blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"],
                          buffer_tokens=4032, model_batch_size=16)
        assert len(calls) == 1  # the probe that fixes shapes
        cfgs = [DictionaryConfig(d_in=64, n_latents=128, k=8, hook_in="blocks.0.hook_resid_post"),
                DictionaryConfig(d_in=64, n_latents=128, kind="transcoder", k=8, hook_in="blocks.0.ln2.hook_normalized",
                                 hook_out="blocks.0.hook_mlp_out")]
        out = train(cfgs, src, TrainConfig(steps=14, batch_size=512, log_every=0), progress=False)
    finally:
        handle.remove()
    # 4032 rows = 64 contexts per refill -> 4 forward passes of 16; 7 batches per refill -> 2 refills for 14 steps
    assert src.rows_per_refill == 4032 and len(calls) == 1 + 2 * 4
    assert [d.cfg.name for d in out] == ["blocks.0.hook_resid_post", "blocks.0.ln2.hook_normalized__blocks.0.hook_mlp_out"]
    # batches are rows of the model's real activations: the first one comes from contexts 0..63
    first = next(src.iterate(512, seed=0))
    from mechscope.models import run_with_cache

    acts = run_with_cache(model, heldout.batch(0, 64), ["blocks.0.hook_resid_post"])["blocks.0.hook_resid_post"][:, 1:].reshape(-1, 64)
    assert all((acts == row).all(-1).any() for row in first["blocks.0.hook_resid_post"][:20])


def test_attention_output_sae_on_hook_z(lm, store):
    model, _, other_text = lm
    cfg = DictionaryConfig(d_in=64, n_latents=256, activation="batchtopk", k=8, hook_in="blocks.0.attn.hook_z")
    [d] = train([cfg], store, TrainConfig(steps=120, batch_size=512, lr=4e-3, warmup_steps=10, log_every=0), progress=False)
    assert d.cfg.act_shape == [4, 16]  # taken from the store: [n_heads, d_head]
    assert d.heads().shape == (256, 4, 16)
    assert float(d.threshold) > 0  # the BatchTopK inference threshold was learned
    r = evaluate(d, store, n_tokens=4096, batch_size=1024, model=model, stream=other_text, n_contexts=6)
    assert r["fvu"] < 0.6 and 2 < r["l0"] < 30 and r["kl_spliced"] < r["kl_zero"]


def test_cli_train_and_eval(lm, store, tmp_path, capsys):
    from mechscope.cli import main
    from mechscope.models import save_model

    model, _, _ = lm
    save_model(model, tmp_path / "model")
    rc = main(["train", "--store", str(store.root), "--hooks", "blocks.0.hook_resid_post", "blocks.1.hook_mlp_out", "--n-latents", "128",
               "--k", "8", "--steps", "12", "--batch-size", "256", "--warmup-steps", "2", "--log-every", "4", "--out", str(tmp_path / "run"),
               "--json"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 12 and len(summary["dictionaries"]) == 2
    log = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [4, 8, 12] and "fvu" in log[-1]["blocks.1.hook_mlp_out"]
    rc = main(["train", "--store", str(store.root), "--kind", "transcoder", "--hooks", "blocks.0.ln2.hook_normalized:blocks.0.hook_mlp_out",
               "--n-latents", "128", "--steps", "6", "--batch-size", "256", "--out", str(tmp_path / "tc"), "--json"])
    assert rc == 0
    capsys.readouterr()
    rc = main(["eval", str(tmp_path / "run" / "blocks.1.hook_mlp_out"), str(tmp_path / "tc" / "blocks.0.ln2.hook_normalized__blocks.0.hook_mlp_out"),
               "--store", str(store.root), "--model", str(tmp_path / "model"), "--n-tokens", "2048",  # contexts: the model's n_ctx (64 < 128)
               "--batch-size", "1024", "--n-contexts", "4", "--histogram", str(tmp_path / "hist"), "--json"])
    assert rc == 0
    results = json.loads(capsys.readouterr().out)
    assert [r["kind"] for r in results] == ["sae", "transcoder"]
    for r in results:
        assert {"mse", "fvu", "l0", "dead_frac", "dense_frac", "cosine", "ce_score", "kl_score"} <= set(r)
        assert open(r["histogram"], "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    # streaming from the model (no store) with the default context length, clamped to n_ctx = 64
    rc = main(["train", "--model", str(tmp_path / "model"), "--hooks", "blocks.0.attn.hook_z", "--n-latents", "64", "--steps", "2",
               "--batch-size", "64", "--buffer-tokens", "512", "--out", str(tmp_path / "streamed"), "--json"])
    assert rc == 0 and json.loads(capsys.readouterr().out)["steps"] == 2
    rc = main(["train", "--model", str(tmp_path / "model"), "--hooks", "blocks.0.attn.hook_z", "--context-len", "999", "--steps", "2",
               "--out", str(tmp_path / "too-long")])
    assert rc == 2 and "--context-len 999 is longer than the model's context window (n_ctx=64)" in capsys.readouterr().err
    # bad input through the CLI: a clear message and exit code 2
    rc = main(["train", "--store", str(store.root), "--hooks", "blocks.0.hook_resid_post", "--activation", "topk", "--k", "999",
               "--n-latents", "128", "--out", str(tmp_path / "bad")])
    assert rc == 2 and "k must be an integer in [1, n_latents=128]; found 999" in capsys.readouterr().err
    d = load_dictionary(tmp_path / "run" / "blocks.0.hook_resid_post")
    assert d.cfg.meta["model"] == "tiny-2l"
