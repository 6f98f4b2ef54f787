"""The torch-function mode that intercepts every call of a pass, and its dispatch.

:class:`FreezeMode` (one per pass: ``record`` / ``affine`` / ``linear``) keeps the taint of every
tensor, counts calls, checks that a replay makes the calls the pass on ``x0`` made, and sends each
input-dependent call to its handler in ``_HANDLERS``. Also here is what dispatch itself needs:
op-name resolution (``_op_name``: ``Tensor.add_`` -> ``("add", True)``), the structural queries
``_STRUCTURAL`` that never re-mark, ``_INPLACE_POS`` (F-level ``inplace`` flags given by position),
and the fallbacks for ops without a handler: ``_h_descend`` enters a Python-level torch function
so that its inner calls are classified (unless listed in ``_NO_DESCEND``), ``_h_unknown`` makes
``POISON`` (or a decision, for a non-float result).
"""

from __future__ import annotations

import contextlib
import types
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten
from torch.utils.weak import WeakIdKeyDictionary

from mechscope.linear.errors import ReplayError, UnsupportedLayerError
from mechscope.linear.freeze.calls import _HANDLERS, _call, _Call, _clone, _is_float, _tensors
from mechscope.linear.freeze.taints import (_C, _DECIDE, _MARKED, _P, _X, CONST, Taint, _join_add, _pattern,
                                            _poison)

if TYPE_CHECKING:
    from mechscope.linear.freeze.network import FrozenNetwork


