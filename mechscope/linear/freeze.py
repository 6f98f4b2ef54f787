"""Freezing a network's decisions at an input ``x0`` so that it becomes an exact affine map.

How it works
------------
Every torch call made while the network runs is intercepted with a
:class:`torch.overrides.TorchFunctionMode`. Each tensor carries a *taint*:

* ``CONST``   — does not depend on the input (parameters, buffers, frozen decisions);
* ``LINEAR``  — an affine function of the input (in the ``linear`` phase: its linear part);
* ``PATTERN`` — a frozen softmax (attention weights); legal only as a multiplier of a
  ``LINEAR`` tensor (``pattern @ v``);
* ``POISON``  — a non-linear function of the input that has no frozen form. It carries the
  reason (the operation and the module). If it reaches the output, an
  :class:`~mechscope.linear.errors.UnsupportedLayerError` names it; if it is discarded (the
  attention scores ``q·k`` once the pattern is frozen, the ``pow``/``sqrt`` inside a norm whose
  scale is frozen) it is harmless.

Frozen multipliers (:mod:`mechscope.linear.multipliers`): in an elementwise product of two
input-dependent tensors (or a quotient), a factor that is a gate (``sigmoid`` / ``hardsigmoid``
output: squeeze-excitation, CBAM, LSTM), another activation's output, or a *known* non-linear
function (``POISON`` from ``sqrt``, ``pow``, ``rsqrt``, a product...: a hand-written norm's
``1/sigma``) is a decision: its value on ``x0`` is recorded and replayed, so ``x * gate(x)``
becomes ``x * gate(x0)`` — exact at ``x0``, like a frozen attention pattern. ``Taint.rank``
decides which factor; a tie is not frozen, and an unknown op's ``POISON`` never is.

Three passes share one *tape*:

* ``record`` runs on ``x0``: every non-linear call stores its decision in call order — ReLU /
  LeakyReLU / ReLU6 / hardtanh / hardsigmoid masks (their local linear piece), the secant gain
  ``(f(x0) - f(0)) / x0`` of GELU, SiLU, hardswish, sigmoid, tanh and friends (the derivative at
  ``x0 == 0``), max-pool / max / top-k indices, the ``1/sigma`` of
  batch, instance, group, layer and RMS norms, attention patterns, frozen multipliers,
  comparisons and any other integer-valued result (a *decision*).
* ``affine`` replays the same calls on another input ``v`` with the decisions fixed:
  ``F_frozen(v) = A v + c``; ``F_frozen(x0) = f(x0)``.
* ``linear`` replays them with every additive constant dropped (biases, norm shifts, ``+ 1``,
  padding values): ``A v``. ``c = F_frozen(0)`` comes from the ``affine`` phase.

Ops are classified by name (``torch.add``, ``Tensor.__add__`` and ``Tensor.add_`` are one op);
unknown Python-level torch functions (``F.multi_head_attention_forward``…) are entered so that
their inner calls are classified; unknown built-in ops make ``POISON``. Nothing unknown is ever
treated as linear.

Norm centring: by default only the scale ``1/sigma(x0)`` of a norm is frozen; subtracting the
mean is linear in the input and kept (``norm_center="linear"``). ``norm_center="frozen"``
freezes the mean too (it then moves into the bias ``c``).
"""

from __future__ import annotations

import contextlib
import inspect
import math
import types
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.weak import WeakIdKeyDictionary

from mechscope.errors import ConfigError
from mechscope.linear.errors import ReplayError, UnsupportedLayerError

# --------------------------------------------------------------------------------------------
# taints

_C, _L, _P, _X = 0, 1, 2, 3  # const, linear, pattern, poison


@dataclass(frozen=True)
class Taint:
    """What a tensor is as a function of the input. ``rank`` orders tensors as candidates for a
    frozen multiplier (see :mod:`mechscope.linear.multipliers`): 0 never (plain ``LINEAR`` data, an
    unknown op's ``POISON``), 1 an activation's output, 2 a gate (sigmoid / hardsigmoid output),
    3 a known non-linear function (``POISON`` from ``sqrt``, ``pow``, a product of two
    input-dependent tensors...)."""

    kind: int
    reason: str | None = None
    rank: int = 0

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return ["CONST", "LINEAR", "PATTERN", "POISON"][self.kind] + (f"({self.reason})" if self.reason else "")


CONST = Taint(_C)
LINEAR = Taint(_L)
ACTIVATION = Taint(_L, rank=1)  # output of an elementwise activation (frozen gain)
GATE = Taint(_L, rank=2)  # output of a gating function (sigmoid, hardsigmoid)
KNOWN_NONLINEAR = 3  # rank of a POISON that is a known non-linear function of the input
_DECIDE = Taint(-1)  # handler result: "record the output as a frozen decision"
_MARKED = Taint(-2)  # handler result: "outputs already carry their taints" (entered functions)


def _poison(reason: str, rank: int = 0) -> Taint:
    return Taint(_X, reason, rank)


def _pattern(reason: str) -> Taint:
    return Taint(_P, reason)


def _worst_poison(ts: Iterable[Taint]) -> Taint | None:
    """The poison among ``ts`` that is passed on: an unknown op's (rank 0) before a known one's."""
    return min((t for t in ts if t.kind == _X), key=lambda t: t.rank, default=None)


def _join_add(ts: Iterable[Taint], what: str) -> Taint:
    """Taint of a sum / concatenation / selection of data arguments. One input-dependent term
    keeps its own taint (``1 - gate`` is still a gate); among poisons, an unknown op's wins."""
    ts = [t for t in ts if t.kind != _C]
    if not ts:
        return CONST
    if len(ts) == 1:
        return ts[0]
    poison = _worst_poison(ts)
    if poison is not None:
        return poison
    kinds = {t.kind for t in ts}
    if kinds == {_L}:
        return LINEAR
    if kinds == {_P}:
        return ts[0]
    return _poison(f"{what}: a frozen softmax output (attention weights) is combined additively with "
                   "an input-dependent tensor; a softmax is frozen only when it weights values")


# --------------------------------------------------------------------------------------------
# the tape


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
# the mode


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


# --------------------------------------------------------------------------------------------
# handlers: each returns (output, taint)

_HANDLERS: dict[str, Callable[[FreezeMode, _Call], tuple[Any, Taint]]] = {}


def _register(names: Iterable[str], handler) -> None:
    for n in names:
        _HANDLERS[n] = handler


def _call(c: _Call, args=None, kwargs=None):
    return c.func(*(c.args if args is None else args), **(c.kwargs if kwargs is None else kwargs))


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


def _h_structural(m, c):
    return _call(c), _MARKED  # never re-mark: ``x._base`` must keep its own taint


_register(_STRUCTURAL, _h_structural)

# F-level functions whose ``inplace`` flag can be positional
_INPLACE_POS = {"relu": 1, "relu6": 1, "selu": 1, "silu": 1, "mish": 1, "hardswish": 1, "hardsigmoid": 1,
                "leaky_relu": 2, "elu": 2, "celu": 2, "hardtanh": 3, "threshold": 3, "rrelu": 4,
                "dropout": 3, "dropout1d": 3, "dropout2d": 3, "dropout3d": 3, "alpha_dropout": 3,
                "feature_alpha_dropout": 3}

_register(["requires_grad_", "retain_grad", "share_memory"], lambda m, c: (_call(c), _MARKED))


# -- unary linear: data is the first argument, other tensor arguments are indices or shape refs

