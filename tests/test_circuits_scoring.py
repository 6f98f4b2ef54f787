"""Scoring functions on hand-made cases, the Circuit JSON round-trip, and the graph's edges."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from mechscope.circuits import Circuit, Graph, edge_key, prf_at_k, prf_at_threshold, roc_auc, score_circuit
from mechscope.circuits.errors import CircuitError, GroundTruthMismatchError, UnknownMethodError
from mechscope.errors import FormatError
from mechscope.tasks import GroundTruth


def test_auc_perfect_reversed_and_ties():
    labels = [1, 1, 0, 0, 0]
    assert roc_auc([5, 4, 3, 2, 1], labels) == 1.0
    assert roc_auc([1, 2, 3, 4, 5], labels) == 0.0
    assert roc_auc([7, 7, 7, 7, 7], labels) == 0.5
    # one positive tied with one negative, the other positive above everything: (1 + 1 + 1 + 0.5 + 1 + 1) / 6
    assert roc_auc([9, 3, 3, 1, 0], labels) == pytest.approx(5.5 / 6)


def test_auc_matches_sklearn_with_many_ties():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(4, 60))
        y = rng.integers(0, 2, n).astype(bool)
        if y.all() or not y.any():
            continue
        s = rng.integers(0, 4, n).astype(float)  # heavy ties, like integer code counts
        assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        s = rng.normal(size=n)
        assert roc_auc(s, y) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_auc_needs_both_classes():
    with pytest.raises(CircuitError, match="both members and non-members"):
        roc_auc([1, 2, 3], [True, True, True])


def test_precision_recall_at_k_and_threshold():
    scores = [0.9, 0.8, 0.7, 0.1]
    labels = [True, False, True, False]
    r = prf_at_k(scores, labels, 2)
    assert (r["precision"], r["recall"]) == (0.5, 0.5)
    r = prf_at_k(scores, labels, 3)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == 1.0 and r["f1"] == pytest.approx(0.8)
    r = prf_at_threshold(scores, labels, 0.75)
    assert (r["tp"], r["selected"], r["precision"], r["recall"]) == (1.0, 2.0, 0.5, 0.5)
    assert prf_at_k(scores, labels, 0)["precision"] == 0.0


def test_precision_at_k_splits_ties_evenly():
    # top-2 of [3, 1, 1, 1]: the first is a member, one slot left among three tied (one member) -> 1 + 1/3 expected hits
    r = prf_at_k([3, 1, 1, 1], [True, False, True, False], 2)
    assert r["tp"] == pytest.approx(4 / 3)
    assert r["precision"] == pytest.approx(2 / 3)
    assert r["recall"] == pytest.approx(2 / 3)


def test_graph_edges_respect_layer_order():
    g = Graph(n_layers=2, n_heads=2, has_mlp=True)
    assert g.sources == ["embed", "0.0", "0.1", "mlp0", "1.0", "1.1", "mlp1"]
    edges = set(g.edges)
    assert ("0.0", "mlp0") in edges and ("0.0", "1.1.k") in edges and ("mlp0", "1.0.v") in edges
    assert ("embed", "0.0.q") in edges and ("mlp1", "logits") in edges
    assert ("0.0", "0.1.q") not in edges and ("mlp0", "mlp0") not in edges and ("1.0", "mlp0") not in edges
    # embed -> 6 head inputs of layer 0 + mlp0; each layer-1 head input reads embed, 2 heads, mlp0 ...
    assert len(g.edges) == 6 + 3 + 6 * 4 + 6 + 7
    attn_only = Graph(n_layers=2, n_heads=4, has_mlp=False)
    assert len(attn_only.nodes) == 8 and len(attn_only.edges) == 12 + 12 * 5 + 9


def _circuit() -> Circuit:
    g = Graph(n_layers=2, n_heads=2, has_mlp=False)
    nodes = {"0.0": 3.0, "0.1": 0.0, "1.0": 2.0, "1.1": 0.5}
    edges = {k: 0.0 for k in g.edge_keys}
    edges["0.0->1.0.v"] = 5.0
    edges["1.0->logits"] = 4.0
    return Circuit(model="toy", task="toy", method="hand", node_scores=nodes, edge_scores=edges, nodes=["0.0", "1.0"],
                   edges=[["0.0", "1.0.v"]], params={"a": 1, "nested": {"b": [1, 2]}}, runtime_s=0.25,
                   metadata={"graph": {"n_layers": 2, "n_heads": 2, "has_mlp": False}})


def test_circuit_json_round_trip(tmp_path):
    c = _circuit()
    path = c.save(tmp_path / "c.json")
    back = Circuit.load(path)
    assert back == c
    assert json.loads(path.read_text())["format"] == "mechscope.circuit"
    assert back.top_k(1).nodes == ["0.0"]
    assert back.threshold(0.5).nodes == ["0.0", "1.0", "1.1"]
    assert back.top_k(2, edges=1).edges == [["0.0", "1.0.v"]]
    assert Graph.of_circuit(back) == Graph(2, 2, False)


def test_circuit_load_rejects_wrong_format(tmp_path):
    p = tmp_path / "x.json"
    p.write_text(json.dumps({"format": "something.else"}))
    with pytest.raises(FormatError, match="expected a circuit"):
        Circuit.load(p)
    with pytest.raises(FormatError, match="src->dst"):
        Circuit(model="m", task="t", method="x", node_scores={}, edge_scores={"0.1-1.2": 1.0})


def test_score_circuit_against_hand_made_truth():
    c = _circuit()
    g = Graph.of_circuit(c)
    truth = GroundTruth(model="toy", task="toy", nodes=["0.0", "1.0"], edges=[["0.0", "1.0.v"], ["1.0", "logits"]])
    s = score_circuit(c, truth, g)
    assert s["nodes"]["auc"] == 1.0
    assert s["nodes"]["at_gt_size"]["precision"] == 1.0 and s["nodes"]["at_gt_size"]["recall"] == 1.0
    assert s["edges"]["auc"] == 1.0 and s["edges"]["n_candidates"] == len(g.edges)
    # a ground truth without edges: edges are not scored
    assert score_circuit(c, GroundTruth(model="toy", task="toy", nodes=["1.1"]), g)["edges"] is None
    # a ground truth naming a head the model does not have
    with pytest.raises(GroundTruthMismatchError, match="5.3"):
        score_circuit(c, GroundTruth(model="toy", task="toy", nodes=["5.3"]), g)


def test_unknown_method_names_the_valid_ones(tl_model):
    from mechscope.circuits import find_circuit

    with pytest.raises(UnknownMethodError, match="did you mean eap") as e:
        find_circuit(tl_model, None, "eapp")
    assert "discrete_codes" in str(e.value) and "acdc" in str(e.value)


def test_edges_by_component_merge_qkv():
    """A channel-blind method (one score for a head's q, k and v inputs) is penalised at q/k/v
    granularity and exact once the channels are merged."""
    from mechscope.circuits.scoring import component_edge

    g = Graph(2, 2, False)
    blind = {edge_key("0.0", f"1.0.{ch}"): 1.0 for ch in "qkv"}
    c = Circuit(model="toy", task="toy", method="blind", node_scores={n: 0.0 for n in g.nodes},
                edge_scores={**{k: 0.0 for k in g.edge_keys}, **blind})
    truth = GroundTruth(model="toy", task="toy", nodes=["0.0", "1.0"], edges=[["0.0", "1.0.v"]])
    e = score_circuit(c, truth, g)["edges"]
    assert e["auc"] < 1.0  # the true v edge ties with the false q and k edges
    merged = {component_edge(k) for k in g.edge_keys}
    assert e["by_component"]["auc"] == 1.0 and e["by_component"]["n_truth"] == 1
    assert e["by_component"]["n_candidates"] == len(merged) < len(g.edge_keys)
    assert component_edge("0.1->1.2.q") == "0.1->1.2" and component_edge("1.0->logits") == "1.0->logits"
    assert component_edge("0.1->mlp1") == "0.1->mlp1"
