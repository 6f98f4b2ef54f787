"""Hook points: list them, cache their activations, and edit them — one behaviour for
TransformerLens models (TL hook names) and any other ``nn.Module`` (module paths).

Implementation: a PyTorch forward hook on the named module. In TransformerLens every hook
point is an identity ``HookPoint`` module, so the same mechanism serves both kinds.
"""

from __future__ import annotations

import contextlib
import fnmatch
import re
from typing import Any, Callable, Iterable, Iterator, Sequence

import torch
from torch import nn

from mechscope.errors import UnknownHookError
from mechscope.models.model import Model, as_model

HookFn = Callable[[torch.Tensor, Any], torch.Tensor | None]
Names = str | Sequence[str] | Callable[[str], bool]

# TransformerLens hook points that only fire when a config flag is on.
_TL_FLAGS = {
    "attn.hook_result": "use_attn_result",
    "hook_attn_in": "use_attn_in",
    "hook_q_input": "use_split_qkv_input",
    "hook_k_input": "use_split_qkv_input",
    "hook_v_input": "use_split_qkv_input",
    "hook_mlp_in": "use_hook_mlp_in",
}


class _StopForward(Exception):
    """Raised inside a hook once every requested activation is captured."""


class HookHandle:
    """What a hook function receives as its second argument (mirrors TL's ``HookPoint.name``)."""

    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"HookHandle({self.name!r})"


def hook_modules(model: Model) -> dict[str, nn.Module]:
    """Hook name -> the module whose forward output is that activation."""
    if model.is_transformer_lens:
        return dict(model.module.hook_dict)
    return {name: m for name, m in model.module.named_modules() if name}


def list_hooks(model: Model | nn.Module) -> list[str]:
    """All hook names of ``model``, in forward order for TL models, module order otherwise."""
    return list(hook_modules(as_model(model)))


def resolve_hooks(model: Model | nn.Module, names: Names) -> list[str]:
    """Validate hook names (globs like ``blocks.*.attn.hook_z`` allowed, or a predicate).

    Raises:
        UnknownHookError: a name (or glob) matches no hook; the message names the closest ones.
    """
    valid = list_hooks(model)
    if callable(names):
        return [n for n in valid if names(n)]
    if isinstance(names, str):
        names = [names]
    out: list[str] = []
    valid_set = set(valid)
    for name in names:
        if name in valid_set:
            out.append(name)
        elif any(ch in name for ch in "*?["):
            hits = fnmatch.filter(valid, name)
            if not hits:
                raise UnknownHookError(name, valid)
            out.extend(hits)
        else:
            raise UnknownHookError(name, valid)
    return list(dict.fromkeys(out))