_UNARY_LINEAR = [
    "view", "view_as", "reshape", "reshape_as", "permute", "transpose", "t", "swapaxes", "swapdims",
    "movedim", "moveaxis", "flatten", "unflatten", "ravel", "squeeze", "unsqueeze", "expand",
    "expand_as", "broadcast_to", "repeat", "tile", "repeat_interleave", "flip", "fliplr", "flipud",
    "roll", "rot90", "narrow", "select", "__getitem__", "index_select", "gather", "take",
    "take_along_dim", "masked_select", "chunk", "split", "tensor_split", "split_with_sizes", "unbind",
    "hsplit", "vsplit", "dsplit", "unsafe_split", "unsafe_chunk", "diagonal", "diag", "diag_embed",
    "tril", "triu", "contiguous", "clone", "to", "type", "type_as", "float", "double", "half",
    "bfloat16", "cpu", "cuda", "sum", "mean", "nansum", "cumsum", "trace", "neg", "negative",
    "positive", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d", "adaptive_avg_pool2d",
    "adaptive_avg_pool3d", "interpolate", "upsample", "upsample_nearest", "upsample_bilinear",
    "upsample_nearest1d", "upsample_nearest2d", "upsample_nearest3d", "upsample_bilinear2d",
    "upsample_linear1d", "upsample_trilinear3d", "upsample_bicubic2d", "_upsample_nearest_exact1d",
    "_upsample_nearest_exact2d", "_upsample_nearest_exact3d", "_upsample_bilinear2d_aa",
    "_upsample_bicubic2d_aa", "pixel_shuffle", "pixel_unshuffle", "channel_shuffle",
    "native_channel_shuffle", "unfold", "fold", "im2col", "col2im", "as_strided", "alias", "real",
    "conj", "resolve_conj", "resolve_neg", "prop:T", "prop:mT", "prop:H", "mH", "prop:mH", "prop:real",
    "atleast_1d", "atleast_2d", "atleast_3d", "diff", "unflatten", "contiguous", "identity",
    "nan_to_num", "reflection_pad1d", "reflection_pad2d", "reflection_pad3d", "replication_pad1d",
    "replication_pad2d", "replication_pad3d", "_pad_circular", "circular_pad1d", "circular_pad2d",
    "circular_pad3d", "as_tensor", "detach_copy", "view_copy", "expand_copy", "permute_copy",
    "squeeze_copy", "unsqueeze_copy", "transpose_copy", "t_copy", "unbind_copy", "split_copy",
    "slice_copy", "select_copy", "narrow_copy", "diagonal_copy", "max_unpool1d", "max_unpool2d",
    "max_unpool3d", "grid_sample",
]
_SHAPE_REF = {"view_as", "reshape_as", "expand_as", "type_as", "to"}


def _h_unary(m, c):
    x = c.args[0] if c.args else next(iter(c.kwargs.values()))
    tx = m.taint(x)
    for t in _tensors(c.args[1:], {k: v for k, v in c.kwargs.items() if v is not x}):
        tt = m.taint(t)
        if tt.kind != _C and c.name not in _SHAPE_REF:
            return _call(c), m.poison(f"{c.name} with an input-dependent argument besides its data")
    out = _call(c)
    if tx.kind == _C:
        return out, CONST
    if isinstance(x, torch.Tensor) and _is_float(x) and not any(_is_float(t) for t in tree_flatten(out)[0]):
        return out, _DECIDE  # e.g. x.long(): an integer-valued result is a decision
    return out, tx


_register(_UNARY_LINEAR, _h_unary)
# shape-changing in-place ops act on metadata only
_register(["unsqueeze_", "squeeze_", "transpose_", "t_", "swapaxes_", "swapdims_", "as_strided_"],
          lambda m, c: (_call(c), _MARKED))


def _h_detach(m, c):
    x = c.args[0]
    return _call(c), (m.poison(f"{c.name} (it cuts the backward pass that apply_T uses)")
                      if m.taint(x).kind != _C else CONST)


_register(["detach", "prop:data"], _h_detach)

# ops whose output only depends on shapes/dtypes of their tensor arguments
_FACTORIES = ["zeros_like", "ones_like", "empty_like", "full_like", "rand_like", "randn_like",
              "randint_like", "new_zeros", "new_ones", "new_empty", "new_full", "new_tensor",
              "empty_strided", "new_empty_strided"]
def _h_factory(m, c):
    """``zeros_like(x)`` & co. depend only on shapes; ``x.new_tensor(data)`` copies values, so an
    input-dependent ``data`` / fill value would silently become a constant: poisoned instead."""
    for t in _tensors(c.args[1:], c.kwargs):
        if m.taint(t).kind != _C:
            return _call(c), m.poison(f"{c.name} copies input-dependent values out of the tracked computation")
    return _call(c), CONST


_register(_FACTORIES, _h_factory)


# -- decisions: piecewise-constant results, frozen at x0

_DECISIONS = [
    "gt", "lt", "ge", "le", "eq", "ne", "greater", "less", "greater_equal", "less_equal", "not_equal",
    "equal", "isnan", "isinf", "isfinite", "isposinf", "isneginf", "isclose", "allclose", "isreal",
    "argmax", "argmin", "argsort", "argwhere", "nonzero", "nonzero_static", "sign", "sgn", "signbit",
    "round", "floor", "ceil", "trunc", "fix", "floor_divide", "bucketize", "searchsorted", "item",
    "tolist", "numpy", "__bool__", "__int__", "__float__", "__index__", "__repr__", "__format__",
    "__str__", "__array__", "__contains__", "any", "all", "logical_and", "logical_or", "logical_not",
    "logical_xor", "bitwise_and", "bitwise_or", "bitwise_xor", "bitwise_not", "__and__", "__or__",
    "__xor__", "__invert__", "__rand__", "__ror__", "__rxor__", "unique", "unique_consecutive",
    "bincount", "histc", "count_nonzero", "heaviside", "long", "int", "short", "bool", "byte", "char",
]


def _h_decision(m, c):
    return _call(c), _DECIDE


_register(_DECISIONS, _h_decision)


# -- sums / concatenations / selections: linear jointly in their data arguments


def _data_slots(c: _Call) -> list[tuple[int | str, int | None]]:
    """Positions of the data arguments of a joint-linear op: (position or kw, list index)."""
    n = c.name
    if n in ("cat", "concat", "concatenate", "stack", "hstack", "vstack", "dstack", "column_stack",
             "row_stack", "block_diag", "broadcast_tensors"):
        seq = c.args[0] if c.args else c.kwargs.get("tensors")
        if n in ("block_diag", "broadcast_tensors") and not isinstance(seq, (list, tuple)):
            return [(i, None) for i in range(len(c.args))]
        key = 0 if c.args else "tensors"
        return [(key, i) for i in range(len(seq))]
    table = {
        "add": [(0, "input"), (1, "other")], "sub": [(0, "input"), (1, "other")],
        "subtract": [(0, "input"), (1, "other")], "rsub": [(0, "input"), (1, "other")],
        "where": [(1, "input"), (2, "other")], "lerp": [(0, "input"), (1, "end")],
        "masked_fill": [(0, "input"), (2, "value")], "index_fill": [(0, "input"), (3, "value")],
        "index_add": [(0, "input"), (3, "source")], "index_copy": [(0, "input"), (3, "source")],
        "scatter": [(0, "input"), (3, "src")], "scatter_add": [(0, "input"), (3, "src")],
        "index_put": [(0, "input"), (2, "values")], "masked_scatter": [(0, "input"), (2, "source")],
        "diagonal_scatter": [(0, "input"), (1, "src")], "select_scatter": [(0, "input"), (1, "src")],
        "slice_scatter": [(0, "input"), (1, "src")], "__setitem__": [(0, "self"), (2, "value")],
    }
    slots = []
    for pos, kw in table[n]:
        if len(c.args) > pos:
            slots.append((pos, None))
        elif kw in c.kwargs:
            slots.append((kw, None))
        elif pos == 0 and c.args == () and "self" in c.kwargs:
            slots.append(("self", None))
    return slots


