"""Circuit finders on a shipped organism with a verified circuit (zoo:ioi-2l, whose card's circuit
was found by exhaustive mean-ablation search): every method runs and is scored; the discrete-code
method finds a planted difference, runs on the organism and, on docstring-2l, ranks the circuit's
heads well above chance over SAE seeds; EAP ranks the circuit's heads well
above chance (node AUC 0.94 measured with 64 held-out prompts; chance is 0.5); results are
deterministic and round-trip through JSON. Every method runs with its defaults.
"""

from __future__ import annotations

import pytest
import torch

from mechscope.circuits import Circuit, CircuitError, Graph, find_circuit, score_circuit
from mechscope.circuits.compare import compare, load_task_and_truth
from mechscope.circuits.methods import METHODS

ORGANISM = "zoo:ioi-2l"


@pytest.fixture(scope="module")
def setting():
    torch.set_num_threads(1)
    model, task, truth = load_task_and_truth(ORGANISM, n=64, seed=0)
    return model, task, truth, Graph.of(model)


def _node_auc(circuit, truth, graph) -> float:
    return score_circuit(circuit, truth, graph)["nodes"]["auc"]


def test_discrete_codes_on_planted_head_vectors():
    """One component writes different directions on positives and negatives, the others write the
    same rows on both: only the first gets codes unique to positives, and the pair score follows."""
    from mechscope.circuits.discrete_codes import CodeConfig, HeadVectors, scores_from_vectors

    g = torch.Generator().manual_seed(0)
    n, d = 40, 16
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
    noise = lambda: 0.05 * torch.randn(n, d, generator=g)  # noqa: E731
    same_b, same_c = 3 * basis[2] + noise(), 3 * basis[3] + noise()
    pos = torch.stack([3 * basis[0] + noise(), same_b, same_c], 1)  # [n, C=3, d]
    neg = torch.stack([3 * basis[1] + noise(), same_b, same_c], 1)
    vectors = HeadVectors(["0.0", "0.1", "0.2"], pos, neg, n, n)
    graph = Graph(n_layers=1, n_heads=3, has_mlp=False)
    nodes, edges, facts = scores_from_vectors(vectors, CodeConfig(n_latents=32, n_train=10), graph)
    assert nodes["0.0"] >= 1 and nodes["0.1"] == 0 and nodes["0.2"] == 0, nodes
    assert edges["0.0->logits"] == nodes["0.0"] and edges["0.1->logits"] == 0


def test_discrete_codes_run_on_an_organism(setting):
    """The paper's method with its defaults on ioi-2l. Its node AUC there is near chance and
    seed-dependent (seeds 0-3: 0.75, 0.41, 0.50, 0.66; see the closing note of issue 5), so this
    checks the mechanics, not a level."""
    model, task, truth, graph = setting
    circuit = find_circuit(model, task, "discrete_codes")
    assert set(truth.nodes) <= set(circuit.node_scores)
    assert all(v >= 0 for v in circuit.node_scores.values())
    assert circuit.nodes == [c for c in circuit.node_scores if circuit.node_scores[c] > 0]
    assert circuit.metadata["n_positives"] >= 32 and circuit.runtime_s > 0
    assert 0.0 <= _node_auc(circuit, truth, graph) <= 1.0


def test_discrete_codes_well_above_chance_on_docstring():
    """The paper's method with its defaults on docstring-2l, over SAE seeds 0-4 (through
    ``robustness``) and 32 / 64 / 128 held-out prompts: the median of the 15 node AUCs is well above
    chance (0.5). One seed at one prompt count is noisy (measured 0.69-1.00 at 64 prompts); the
    pooled median was 0.88 when this organism was shipped. On ioi-2l and greater-than-2l the same
    method is near chance (see the README's known gaps)."""
    from mechscope.circuits.discrete_codes import robustness

    aucs = []
    for n in (32, 64, 128):
        model, task, truth = load_task_and_truth("zoo:docstring-2l", n=n, seed=0)
        report = robustness(model, task, truth, grid={"seed": [0, 1, 2, 3, 4]})
        runs = report["parameters"]["seed"]["runs"]
        assert [r["value"] for r in runs] == [0, 1, 2, 3, 4]
        assert report["parameters"]["seed"]["node_auc_spread"] == pytest.approx(max(r["node_auc"] for r in runs) - min(r["node_auc"] for r in runs))
        aucs += [r["node_auc"] for r in runs]
    aucs.sort()
    assert aucs[7] >= 0.8, f"median node AUC over SAE seeds and prompt counts {aucs}"


def test_discrete_codes_deterministic(setting):
    model, task, _, _ = setting
    a = find_circuit(model, task, "discrete_codes", n_latents=64, steps=200)
    b = find_circuit(model, task, "discrete_codes", n_latents=64, steps=200)
    assert a.node_scores == b.node_scores and a.edge_scores == b.edge_scores


def test_eap_well_above_chance(setting):
    model, task, truth, graph = setting
    circuit = find_circuit(model, task, "eap")
    node_auc = _node_auc(circuit, truth, graph)
    scores = score_circuit(circuit, truth, graph)
    assert node_auc >= 0.8, f"EAP node AUC {node_auc:.3f} on {ORGANISM}"
    assert scores["edges"] is not None and scores["edges"]["auc"] >= 0.8, scores["edges"]


def test_every_method_runs_and_round_trips(setting, tmp_path):
    model, task, truth, graph = setting
    small = task.subset(slice(0, 16))
    params = {"acdc": {"n_thresholds": 4}, "eap_ig": {"steps": 3}}
    for method in METHODS:
        circuit = find_circuit(model, small, method, **params.get(method, {}))
        assert circuit.method == method and circuit.runtime_s > 0
        s = score_circuit(circuit, truth, graph)
        assert 0.0 <= s["nodes"]["auc"] <= 1.0
        path = tmp_path / f"{method}.json"
        circuit.save(path)
        again = Circuit.load(path)
        assert again.node_scores == circuit.node_scores and again.edge_scores == circuit.edge_scores


