"""load_model on every kind of spec, with real files on disk."""

import json

import pytest
import torch

from mechscope.errors import FormatError, ModelSpecError, StoreError
from mechscope.models import list_hooks, load_model, run_with_cache, save_model


def test_native_round_trip(tl_model, tmp_path):
    save_model(tl_model, tmp_path / "m")
    assert (tmp_path / "m" / "tokenizer.json").exists()
    loaded = load_model(tmp_path / "m", device="cpu")
    tokens = torch.randint(0, 4096, (2, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(loaded(tokens), tl_model(tokens), rtol=0, atol=0)
    assert loaded.tokenizer is not None and loaded.meta["weights_sha256"]
    assert loaded.to_tokens("def f(x):").shape[1] > 2


def test_zoo_lookup_by_name(tl_model, tmp_path, monkeypatch):
    save_model(tl_model, tmp_path / "zoo" / "tiny-test")
    monkeypatch.setenv("MECHSCOPE_ZOO_PATH", str(tmp_path / "zoo"))
    m = load_model("zoo:tiny-test", device="cpu")
    assert m.name == "zoo:tiny-test" and m.kind == "transformer_lens"
    with pytest.raises(ModelSpecError, match="tiny-test"):
        load_model("zoo:tiny-tset")


def test_corrupt_weights_are_detected(tl_model, tmp_path):
    save_model(tl_model, tmp_path / "m")
    path = tmp_path / "m" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(StoreError, match="sha256"):
        load_model(tmp_path / "m")


def test_wrong_format_and_specs(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "cfg.json").write_text(json.dumps({"format": "something-else", "version": 1}))
    with pytest.raises(FormatError, match="expected format"):
        load_model(tmp_path / "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSpecError, match="neither"):
        load_model(tmp_path / "empty")
    with pytest.raises(ModelSpecError, match="gpt2"):
        load_model("gtp2")  # a typo of a TransformerLens name: names the close ones, no download
    with pytest.raises(ModelSpecError):
        load_model(42)


def test_local_hf_directory_through_transformer_bridge(tmp_path):
    """Gemma 2 (post-norms, soft-caps) is not converted by TransformerLens's classic loader: the
    model loads through TransformerBridge with a warning saying why, runs with TL hook names and the
    HF model's next-token distribution, and the circuit graph and DFA (which need per-head hooks)
    refuse it by name."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from mechscope.attention.dfa import attention_inputs
    from mechscope.circuits import CircuitError, Graph
    from mechscope.errors import ConfigError

    torch.manual_seed(0)
    hf = Gemma2ForCausalLM(Gemma2Config(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                                        num_key_value_heads=2, head_dim=8, max_position_embeddings=32)).eval()
    hf.save_pretrained(tmp_path / "gemma2-tiny")
    with pytest.warns(UserWarning, match="cannot convert.*TransformerBridge"):
        model = load_model(tmp_path / "gemma2-tiny", device="cpu")
    assert model.kind == "transformer_lens" and model.meta["backend"] == "TransformerBridge"
    assert "blocks.1.attn.hook_z" in list_hooks(model)
    tokens = torch.randint(0, 120, (2, 8), generator=torch.Generator().manual_seed(0))
    out, cache = run_with_cache(model, tokens, ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_post"], return_output=True)
    torch.testing.assert_close(out.log_softmax(-1), hf(tokens).logits.log_softmax(-1), atol=1e-4, rtol=1e-4)
    assert cache["blocks.1.hook_resid_post"].shape == (2, 8, 32)
    with pytest.raises(CircuitError, match="TransformerBridge"):
        Graph.of(model)
    with pytest.raises(ConfigError, match="DFA needs a classic TransformerLens HookedTransformer.*TransformerBridge"):
        attention_inputs(model, tokens, 0)  # its hook_v / hook_z are not split by head


def _hf_dir(tmp_path, kind: str):
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    if kind == "gpt2":
        hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=4, vocab_size=120, n_positions=32))
    elif kind == "neox":  # Pythia's architecture: parallel attention and MLP, rotary positions
        hf = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=120, max_position_embeddings=32, hidden_size=32, num_hidden_layers=2,
                                              num_attention_heads=4, intermediate_size=64))
    else:  # Llama: RMSNorm, rotary, gated MLP, grouped-query attention
        hf = LlamaForCausalLM(LlamaConfig(vocab_size=120, max_position_embeddings=32, hidden_size=32, num_hidden_layers=2,
                                          num_attention_heads=4, num_key_value_heads=2, intermediate_size=64))
    hf.eval().save_pretrained(tmp_path / kind)  # GPT-2: without the n_ctx key TransformerLens reads (transformers 5 drops it)
    return hf, tmp_path / kind


@pytest.mark.parametrize("kind", ["gpt2", "neox", "llama"])
def test_local_hf_directory_as_a_hooked_transformer(tmp_path, kind):
    """Architectures TransformerLens converts load as a classic HookedTransformer with the HF
    model's exact logits, so the circuit graph (per-head hooks) applies to them."""
    import warnings

    from mechscope.circuits import Graph
    from mechscope.circuits.forward import source_outputs

    hf, path = _hf_dir(tmp_path, kind)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # no fallback warning
        model = load_model(path, device="cpu")
    assert type(model.module).__name__ == "HookedTransformer" and model.meta["backend"] == "HookedTransformer"
    tokens = torch.randint(0, 120, (2, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(model.module(tokens), hf(tokens).logits, atol=1e-4, rtol=1e-4)
    graph = Graph.of(model)
    assert graph.parallel_attn_mlp == (kind == "neox")
    assert source_outputs(model, tokens, graph).shape == (2, 8, len(graph.sources), 32)

