"""Forward passes every circuit method shares: checking a task against a model, logits at the
answer position, per-source outputs ``[batch, pos, n_sources, d_model]``, a forward with edges
patched, and gradients of the task metric with respect to every receiver's input.

Source / receiver order is :class:`~mechscope.circuits.graph.Graph`'s. Shapes:
``src [batch, pos, n_sources, d_model]``, ``grads [batch, pos, n_receivers, d_model]``.
"""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from mechscope.circuits.errors import CircuitError, TaskModelMismatchError
from mechscope.circuits.graph import Graph
from mechscope.models import Model, run_with_cache, run_with_hooks
from mechscope.models.model import as_model
from mechscope.tasks import Task


def check_task(model: Model, task: Task) -> None:
    """Raise :class:`TaskModelMismatchError` when ``task`` was not built for ``model``."""
    model = as_model(model)
    cfg = getattr(model.module, "cfg", None)
    if cfg is None:
        raise CircuitError(f"circuit methods need a TransformerLens model; {model.name!r} is a {type(model.module).__name__}")
    top = int(max(task.clean.max(), task.corrupted.max(), task.answer_ids.max(), task.wrong_ids.max()))
    if top >= cfg.d_vocab:
        raise TaskModelMismatchError(
            f"task {task.name!r} uses token id {top}, but model {model.name!r} has a vocabulary of {cfg.d_vocab}; "
            f"build the task with this model's tokenizer (make_task(name, model.tokenizer, ...))")
    if task.seq_len > cfg.n_ctx:
        raise TaskModelMismatchError(f"task {task.name!r} has prompts of {task.seq_len} tokens; model {model.name!r} reads at most {cfg.n_ctx}")
    want = task.metadata.get("tokenizer_sha256")
    if want and model.tokenizer is not None:
        from mechscope.data.tokenizer import tokenizer_hash

        try:
            have = tokenizer_hash(model.tokenizer)
        except (AttributeError, TypeError):  # a tokenizer kind the hash does not know: nothing to compare
            have = None
        if have is not None and have != want:
            raise TaskModelMismatchError(
                f"task {task.name!r} was built with tokenizer {want[:12]}…, model {model.name!r} uses {have[:12]}…; "
                f"rebuild the task with the model's tokenizer")


def batches(task: Task, batch_size: int | None) -> Iterator[Task]:
    """The task in chunks of ``batch_size`` prompts (one chunk when ``None``)."""
    n = len(task)
    step = n if not batch_size else batch_size
    for s in range(0, n, step):
        yield task if (s == 0 and step >= n) else task.subset(slice(s, s + step))


def answer_logits(model: Model, tokens: torch.Tensor, answer_pos: torch.Tensor, hooks: list | None = None,
                  start_at_layer: int | None = None) -> torch.Tensor:
    """Logits ``[batch, vocab]`` at ``answer_pos`` (the unembedding runs on one position per row).

    ``tokens`` is the residual stream ``[batch, pos, d_model]`` when ``start_at_layer`` is given."""
    module = model.module
    extra = {} if start_at_layer is None else {"start_at_layer": start_at_layer}
    resid = run_with_hooks(model, tokens, hooks or [], stop_at_layer=module.cfg.n_layers, **extra)
    x = resid[torch.arange(resid.shape[0], device=resid.device), answer_pos.to(resid.device)]
    x = module.ln_final(x[:, None])[:, 0] if module.cfg.normalization_type is not None else x
    return x @ module.W_U + module.b_U


def _source_hooks(graph: Graph) -> list[str]:
    names = ["blocks.0.hook_resid_pre"]
    for layer in range(graph.n_layers):
        names.append(f"blocks.{layer}.attn.hook_z")
        if graph.has_mlp:
            names.append(f"blocks.{layer}.hook_mlp_out")
    return names


def head_outputs(model: Model, z: torch.Tensor, layer: int) -> torch.Tensor:
    """``z [batch, pos, head, d_head]`` -> each head's write to the residual ``[batch, pos, head, d_model]``."""
    return torch.einsum("bphd,hdm->bphm", z, model.module.W_O[layer])


