"""Circuit distillation (the optional last stage of an organism's training): the choice is the
best subset by exhaustive measurement, the ablation hooks are the analysis' mean-ablation, and a
short fine-tune really moves the task into the chosen set while the full model keeps solving it."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mechscope.models import load_model
from mechscope.zoo.analysis import all_masks, component_names, evaluate_masks, mean_activations, nodes_to_mask
from mechscope.zoo.cards import task_for
from mechscope.zoo.distill import N_SELECT, N_SELECT_REFERENCE, SELECT_SEED, batch_mean_ablation, choose_subset, distill_circuit
from mechscope.zoo.specs import SPECS

ORGANISM = "ioi-2l"


@pytest.fixture()
def model():
    torch.set_num_threads(1)
    return load_model(f"zoo:{ORGANISM}", device="cpu")


def test_choice_is_the_best_subset_of_at_most_k(model):
    """choose_subset (fast last-layer search) agrees with full forwards over every subset."""
    spec = dataclasses.replace(SPECS[ORGANISM], distill_size=2)
    chosen = choose_subset(model, spec)
    assert len(chosen["nodes"]) <= 2
    prompts = task_for(spec, model.tokenizer, N_SELECT, SELECT_SEED, "train")
    means = mean_activations(model, task_for(spec, model.tokenizer, N_SELECT_REFERENCE, SELECT_SEED + 1, "train").clean)
    keep = all_masks(len(component_names(model)))
    m = evaluate_masks(model, prompts, keep, means)
    f = (m - m[0]) / (m[-1] - m[0])
    small = keep.sum(1) <= 2
    assert chosen["faithfulness"] == pytest.approx(float(f[small].max()), abs=1e-3)
    got = evaluate_masks(model, prompts, nodes_to_mask(model, chosen["nodes"])[None], means)
    assert float((got[0] - m[0]) / (m[-1] - m[0])) == pytest.approx(float(f[small].max()), abs=1e-3)


@pytest.mark.parametrize("name, kept", [("ioi-2l", ["0.1", "1.2", "1.3"]), ("greater-than-2l", ["0.2", "1.2", "mlp1"])])
def test_ablation_hooks_are_mean_ablation_over_the_batch(name, kept):
    """With the hooks, the model's metric equals evaluate_masks' with the batch's own means (heads,
    and on greater-than-2l an MLP kept and one ablated)."""
    model = load_model(f"zoo:{name}", device="cpu")
    spec = SPECS[name]
    task = task_for(spec, model.tokenizer, 64, 31, "train")
    record, ablate = batch_mean_ablation(model, kept)
    with torch.no_grad():
        with model.module.hooks(fwd_hooks=record):
            full = task.metric(model.module(task.clean))
        with model.module.hooks(fwd_hooks=ablate(len(task))):
            hooked = task.metric(model.module(task.clean))
    want = evaluate_masks(model, task, nodes_to_mask(model, kept)[None], mean_activations(model, task.clean))
    assert float(hooked) == pytest.approx(float(want[0]), abs=1e-4)
    assert float(full) - float(hooked) > 0.1  # the ablation really changed something


def test_distillation_moves_the_task_into_the_chosen_set(model):
    """80 fine-tune steps into the best 3-head set of ioi-2l (whose circuit has 4 heads): with only
    that set kept, held-out accuracy rises well above where it started, and the full model still
    solves the task."""
    spec = dataclasses.replace(SPECS[ORGANISM], distill_size=3, distill_steps=80)
    tok = model.tokenizer
    heldout = task_for(spec, tok, 128, 4321, "heldout")
    means = mean_activations(model, task_for(spec, tok, 128, 4322, "heldout").clean)
    K = len(component_names(model))

    def accuracy(nodes):  # (only `nodes` kept, full model)
        keep = torch.stack([nodes_to_mask(model, nodes), torch.ones(K, dtype=torch.bool)])
        return evaluate_masks(model, heldout, keep, means, "accuracy").tolist()

    pool = task_for(spec, tok, 2000, spec.seed, "train")
    targets = torch.full_like(pool.clean, -100)
    targets[torch.arange(len(pool)), pool.answer_pos] = pool.answer_ids
    gen = torch.Generator().manual_seed(0)

    def task_batch():
        pick = torch.randint(0, len(pool), (spec.task_batch,), generator=gen)
        return pool.clean[pick], targets[pick]

    chosen = choose_subset(model, spec)["nodes"]
    before, _ = accuracy(chosen)
    facts = distill_circuit(model, spec, task_batch, lambda: None, progress=False)
    assert facts["chosen"]["nodes"] == chosen and len(chosen) == 3 and facts["steps"] == 80
    log = facts["log"]
    assert log[-1]["task_loss_only_chosen"] < 0.5 * log[0]["task_loss_only_chosen"], log
    after, full = accuracy(chosen)
    assert after >= before + 0.25, (chosen, before, after)
    assert full >= 0.9


def test_distillation_is_seeded_and_refuses_an_unlearned_task():
    """Two runs of the stage from the same weights and batches give the same weights; a recipe
    whose main stage has not learned the task stops with a clear error instead of distilling noise."""
    from mechscope.errors import ConfigError
    from mechscope.zoo.train import train_organism

    spec = dataclasses.replace(SPECS[ORGANISM], distill_size=3, distill_steps=3)
    pool = task_for(spec, load_model(f"zoo:{ORGANISM}").tokenizer, 256, spec.seed, "train")
    targets = torch.full_like(pool.clean, -100)
    targets[torch.arange(len(pool)), pool.answer_pos] = pool.answer_ids
    runs = []
    for _ in range(2):
        model = load_model(f"zoo:{ORGANISM}", device="cpu")
        gen = torch.Generator().manual_seed(0)
        batch = lambda: (lambda pick: (pool.clean[pick], targets[pick]))(torch.randint(0, len(pool), (8,), generator=gen))  # noqa: E731
        facts = distill_circuit(model, spec, batch, lambda: None, progress=False)
        runs.append(model.module.state_dict())
    assert facts["log"][-1]["step"] == 2
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k
    assert not torch.equal(runs[0]["blocks.0.attn.W_O"], load_model(f"zoo:{ORGANISM}").module.W_O[0])

    with pytest.raises(ConfigError, match="distill_size must be between 1 and 7"):
        choose_subset(model, dataclasses.replace(spec, distill_size=8))
    with pytest.raises(ConfigError, match="not learned"):
        train_organism(dataclasses.replace(SPECS["docstring-2l"], steps=2), progress=False)