def _first_tensor(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    if hasattr(output, "to_tuple"):  # HF ModelOutput
        return _first_tensor(output.to_tuple())
    raise TypeError(f"hooked module returned {type(output).__name__}; expected a tensor or a tuple starting with one")


def _replace_first(output: Any, new: torch.Tensor) -> Any:
    if isinstance(output, torch.Tensor):
        return new
    if isinstance(output, tuple):
        return (new, *output[1:])
    if isinstance(output, list):
        return [new, *output[1:]]
    raise TypeError(f"cannot replace the activation inside a {type(output).__name__} output")


@contextlib.contextmanager
def _tl_flags(model: Model, names: Iterable[str]) -> Iterator[None]:
    """Temporarily switch on the TL config flags that the requested hook points need."""
    if not model.is_transformer_lens:
        yield
        return
    cfg = model.module.cfg
    names = list(names)
    need = {flag for n in names for suffix, flag in _TL_FLAGS.items() if n.endswith(suffix)}
    n_kv = getattr(cfg, "n_key_value_heads", None)
    if n_kv is not None and n_kv != cfg.n_heads and any(n.endswith(("hook_k_input", "hook_v_input")) for n in names):
        # grouped-query attention: one key / value input per query head, so that each head's can be edited alone
        need.add("ungroup_grouped_query_attention")
    old = {flag: getattr(cfg, flag) for flag in need if hasattr(cfg, flag)}
    for flag in old:
        setattr(cfg, flag, True)
    try:
        yield
    finally:
        for flag, value in old.items():
            setattr(cfg, flag, value)


def _call(model: Model, inputs: Any, forward_kwargs: dict) -> Any:
    if isinstance(inputs, dict):
        return model.module(**inputs, **forward_kwargs)
    return model.module(inputs, **forward_kwargs)


def _prepare_inputs(model: Model, inputs: Any) -> Any:
    if isinstance(inputs, (str, list)) and (isinstance(inputs, str) or (inputs and isinstance(inputs[0], str))):
        return model.to_tokens(inputs)
    if isinstance(inputs, torch.Tensor):
        return inputs.to(model.device)
    if isinstance(inputs, dict):
        return {k: v.to(model.device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    return inputs


def _split_batches(inputs: Any, batch_size: int | None) -> list[Any]:
    if batch_size is None:
        return [inputs]
    if isinstance(inputs, torch.Tensor):
        return list(inputs.split(batch_size))
    if isinstance(inputs, dict):
        n = next(v.shape[0] for v in inputs.values() if isinstance(v, torch.Tensor))
        return [{k: v[i : i + batch_size] if isinstance(v, torch.Tensor) else v for k, v in inputs.items()} for i in range(0, n, batch_size)]
    return [inputs]


def run_with_cache(
    model: Model | nn.Module,
    inputs: Any,
    names: Names,
    *,
    batch_size: int | None = None,
    stop_early: bool = True,
    cache_device: str | torch.device | None = None,
    cache_dtype: torch.dtype | None = None,
    return_output: bool = False,
    **forward_kwargs: Any,
) -> dict[str, torch.Tensor] | tuple[Any, dict[str, torch.Tensor]]:
    """Run ``model`` without gradients and return ``{hook name: activation}``.

    Args:
        inputs: token ids ``[batch, pos]``, text (if the model has a tokenizer), an image batch
            ``[batch, C, H, W]``, or a dict of keyword tensors (HF models).
        names: hook names, globs, or a predicate over names.
        batch_size: split the batch into chunks of this size (memory bound); results are
            concatenated along dim 0.
        stop_early: stop the forward pass as soon as every requested activation is captured.
        cache_device / cache_dtype: where and how to keep cached tensors (e.g. ``"cpu"``).
        return_output: also return the model output (``None`` when the pass stopped early).

    A module called more than once per forward (a shared activation module) is cached under
    ``name`` for its first call and ``name#k`` for later calls (only when the pass runs on).
    """
    model = as_model(model)
    names = resolve_hooks(model, names)
    modules = hook_modules(model)
    inputs = _prepare_inputs(model, inputs)
    chunks: dict[str, list[torch.Tensor]] = {}
    outputs: list[Any] = []
    stop = stop_early and not return_output
    for part in _split_batches(inputs, batch_size):
        cache: dict[str, torch.Tensor] = {}
        calls: dict[str, int] = {}

        def make_hook(name: str):
            def hook(_module, _args, output):
                k = calls.get(name, 0)
                calls[name] = k + 1
                act = _first_tensor(output).detach()
                if cache_device is not None or cache_dtype is not None:
                    act = act.to(device=cache_device or act.device, dtype=cache_dtype or act.dtype)
                cache[name if k == 0 else f"{name}#{k}"] = act
                if stop and all(n in cache for n in names):
                    raise _StopForward

            return hook

        handles = [modules[n].register_forward_hook(make_hook(n)) for n in names]
        try:
            with torch.no_grad(), _tl_flags(model, names):
                out = _call(model, part, forward_kwargs)
                outputs.append(out)
        except _StopForward:
            outputs.append(None)
        finally:
            for h in handles:
                h.remove()
        missing = [n for n in names if n not in cache]
        if missing:
            raise RuntimeError(f"hook points {missing} did not fire during the forward pass (are they used by this model's forward?)")
        for k, v in cache.items():
            chunks.setdefault(k, []).append(v)
    result = {k: v[0] if len(v) == 1 else torch.cat(v) for k, v in chunks.items()}
    if return_output:
        out = outputs[0] if len(outputs) == 1 else (torch.cat(outputs) if all(isinstance(o, torch.Tensor) for o in outputs) else outputs)
        return out, result
    return result


def run_with_hooks(
    model: Model | nn.Module,
    inputs: Any,
    fwd_hooks: Sequence[tuple[str | Callable[[str], bool], HookFn]],
    **forward_kwargs: Any,
) -> Any:
    """Run ``model`` with hook functions that may edit activations; returns the model output.

    Each hook is ``fn(activation, hook) -> new activation | None`` (``hook.name`` is the
    hook's name), as in TransformerLens. Gradients are not disabled, so this can be used
    inside attribution methods; wrap in ``torch.no_grad()`` for plain patching.
    """
    model = as_model(model)
    modules = hook_modules(model)
    resolved: list[tuple[str, HookFn]] = []
    for name, fn in fwd_hooks:
        for n in resolve_hooks(model, name):
            resolved.append((n, fn))

    def make_hook(name: str, fn: HookFn):
        handle = HookHandle(name)

        def hook(_module, _args, output):
            new = fn(_first_tensor(output), handle)
            return None if new is None else _replace_first(output, new)

        return hook

    handles = [modules[n].register_forward_hook(make_hook(n, fn)) for n, fn in resolved]
    try:
        with _tl_flags(model, [n for n, _ in resolved]):
            return _call(model, _prepare_inputs(model, inputs), forward_kwargs)
    finally:
        for h in handles:
            h.remove()


_LAYER_RE = re.compile(r"^blocks\.(\d+)\.")


def layer_of(hook_name: str) -> int | None:
    """The block index in a TL hook name (``blocks.3.attn.hook_z`` -> 3), else ``None``."""
    m = _LAYER_RE.match(hook_name)
    return int(m.group(1)) if m else None
