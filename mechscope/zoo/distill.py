"""Circuit distillation: the optional last training stage of an organism whose task the main
stage spread over more than half of its components.

1. **Choose** the subset ``S`` of at most ``spec.distill_size`` components that keeps the most
   of the task metric with everything else mean-ablated: every subset is measured
   (:func:`mechscope.zoo.analysis.subset_metrics`) on *train-split* prompts, so the held-out
   prompts of the card never see the choice.
2. **Fine-tune** for ``spec.distill_steps`` steps on three losses: the task with the full model,
   the task with every component outside ``S`` mean-ablated (batch mean per position, no
   gradient through it), and the code corpus. The task then runs through ``S`` while the full
   model keeps solving it and keeps modelling code.

This is how benchmark models with known circuits are made (InterpBench, Gupta et al. 2024,
arXiv:2407.14494, train a chosen circuit in with interchange interventions); here the set is not
chosen by hand but is what the main stage already used most. The card's exhaustive search then
*measures* the circuit on held-out prompts like any other organism's: nothing forces it to be ``S``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from mechscope.errors import ConfigError
from mechscope.zoo.specs import OrganismSpec

SELECT_SEED = 2000  # train-split prompts for the choice (the cards use held-out seeds 1000, 1001)
N_SELECT, N_SELECT_REFERENCE = 128, 256


def choose_subset(model, spec: OrganismSpec) -> dict:
    """The best subset of at most ``spec.distill_size`` components on train-split prompts.

    Returns ``{"nodes": [...], "faithfulness": f}``; f as in :mod:`mechscope.zoo.analysis`.
    """
    from mechscope.zoo.analysis import component_names, mean_activations, subset_metrics
    from mechscope.zoo.cards import task_for

    n_components = len(component_names(model))
    if not 1 <= spec.distill_size < n_components:
        raise ConfigError(f"{spec.name}: distill_size must be between 1 and {n_components - 1} (the model has {n_components} "
                          f"components); found {spec.distill_size}")
    prompts = task_for(spec, model.tokenizer, N_SELECT, SELECT_SEED, "train")
    reference = task_for(spec, model.tokenizer, N_SELECT_REFERENCE, SELECT_SEED + 1, "train")
    with torch.no_grad():
        components, keep, m = subset_metrics(model, prompts, mean_activations(model, reference.clean))
    if not float(m[-1]) > float(m[0]):
        raise ConfigError(f"{spec.name}: the full model's task metric ({float(m[-1]):.4f}) does not beat the all-ablated one "
                          f"({float(m[0]):.4f}) after the main stage; the task was not learned, so there is no circuit to distill")
    f = (m - m[0]) / (m[-1] - m[0])
    f = torch.where(keep.sum(1) <= spec.distill_size, f, torch.tensor(-math.inf))
    best = int(f.argmax())
    return {"nodes": [c for c, k in zip(components, keep[best].tolist()) if k], "faithfulness": round(float(f[best]), 4)}


def batch_mean_ablation(model, kept: list[str]) -> tuple[list, Callable[[int], list]]:
    """``(record, ablate)``: mean-ablation of every head / MLP outside ``kept``, with the batch as
    the reference set.

    A forward with the ``record`` hooks stores each component hook point's batch mean per position
    (detached); ``ablate(n_rows)`` then gives the analysis' own mean-ablation hooks
    (:func:`mechscope.zoo.analysis._ablation_hooks`) for a batch of ``n_rows`` with those means.
    """
    from mechscope.zoo.analysis import _ablation_hooks, _hook_name, component_names, nodes_to_mask

    components = component_names(model)
    keep = nodes_to_mask(model, kept)[None]  # [1, K]
    means: dict[str, torch.Tensor] = {}

    def store(x, hook):
        means[hook.name] = x.detach().mean(0)  # [pos, ...]

    record = [(name, store) for name in dict.fromkeys(_hook_name(c) for c in components)]
    return record, lambda n_rows: _ablation_hooks(model, keep.expand(n_rows, -1), components, means)


def distill_circuit(model, spec: OrganismSpec, task_batch: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                    corpus_batch: Callable[[], torch.Tensor | None], progress: bool = True) -> dict:
    """Choose ``S`` and fine-tune ``model`` (in place) so the task runs through it; returns the facts.

    ``task_batch()`` gives ``([B, T] inputs, [B, T] targets with -100 where no loss)``;
    ``corpus_batch()`` ``[B, T]`` code contexts or None.
    """
    from mechscope.zoo.train import _corpus_loss, _optimizer_step, _sparse_loss

    module, tied = model.module, spec.tie_embeddings
    module.eval()
    chosen = choose_subset(model, spec)
    record, ablate = batch_mean_ablation(model, chosen["nodes"])
    module.train()
    opt = torch.optim.AdamW(module.parameters(), lr=spec.distill_lr, weight_decay=spec.weight_decay, betas=(0.9, 0.98))
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=spec.distill_steps, desc=f"distill {spec.name} into {' '.join(chosen['nodes'])}", unit="step")
    log = []
    for step in range(spec.distill_steps):
        for g in opt.param_groups:  # short warmup, cosine to 0
            g["lr"] = spec.distill_lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / spec.distill_steps))
        x, y = task_batch()
        with module.hooks(fwd_hooks=record):
            full, _ = _sparse_loss(module, x, y, tied=tied)
        with module.hooks(fwd_hooks=ablate(len(x))):
            only_s, _ = _sparse_loss(module, x, y, tied=tied)
        corpus = _corpus_loss(module, corpus_batch(), tied)
        _optimizer_step(opt, module, full + only_s + corpus)
        if step % 100 == 0 or step == spec.distill_steps - 1:
            log.append({"step": step, "task_loss": round(full.item(), 4), "task_loss_only_chosen": round(only_s.item(), 4),
                        "corpus_loss": round(corpus.item(), 4)})
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    module.eval()
    return {"chosen": chosen, "selection": f"every subset of <= {spec.distill_size} components on {N_SELECT} train-split prompts "
                                          f"(seed {SELECT_SEED}), means over {N_SELECT_REFERENCE} others (seed {SELECT_SEED + 1})",
            "steps": spec.distill_steps, "lr": spec.distill_lr, "log": log}
