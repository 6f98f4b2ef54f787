"""The circuit graph on architectures other than the zoo's GPT-2-style blocks: parallel attention
and MLP (GPT-NeoX / Pythia, rotary), grouped-query attention with RMSNorm and a gated MLP
(Llama-style), attention-only with shortformer positions, and no norm at all. Each is a random
TransformerLens model built from a config. For each: the sources add up to the residual stream,
patching no edge gives the clean logits and patching every edge the corrupted ones (so every
receiver hook sees exactly what the graph says it reads), and every method runs. On models whose heads'
writes do not add up (a norm on the summed attention output) the node methods run and the edge methods
refuse with a clear error.
"""

from __future__ import annotations

import warnings

import pytest
import torch

from mechscope.circuits import CircuitError, Graph, find_circuit
from mechscope.circuits.forward import answer_logits, patched_logits, source_outputs
from mechscope.circuits.methods import METHODS
from mechscope.models import Model, run_with_cache
from mechscope.tasks import make_task

ARCHITECTURES = {
    "neox_parallel_rotary": dict(parallel_attn_mlp=True, positional_embedding_type="rotary", rotary_dim=8),
    "llama_gqa_rms_gated": dict(normalization_type="RMS", positional_embedding_type="rotary", gated_mlp=True, act_fn="silu",
                                n_key_value_heads=2),
    "attn_only_shortformer": dict(attn_only=True, positional_embedding_type="shortformer", d_mlp=None, act_fn=None),
    "no_norm": dict(normalization_type=None),
}