@torch.no_grad()
def source_outputs(model: Model, tokens: torch.Tensor, graph: Graph | None = None) -> torch.Tensor:
    """What every source writes to the residual stream: ``[batch, pos, n_sources, d_model]``."""
    graph = graph or Graph.of(model)
    cache = run_with_cache(model, tokens, _source_hooks(graph))
    parts = [cache["blocks.0.hook_resid_pre"][:, :, None]]
    for layer in range(graph.n_layers):
        parts.append(head_outputs(model, cache[f"blocks.{layer}.attn.hook_z"], layer))
        if graph.has_mlp:
            parts.append(cache[f"blocks.{layer}.hook_mlp_out"][:, :, None])
    return torch.cat(parts, dim=2)


def _receiver_hook_names(graph: Graph) -> list[tuple[str, str, int]]:
    """``(hook name, kind, layer)`` for every receiver hook in forward order."""
    out = []
    for layer in range(graph.n_layers):
        for ch in ("q", "k", "v"):
            out.append((f"blocks.{layer}.hook_{ch}_input", ch, layer))
        if graph.has_mlp:
            out.append((f"blocks.{layer}.hook_mlp_in", "mlp", layer))
    out.append((f"blocks.{graph.n_layers - 1}.hook_resid_post", "logits", graph.n_layers))
    return out


class _SourceRecorder:
    """Forward hooks that record each source's *current* output as the forward pass runs
    (``embed_override`` replaces the embedding, e.g. for integrated gradients)."""

    def __init__(self, model: Model, graph: Graph, embed_override: torch.Tensor | None = None, prefix: torch.Tensor | None = None):
        self.model, self.graph = model, graph
        self.outs = [] if prefix is None else [prefix]
        self.embed_override = embed_override

    def hooks(self) -> list:
        def embed(x, hook):
            if self.embed_override is not None:
                x = self.embed_override
            self.outs = [x[:, :, None]]
            return x if self.embed_override is not None else None

        def z_hook(z, hook):
            layer = int(hook.name.split(".")[1])
            self.outs.append(head_outputs(self.model, z, layer))

        def mlp_hook(x, hook):
            self.outs.append(x[:, :, None])

        hooks = [("blocks.0.hook_resid_pre", embed)]
        for layer in range(self.graph.n_layers):
            hooks.append((f"blocks.{layer}.attn.hook_z", z_hook))
            if self.graph.has_mlp:
                hooks.append((f"blocks.{layer}.hook_mlp_out", mlp_hook))
        return hooks

    def stacked(self) -> torch.Tensor:
        return torch.cat(self.outs, dim=2)


def patched_logits(model: Model, task: Task, removed: torch.Tensor, corrupt_src: torch.Tensor, graph: Graph | None = None,
                   start: "CleanStart | None" = None, start_layer: int = 0) -> torch.Tensor:
    """Answer logits ``[batch, vocab]`` of the clean prompts with the ``removed`` edges patched.

    ``removed [n_sources, n_receivers]`` (bool): for each removed edge the receiver reads the
    source's *corrupted* output instead of its current one:
    ``input = current_input - src_current + src_corrupt`` (ACDC's edge patching). Sources are
    recorded as the pass runs, so an upstream patch reaches a source's current value.

    With ``start`` (the clean run's residual stream and source outputs) the pass starts at
    block ``start_layer``; valid only when no removed edge enters a receiver before that block
    (then everything before it is exactly the clean run).
    """
    graph = graph or Graph.of(model)
    removed = (removed & graph.edge_mask).to(corrupt_src.dtype)
    if start is not None and start_layer > 0:
        early = [i for i, r in enumerate(graph.receivers) if graph.receiver_layer(r) < start_layer]
        if bool(removed[:, early].any()):
            raise CircuitError(f"cannot start the patched pass at block {start_layer}: a removed edge enters an earlier receiver")
        n0 = graph.sources_before(start_layer)
        rec = _SourceRecorder(model, graph, prefix=start.src[:, :, :n0])
        hooks = [h for h in rec.hooks() if h[0] != "blocks.0.hook_resid_pre"]
    else:
        start_layer = 0
        rec = _SourceRecorder(model, graph)
        hooks = rec.hooks()
    for name, kind, layer in _receiver_hook_names(graph):
        if kind == "logits":
            cols = [graph.receiver_index["logits"]]
        elif kind == "mlp":
            cols = graph.layer_receivers(layer)["mlp"]
        else:
            cols = graph.layer_receivers(layer)[kind]
        mask = removed[:, cols]
        if not bool(mask.any()):
            continue
        n_before = int(mask.any(1).nonzero().max()) + 1  # sources that matter here run before this hook

        def patch(x, hook, mask=mask[:n_before], kind=kind, n_before=n_before):
            diff = corrupt_src[:, :, :n_before] - rec.stacked()[:, :, :n_before]
            delta = torch.einsum("bpsd,sr->bprd", diff, mask)
            return x + (delta if kind in ("q", "k", "v") else delta[:, :, 0])

        hooks.append((name, patch))
    if start_layer == 0:
        return answer_logits(model, task.clean, task.answer_pos, hooks)
    return answer_logits(model, start.resid[start_layer], task.answer_pos, hooks, start_at_layer=start_layer)