def _get_slot(c: _Call, slot):
    key, i = slot
    v = c.args[key] if isinstance(key, int) else c.kwargs[key]
    return v if i is None else v[i]


def _h_joint(m, c):
    slots = _data_slots(c)
    values = [_get_slot(c, s) for s in slots]
    data_ids = {id(v) for v in values}
    for t in _tensors(c.args, c.kwargs):
        if id(t) not in data_ids and m.taint(t).kind != _C:
            return _call(c), m.poison(f"{c.name} with an input-dependent index/condition/weight argument")
    if c.name == "scatter" and (_arg(c, 4, "reduce") is not None):
        return _call(c), m.poison("scatter with reduce=")
    taint = _join_add([m.taint(v) for v in values], f"{c.name} {m.where()}")
    if taint.kind == _X or m.phase != "linear" or taint.kind != _L:
        out = _call(c)
        return (None if c.name == "__setitem__" else out), taint
    # linear phase: additive constants are dropped
    args, kwargs = list(c.args), dict(c.kwargs)
    for slot, v in zip(slots, values):
        if m.taint(v).kind != _C:
            continue
        key, i = slot
        if c.inplace and key == 0 and i is None:
            _zero_base(v)  # in-place into a constant destination: its constant part is a bias
            continue
        zero = torch.zeros_like(v) if isinstance(v, torch.Tensor) else (0 if not isinstance(v, bool) else v)
        if isinstance(key, int):
            if i is None:
                args[key] = zero
            else:
                seq = list(args[key])
                seq[i] = zero
                args[key] = seq
        else:
            if i is None:
                kwargs[key] = zero
            else:
                seq = list(kwargs[key])
                seq[i] = zero
                kwargs[key] = seq
    out = c.func(*args, **kwargs)
    return (None if c.name == "__setitem__" else out), taint


_register(["add", "sub", "subtract", "rsub", "cat", "concat", "concatenate", "stack", "hstack", "vstack",
           "dstack", "column_stack", "row_stack", "where", "lerp", "masked_fill", "index_fill",
           "index_add", "index_copy", "scatter", "scatter_add", "index_put", "masked_scatter",
           "diagonal_scatter", "select_scatter", "slice_scatter", "block_diag"], _h_joint)


def _h_where(m, c):
    if len(c.args) + len(c.kwargs) == 1:  # torch.where(cond) == nonzero
        return _call(c), _DECIDE
    return _h_joint(m, c)


_register(["where"], _h_where)


def _h_setitem(m, c):
    target = c.args[0]
    out, taint = _h_joint(m, c)
    if taint.kind != _C or m.taint(target).kind != _C:
        m._mark_target(target, _join_add([m.taint(target), taint], "__setitem__"))
    return None, _MARKED


_register(["__setitem__"], _h_setitem)


def _h_broadcast_tensors(m, c):
    ins = c.args[0] if (len(c.args) == 1 and isinstance(c.args[0], (list, tuple))) else c.args
    outs = _call(c)
    for t_in, t_out in zip(ins, outs):
        m.set_taint(t_out, m.taint(t_in))
    return outs, _MARKED


_register(["broadcast_tensors"], _h_broadcast_tensors)


def _h_copy(m, c):
    dst, src = c.args[0], _arg(c, 1, "src")
    ts = m.taint(src)
    if ts.kind != _C and m.phase == "linear" and m.taint(dst).kind == _C and dst._base is not None:
        _zero_base(dst)
    out = _call(c)
    m._mark_target(dst, ts if dst._base is None else _join_add([m.taint(dst), ts], "copy_"))
    return out, _MARKED


_register(["copy"], _h_copy)


def _h_fill(m, c):
    value = _arg(c, 1, "value")
    if isinstance(value, torch.Tensor) and m.taint(value).kind != _C:
        return _call(c), m.poison("fill_ with an input-dependent value")
    out = _call(c)
    return out, CONST


_register(["fill", "zero"], _h_fill)


def _h_pad(m, c):
    x = c.args[0]
    tx = m.taint(x)
    mode = _arg(c, 2, "mode", "constant")
    if m.phase == "linear" and tx.kind == _L and c.name == "pad" and mode == "constant":
        args, kwargs = _with_arg(c, 3, "value", 0.0)
        return c.func(*args, **kwargs), tx
    if m.phase == "linear" and tx.kind == _L and c.name == "constant_pad_nd":
        args, kwargs = _with_arg(c, 2, "value", 0.0)
        return c.func(*args, **kwargs), tx
    return _call(c), tx


_register(["pad", "constant_pad_nd"], _h_pad)


# -- products: linear in each factor separately

def _factors_and_offsets(c: _Call) -> tuple[list[tuple[int | str, Any]], list[tuple[int, str]]]:
    n = c.name
    if n == "einsum":
        ops = c.args[1:]
        if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
            ops = ops[0]
        return [(None, t) for t in ops], []
    if n in ("multi_dot", "chain_matmul"):
        ops = c.args[0] if (len(c.args) == 1 and isinstance(c.args[0], (list, tuple))) else c.args
        return [(None, t) for t in ops], []
    if n in ("linear",):
        return [(None, c.args[0] if c.args else c.kwargs["input"]), (None, _arg(c, 1, "weight"))], [(2, "bias")]
    if n in ("conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
             "convolution", "_convolution", "conv_tbc"):
        return [(None, c.args[0] if c.args else c.kwargs["input"]), (None, _arg(c, 1, "weight"))], [(2, "bias")]
    if n == "bilinear":
        return [(None, _arg(c, 0, "input1")), (None, _arg(c, 1, "input2")), (None, _arg(c, 2, "weight"))], [(3, "bias")]
    # binary products
    return [(None, c.args[0] if c.args else c.kwargs.get("input")), (None, _arg(c, 1, "other"))], []


_ELEMENTWISE_PRODUCTS = {"mul", "multiply"}


def _h_product(m, c):
    factors, offsets = _factors_and_offsets(c)
    fts = [m.taint(t) for _, t in factors]
    poison = _worst_poison(fts)
    if poison is not None:
        return _call(c), poison
    n_lin = sum(t.kind == _L for t in fts)
    n_pat = sum(t.kind == _P for t in fts)
    off_vals = [(i, kw, _arg(c, i, kw)) for i, kw in offsets]
    off_nonconst = [v for _, _, v in off_vals if isinstance(v, torch.Tensor) and m.taint(v).kind != _C]
    if off_nonconst:
        return _call(c), m.poison(f"{c.name} with an input-dependent bias argument")
    if n_lin >= 2:
        return _call(c), m.poison(f"{c.name}: product of two input-dependent tensors", KNOWN_NONLINEAR)
    if n_lin == 1:
        taint = fts[[t.kind for t in fts].index(_L)] if c.name in _ELEMENTWISE_PRODUCTS else LINEAR
    elif n_pat:
        taint = fts[[t.kind for t in fts].index(_P)]
    else:
        return _call(c), CONST
    if m.phase == "linear" and taint.kind == _L:
        args, kwargs = c.args, c.kwargs
        for i, kw, v in off_vals:
            if v is not None:
                c2 = _Call(c.idx, c.name, c.func, args, kwargs, c.inplace)
                args, kwargs = _with_arg(c2, i, kw, None)
        return c.func(*args, **kwargs), taint
    return _call(c), taint