class FreezeMode(TorchFunctionMode):
    """Intercepts torch calls during one pass (``phase`` = ``record`` | ``affine`` | ``linear``)."""

    def __init__(self, net: "FrozenNetwork", phase: str):
        super().__init__()
        self.net, self.tape, self.phase = net, net.tape, phase
        self.taints = WeakIdKeyDictionary()
        self.n = 0
        self.quiet_depth = 0
        self.module_stack: list[str] = []
        self.hook_counts: dict[str, int] = {}
        self.act_counts: dict[str, int] = {}
        self.descending: set = set()

    # -- taint bookkeeping
    def taint(self, t) -> Taint:
        if not isinstance(t, torch.Tensor):
            return CONST
        return self.taints.get(t, CONST)

    def set_taint(self, t: torch.Tensor, taint: Taint) -> None:
        if taint.kind == _C or not _is_float(t):
            self.taints.pop(t, None)
        else:
            self.taints[t] = taint

    def mark(self, out, taint: Taint) -> None:
        for leaf in tree_flatten(out)[0]:
            if isinstance(leaf, torch.Tensor):
                self.set_taint(leaf, taint)

    @contextlib.contextmanager
    def quiet(self):
        """Torch calls inside are neither counted nor classified (bookkeeping code)."""
        self.quiet_depth += 1
        try:
            yield
        finally:
            self.quiet_depth -= 1

    def where(self) -> str:
        if not self.module_stack:
            return "at the top level"
        name = self.module_stack[-1]
        mod = self.net.modules_by_name.get(name)
        return f"in module '{name or '<root>'}' ({type(mod).__name__})"

    def poison(self, what: str, rank: int = 0) -> Taint:
        return _poison(f"{what} {self.where()}", rank)

    # -- records
    def save(self, c: _Call, kind: str, payload: Any = None) -> None:
        self.tape.records[c.idx] = (kind, payload)

    def load(self, c: _Call, kind: str):
        rec = self.tape.records.get(c.idx)
        if rec is None or rec[0] != kind:
            raise ReplayError(f"call #{c.idx} ({c.name}): expected a recorded {kind!r} decision, found "
                              f"{rec[0] if rec else 'none'}; the network's sequence of operations changed "
                              "between the pass on x0 and the replay")
        return rec[1]

    # -- dispatch
    def __torch_function__(self, func, types_, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.quiet_depth:
            return func(*args, **kwargs)
        idx = self.n
        self.n += 1
        nonconst = False
        for t in _tensors(args, kwargs):
            if t in self.taints:
                nonconst = True
                break
        if not nonconst:
            if args and id(args[0]) in self.net._state_ids and _op_name(func)[1]:
                # an in-place update of the model's own state (BatchNorm running statistics,
                # num_batches_tracked): skipped in every pass, so linearizing never changes the model
                return args[0]
            if self.phase != "record" and idx in self.tape.names:
                raise ReplayError(f"call #{idx}: the pass on x0 made an input-dependent call to "
                                  f"{self.tape.names[idx]!r} here, the replay a constant call to "
                                  f"{_op_name(func)[0]!r}; control flow diverged")
            return func(*args, **kwargs)
        name, inplace = _op_name(func)
        if "out" in kwargs and kwargs["out"] is not None:
            raise UnsupportedLayerError(f"{name}(..., out=...) on an input-dependent tensor {self.where()} "
                                        "is not supported; expected an out-of-place call")
        if not inplace and isinstance(func, types.FunctionType):
            pos = _INPLACE_POS.get(name)
            inplace = bool(kwargs.get("inplace", False)) or (pos is not None and len(args) > pos and bool(args[pos]))
        c = _Call(idx, name, func, args, kwargs, inplace)
        if self.phase == "record":
            self.tape.names[idx] = name
        else:
            recorded = self.tape.names.get(idx)
            if recorded != name:
                raise ReplayError(f"call #{idx}: the pass on x0 called {recorded!r}, the replay {name!r}; "
                                  "the network's control flow depends on its input in a way that was not frozen")
            rec = self.tape.records.get(idx)
            if rec is not None and rec[0] in ("const", "poison", "pattern"):
                return self._replay_stored(c, rec)
        handler = _HANDLERS.get(name)
        if handler is None:
            handler = _h_descend if (isinstance(func, types.FunctionType) and name not in _NO_DESCEND) else _h_unknown
        out, taint = handler(self, c)
        if taint is _MARKED:
            return out
        if self.phase != "record" and taint is _DECIDE:
            raise ReplayError(f"call #{idx} ({name}) is a decision that was not recorded on x0")
        if self.phase == "record":
            if taint is _DECIDE or (name not in _STRUCTURAL and not any(_is_float(t) for t in tree_flatten(out)[0])):
                self.save(c, "const", _clone(out))
                taint = CONST
            elif taint.kind == _X:
                self.save(c, "poison", _clone(out))
                self.tape.poisons[idx] = taint
            elif taint.kind == _P:
                self.save(c, "pattern", _clone(out))
        return self._finish(c, out, taint)

    def _replay_stored(self, c: _Call, rec: tuple):
        kind, value = rec
        poison = self.tape.poisons.get(c.idx, _poison(f"{c.name} (recorded on x0)"))
        taint = CONST if kind == "const" else (poison if kind == "poison" else _pattern(poison.reason))
        if kind == "poison":
            # values of a poisoned tensor never reach a linear result; only its shape matters
            if c.inplace and isinstance(c.args[0], torch.Tensor):
                self._mark_target(c.args[0], taint)
                return c.args[0]
            out = value
        else:
            out = _clone(value)
        return self._finish(c, out, taint)

    def _finish(self, c: _Call, out, taint: Taint):
        target = c.args[0] if (c.inplace and c.args and isinstance(c.args[0], torch.Tensor)) else None
        if target is not None and out is not target and isinstance(out, torch.Tensor):
            with self.quiet():
                if self.phase == "linear" and taint.kind != _C and self.taint(target).kind == _C:
                    _zero_base(target)
                target.copy_(out)
            out = target
        if target is not None:
            self._mark_target(target, taint)
        else:
            self.mark(out, taint)
        return out

    def _mark_target(self, target: torch.Tensor, taint: Taint) -> None:
        if taint.kind != _C:
            self.net.check_not_state(target, self)
        self.set_taint(target, taint)
        base = target._base
        if base is not None:
            self.set_taint(base, _join_add([self.taint(base), taint], "in-place write"))


def _zero_base(t: torch.Tensor) -> None:
    base = t._base if t._base is not None else t
    base.zero_()


# --------------------------------------------------------------------------------------------
# op names

_DUNDER = {
    "__add__": ("add", False), "__radd__": ("add", False), "__iadd__": ("add", True),
    "__sub__": ("sub", False), "__rsub__": ("rsub", False), "__isub__": ("sub", True),
    "__mul__": ("mul", False), "__rmul__": ("mul", False), "__imul__": ("mul", True),
    "__truediv__": ("div", False), "__div__": ("div", False), "__itruediv__": ("div", True),
    "__idiv__": ("div", True), "__rtruediv__": ("rdiv", False), "__rdiv__": ("rdiv", False),
    "__matmul__": ("matmul", False), "__rmatmul__": ("rmatmul", False),
    "__neg__": ("neg", False), "__pos__": ("positive", False), "__abs__": ("abs", False),
    "__pow__": ("pow", False), "__rpow__": ("rpow", False), "__ipow__": ("pow", True),
    "__gt__": ("gt", False), "__lt__": ("lt", False), "__ge__": ("ge", False), "__le__": ("le", False),
    "__eq__": ("eq", False), "__ne__": ("ne", False),
    "__floordiv__": ("floor_divide", False), "__rfloordiv__": ("floor_divide", False),
    "__mod__": ("remainder", False), "__rmod__": ("remainder", False),
    "__getitem__": ("__getitem__", False), "__setitem__": ("__setitem__", True),
}

_NAME_CACHE: dict[Any, tuple[str, bool]] = {}


def _op_name(func) -> tuple[str, bool]:
    """(base name, in-place?) of a torch callable: ``Tensor.add_`` -> ("add", True)."""
    try:
        return _NAME_CACHE[func]
    except (KeyError, TypeError):
        pass
    name = getattr(func, "__name__", None) or type(func).__name__
    if name == "__get__":  # property access, e.g. Tensor.shape.__get__
        prop = getattr(getattr(func, "__self__", None), "__name__", "?")
        res = (f"prop:{prop}", False)
    elif name in _DUNDER:
        res = _DUNDER[name]
    elif name.startswith("__") and name.endswith("__"):
        res = (name, False)
    elif name.endswith("_") and not name.startswith("_"):
        res = (name[:-1], True)
    else:
        res = (name, False)
    try:
        _NAME_CACHE[func] = res
    except TypeError:
        pass
    return res


# structural queries: non-tensor results that do not depend on values
_STRUCTURAL = {
    "size", "dim", "ndimension", "numel", "nelement", "stride", "storage_offset", "is_contiguous",
    "is_floating_point", "is_complex", "is_signed", "element_size", "get_device", "__len__",
    "data_ptr", "requires_grad", "retain_grad", "register_hook", "is_inference", "untyped_storage",
    "_is_view", "is_set_to", "has_names", "is_pinned", "is_shared", "dim_order", "__hash__",
    "__reduce_ex__", "__array_priority__",
}
_STRUCT_PROPS = {
    "shape", "dtype", "device", "ndim", "is_cuda", "is_cpu", "is_sparse", "is_quantized", "is_meta",
    "layout", "requires_grad", "is_leaf", "grad_fn", "names", "itemsize", "nbytes", "_version",
    "is_mkldnn", "is_mps", "is_xpu", "is_nested", "output_nr", "_base", "is_sparse_csr", "grad",
}
_STRUCTURAL |= {f"prop:{p}" for p in _STRUCT_PROPS}


# F-level functions whose ``inplace`` flag can be positional
_INPLACE_POS = {"relu": 1, "relu6": 1, "selu": 1, "silu": 1, "mish": 1, "hardswish": 1, "hardsigmoid": 1,
                "leaky_relu": 2, "elu": 2, "celu": 2, "hardtanh": 3, "threshold": 3, "rrelu": 4,
                "dropout": 3, "dropout1d": 3, "dropout2d": 3, "dropout3d": 3, "alpha_dropout": 3,
                "feature_alpha_dropout": 3}


# -- ops without a handler: Python-level torch functions are entered, anything else is POISON


_NO_DESCEND: set[str] = set()
_CLONES: dict[Callable, Callable] = {}


def _false(*_a, **_k):
    return False


def _descendable(func: types.FunctionType) -> Callable:
    """A copy of a Python torch function whose own ``has_torch_function`` guard is off, so that
    calling it with the mode active classifies the torch calls inside it."""
    fn = _CLONES.get(func)
    if fn is None:
        g = dict(func.__globals__)
        for n in ("has_torch_function", "has_torch_function_unary", "has_torch_function_variadic"):
            g[n] = _false
        fn = types.FunctionType(func.__code__, g, func.__name__, func.__defaults__, func.__closure__)
        fn.__kwdefaults__ = func.__kwdefaults__
        _CLONES[func] = fn
    return fn


def _h_descend(m, c):
    if c.func in m.descending:  # the function re-dispatched to itself: treat it as an opaque op
        return _h_unknown(m, c)
    m.descending.add(c.func)
    try:
        with m:
            out = _descendable(c.func)(*c.args, **c.kwargs)
    finally:
        m.descending.discard(c.func)
    return out, _MARKED


def _h_unknown(m, c):
    out = _call(c)
    if not any(_is_float(t) for t in tree_flatten(out)[0]):
        return out, _DECIDE
    qual = getattr(c.func, "__qualname__", c.name)
    return out, m.poison(f"unsupported operation '{qual}' (no frozen linear form is known)")
