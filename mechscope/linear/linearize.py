"""``linearize(model, x0)``: the network with every decision frozen at ``x0``, as an exact affine
map ``y = A x + c`` with ``A x0 + c = f(x0)``.

Also :func:`linearize_transformer` for TransformerLens ``HookedTransformer`` models: the map
from the token embeddings (embed + positional embed, ``[pos, d_model]``) to a readout of the
logits, e.g. a logit difference. Attention patterns, LayerNorm / RMSNorm scales and MLP
activation gains are frozen.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn as nn

from mechscope.errors import ConfigError
from mechscope.linear.affine_map import FrozenAffineMap
from mechscope.linear.errors import LinearizationError
from mechscope.linear.freeze import FrozenNetwork

Readout = Callable[[torch.Tensor], torch.Tensor] | torch.Tensor | None


def _apply_readout(readout: Readout, y: torch.Tensor) -> torch.Tensor:
    if readout is None:
        return y
    if isinstance(readout, torch.Tensor):
        if tuple(readout.shape) != tuple(y.shape):
            raise ConfigError(f"a readout direction must have the model output's shape {list(y.shape)}; "
                              f"found {list(readout.shape)}")
        return (y * readout).sum()
    return readout(y)


def linearize(model: nn.Module | Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, *,
              readout: Readout = None, freeze: Sequence[str] = (), norm_center: str = "linear",
              root: nn.Module | None = None, verify: bool = True, tol: float = 1e-4,
              chunk_size: int = 256) -> FrozenAffineMap:
    """Freeze every non-linearity of ``model`` at ``x0`` and return the affine map.

    Args:
        model: an ``nn.Module`` or any callable ``x -> y`` made of supported operations (see
            :mod:`mechscope.linear.freeze`). Its train/eval mode is respected: BatchNorm in
            train mode freezes the batch statistics; dropout must be off.
        x0: the input, in the shape the model takes (e.g. ``[1, C, H, W]``). The map's
            ``in_shape`` is ``x0.shape``.
        readout: applied to the model output: ``None`` (the whole output), a callable (e.g.
            ``lambda y: y[0, 3] - y[0, 5]``) or a tensor of the output's shape (the map then
            ends in ``<y, readout>``, a scalar).
        freeze: submodule names whose outputs are frozen to their ``x0`` value (``"*.suffix"``
            matches every module name ending in ``.suffix``).
        norm_center: ``"linear"`` (freeze only norm scales) or ``"frozen"`` (also their means).
        root: the module whose names are used by ``freeze`` and in messages, when ``model`` is
            a plain callable.
        verify: check that ``A x0 + c == f(x0)`` and that ``A`` is linear on random probes
            (relative error below ``tol``); raises :class:`LinearizationError` otherwise.
        chunk_size: vectors per vmapped batch in ``apply`` / ``apply_T`` / ``dense``.

    Returns:
        a :class:`FrozenAffineMap` with ``in_shape = x0.shape``, ``out_shape`` = the output's
        shape, ``bias`` = c, ``x0``, ``y0 = f(x0)``.

    Raises:
        UnsupportedLayerError: naming the operation and module through which the output depends
            non-linearly on the input.
    """
    if root is None and isinstance(model, nn.Module):
        root = model
    fn = model if readout is None else (lambda x: _apply_readout(readout, model(x)))
    frozen = FrozenNetwork(fn, x0, root=root, freeze=freeze, norm_center=norm_center)
    meta = {"model": type(root).__name__ if root is not None else getattr(model, "__name__", "callable"),
            "frozen": frozen.tape.summary(), "norm_center": norm_center}
    amap = FrozenAffineMap(frozen, meta=meta, chunk_size=chunk_size)
    if verify:
        verify_map(amap, tol=tol)
    return amap


def verify_map(amap: FrozenAffineMap, tol: float = 1e-4, seed: int = 0) -> dict:
    """Self-checks of a freshly frozen map: (1) ``A x0 + c`` reproduces ``f(x0)``; (2) the
    affine replay at ``x0`` reproduces ``f(x0)``; (3) ``A`` is linear on random probes. A failure
    means some input dependence escaped the freezing (e.g. an op outside torch's function
    interception) and raises :class:`LinearizationError` rather than return a wrong map."""
    ex = amap.exactness()
    with torch.no_grad():
        ax0 = amap.apply(amap.x0)
        replay = amap.frozen.affine(amap.x0)
    # bug detector, not the exactness metric: errors are measured against the sizes of the parts,
    # so that a small output made of two large cancelling parts does not trip it
    scale = max(ex["norm_f_x0"], float(ax0.double().norm()), float(amap.bias.double().norm()), 1e-12)
    rec = ex["abs_error"] / scale
    rep = (replay - amap.y0).double().norm().item() / scale
    g = torch.Generator(device="cpu").manual_seed(seed)
    size = float(amap.x0.double().norm()) / max(amap.in_numel, 1) ** 0.5 + 1e-3
    v1 = (torch.randn(amap.in_shape, generator=g) * size).to(amap.dtype).to(amap.device)
    v2 = (torch.randn(amap.in_shape, generator=g) * size).to(amap.dtype).to(amap.device)
    with torch.no_grad():
        a1, a2 = amap.frozen.linear(v1), amap.frozen.linear(v2)
        a12 = amap.frozen.linear(2.0 * v1 - 3.0 * v2)
    lin = (a12 - 2.0 * a1 + 3.0 * a2).double().norm().item() / max(
        (2.0 * a1).double().norm().item() + (3.0 * a2).double().norm().item(), 1e-12)
    adj = amap.adjoint_error(n=1, seed=seed)
    report = {"rel_error": ex["rel_error"], "reconstruction_error": rec, "replay_error": rep,
              "linearity_error": lin, "adjoint_error": adj}
    if not (rec <= tol and rep <= tol and lin <= tol and adj <= tol):  # NaN fails too
        raise LinearizationError(
            f"the frozen map failed its self-check (expected relative errors < {tol:g}; found "
            f"|A x0 + c - f(x0)| {rec:.2e}, affine replay {rep:.2e}, linearity {lin:.2e}, adjoint {adj:.2e}, "
            "relative to the size of the parts); part of the network depends on its input outside torch "
            "calls that can be frozen (a custom autograd.Function, a C extension, torch.no_grad inside "
            "forward?), or produced non-finite values")
    amap.meta["verify"] = report
    return report


# ---------------------------------------------------------------------------------------------
# TransformerLens


def logit_diff(answer: int, wrong: int, position: int = -1) -> Callable[[torch.Tensor], torch.Tensor]:
    """Readout ``logits[position, answer] - logits[position, wrong]`` (a scalar) for
    :func:`linearize_transformer`. ``logits`` is ``[pos, d_vocab]``."""

    def readout(logits: torch.Tensor) -> torch.Tensor:
        return logits[position, answer] - logits[position, wrong]

    readout.__name__ = f"logit_diff({answer},{wrong},pos={position})"
    return readout


def _tl_act_patches(model) -> list[tuple[nn.Module, str, str]]:
    from transformer_lens.components.mlps.can_be_used_as_mlp import CanBeUsedAsMLP

    patches = []
    for name, mod in model.named_modules():
        if isinstance(mod, CanBeUsedAsMLP):
            cls = type(mod).__name__
            if "MoE" in cls or "Moe" in cls:
                raise LinearizationError(f"module '{name}' ({cls}): mixture-of-experts routing is not "
                                         "supported by linearize_transformer (expected MLP or GatedMLP)")
            gated = "hook_pre_linear" in dict(mod.named_modules())
            act = getattr(model.cfg, "act_fn", None) or ""
            kind = "gate" if gated else ("softmax_gain" if act.startswith("solu") else "gain")
            patches.append((mod, "act_fn", kind))
    return patches


def linearize_transformer(model, tokens: torch.Tensor | str, readout: Readout = None, *,
                          position: int = -1, verify: bool = True, tol: float = 1e-4,
                          chunk_size: int = 256) -> FrozenAffineMap:
    """Linearize a TransformerLens ``HookedTransformer`` from its token embeddings.

    Frozen at the prompt: every attention pattern (``hook_pattern``), every LayerNorm / RMSNorm
    scale (``hook_scale``), every MLP activation (secant gain ``act(x0)/x0``; gated MLPs: the
    gate ``act(x0_gate)``; SoLU: ``softmax(x0)``).

    Args:
        model: a ``HookedTransformer`` (any ``normalization_type``, attention-only or with MLPs).
        tokens: ``[pos]`` or ``[1, pos]`` token ids, or a string (needs the model's tokenizer).
        readout: applied to the logits ``[pos, d_vocab]``: ``None`` -> ``logits[position]``
            (``[d_vocab]``); a tensor ``[d_vocab]`` -> ``logits[position] @ readout`` (scalar);
            or a callable, e.g. :func:`logit_diff`.

    Returns:
        a :class:`FrozenAffineMap` with ``in_shape = [pos, d_model]`` (the residual stream before
        block 0: token + positional embeddings) and ``out_shape`` the readout's shape.
        ``meta['tokens']`` holds the token ids.
    """
    if isinstance(tokens, str):
        tokens = model.to_tokens(tokens)
    tokens = torch.as_tensor(tokens)
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2 or tokens.shape[0] != 1:
        raise ConfigError(f"tokens must be [pos] or [1, pos]; found shape {list(tokens.shape)}")
    with torch.no_grad():
        resid, toks, shortformer, attn_mask = model.input_to_embed(tokens)
    x0 = resid[0].detach()

    if readout is None:
        ro = lambda logits: logits[position]  # noqa: E731
    elif isinstance(readout, torch.Tensor):
        if tuple(readout.shape) != (model.cfg.d_vocab_out,):
            raise ConfigError(f"a readout direction must have shape [d_vocab_out={model.cfg.d_vocab_out}]; "
                              f"found {list(readout.shape)}")
        direction = readout
        ro = lambda logits: logits[position] @ direction.to(logits.dtype)  # noqa: E731
    else:
        ro = readout

    def fn(x: torch.Tensor) -> torch.Tensor:
        logits = model(x[None], start_at_layer=0, tokens=toks, shortformer_pos_embed=shortformer,
                       attention_mask=attn_mask)
        return ro(logits[0])

    frozen = FrozenNetwork(fn, x0, root=model, freeze=["*.hook_scale", "*.hook_pattern"],
                           act_patches=_tl_act_patches(model))
    meta = {"model": "HookedTransformer", "n_layers": model.cfg.n_layers, "d_model": model.cfg.d_model,
            "normalization_type": model.cfg.normalization_type, "tokens": tokens[0].tolist(),
            "readout": getattr(ro, "__name__", "custom"), "frozen": frozen.tape.summary()}
    amap = FrozenAffineMap(frozen, meta=meta, chunk_size=chunk_size)
    if verify:
        verify_map(amap, tol=tol)
    return amap
