"""The tape, one intercepted call, and the handler registry.

:class:`Tape` holds the decisions recorded on the pass on ``x0`` (keyed by call index);
``_Call`` is one intercepted torch call (op name, function, arguments, in-place flag), with the
argument helpers ``_arg`` / ``_with_arg`` / ``_bind`` / ``_tensors`` / ``_is_float`` / ``_clone``.
``_HANDLERS`` maps an op name to its handler ``(mode, call) -> (output, taint)``; the ``ops_*``
submodules and :mod:`mechscope.linear.freeze.ops_multipliers` fill it with ``_register`` at import time (a
later registration of a name replaces an earlier one), and ``_call`` runs a call unchanged.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
from torch.utils._pytree import tree_map

from mechscope.linear.freeze.taints import Taint

if TYPE_CHECKING:
    from mechscope.linear.freeze.mode import FreezeMode


@dataclass
class Tape:
    """Decisions recorded on the pass on ``x0``, keyed by call index (call order)."""

    names: dict[int, str] = field(default_factory=dict)      # index -> op name (non-constant calls)
    records: dict[int, tuple] = field(default_factory=dict)  # index -> (kind, payload)
    poisons: dict[int, Taint] = field(default_factory=dict)  # index -> the poison (why, rank)
    hooks: dict[tuple[str, int], Any] = field(default_factory=dict)  # (module, k) -> frozen output
    acts: dict[tuple[str, int], tuple] = field(default_factory=dict)  # patched activations
    n_calls: int = 0
    output_const: bool = False

    def summary(self) -> dict[str, int]:
        """How many decisions of each kind were frozen."""
        out: dict[str, int] = {}
        for kind, _ in self.records.values():
            out[kind] = out.get(kind, 0) + 1
        for _ in self.hooks:
            out["frozen_hook"] = out.get("frozen_hook", 0) + 1
        for kind, *_ in self.acts.values():
            out[f"act_{kind}"] = out.get(f"act_{kind}", 0) + 1
        return out


@dataclass
class _Call:
    idx: int
    name: str
    func: Callable
    args: tuple
    kwargs: dict
    inplace: bool


def _clone(obj):
    return tree_map(lambda t: t.detach().clone() if isinstance(t, torch.Tensor) else t, obj)


def _tensors(args, kwargs) -> list[torch.Tensor]:
    out = []
    for a in (*args, *kwargs.values()):
        if isinstance(a, torch.Tensor):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(t for t in a if isinstance(t, torch.Tensor))
    return out


def _is_float(t) -> bool:
    return isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())


def _arg(c: _Call, i: int, name: str, default=None):
    if len(c.args) > i:
        return c.args[i]
    return c.kwargs.get(name, default)


def _with_arg(c: _Call, i: int, name: str, value) -> tuple[tuple, dict]:
    args, kwargs = list(c.args), dict(c.kwargs)
    if len(args) > i:
        args[i] = value
    else:
        kwargs[name] = value
    return tuple(args), kwargs


_SIGS: dict[Any, inspect.Signature] = {}


def _bind(sig_fn: Callable, c: _Call) -> dict:
    """Bind a call's arguments to the signature of ``sig_fn`` (a lambda written at the call site;
    cached by its code object)."""
    sig = _SIGS.get(sig_fn.__code__)
    if sig is None:
        sig = _SIGS[sig_fn.__code__] = inspect.signature(sig_fn)
    b = sig.bind(*c.args, **c.kwargs)
    b.apply_defaults()
    return dict(b.arguments)


# --------------------------------------------------------------------------------------------
# handlers: each returns (output, taint)

_HANDLERS: dict[str, Callable[[FreezeMode, _Call], tuple[Any, Taint]]] = {}


def _register(names: Iterable[str], handler) -> None:
    for n in names:
        _HANDLERS[n] = handler


def _call(c: _Call, args=None, kwargs=None):
    return c.func(*(c.args if args is None else args), **(c.kwargs if kwargs is None else kwargs))