_register(["mul", "multiply", "matmul", "rmatmul", "mm", "bmm", "mv", "dot", "vdot", "inner", "outer",
           "ger", "tensordot", "kron", "einsum", "linear", "bilinear", "conv1d", "conv2d", "conv3d",
           "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "convolution", "_convolution",
           "conv_tbc", "multi_dot", "chain_matmul"], _h_product)


def _h_rmatmul(m, c):
    return _h_product(m, c)


def _h_div(m, c):
    num, den = (c.args[0] if c.args else c.kwargs["input"]), _arg(c, 1, "other")
    if _arg(c, 2, "rounding_mode") is not None:
        return _call(c), _DECIDE
    tn, td = m.taint(num), m.taint(den)
    if td.kind != _C:
        return _call(c), _quotient_taint(m, c, [tn, td])
    return _call(c), tn


def _h_rdiv(m, c):
    return _call(c), _quotient_taint(m, c, [m.taint(c.args[0])])


def _quotient_taint(m, c, ts: list[Taint]) -> Taint:
    """A division by an input-dependent tensor: a known non-linear function of the input (see
    :mod:`mechscope.linear.multipliers`), unless an unknown op's poison is involved."""
    poison = _worst_poison(ts)
    if poison is not None and poison.rank == 0:
        return poison
    return m.poison(f"{c.name}: division by an input-dependent tensor", KNOWN_NONLINEAR)


_register(["div", "divide", "true_divide"], _h_div)
_register(["rdiv"], _h_rdiv)


def _h_composite(fn):
    """Ops that are written as several simpler ops, evaluated with the mode active."""

    def h(m, c):
        with m:
            out = fn(*c.args, **c.kwargs)
        return out, _MARKED

    return h


def _addmm(input, mat1, mat2, *, beta=1, alpha=1):
    prod = mat1 @ mat2
    prod = prod if alpha == 1 else prod * alpha
    return prod + (input if beta == 1 else input * beta)


def _baddbmm(input, batch1, batch2, *, beta=1, alpha=1):
    return _addmm(input, batch1, batch2, beta=beta, alpha=alpha)


def _addbmm(input, batch1, batch2, *, beta=1, alpha=1):
    prod = (batch1 @ batch2).sum(0)
    return (prod if alpha == 1 else prod * alpha) + (input if beta == 1 else input * beta)


def _addmv(input, mat, vec, *, beta=1, alpha=1):
    return _addmm(input, mat, vec, beta=beta, alpha=alpha)


def _addr(input, vec1, vec2, *, beta=1, alpha=1):
    prod = torch.outer(vec1, vec2)
    return (prod if alpha == 1 else prod * alpha) + (input if beta == 1 else input * beta)


def _addcmul(input, tensor1, tensor2, *, value=1):
    return input + (tensor1 * tensor2) * value


def _addcdiv(input, tensor1, tensor2, *, value=1):
    return input + (tensor1 / tensor2) * value


for _n, _f in {"addmm": _addmm, "baddbmm": _baddbmm, "addbmm": _addbmm, "addmv": _addmv, "addr": _addr,
               "addcmul": _addcmul, "addcdiv": _addcdiv}.items():
    _register([_n], _h_composite(_f))


# -- elementwise non-linearities frozen as y = g * x + b


