"""The measuring tools behind the model cards: mean-ablation masks, exhaustive search, patching."""

from __future__ import annotations

import pytest
import torch

from mechscope.errors import ConfigError
from mechscope.models import load_model
from mechscope.zoo.analysis import (answer_logits, component_names, evaluate_masks, exhaustive_search, mean_activations,
                                    nodes_to_mask, patching_effects)
from mechscope.zoo.cards import load_card, task_for
from mechscope.zoo.specs import SPECS


ORGANISM = "ioi-2l"


@pytest.fixture(scope="module")
def organism():
    torch.set_num_threads(1)
    model = load_model(f"zoo:{ORGANISM}", device="cpu")
    spec = SPECS[ORGANISM]
    task = task_for(spec, model.tokenizer, 48, 777, "heldout")
    means = mean_activations(model, task_for(spec, model.tokenizer, 96, 778, "heldout").clean)
    return model, task, means


def test_answer_logits_match_full_forward(organism):
    model, task, _ = organism
    with torch.no_grad():
        full = model.module(task.clean)
    got = answer_logits(model, task.clean, task.answer_pos)
    assert torch.allclose(got, full[torch.arange(len(task)), task.answer_pos], atol=1e-4)


def test_masks_all_and_none(organism):
    model, task, means = organism
    K = len(component_names(model))
    keep = torch.stack([torch.ones(K, dtype=torch.bool), torch.zeros(K, dtype=torch.bool)])
    m = evaluate_masks(model, task, keep, means)
    with torch.no_grad():
        full = float(task.metric(model.module(task.clean)))
    assert float(m[0]) == pytest.approx(full, abs=1e-3)  # keeping everything is the unablated model
    assert float(m[1]) < 0.2 * full  # ablating everything removes the behaviour
    with pytest.raises(ConfigError, match="one column per component"):
        evaluate_masks(model, task, keep[:, :3], means)
    with pytest.raises(ConfigError, match="not components"):
        nodes_to_mask(model, ["7.7"])


def test_exhaustive_search_reproduces_card_circuit(organism):
    model, task, means = organism
    res = exhaustive_search(model, task, means)
    card = load_card(ORGANISM)
    assert res["n_subsets"] == 2 ** len(component_names(model)) == len(res["table"])
    assert sorted(res["circuit"]["nodes"]) == sorted(card["circuit"]["nodes"])
    assert res["table"][-1] == pytest.approx(1.0) and res["table"][0] == pytest.approx(0.0)
    # the chosen circuit is minimal: no smaller subset is both sufficient and necessary
    size = len(res["circuit"]["nodes"])
    K = len(res["components"])
    for i, f in enumerate(res["table"]):
        if bin(i).count("1") < size:
            assert not (f >= 0.9 and res["table"][(2 ** K - 1) ^ i] <= 0.2)


def test_last_layer_search_equals_full_forwards(organism):
    """The attention-only fast path of exhaustive_search (one forward per mask of the earlier
    layers, the last layer's heads combined at the answer position) gives every mask's metric as
    evaluate_masks' full forward does."""
    from mechscope.zoo.analysis import _search_metrics_last_layer

    model, task, means = organism
    from mechscope.zoo.analysis import all_masks

    full = evaluate_masks(model, task, all_masks(len(component_names(model))), means)
    fast = _search_metrics_last_layer(model, task, means, None, max_rows=96)  # several chunks of early masks
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-4)
    assert float(full.max() - full.min()) > 1.0  # the masks really differ


def test_patching_effects_consistent(organism):
    model, task, _ = organism
    p = patching_effects(model, task, nodes=load_card(ORGANISM)["circuit"]["nodes"])
    last = model.module.cfg.n_layers - 1
    for comp, d in p["direct"].items():
        if comp.startswith(f"{last}."):  # the last layer's heads only reach the logits directly
            assert d == pytest.approx(p["total"][comp], abs=0.05)
    assert p["metric_corrupted"] < p["metric_clean"]
    for e in p["edges_measured"]:
        src, dst = e["src"], e["dst"]
        if src != "embed" and dst != "logits":
            assert int(src.split(".")[0]) < int(dst.split(".")[0])


@pytest.mark.parametrize("name", ["ioi-2l", "induction-2l"])
def test_training_is_seeded(name):
    """The same recipe and seed give identical weights (prompt pools and fresh induction rows alike);
    another seed gives other weights."""
    from mechscope.zoo.train import train_organism

    spec = SPECS[name]
    a, _ = train_organism(spec, steps=4, progress=False)
    b, _ = train_organism(spec, steps=4, progress=False)
    c, _ = train_organism(spec, steps=4, seed=spec.seed + 1, progress=False)
    for (k, va), vb, vc in zip(a.module.state_dict().items(), b.module.state_dict().values(), c.module.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.module.W_E, c.module.W_E)
