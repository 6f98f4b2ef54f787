"""Handlers of products, quotients and the composite ops written with them.

Products (``mul``, ``matmul``, ``einsum``, ``linear``, convolutions, ``bilinear``...) are linear in
each factor separately: one input-dependent factor keeps the result linear (its bias argument is
dropped in the ``linear`` phase); two make a known non-linear ``POISON`` (rank
``KNOWN_NONLINEAR``), and so does a division by an input-dependent tensor
(:mod:`mechscope.linear.freeze.ops_multipliers` re-registers ``mul`` / ``div`` to freeze one factor instead).
``addmm``, ``addcmul`` and friends are evaluated as their simpler ops with the mode active.
"""

from __future__ import annotations

from typing import Any

import torch

from mechscope.linear.freeze.calls import _arg, _call, _Call, _register, _with_arg
from mechscope.linear.freeze.taints import (_C, _DECIDE, _L, _MARKED, _P, CONST, KNOWN_NONLINEAR, LINEAR, Taint,
                                            _worst_poison)


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
    :mod:`mechscope.linear.freeze.ops_multipliers`), unless an unknown op's poison is involved."""
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
