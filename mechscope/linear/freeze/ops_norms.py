"""Handlers of normalisations: the scale ``1/sigma(x0)`` is frozen.

Layer, RMS, group, batch and instance norms and ``F.normalize`` record ``1/sigma`` on ``x0``
(``_apply_norm``: ``s`` has the input's shape with the normalised dims reduced to size 1) and
replay ``(x - mean(x)) * s`` (the mean too is frozen with ``norm_center="frozen"``), then the
weight and, outside the ``linear`` phase, the bias. Batch norm with running statistics is affine
already.
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F

from mechscope.linear.freeze.calls import _bind, _call, _register
from mechscope.linear.freeze.taints import _C, _L, _X, LINEAR


# -- norms: the scale 1/sigma(x0) is frozen


def _norm_refusal(m, c, x, *params) -> tuple | None:
    """``None`` when a norm can be frozen: its input ``x`` is ``LINEAR`` and its weight, bias and
    statistics ``params`` are constants; else ``(output, taint)`` to return as is."""
    tx = m.taint(x)
    if tx.kind != _L:
        return _call(c), (tx if tx.kind == _X else m.poison(f"{c.name} of a softmax output"))
    for p in params:
        if isinstance(p, torch.Tensor) and m.taint(p).kind != _C:
            return _call(c), m.poison(f"{c.name} with input-dependent weight/bias/statistics")
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
    if refused := _norm_refusal(m, c, x, p["weight"], p["bias"]):
        return refused
    dims = tuple(range(-len(tuple(p["normalized_shape"])), 0))
    y = _apply_norm(m, c, x, dims, p["eps"], p["weight"], p["bias"], True, None)
    return (_call(c) if y is None else y), LINEAR


def _h_rms_norm(m, c):
    p = _bind(lambda input, normalized_shape, weight=None, eps=None: None, c)
    x = p["input"]
    if refused := _norm_refusal(m, c, x, p["weight"]):
        return refused
    eps = p["eps"] if p["eps"] is not None else torch.finfo(x.dtype).eps
    dims = tuple(range(-len(tuple(p["normalized_shape"])), 0))
    y = _apply_norm(m, c, x, dims, eps, p["weight"], None, False, None)
    return (_call(c) if y is None else y), LINEAR


def _h_group_norm(m, c):
    p = _bind(lambda input, num_groups, weight=None, bias=None, eps=1e-5, cudnn_enabled=True: None, c)
    x = p["input"]
    if refused := _norm_refusal(m, c, x, p["weight"], p["bias"]):
        return refused
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
    if refused := _norm_refusal(m, c, x, p["weight"], p["bias"], p["running_mean"], p["running_var"]):
        return refused
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
    if refused := _norm_refusal(m, c, x):
        return refused
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