class CleanStart:
    """The clean run's residual stream before every block (``resid [layer] -> [batch, pos, d_model]``)
    and every source's output (``src [batch, pos, n_sources, d_model]``), to restart a patched
    forward at a later block."""

    @torch.no_grad()
    def __init__(self, model: Model, tokens: torch.Tensor, graph: Graph):
        names = [f"blocks.{i}.hook_resid_pre" for i in range(graph.n_layers)]
        cache = run_with_cache(model, tokens, names)
        self.resid = [cache[n] for n in names]
        self.src = source_outputs(model, tokens, graph)


def receiver_grads(model: Model, task: Task, metric: Callable[[torch.Tensor], torch.Tensor], graph: Graph | None = None,
                   embed_override: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """The metric and its gradient with respect to every receiver's input, on ``task.clean``
    (or on the embeddings ``embed_override [batch, pos, d_model]``): ``(value, [batch, pos, n_receivers, d_model])``.

    ``metric`` maps answer logits ``[batch, vocab]`` to a scalar (summed over prompts, so
    gradients are per prompt).
    """
    graph = graph or Graph.of(model)
    if embed_override is not None:
        embed_override = embed_override.detach().requires_grad_(True)
    rec = _SourceRecorder(model, graph, embed_override)
    captured: dict[str, torch.Tensor] = {}

    def grab(x, hook):
        captured[hook.name] = x

    names = _receiver_hook_names(graph)
    hooks = rec.hooks() + [(name, grab) for name, _, _ in names]
    with torch.enable_grad():
        logits = answer_logits(model, task.clean, task.answer_pos, hooks)
        value = metric(logits)
        order = [n for n, _, _ in names]
        grads = torch.autograd.grad(value, [captured[n] for n in order], allow_unused=True)
    b, p = task.clean.shape
    d = model.module.cfg.d_model
    out = torch.zeros(b, p, len(graph.receivers), d, device=logits.device)
    for (name, kind, layer), g in zip(names, grads):
        if g is None:
            continue
        if kind == "logits":
            out[:, :, graph.receiver_index["logits"]] = g
        elif kind == "mlp":
            out[:, :, graph.layer_receivers(layer)["mlp"][0]] = g
        else:
            out[:, :, graph.layer_receivers(layer)[kind]] = g
    return float(value.detach()), out


def summed_metric(task: Task, kind: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """``logits -> sum over prompts of the task metric`` (for per-prompt gradients)."""
    kind = kind or task.default_metric
    if kind in ("accuracy", "binary_accuracy"):
        raise CircuitError(f"gradient methods need a differentiable metric (logit_diff or prob_diff); found {kind!r}")
    return lambda logits: task.metric(logits, kind, per_prompt=True).sum()