def _secant_gain(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Gain ``g = (f(x0) - f(0)) / x0`` and offset ``b = f(0)`` so that ``g*x0 + b == f(x0)``;
    where ``x0 == 0`` the gain is the derivative ``f'(0)``. Computed in float64."""
    xd = x.detach().to(torch.float64)
    try:
        f0 = fn(torch.zeros((), dtype=torch.float64))
        fx = fn(xd)
    except RuntimeError:  # functions with float32 parameters
        xd = x.detach()
        f0 = fn(torch.zeros((), dtype=x.dtype))
        fx = fn(xd)
    f0 = f0.to(xd.dtype)
    small = xd.abs() < 1e-8
    g = (fx - f0) / torch.where(small, torch.ones_like(xd), xd)
    if bool(small.any()):
        with torch.enable_grad():
            xs = xd.clone().requires_grad_(True)
            (d,) = torch.autograd.grad(fn(xs).sum(), xs)
        g = torch.where(small, d, g)
    b = None if float(f0) == 0.0 else f0.to(x.dtype)
    return g.to(x.dtype), b


_SMOOTH: dict[str, Callable] = {
    "gelu": lambda x, approximate="none", **_: F.gelu(x, approximate=approximate),
    "silu": lambda x, inplace=False: F.silu(x),
    "sigmoid": lambda x: torch.sigmoid(x),
    "expit": lambda x: torch.sigmoid(x),
    "tanh": lambda x: torch.tanh(x),
    "softplus": lambda x, beta=1.0, threshold=20.0: F.softplus(x, beta, threshold),
    "elu": lambda x, alpha=1.0, inplace=False: F.elu(x, alpha),
    "selu": lambda x, inplace=False: F.selu(x),
    "celu": lambda x, alpha=1.0, inplace=False: F.celu(x, alpha),
    "mish": lambda x, inplace=False: F.mish(x),
    "hardswish": lambda x, inplace=False: F.hardswish(x),
    "logsigmoid": lambda x: F.logsigmoid(x),
    "softsign": lambda x: F.softsign(x),
    "tanhshrink": lambda x: F.tanhshrink(x),
}


def _piecewise(name: str, c: _Call, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """(gain, offset, f(x0)) of a piecewise-linear elementwise op at x0."""
    one = torch.ones_like(x)
    if name == "relu":
        g = (x > 0).to(x.dtype)
        return g, None, x * g
    if name == "leaky_relu":
        slope = _bind(lambda input, negative_slope=0.01, inplace=False: None, c)["negative_slope"]
        g = torch.where(x > 0, one, one * slope)
        return g, None, F.leaky_relu(x, slope)
    if name in ("hardtanh", "relu6", "clamp", "clip", "clamp_min", "clamp_max", "threshold"):
        if name == "hardtanh":
            p = _bind(lambda input, min_val=-1.0, max_val=1.0, inplace=False: None, c)
            lo, hi = p["min_val"], p["max_val"]
        elif name == "relu6":
            lo, hi = 0.0, 6.0
        elif name in ("clamp", "clip"):
            p = _bind(lambda input, min=None, max=None: None, c)
            lo, hi = p["min"], p["max"]
        elif name == "clamp_min":
            lo, hi = _arg(c, 1, "min"), None
        elif name == "clamp_max":
            lo, hi = None, _arg(c, 1, "max")
        else:  # threshold: y = x if x > th else value
            p = _bind(lambda input, threshold, value, inplace=False: None, c)
            g = (x > p["threshold"]).to(x.dtype)
            b = (1 - g) * p["value"]
            return g, b, x * g + b
        y = torch.clamp(x, lo, hi)
        inside = torch.ones_like(x, dtype=torch.bool)
        if lo is not None:
            inside &= ~(x < lo)
        if hi is not None:
            inside &= ~(x > hi)
        g = inside.to(x.dtype)
        return g, torch.where(inside, torch.zeros_like(y), y), y
    if name == "hardsigmoid":  # clamp(x / 6 + 1/2, 0, 1)
        y = F.hardsigmoid(x)
        inside = (x > -3) & (x < 3)
        return inside.to(x.dtype) / 6, torch.where(inside, torch.full_like(x, 0.5), y), y
    if name == "prelu":
        w = _arg(c, 1, "weight")
        if w.numel() > 1 and x.dim() >= 2:
            w = w.view(1, -1, *([1] * (x.dim() - 2)))
        g = torch.where(x > 0, one, one * w)
        return g, None, x * g
    if name == "rrelu":
        p = _bind(lambda input, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False: None, c)
        slope = (p["lower"] + p["upper"]) / 2
        g = torch.where(x >= 0, one, one * slope)
        return g, None, x * g
    if name == "abs":
        g = torch.sign(x)
        return g, None, x.abs()
    if name in ("hardshrink", "softshrink"):
        lambd = _bind(lambda input, lambd=0.5: None, c)["lambd"]
        g = (x.abs() > lambd).to(x.dtype)
        b = None if name == "hardshrink" else -lambd * torch.sign(x) * g
        return g, b, (F.hardshrink(x, lambd) if name == "hardshrink" else F.softshrink(x, lambd))
    raise AssertionError(name)


_PIECEWISE = ["relu", "leaky_relu", "hardtanh", "relu6", "clamp", "clip", "clamp_min", "clamp_max",
              "threshold", "prelu", "rrelu", "abs", "hardshrink", "softshrink", "hardsigmoid"]
_GATES = {"sigmoid", "expit", "hardsigmoid"}  # range [0, 1]: made to multiply (SE, CBAM, LSTM gates)


def _activation_taint(name: str) -> Taint:
    return GATE if name in _GATES else ACTIVATION


def _h_gain(m, c):
    x = c.args[0] if c.args else next(iter(c.kwargs.values()))
    tx = m.taint(x)
    for t in _tensors(c.args[1:], {k: v for k, v in c.kwargs.items() if v is not x}):
        if m.taint(t).kind != _C:
            return _call(c), m.poison(f"{c.name} with an input-dependent parameter")
    if tx.kind == _X:
        return _call(c), tx
    if tx.kind == _P:
        return _call(c), m.poison(f"{c.name} applied to a frozen softmax output")
    if c.name == "rrelu" and _bind(lambda input, lower=1.0 / 8, upper=1.0 / 3, training=False, inplace=False: None, c)["training"]:
        return _call(c), m.poison("rrelu in training mode (random slopes); call model.eval()")
    if m.phase == "record":
        if c.name in _SMOOTH:
            fn = _SMOOTH[c.name]
            extra_args, extra_kw = c.args[1:], {k: v for k, v in c.kwargs.items() if k not in ("input", "self")}
            g, b = _secant_gain(lambda t: fn(t, *extra_args, **extra_kw), x)
            y = fn(x.detach(), *extra_args, **extra_kw)
        else:
            g, b, y = _piecewise(c.name, c, x.detach())
        m.save(c, "gain", (g, b))
        return y, _activation_taint(c.name)
    g, b = m.load(c, "gain")
    y = x * g
    if b is not None and m.phase == "affine":
        y = y + b
    return y, _activation_taint(c.name)


_register(list(_SMOOTH) + _PIECEWISE, _h_gain)


def _h_glu(m, c):
    p = _bind(lambda input, dim=-1: None, c)
    x, dim = p["input"], p["dim"]
    tx = m.taint(x)
    if tx.kind != _L:
        return _call(c), (tx if tx.kind == _X else m.poison("glu on a frozen softmax output"))
    half = x.shape[dim] // 2
    if m.phase == "record":
        s = torch.sigmoid(x.detach().narrow(dim, half, half))
        m.save(c, "gate", s)
        return _call(c), LINEAR
    return x.narrow(dim, 0, half) * m.load(c, "gate"), LINEAR


_register(["glu"], _h_glu)


def _h_minmax_binary(m, c):
    a, b = (c.args[0] if c.args else c.kwargs["input"]), _arg(c, 1, "other")
    taint = _join_add([m.taint(a), m.taint(b)], c.name)
    if taint.kind == _X:
        return _call(c), taint
    if m.phase == "record":
        big = c.name in ("maximum", "fmax", "max")
        mask = (a >= b) if big else (a <= b)
        m.save(c, "select", mask)
        return _call(c), taint
    mask = m.load(c, "select")
    if m.phase == "linear":
        a = a if m.taint(a).kind != _C else torch.zeros_like(a)
        b = b if m.taint(b).kind != _C else torch.zeros_like(b)
    return torch.where(mask, a, b), taint


_register(["maximum", "minimum", "fmax", "fmin"], _h_minmax_binary)


def _h_max(m, c):
    """max / min: full reduction, along a dim (values, indices), or elementwise of two tensors."""
    other = _arg(c, 1, "other")
    if isinstance(other, torch.Tensor):
        return _h_minmax_binary(m, c)
    x = c.args[0] if c.args else c.kwargs["input"]
    tx = m.taint(x)
    if tx.kind != _L:
        return _call(c), (tx if tx.kind == _X else m.poison(f"{c.name} of a frozen softmax output"))
    dim = _arg(c, 1, "dim")
    if m.phase == "record":
        out = _call(c)
        if dim is None:
            idx = (x.detach().reshape(-1).argmax() if c.name == "max" else x.detach().reshape(-1).argmin())
            m.save(c, "index", idx)
        else:
            m.save(c, "index", out.indices.clone())
        return out, LINEAR
    idx = m.load(c, "index")
    if dim is None:
        return x.reshape(-1)[idx], LINEAR
    keepdim = _arg(c, 2, "keepdim", False)
    gi = idx if keepdim else idx.unsqueeze(dim)
    values = x.gather(dim, gi)
    if not keepdim:
        values = values.squeeze(dim)
    rt = torch.return_types.max if c.name == "max" else torch.return_types.min
    return rt((values, idx.clone())), LINEAR


_register(["max", "min"], _h_max)


def _h_amax(m, c):
    x = c.args[0] if c.args else c.kwargs["input"]
    tx = m.taint(x)
    if tx.kind != _L:
        return _call(c), (tx if tx.kind == _X else m.poison(f"{c.name} of a frozen softmax output"))
    p = _bind(lambda input, dim=(), keepdim=False: None, c)
    dim = p["dim"]
    dims = tuple(range(x.dim())) if dim in ((), None, []) else ((dim,) if isinstance(dim, int) else tuple(dim))
    if m.phase == "record":
        out = _call(c)
        ref = x.detach().amax(dims, keepdim=True) if c.name == "amax" else x.detach().amin(dims, keepdim=True)
        mask = (x.detach() == ref).to(x.dtype)
        m.save(c, "mask", (mask, mask.sum(dims, keepdim=True)))
        return out, LINEAR
    mask, count = m.load(c, "mask")
    y = (x * mask).sum(dims, keepdim=True) / count
    if not p["keepdim"]:
        for d in sorted((d % x.dim() for d in dims), reverse=True):
            y = y.squeeze(d)
    return y, LINEAR


_register(["amax", "amin"], _h_amax)


def _h_topk_sort(m, c):
    x = c.args[0] if c.args else c.kwargs["input"]
    tx = m.taint(x)
    if tx.kind != _L:
        return _call(c), (tx if tx.kind == _X else m.poison(f"{c.name} of a frozen softmax output"))
    if c.name == "topk":
        dim = _bind(lambda input, k, dim=-1, largest=True, sorted=True: None, c)["dim"]
    else:
        dim = _bind(lambda input, dim=-1, descending=False, stable=False: None, c)["dim"]
    if m.phase == "record":
        out = _call(c)
        m.save(c, "index", out.indices.clone())
        return out, LINEAR
    idx = m.load(c, "index")
    rt = torch.return_types.topk if c.name == "topk" else torch.return_types.sort
    return rt((x.gather(dim, idx), idx.clone())), LINEAR


_register(["topk", "sort"], _h_topk_sort)


def _h_maxpool(m, c):
    x = c.args[0] if c.args else c.kwargs["input"]
    tx = m.taint(x)
    if tx.kind != _L:
        return _call(c), (tx if tx.kind == _X else m.poison(f"{c.name} of a frozen softmax output"))
    n = c.name.lstrip("_").replace("_with_indices", "")
    d = int(n[-2])
    adaptive = n.startswith("adaptive")
    if adaptive:
        p = _bind(lambda input, output_size, return_indices=False: None, c)
    else:
        p = _bind(lambda input, kernel_size, stride=None, padding=0, dilation=1, ceil_mode=False,
                  return_indices=False: None, c)
    want_idx = p.pop("return_indices") or c.name.endswith("with_indices")
    if m.phase == "record":
        p.pop("input")
        fn = getattr(F, ("adaptive_max_pool" if adaptive else "max_pool") + f"{d}d")
        out, idx = fn(x, **p, return_indices=True)
        m.save(c, "index", idx)
        return ((out, idx) if want_idx else out), LINEAR
    idx = m.load(c, "index")
    flat_x = x.flatten(-d) if d > 1 else x
    flat_i = idx.flatten(-d) if d > 1 else idx
    if flat_i.dim() < flat_x.dim():
        flat_i = flat_i.expand(*flat_x.shape[:-1], flat_i.shape[-1])
    out = flat_x.gather(-1, flat_i).view(idx.shape)
    return ((out, idx.clone()) if want_idx else out), LINEAR


_register(["max_pool1d", "max_pool2d", "max_pool3d", "_max_pool1d", "_max_pool2d", "_max_pool3d",
           "max_pool1d_with_indices", "max_pool2d_with_indices", "max_pool3d_with_indices",
           "adaptive_max_pool1d", "adaptive_max_pool2d", "adaptive_max_pool3d",
           "_adaptive_max_pool1d", "_adaptive_max_pool2d", "_adaptive_max_pool3d",
           "adaptive_max_pool1d_with_indices", "adaptive_max_pool2d_with_indices",
           "adaptive_max_pool3d_with_indices"], _h_maxpool)


def _h_dropout(m, c):
    x = c.args[0] if c.args else c.kwargs["input"]
    p = _arg(c, 1, "p", 0.5)
    training = _arg(c, 2, "training", _arg(c, 2, "train", True))
    if training and p > 0:
        return _call(c), m.poison(f"{c.name} in training mode is random; call model.eval() first")
    return x, m.taint(x)


_register(["dropout", "dropout1d", "dropout2d", "dropout3d", "alpha_dropout", "feature_alpha_dropout",
           "feature_dropout"], _h_dropout)


def _h_softmax(m, c):
    x = c.args[0] if c.args else c.kwargs["input"]
    tx = m.taint(x)
    if tx.kind == _X and m.phase != "record":
        return _call(c), tx
    return _call(c), _pattern(f"{c.name} {m.where()} is frozen only as attention weights; its output "
                              "reached a place where it is not a multiplier of an input-dependent tensor")


_register(["softmax", "_softmax", "softmin"], _h_softmax)


# -- norms: the scale 1/sigma(x0) is frozen


def _norm_params_ok(m, c, *params) -> Taint | None:
    for p in params:
        if isinstance(p, torch.Tensor) and m.taint(p).kind != _C:
            return m.poison(f"{c.name} with input-dependent weight/bias/statistics")
    return None


def _apply_norm(m, c, x, dims, eps, weight, bias, center: bool, shape_wb, mean_dims=None):
    """Shared record/replay of mean-centred norms over ``dims`` (``center`` False: RMS)."""
    mean_dims = dims if mean_dims is None else mean_dims
    if m.phase == "record":
        xd = x.detach()
        mu = xd.mean(mean_dims, keepdim=True) if center else None
        var = (xd - mu).pow(2).mean(dims, keepdim=True) if center else xd.pow(2).mean(dims, keepdim=True)
        s = torch.rsqrt(var + eps)
        m.save(c, "norm", (s, mu))
        return None
    s, mu = m.load(c, "norm")
    frozen_center = m.net.norm_center == "frozen"
    if center:
        if frozen_center:
            xc = x if m.phase == "linear" else x - mu
        else:
            xc = x - x.mean(mean_dims, keepdim=True)
    else:
        xc = x
    y = xc * s
    if weight is not None:
        y = y * (weight if shape_wb is None else weight.view(shape_wb))
    if bias is not None and m.phase == "affine":
        y = y + (bias if shape_wb is None else bias.view(shape_wb))
    return y


def _h_layer_norm(m, c):
    p = _bind(lambda input, normalized_shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True: None, c)
    x = p["input"]
    tx = m.taint(x)
    if tx.kind != _L or (bad := _norm_params_ok(m, c, p["weight"], p["bias"])):
        return _call(c), (bad if tx.kind == _L else (tx if tx.kind == _X else m.poison("layer_norm of a softmax output")))
    dims = tuple(range(-len(tuple(p["normalized_shape"])), 0))
    y = _apply_norm(m, c, x, dims, p["eps"], p["weight"], p["bias"], True, None)
    return (_call(c) if y is None else y), LINEAR


def _h_rms_norm(m, c):
    p = _bind(lambda input, normalized_shape, weight=None, eps=None: None, c)
    x = p["input"]
    tx = m.taint(x)
    if tx.kind != _L or (bad := _norm_params_ok(m, c, p["weight"])):
        return _call(c), (bad if tx.kind == _L else (tx if tx.kind == _X else m.poison("rms_norm of a softmax output")))
    eps = p["eps"] if p["eps"] is not None else torch.finfo(x.dtype).eps
    dims = tuple(range(-len(tuple(p["normalized_shape"])), 0))
    y = _apply_norm(m, c, x, dims, eps, p["weight"], None, False, None)
    return (_call(c) if y is None else y), LINEAR


def _h_group_norm(m, c):
    p = _bind(lambda input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True: None, c)
    x = p["input"]
    tx = m.taint(x)
    if tx.kind != _L or (bad := _norm_params_ok(m, c, p["weight"], p["bias"])):
        return _call(c), (bad if tx.kind == _L else (tx if tx.kind == _X else m.poison("group_norm of a softmax output")))
    n, ch, g = x.shape[0], x.shape[1], p["num_groups"]
    xg = x.reshape(n, g, -1)
    shape_wb = (1, ch) + (1,) * (x.dim() - 2)
    if m.phase == "record":
        _apply_norm(m, c, xg, (-1,), p["eps"], None, None, True, None)
        return _call(c), LINEAR
    y = _apply_norm(m, c, xg, (-1,), p["eps"], None, None, True, None).reshape(x.shape)
    if p["weight"] is not None:
        y = y * p["weight"].view(shape_wb)
    if p["bias"] is not None and m.phase == "affine":
        y = y + p["bias"].view(shape_wb)
    return y, LINEAR


def _stat_norm(m, c, p, stats_dims):
    """batch_norm / instance_norm with F.* argument names in ``p``."""
    x = p["input"]
    tx = m.taint(x)
    if tx.kind != _L or (bad := _norm_params_ok(m, c, p["weight"], p["bias"], p["running_mean"], p["running_var"])):
        return _call(c), (bad if tx.kind == _L else (tx if tx.kind == _X else m.poison(f"{c.name} of a softmax output")))
    shape_wb = (1, x.shape[1]) + (1,) * (x.dim() - 2)
    use_batch = p["use_stats"]
    if not use_batch:  # running statistics: already affine
        s = torch.rsqrt(p["running_var"] + p["eps"]).view(shape_wb)
        if m.phase == "linear":
            y = x * s
        else:
            y = (x - p["running_mean"].view(shape_wb)) * s
        if p["weight"] is not None:
            y = y * p["weight"].view(shape_wb)
        if p["bias"] is not None and m.phase != "linear":
            y = y + p["bias"].view(shape_wb)
        if m.phase == "record":
            return _call(c), LINEAR
        return y, LINEAR
    if m.phase == "record":
        _apply_norm(m, c, x, stats_dims, p["eps"], None, None, True, None)
        # the real output, without updating running statistics
        fn = F.batch_norm if c.name == "batch_norm" else F.instance_norm
        if c.name == "batch_norm":
            y = fn(x, None, None, p["weight"], p["bias"], True, 0.0, p["eps"])
        else:
            y = fn(x, None, None, p["weight"], p["bias"], True, 0.0, p["eps"])
        return y, LINEAR
    return _apply_norm(m, c, x, stats_dims, p["eps"], p["weight"], p["bias"], True, shape_wb), LINEAR


def _h_batch_norm(m, c):
    if isinstance(c.func, types.FunctionType):  # F.batch_norm
        p = _bind(lambda input, running_mean, running_var, weight=None, bias=None, training=False,
                  momentum=0.1, eps=1e-5: None, c)
    else:  # torch.batch_norm(input, weight, bias, running_mean, running_var, training, momentum, eps, cudnn)
        p = _bind(lambda input, weight, bias, running_mean, running_var, training, momentum, eps,
                  cudnn_enabled=True: None, c)
    p["use_stats"] = bool(p["training"]) or p["running_mean"] is None
    x = p["input"]
    return _stat_norm(m, c, p, (0,) + tuple(range(2, x.dim())))


def _h_instance_norm(m, c):
    if isinstance(c.func, types.FunctionType):
        p = _bind(lambda input, running_mean=None, running_var=None, weight=None, bias=None,
                  use_input_stats=True, momentum=0.1, eps=1e-5: None, c)
    else:
        p = _bind(lambda input, weight, bias, running_mean, running_var, use_input_stats, momentum, eps,
                  cudnn_enabled=True: None, c)
    p["use_stats"] = bool(p["use_input_stats"]) or p["running_mean"] is None
    x = p["input"]
    return _stat_norm(m, c, p, tuple(range(2, x.dim())))


def _h_normalize(m, c):
    p = _bind(lambda input, p=2.0, dim=1, eps=1e-12, out=None: None, c)
    x = p["input"]
    tx = m.taint(x)
    if tx.kind != _L:
        return _call(c), (tx if tx.kind == _X else m.poison("normalize of a softmax output"))
    if m.phase == "record":
        s = 1.0 / x.detach().norm(p["p"], p["dim"], keepdim=True).clamp_min(p["eps"])
        m.save(c, "norm", (s, None))
        return _call(c), LINEAR
    s, _ = m.load(c, "norm")
    return x * s, LINEAR


_register(["layer_norm"], _h_layer_norm)
_register(["rms_norm"], _h_rms_norm)
_register(["group_norm"], _h_group_norm)
_register(["batch_norm"], _h_batch_norm)
_register(["instance_norm"], _h_instance_norm)
_register(["normalize"], _h_normalize)


# -- attention


def _attention_pattern(q, k, attn_mask, is_causal, scale, enable_gqa):
    L, S = q.size(-2), k.size(-2)
    scale = 1.0 / math.sqrt(q.size(-1)) if scale is None else scale
    if enable_gqa and k.size(-3) != q.size(-3):
        k = k.repeat_interleave(q.size(-3) // k.size(-3), dim=-3)
    scores = (q @ k.transpose(-2, -1)) * scale
    if is_causal:
        causal = torch.ones(L, S, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    return torch.softmax(scores, dim=-1)


def _h_sdpa(m, c):
    p = _bind(lambda query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
              enable_gqa=False: None, c)
    tq, tk, tv = m.taint(p["query"]), m.taint(p["key"]), m.taint(p["value"])
    if isinstance(p["attn_mask"], torch.Tensor) and m.taint(p["attn_mask"]).kind != _C:
        return _call(c), m.poison("scaled_dot_product_attention with an input-dependent mask")
    if tv.kind == _X:
        return _call(c), tv
    if tq.kind == _C and tk.kind == _C:
        return _call(c), tv
    if p["dropout_p"] > 0:
        return _call(c), m.poison("attention dropout is random; call model.eval() / pass dropout_p=0")
    if tv.kind == _P:
        return _call(c), m.poison("attention whose values are a frozen softmax output")
    taint = LINEAR if tv.kind == _L else _pattern(f"attention output {m.where()} depends on the input only "
                                                  "through its frozen pattern")
    if m.phase == "record":
        P = _attention_pattern(p["query"].detach(), p["key"].detach(), p["attn_mask"], p["is_causal"],
                               p["scale"], p["enable_gqa"])
        m.save(c, "attention", P)
        return _call(c), taint
    P = m.load(c, "attention")
    v = p["value"]
    if p["enable_gqa"] and v.size(-3) != P.size(-3):
        v = v.repeat_interleave(P.size(-3) // v.size(-3), dim=-3)
    return P @ v, taint


_register(["scaled_dot_product_attention"], _h_sdpa)


# -- everything else


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


# --------------------------------------------------------------------------------------------
# the frozen network


class _ActPatch:
    """Replaces a callable attribute (a TransformerLens MLP's ``act_fn``) during the passes."""

    def __init__(self, net: "FrozenNetwork", key: str, fn: Callable, kind: str):
        self.net, self.key, self.fn, self.kind = net, key, fn, kind

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.net._mode
        k = m.act_counts.get(self.key, 0)
        m.act_counts[self.key] = k + 1
        key = (self.key, k)
        tx = m.taint(x)
        with m.quiet():
            if tx.kind == _C:
                return self.fn(x)
            if tx.kind != _L:
                y = self.fn(x) if m.phase == "record" else torch.zeros_like(x)
                m.set_taint(y, _poison(f"activation '{self.key}' of a non-linear input"))
                return y
            if m.phase == "record":
                y = self.fn(x.detach())
                if self.kind == "gate":
                    self.net.tape.acts[key] = ("gate", y.detach().clone())
                    return y.detach().clone()  # constant: the gate is frozen
                if self.kind == "softmax_gain":  # SoLU: x * softmax(x)
                    g, b = torch.softmax(x.detach(), dim=-1), None
                else:
                    g, b = _secant_gain(self.fn, x)
                self.net.tape.acts[key] = ("gain", g, b)
                m.set_taint(y, LINEAR)
                return y
            rec = self.net.tape.acts.get(key)
            if rec is None:
                raise ReplayError(f"activation {self.key!r} call {k} was not recorded on x0")
            if rec[0] == "gate":
                return rec[1].clone()
            _, g, b = rec
            y = x * g
            if b is not None and m.phase == "affine":
                y = y + b
            m.set_taint(y, LINEAR)
            return y


class FrozenNetwork:
    """``fn`` with every decision frozen at ``x0``.

    Args:
        fn: the function to linearize, ``x [*in_shape] -> y [*out_shape]`` (a model, or a model
            followed by a readout). Must return one floating tensor.
        x0: the input at which decisions are frozen, any shape (the model's own input shape).
        root: the ``nn.Module`` whose submodule names are used in messages and by ``freeze``;
            defaults to ``fn`` when it is a module.
        freeze: names of submodules whose *outputs* are frozen to their value on ``x0`` (become
            constants), e.g. TransformerLens ``blocks.0.ln1.hook_scale``; a name may end in
            ``*`` to match a suffix pattern ``*.hook_scale``.
        act_patches: ``(module, attribute, kind)``: replace ``module.attribute`` (a callable) by a
            frozen version; ``kind`` is ``gain`` (elementwise, secant gain), ``gate`` (frozen
            constant) or ``softmax_gain`` (SoLU).
        norm_center: ``"linear"`` (default: only the norm scale is frozen) or ``"frozen"``.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, *,
                 root: nn.Module | None = None, freeze: Sequence[str] = (),
                 act_patches: Sequence[tuple[nn.Module, str, str]] = (), norm_center: str = "linear"):
        if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
            raise ConfigError(f"x0 must be a floating-point tensor; found {type(x0).__name__}"
                              + (f" of dtype {x0.dtype}" if isinstance(x0, torch.Tensor) else ""))
        if norm_center not in ("linear", "frozen"):
            raise ConfigError(f"norm_center must be 'linear' or 'frozen'; found {norm_center!r}")
        self.fn = fn
        self.root = root if root is not None else (fn if isinstance(fn, nn.Module) else None)
        self.norm_center = norm_center
        self.modules_by_name: dict[str, nn.Module] = dict(self.root.named_modules()) if self.root is not None else {}
        self.tape = Tape()
        self._mode: FreezeMode | None = None
        self._state_ids: dict[int, str] = {}
        if self.root is not None:
            for n, t in (*self.root.named_parameters(), *self.root.named_buffers()):
                self._state_ids[id(t)] = n
        self.freeze = self._resolve_freeze(freeze)
        self.act_patches = list(act_patches)
        self.in_shape = tuple(x0.shape)
        self.dtype = x0.dtype
        self.device = x0.device
        self.x0 = x0.detach().clone()
        with torch.no_grad():
            if self.root is not None and not any(m.training for m in self.root.modules()):
                # one plain pass first: a model that builds a cache on its first call (ALiBi
                # tables, rotary sin/cos) then makes the same calls when recording and replaying
                fn(self.x0)
            self.y0 = self._run(self.x0, "record").detach()
        self.out_shape = tuple(self.y0.shape)

    def _resolve_freeze(self, names: Sequence[str]) -> list[str]:
        out = []
        for n in names:
            if n.startswith("*"):
                hits = [k for k in self.modules_by_name if k.endswith(n[1:])]
                out.extend(hits)
                continue
            if n not in self.modules_by_name:
                from mechscope.errors import UnknownHookError

                raise UnknownHookError(n, [k for k in self.modules_by_name if k])
            out.append(n)
        return out

    def check_not_state(self, t: torch.Tensor, m: FreezeMode) -> None:
        for cand in (t, t._base):
            if cand is not None and id(cand) in self._state_ids:
                raise UnsupportedLayerError(
                    f"an in-place write of input-dependent data into the model's parameter/buffer "
                    f"'{self._state_ids[id(cand)]}' {m.where()}; a stateful model cannot be frozen")

    @contextlib.contextmanager
    def _instrument(self, mode: FreezeMode):
        handles = []
        saved_attrs = []
        try:
            if self.root is not None:
                for name, mod in self.modules_by_name.items():
                    handles.append(mod.register_forward_pre_hook(
                        lambda _m, _a, name=name: mode.module_stack.append(name)))
                    handles.append(mod.register_forward_hook(
                        lambda _m, _a, _o: (mode.module_stack.pop() if mode.module_stack else None, None)[1]))
                for name in self.freeze:
                    handles.append(self.modules_by_name[name].register_forward_hook(self._freeze_hook(name)))
            for mod, attr, kind in self.act_patches:
                orig = getattr(mod, attr)
                key = f"{self._name_of(mod)}.{attr}"
                saved_attrs.append((mod, attr, mod.__dict__.get(attr, None), attr in mod.__dict__))
                object.__setattr__(mod, attr, _ActPatch(self, key, orig, kind))
            yield
        finally:
            for h in handles:
                h.remove()
            for mod, attr, old, had in reversed(saved_attrs):
                if had:
                    object.__setattr__(mod, attr, old)
                else:
                    object.__delattr__(mod, attr)

    def _name_of(self, mod: nn.Module) -> str:
        for n, m in self.modules_by_name.items():
            if m is mod:
                return n
        return type(mod).__name__

    def _freeze_hook(self, name: str):
        def hook(_mod, _args, output):
            m = self._mode
            k = m.hook_counts.get(name, 0)
            m.hook_counts[name] = k + 1
            with m.quiet():
                if m.phase == "record":
                    self.tape.hooks[(name, k)] = _clone(output)
                    return _clone(output)
                if (name, k) not in self.tape.hooks:
                    raise ReplayError(f"frozen module {name!r} was called more often than on x0")
                return _clone(self.tape.hooks[(name, k)])

        return hook

    def _run(self, v: torch.Tensor, phase: str) -> torch.Tensor:
        """One pass. ``v`` has shape ``in_shape``; returns ``out_shape``."""
        mode = FreezeMode(self, phase)
        prev, self._mode = self._mode, mode
        try:
            with self._instrument(mode):
                x = v.clone()
                mode.set_taint(x, LINEAR)
                with mode:
                    out = self.fn(x)
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                raise ConfigError(f"the linearized function must return one floating tensor; found "
                                  f"{type(out).__name__}; pass a readout that selects it")
            t = mode.taint(out)
            if t.kind == _X:
                raise UnsupportedLayerError(f"the output depends non-linearly on the input through {t.reason}")
            if t.kind == _P:
                raise UnsupportedLayerError(f"the output is a softmax of the input: {t.reason}")
            if phase == "record":
                self.tape.n_calls = mode.n
                self.tape.output_const = t.kind == _C
            elif mode.n != self.tape.n_calls:
                raise ReplayError(f"the replay made {mode.n} torch calls, the pass on x0 {self.tape.n_calls}; "
                                  "control flow diverged")
            if t.kind == _C and phase == "linear":
                out = torch.zeros_like(out)
            return out
        finally:
            self._mode = prev

    def affine(self, v: torch.Tensor) -> torch.Tensor:
        """``A v + c`` for one input ``v`` of shape ``in_shape``."""
        return self._run(v, "affine")

    def linear(self, v: torch.Tensor) -> torch.Tensor:
        """``A v`` for one input ``v`` of shape ``in_shape``."""
        return self._run(v, "linear")


# products and quotients with a frozen multiplier, known non-linear functions (registered on import)
from mechscope.linear import multipliers as _multipliers  # noqa: E402,F401
