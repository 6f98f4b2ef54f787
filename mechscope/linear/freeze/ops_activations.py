"""Handlers of elementwise non-linearities and selections, frozen at ``x0``.

Smooth activations (GELU, SiLU, sigmoid, tanh...) become ``g * x + b`` with the secant gain
``g = (f(x0) - f(0)) / x0`` (``_secant_gain``); piecewise-linear ones (ReLU, LeakyReLU, clamp,
hardtanh, hardsigmoid, abs...) keep their local linear piece (``_piecewise``); ``glu`` freezes its
sigmoid gate. Selections freeze which element wins: ``maximum`` / ``minimum`` masks, ``max`` /
``min`` / ``amax`` / ``topk`` / ``sort`` / max-pool indices. Dropout is the identity in eval mode
(random in training: ``POISON``); a ``softmax`` output is a frozen ``PATTERN``, legal only as
attention weights.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from mechscope.linear.freeze.calls import _arg, _bind, _call, _Call, _register, _tensors
from mechscope.linear.freeze.taints import (_C, _L, _P, _X, ACTIVATION, GATE, LINEAR, Taint, _join_add,
                                            _pattern)


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


def _selection_input(m, c):
    """``(x, None)`` when the data argument ``x`` of a selecting op (max, top-k, max-pool...) is
    ``LINEAR``; else ``(x, (output, taint))`` to return as is: a poison passes on, and a frozen
    softmax output cannot be selected from."""
    x = c.args[0] if c.args else c.kwargs["input"]
    tx = m.taint(x)
    if tx.kind == _L:
        return x, None
    return x, (_call(c), tx if tx.kind == _X else m.poison(f"{c.name} of a frozen softmax output"))


def _h_max(m, c):
    """max / min: full reduction, along a dim (values, indices), or elementwise of two tensors."""
    other = _arg(c, 1, "other")
    if isinstance(other, torch.Tensor):
        return _h_minmax_binary(m, c)
    x, refused = _selection_input(m, c)
    if refused:
        return refused
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
    x, refused = _selection_input(m, c)
    if refused:
        return refused
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
    x, refused = _selection_input(m, c)
    if refused:
        return refused
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
    x, refused = _selection_input(m, c)
    if refused:
        return refused
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