def _model(tokenizer, name: str, **extra) -> Model:
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = dict(n_layers=2, d_model=32, n_heads=4, d_head=8, n_ctx=64, d_vocab=len(tokenizer), d_mlp=64, act_fn="gelu", seed=0, device="cpu")
    cfg.update(ARCHITECTURES.get(name, {}), **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = HookedTransformer(HookedTransformerConfig(**cfg))
    return Model(module=module.eval(), name=name, kind="transformer_lens", tokenizer=tokenizer)


@pytest.fixture(scope="module")
def task(tokenizer):
    return make_task("induction", tokenizer, n=8, seed=0, seq_len=6, prefix_len=3)


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_sources_add_up_and_edge_patching_is_exact(arch, tokenizer, task, one_thread):
    model = _model(tokenizer, arch)
    graph = Graph.of(model)
    cfg = model.module.cfg
    assert graph.parallel_attn_mlp == (arch == "neox_parallel_rotary")
    assert graph.has_mlp == (arch != "attn_only_shortformer")

    # what the sources write (+ the attention output biases) is the final residual stream
    src = source_outputs(model, task.clean, graph)
    final = run_with_cache(model, task.clean, [f"blocks.{cfg.n_layers - 1}.hook_resid_post"])[f"blocks.{cfg.n_layers - 1}.hook_resid_post"]
    torch.testing.assert_close(src.sum(2) + model.module.b_O.sum(0), final, atol=1e-4, rtol=1e-4)

    corrupt = source_outputs(model, task.corrupted, graph)
    with torch.no_grad():
        none = patched_logits(model, task, torch.zeros_like(graph.edge_mask), corrupt, graph)
        every = patched_logits(model, task, graph.edge_mask.clone(), corrupt, graph)
        clean = answer_logits(model, task.clean, task.answer_pos)
        corrupted = answer_logits(model, task.corrupted, task.answer_pos)
    torch.testing.assert_close(none, clean, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(every, corrupted, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(clean, corrupted, atol=1e-3)  # the test could fail


def test_parallel_block_heads_do_not_feed_their_own_mlp(tokenizer):
    graph = Graph.of(_model(tokenizer, "neox_parallel_rotary"))
    assert ("0.1", "mlp0") not in graph.edges and ("mlp0", "1.2.k") in graph.edges and ("embed", "mlp0") in graph.edges
    assert ("0.1", "mlp1") in graph.edges
    sequential = Graph(2, 4, True)
    assert len(sequential.edges) - len(graph.edges) == 2 * 4  # one head -> own-MLP edge per head and layer
    assert Graph.from_dict(graph.to_dict()) == graph and "parallel" in repr(graph)


def test_grouped_query_heads_are_patched_one_by_one(tokenizer, task, one_thread):
    """Patching the key input of one query head changes the logits differently from patching its
    group partner's: each has its own receiver, and the model's own config is left as it was."""
    model = _model(tokenizer, "llama_gqa_rms_gated")
    graph = Graph.of(model)
    corrupt = source_outputs(model, task.corrupted, graph)
    outs = []
    for head in ("1.0.k", "1.1.k"):  # heads 1.0 and 1.1 share a key/value head
        removed = torch.zeros_like(graph.edge_mask)
        removed[:, graph.receiver_index[head]] = graph.edge_mask[:, graph.receiver_index[head]]
        with torch.no_grad():
            outs.append(patched_logits(model, task, removed, corrupt, graph))
    assert not torch.allclose(outs[0], outs[1], atol=1e-5)
    assert model.module.cfg.ungroup_grouped_query_attention is False


@pytest.mark.parametrize("arch", ["neox_parallel_rotary", "llama_gqa_rms_gated"])
def test_every_method_runs_on_other_architectures(arch, tokenizer, task, one_thread):
    model = _model(tokenizer, arch)
    graph = Graph.of(model)
    for method in METHODS:
        if method == "discrete_codes":
            continue  # needs prompts a random model answers correctly (positives); its vectors are source_outputs, tested above
        params = {"n_thresholds": 2} if method == "acdc" else {"steps": 2} if method == "eap_ig" else {}
        circuit = find_circuit(model, task, method, **params)
        assert set(circuit.node_scores) == set(graph.nodes), method
        if circuit.edge_scores:
            assert set(circuit.edge_scores) == set(graph.edge_keys), method
        assert Graph.of_circuit(circuit) == graph


@pytest.mark.parametrize("extra", [dict(normalization_type="RMS", use_normalization_before_and_after=True),  # Gemma 2
                                   dict(normalization_type="RMS", original_architecture="Olmo2ForCausalLM")])  # OLMo 2
def test_norm_after_attention_runs_node_methods_and_refuses_edge_methods(extra, tokenizer, task, one_thread):
    """A norm on the summed attention output (Gemma 2's ln1_post, OLMo 2's post-norm): no head writes
    z @ W_O, so edges are undefined and edge methods refuse, naming the node methods that do run."""
    model = _model(tokenizer, "post_norm", **extra)
    with pytest.raises(CircuitError, match="node methods \\(ablation_zero"):
        Graph.of(model)
    graph = Graph.of(model, for_edges=False)
    for method in ("eap", "eap_ig", "acdc"):
        with pytest.raises(CircuitError, match="edges between components are not defined"):
            find_circuit(model, task, method)
    for method in ("ablation_zero", "ablation_mean", "ablation_resample", "patching"):
        circuit = find_circuit(model, task, method)
        assert set(circuit.node_scores) == set(graph.nodes) and Graph.of_circuit(circuit) == graph, method
        assert any(abs(v) > 0 for v in circuit.node_scores.values()), method
    # a node's patching effect is the metric moved by patching its hook in the real forward (through the norm)
    hook, head = "blocks.1.attn.hook_z", 2
    corrupt = run_with_cache(model, task.corrupted, [hook])[hook]

    def patch(z, hook):
        z[:, :, head] = corrupt[:, :, head]
        return z

    clean = float(task.metric(answer_logits(model, task.clean, task.answer_pos)))
    patched = float(task.metric(answer_logits(model, task.clean, task.answer_pos, [(hook, patch)])))
    assert abs(find_circuit(model, task, "patching").node_scores["1.2"] - abs(clean - patched)) < 1e-6
