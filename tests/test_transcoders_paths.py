"""Greedy path search finds paths planted in constructed models, and their union scores as a circuit."""

from __future__ import annotations

import pytest
import torch

from mechscope.circuits import Graph, score_circuit
from mechscope.tasks import GroundTruth
from mechscope.transcoders import (PathSearchResult, ReplacementRun, attribute, find_paths, logit_target, paths_to_circuit,
                                   token_direction)
from mechscope.transcoders.planted import planted_path_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _search(planted, **kw):
    run = ReplacementRun(planted.model, planted.transcoders, planted.tokens)
    last = planted.tokens.shape[1] - 1
    target = logit_target(run, 0, last, token_direction(run, [planted.good], [planted.bad]), label="logit_diff")
    return run, target, find_paths(run, target, **kw)


@pytest.mark.parametrize("via_head", [False, True])
@pytest.mark.parametrize("rank", ["value", "min"])
def test_finds_the_planted_path(via_head, rank):
    planted = planted_path_model(via_head=via_head, seed=0)
    run, target, paths = _search(planted, beam=8, top_k=5, n_paths=5, rank=rank)
    best = paths[0]
    assert [n.name for n in best.nodes] == planted.expected
    assert best.complete and best.reaches_embedding
    # the planted path carries most of the logit difference, and its values chain exactly:
    # each node's contribution along the path is the value of the child target it expands to
    root = attribute(run, target)
    assert best.values[0] > 0.8 * root.value
    from mechscope.transcoders import child_target

    tgt = target
    for node, v in zip(best.nodes, best.values):
        contributions = {n.name: x for n, x in attribute(run, tgt).entries()}
        assert abs(contributions[node.name] - v) < 1e-9 * max(1.0, abs(v))
        if node.expandable:
            tgt = child_target(run, tgt, node)
            assert abs(tgt.value(run) - v) < 1e-9 * max(1.0, abs(v))


def test_union_of_paths_is_a_circuit_scored_against_the_planted_components():
    planted = planted_path_model(via_head=True, seed=1)
    _, _, paths = _search(planted, beam=8, top_k=5, n_paths=8)
    result = PathSearchResult([paths], [paths[0].root_value], {"n": 1})
    circuit = paths_to_circuit(result, planted.model, "planted")
    truth = GroundTruth(model="planted", task="planted", nodes=["mlp0", "1.0", "mlp1"],
                        edges=[["embed", "mlp0"], ["mlp0", "1.0.v"], ["1.0", "mlp1"], ["mlp1", "logits"]])
    score = score_circuit(circuit, truth, Graph.of(planted.model))
    assert score["nodes"]["auc"] == 1.0
    assert score["nodes"]["at_gt_size"]["precision"] == 1.0
    assert score["edges"]["at_gt_size"]["recall"] == 1.0
    assert set(circuit.ranked_nodes()[:3]) == {"mlp0", "1.0", "mlp1"}
    feats = list(circuit.metadata["feature_scores"])
    assert feats[:2] == [f"mlp1.f{planted.feature_b}", f"mlp0.f{planted.feature_a}"]
    assert result.ranked_features()[:2] == [(1, planted.feature_b), (0, planted.feature_a)]
    # the circuit round-trips through its file format
    from mechscope.circuits import Circuit

    assert Circuit.from_dict(circuit.to_dict()).node_scores == circuit.node_scores


def test_search_options_are_checked_and_depth_is_bounded():
    planted = planted_path_model(seed=2)
    _, _, paths = _search(planted, beam=4, top_k=3, n_paths=3, max_depth=1)
    assert all(len(p.nodes) == 1 for p in paths)
    with pytest.raises(Exception, match="rank must be one of"):
        _search(planted, rank="sum")


def test_paths_on_a_post_norm_model_become_a_named_circuit():
    """Gemma-2-style post-norms: the circuit graph refuses patching (a head's write is not z @ W_O), but
    paths found by exact attribution are still named and recorded as a circuit over the same components."""
    from mechscope.circuits.errors import CircuitError
    from mechscope.transcoders.planted import random_transcoders, tiny_model

    model = tiny_model(normalization="RMS", seed=2, use_normalization_before_and_after=True, output_logits_soft_cap=2.0)
    ts = random_transcoders(model, seed=3)
    run = ReplacementRun(model, ts, torch.tensor([[1, 17, 5, 33, 8, 2, 40, 11]]))
    target = logit_target(run, 0, 7, token_direction(run, [3], [5]))
    paths = find_paths(run, target, beam=4, top_k=3, n_paths=4)
    contributions = {n.name: v for n, v in attribute(run, target).entries()}
    assert paths and all(abs(contributions[p.nodes[0].name] - p.values[0]) < 1e-9 for p in paths)
    circuit = paths_to_circuit(PathSearchResult([paths], [paths[0].root_value], {"n": 1}), model, "post-norm")
    with pytest.raises(CircuitError, match="edges between components are not defined"):
        Graph.of(model)
    graph = Graph.of(model, for_edges=False)
    assert Graph.of_circuit(circuit) == graph and set(circuit.node_scores) == set(graph.nodes)
    assert circuit.nodes and set(circuit.nodes) <= set(graph.nodes)
