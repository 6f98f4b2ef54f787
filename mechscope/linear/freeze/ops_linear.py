"""Handlers of ops that are linear (or constant, or a decision) as they are.

Structural queries (shapes, dtypes), unary linear ops whose data is the first argument (views,
indexing, reductions by sum / mean, average pooling, interpolation, padding modes), ``detach``,
factories (``zeros_like`` & co.), decisions (comparisons, ``argmax``, rounding, integer casts:
recorded on ``x0`` and replayed), ops linear jointly in their data arguments (``add``, ``cat``,
``where``, ``scatter``, ``__setitem__``...), ``copy_`` / ``fill_`` and ``pad``. In the ``linear``
phase the additive constants among the data arguments are dropped. Products and quotients are in
:mod:`~mechscope.linear.freeze.ops_products`.
"""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten

from mechscope.linear.freeze.calls import _arg, _call, _Call, _is_float, _register, _tensors, _with_arg
from mechscope.linear.freeze.mode import _STRUCTURAL, _zero_base
from mechscope.linear.freeze.taints import _C, _DECIDE, _L, _MARKED, _X, CONST, _join_add


def _h_structural(m, c):
    return _call(c), _MARKED  # never re-mark: ``x._base`` must keep its own taint


_register(_STRUCTURAL, _h_structural)

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
        where = args if isinstance(key, int) else kwargs  # a positional slot (list) or a keyword (dict)
        if i is None:
            where[key] = zero
        else:
            seq = list(where[key])
            seq[i] = zero
            where[key] = seq
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
