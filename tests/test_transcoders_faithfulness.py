"""Faithfulness curves (top-k features vs top-k neurons) and the task-level path search, on a
tiny TransformerLens model with untrained transcoders and a hand-made task."""

from __future__ import annotations

import pytest
import torch

from mechscope.tasks import Task
from mechscope.transcoders import ReplacementRun, faithfulness_curves, find_transcoder_circuit, task_direction
from mechscope.transcoders.planted import random_transcoders, tiny_model


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _task(n: int = 12, seq: int = 7, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, 64, (n, seq), generator=g)
    return Task(name="toy", variant="test", clean=clean, corrupted=clean.clone(), answer_ids=torch.randint(0, 64, (n,), generator=g),
                wrong_ids=torch.randint(0, 64, (n, 2), generator=g), answer_pos=torch.full((n,), seq - 1))


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(dtype=torch.float32, seed=11)
    ts = random_transcoders(model, n_latents=48, dtype="float32", seed=12)
    return model, ts


def test_curves_hit_their_endpoints(setup):
    model, ts = setup
    task, ref = _task(seed=0), _task(seed=1)
    out = faithfulness_curves(model, ts, task, path_features=[(1, 3), (0, 2), (1, 3)], reference=ref, ks=(0, 1, 4, 1000))
    c = out["curves"]
    assert set(c) == {"features_paths", "features_attribution", "neurons_attribution"}
    assert c["features_paths"]["n_ranked"] == 2 and [p["k"] for p in c["features_paths"]["points"]] == [0, 1, 2]
    fa, na = c["features_attribution"]["points"], c["neurons_attribution"]["points"]
    assert fa[0]["metric"] == pytest.approx(out["all_features_ablated"], abs=1e-5) and fa[0]["fraction"] == pytest.approx(0.0, abs=1e-6)
    assert fa[-1]["k"] == 96 and fa[-1]["metric"] == pytest.approx(out["spliced_all_features"], abs=1e-4)
    assert na[-1]["k"] == 128 and na[-1]["metric"] == pytest.approx(out["original"], abs=1e-4)
    assert na[-1]["fraction"] == pytest.approx(1.0, abs=1e-3)
    assert na[0]["metric"] == pytest.approx(out["all_neurons_ablated"], abs=1e-5)
    # untrained transcoders: the spliced model differs from the original
    assert abs(out["spliced_all_features"] - out["original"]) > 1e-3


def test_keep_error_restores_the_original_and_zero_ablation_runs(setup):
    model, ts = setup
    task = _task(seed=2)
    out = faithfulness_curves(model, ts, task, ks=(0, 8), keep_error=True, ablation="zero", neurons=False)
    assert out["spliced_all_features"] == pytest.approx(out["original"], abs=1e-4)
    assert "neurons_attribution" not in out["curves"] and out["ablation"] == "zero"
    with pytest.raises(Exception, match="ablation must be one of"):
        faithfulness_curves(model, ts, task, ablation="resample")


def test_task_path_search_uses_the_task_logit_difference(setup):
    model, ts = setup
    task = _task(n=3, seed=3)
    circuit, result = find_transcoder_circuit(model, ts, task, n=3, beam=4, top_k=3, n_paths=4)
    run = ReplacementRun(model, ts, task.clean)
    metric = task.logit_diff(run.logits, per_prompt=True)
    for b in range(3):
        u = task_direction(run, task, b)
        assert float(run.logits[b, 6].double() @ u) == pytest.approx(float(metric[b]), abs=1e-5)
        assert result.root_values[b] == pytest.approx(float(metric[b]), abs=1e-4)
        paths = result.paths[b]  # n_paths of them, all rooted at prompt b's logit difference
        assert len(paths) == 4 and all(p.nodes and p.batch == b and p.root_value == result.root_values[b] for p in paths)
    assert circuit.method == "transcoder_paths" and set(circuit.node_scores) == {f"{l}.{h}" for l in range(2) for h in range(4)} | {"mlp0", "mlp1"}
    assert circuit.metadata["n_features_on_paths"] == len(result.ranked_features())
