"""Published ground truths ship as data with citations, and round-trip through JSON."""

from __future__ import annotations

import json

import pytest

from mechscope.errors import ConfigError, FormatError
from mechscope.tasks import GroundTruth, list_ground_truths, load_ground_truth, parse_node


def test_shipped_ground_truths_load_with_citations():
    assert set(list_ground_truths()) >= {"ioi-gpt2-small", "greater_than-gpt2-small", "docstring-attn-only-4l"}
    for name in list_ground_truths():
        gt = load_ground_truth(name)
        assert gt.citation and gt.source and gt.nodes
        assert "arXiv" in gt.citation or "alignmentforum" in gt.citation


def test_published_head_sets():
    ioi = load_ground_truth("ioi-gpt2-small")
    assert ioi.model == "gpt2-small" and ioi.task == "ioi"
    assert set(ioi.roles["name mover"]) == {"9.9", "9.6", "10.0"}
    assert set(ioi.roles["s-inhibition"]) == {"7.3", "7.9", "8.6", "8.10"}
    assert len(ioi.nodes) == 26 and (9, 9) in ioi.heads and not ioi.mlps
    assert ["9.9", "logits"] in ioi.edges and ["7.3", "9.9.q"] in ioi.edges
    gt = load_ground_truth("greater_than-gpt2-small")
    assert set(gt.mlps) == {0, 1, 2, 3, 8, 9, 10, 11} and {(6, 9), (9, 1), (8, 11)} <= set(gt.heads)
    doc = load_ground_truth("docstring-attn-only-4l")
    assert doc.model == "attn-only-4l" and set(doc.nodes) == {"0.2", "0.4", "0.5", "1.2", "1.4", "2.0", "3.0", "3.6"}
    assert len(doc.edges) == 24 and ["2.0", "3.6.k"] in doc.edges
    for g in (ioi, gt, doc):  # every edge runs forward in depth and between listed nodes
        for src, dst in g.edges:
            if src != "embed":
                assert src in g.nodes
            if dst != "logits":
                node = dst if dst.startswith("mlp") else ".".join(dst.split(".")[:2])
                assert node in g.nodes


def test_json_round_trip(tmp_path):
    gt = GroundTruth(model="m", task="ioi", nodes=["0.1", "mlp0", "1.3"], edges=[["0.1", "1.3.q"], ["embed", "mlp0"], ["1.3", "logits"]],
                     citation="c", source="s", roles={"mover": ["1.3"]}, metrics={"faithfulness": 0.95})
    back = GroundTruth.from_json(gt.to_json())
    assert back == gt
    gt.save(tmp_path / "gt.json")
    assert GroundTruth.load(tmp_path / "gt.json") == gt
    assert json.loads((tmp_path / "gt.json").read_text())["nodes"] == ["0.1", "mlp0", "1.3"]


def test_bad_ground_truths():
    with pytest.raises(ConfigError, match="bad node"):
        GroundTruth(model="m", task="t", nodes=["head3"])
    with pytest.raises(ConfigError, match="bad edge"):
        GroundTruth(model="m", task="t", nodes=["0.1"], edges=[["0.1", "1.2.x"]])
    with pytest.raises(ConfigError, match="no nodes"):
        GroundTruth(model="m", task="t", nodes=[])
    with pytest.raises(ConfigError, match="twice"):
        GroundTruth(model="m", task="t", nodes=["0.1", "0.1"])
    with pytest.raises(FormatError, match="missing"):
        GroundTruth.from_dict({"model": "m"})
    with pytest.raises(FormatError, match="JSON"):
        GroundTruth.from_json("{not json")
    with pytest.raises(ConfigError, match="no ground truth named"):
        load_ground_truth("ioi-gpt5")
    assert parse_node("mlp11") == ("mlp", 11, None) and parse_node("10.7") == ("head", 10, 7)