def test_unit_normalisation_keeps_a_small_component_visible():
    """One SAE is shared by all components; when one writes 30x larger vectors (an MLP beside heads),
    the paper's setting spends the SAE on it and the small component that differs between positives
    and negatives mostly gets no code of its own. ``normalize="unit"`` (codes from directions) finds
    it every time. 5 random draws x 2 SAE seeds; measured: plain finds it 2 times in 10, unit 10."""
    from mechscope.circuits.discrete_codes import CodeConfig, HeadVectors, scores_from_vectors

    graph = Graph(n_layers=1, n_heads=3, has_mlp=False)
    found = {"none": 0, "unit": 0}
    for draw in range(5):
        g = torch.Generator().manual_seed(draw)
        n, d = 40, 16
        basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0]
        noise = lambda s: s * torch.randn(n, d, generator=g)  # noqa: E731
        quiet = basis[3] + noise(0.05)
        pos = torch.stack([30 * basis[2] + noise(3.0), basis[0] + noise(0.05), quiet], 1)  # [n, C=3, d]
        neg = torch.stack([30 * basis[2] + noise(3.0), basis[1] + noise(0.05), quiet], 1)
        vectors = HeadVectors(["0.0", "0.1", "0.2"], pos, neg, n, n)
        for seed in range(2):
            for norm in found:
                nodes = scores_from_vectors(vectors, CodeConfig(n_latents=32, seed=seed, normalize=norm), graph)[0]
                assert nodes["0.2"] == 0, (norm, draw, seed, nodes)  # the same on positives and negatives
                found[norm] += nodes["0.1"] >= 1
    assert found["unit"] == 10 and found["none"] <= 3, found


def test_normalized_vectors():
    from mechscope.circuits.discrete_codes import CodeConfig, HeadVectors, normalized, training_prompts

    g = torch.Generator().manual_seed(1)
    vectors = HeadVectors(["0.0", "0.1"], 3 + torch.randn(20, 2, 8, generator=g), torch.randn(20, 2, 8, generator=g), 20, 20)
    assert normalized(vectors, CodeConfig()) is vectors
    unit = normalized(vectors, CodeConfig(normalize="unit"))
    assert torch.allclose(unit.pos.norm(dim=-1), torch.ones(20, 2)) and torch.allclose(unit.neg.norm(dim=-1), torch.ones(20, 2))
    cfg = CodeConfig(normalize="center", n_train=6, seed=3)
    centred, (pi, ni) = normalized(vectors, cfg), training_prompts(vectors, cfg)
    assert (len(pi), len(ni)) == (3, 3)
    assert torch.allclose(torch.cat([centred.pos[pi], centred.neg[ni]]).mean(0), torch.zeros(2, 8), atol=1e-5)
    assert torch.allclose(centred.pos - centred.neg, vectors.pos - vectors.neg)  # one shift per component
    with pytest.raises(CircuitError, match="normalize must be one of"):
        CodeConfig(normalize="l2")


def test_default_settings_skip_organisms_without_a_card(tmp_path, monkeypatch, tokenizer):
    """An organism still training (weights, no card yet) on MECHSCOPE_ZOO_PATH has no ground truth:
    ``compare``'s default list leaves it out instead of failing on it."""
    from conftest import make_tl_model

    from mechscope.circuits import settings
    from mechscope.models import save_model

    save_model(make_tl_model(tokenizer), tmp_path / "half-trained")
    monkeypatch.setenv("MECHSCOPE_ZOO_PATH", str(tmp_path))
    specs = settings()
    assert ORGANISM in specs and "zoo:half-trained" not in specs
    assert settings(include_published=True)[-2:] == ["gpt2-small", "attn-only-4l"]


def test_compare_table_has_every_method(setting):
    result = compare([ORGANISM], ["eap", "ablation_mean"], n=16)
    rows = result["rows"]
    assert [r["method"] for r in rows] == ["eap", "ablation_mean"]
    for r in rows:
        assert r["model"] == ORGANISM and 0.0 <= r["node_auc"] <= 1.0 and r["seconds"] > 0
        assert r["gt_nodes"] == len(setting[2].nodes)


def test_compare_cli_passes_method_parameters(setting, capsys):
    """``circuit compare --param discrete_codes.normalize=unit`` runs the method with that parameter:
    its row equals a direct run with it, and the result records the parameters."""
    import json

    from mechscope.cli import main

    assert main(["circuit", "compare", "--models", ORGANISM, "--methods", "discrete_codes", "--n", "16",
                 "--param", "discrete_codes.normalize=unit", "--param", "discrete_codes.n_latents=64", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["params"] == {"discrete_codes": {"normalize": "unit", "n_latents": 64}}
    model, task, truth = load_task_and_truth(ORGANISM, n=16, seed=0)
    direct = find_circuit(model, task, "discrete_codes", normalize="unit", n_latents=64)
    assert result["rows"][0]["node_auc"] == pytest.approx(score_circuit(direct, truth, Graph.of(model))["nodes"]["auc"])
    for bad, message in (("normalize=unit", "expects METHOD.KEY=VALUE"), ("discrete_code.normalize=unit", "unknown circuit method 'discrete_code'")):
        assert main(["circuit", "compare", "--models", ORGANISM, "--methods", "eap", "--param", bad]) == 2
        assert message in capsys.readouterr().err
