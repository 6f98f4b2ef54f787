"""``mechscope attention`` verbs end to end on a tiny random model saved in the native format:
train-sae (cache hook_z over the embedded corpus + train), analyze (JSON + figures), dfa
(exact sums, recursive tree) and induction."""

from __future__ import annotations

import json
import warnings

import pytest

from mechscope.cli import main


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory, tokenizer):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from mechscope.models import Model, save_model

    cfg = HookedTransformerConfig(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=32, d_vocab=len(tokenizer), attn_only=True,
                                  normalization_type="LN", seed=0, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = HookedTransformer(cfg).eval()
    path = tmp_path_factory.mktemp("model")
    save_model(Model(module=module, name="tiny-attn", kind="transformer_lens", tokenizer=tokenizer), path)
    return path


def run_json(argv, capsys):
    assert main(argv) == 0
    return json.loads(capsys.readouterr().out)


def test_attention_verbs_end_to_end(saved_model, tmp_path, capsys):
    run = tmp_path / "run"
    out = run_json(["attention", "train-sae", "--model", str(saved_model), "--layer", "1", "--out", str(run), "--n-contexts", "16",
                    "--steps", "5", "--batch-size", "128", "--n-latents", "64", "--k", "4", "--json"], capsys)
    sae_dir = run / "sae" / "blocks.1.attn.hook_z"
    assert out["sae"].endswith("blocks.1.attn.hook_z") and (sae_dir / "cfg.json").exists()

    res = run_json(["attention", "analyze", "--model", str(saved_model), "--sae", str(sae_dir), "--out", str(tmp_path / "an"),
                    "--n-contexts", "8", "--n-repeats", "8", "--json"], capsys)
    assert res["sae"]["hook"] == "blocks.1.attn.hook_z" and res["sae"]["n_heads"] == 4
    assert len(res["families"]["labels"]) == 64 and res["head_attribution"]["n_heads"] == 4
    assert set(res["findings"]) >= {"n_induction_features", "long_prefix_heads", "family_shares_of_live", "polysemanticity"}
    saved = json.loads((tmp_path / "an" / "attention_analysis.json").read_text())
    assert saved["findings"] == res["findings"]
    assert (tmp_path / "an" / "families.png").exists() and (tmp_path / "an" / "head_attribution.png").exists()

    toks = [str(t) for t in range(5, 25)]
    d = run_json(["attention", "dfa", "--model", str(saved_model), "--sae", str(sae_dir), "--tokens", *toks, "--feature", "3",
                  "--position", "-1", "--recursive", "--json"], capsys)
    assert d["query"] == 19 and d["sum_check"] < 1e-5 and d["recursive_check"] < 1e-6
    assert d["recursive"]["value"] == pytest.approx(d["pre"], abs=1e-5)

    ind = run_json(["attention", "induction", "--model", str(saved_model), "--heads", "1.0", "1.3", "--max-prefix", "3", "--n", "8",
                    "--out", str(tmp_path / "ind"), "--json"], capsys)
    assert ind["induction_heads"] == ["1.0", "1.3"] and set(ind["verdicts"]) == {"1.0", "1.3"}
    assert len(ind["prefix_length_curve"]["attention_to_target"]["1.3"]) == 3
    assert (tmp_path / "ind" / "induction.json").exists() and (tmp_path / "ind" / "prefix_length.png").exists()


def test_attention_errors_are_reported(saved_model, tmp_path, capsys):
    from mechscope.dictionaries import Dictionary, DictionaryConfig

    resid = tmp_path / "resid"
    Dictionary(DictionaryConfig(d_in=32, n_latents=16, hook_in="blocks.1.hook_resid_pre")).save(resid)
    rc = main(["attention", "analyze", "--model", str(saved_model), "--sae", str(resid), "--n-contexts", "4"])
    assert rc == 2 and "attn.hook_z" in capsys.readouterr().err
    assert main(["attention"]) == 0 and "analyze" in capsys.readouterr().out
