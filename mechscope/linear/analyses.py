"""Analyses of an :class:`~mechscope.linear.affine_map.AffineMap` (Navarrete Michelini et al. 2019):

* :func:`pixel_votes` — for each output ``k``, ``A_k ⊙ x0`` (row ``k`` times the input): how much
  each input pixel votes for that output; ``votes_k.sum() + c_k == y_k``.
* :func:`bias_share` — how much of each output is due to the biases ``c`` rather than ``A x0``.
* :func:`basis_images` — columns ``A e_j`` for input pixels ``j`` (an image-to-image model's
  impulse responses); :func:`filter_rows` — rows ``A^T e_i`` for output pixels ``i`` (the
  "filter" that computes output ``i``).
* :func:`token_attribution` — for a transformer map ``[pos, d_model] -> scalar``, the
  contribution ``(A ⊙ x0).sum(-1)`` of each token position.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mechscope.errors import ConfigError
from mechscope.linear.affine_map import AffineMap


@dataclass
class PixelVotes:
    """votes: ``[n_out, *in_shape]`` = ``A_k ⊙ x0``; bias, output: ``[n_out]`` (``c_k``, ``y_k``);
    outputs: the flat output indices ``k``."""

    votes: torch.Tensor
    bias: torch.Tensor
    output: torch.Tensor
    outputs: list[int]

    def residual(self) -> float:
        """``max_k |sum(votes_k) + c_k - y_k|`` (zero up to float error for an exact map)."""
        recon = self.votes.flatten(1).sum(1) + self.bias
        return float((recon - self.output).abs().max())


def _x0(amap: AffineMap) -> torch.Tensor:
    if amap.x0 is None:
        raise ConfigError("this analysis needs the map's x0 (the input it was frozen at); found none")
    return amap.x0


def pixel_votes(amap: AffineMap, outputs: list[int] | None = None) -> PixelVotes:
    """Per-output pixel votes ``A_k ⊙ x0`` for flat output indices ``outputs`` (default: all, up
    to 64)."""
    x0 = _x0(amap)
    if outputs is None:
        if amap.out_numel > 64:
            raise ConfigError(f"the map has {amap.out_numel} outputs; pass the output indices to analyse")
        outputs = list(range(amap.out_numel))
    rows = amap.rows(outputs)                                   # [n, *in_shape]
    votes = rows * x0
    flat_c = amap.bias.reshape(-1)
    y = (amap.apply(x0) + amap.bias).reshape(-1) if amap.y0 is None else amap.y0.reshape(-1)
    idx = torch.tensor(outputs)
    return PixelVotes(votes=votes, bias=flat_c[idx], output=y[idx], outputs=list(outputs))


@dataclass
class BiasShare:
    """linear: ``A x0`` and bias: ``c`` (both ``[*out_shape]``); share: ``|c| / (|A x0| + |c|)``
    per output in [0, 1]; total: ``sum|c| / (sum|A x0| + sum|c|)``; fraction: ``c / y`` per output
    (signed; may exceed 1 when the two parts cancel)."""

    linear: torch.Tensor
    bias: torch.Tensor
    share: torch.Tensor
    total: float
    fraction: torch.Tensor

    def summary(self) -> dict:
        return {"total_bias_share": self.total, "mean_bias_share": float(self.share.mean()),
                "max_bias_share": float(self.share.max()),
                "norm_linear_part": float(self.linear.norm()), "norm_bias": float(self.bias.norm())}


def bias_share(amap: AffineMap) -> BiasShare:
    """How much of ``f(x0) = A x0 + c`` comes from the biases."""
    x0 = _x0(amap)
    lin = amap.apply(x0)
    c = amap.bias
    a, b = lin.abs(), c.abs()
    share = b / (a + b).clamp_min(1e-30)
    total = float(b.sum() / (a.sum() + b.sum()).clamp_min(1e-30))
    y = lin + c
    fraction = c / torch.where(y.abs() > 1e-12, y, torch.full_like(y, 1e-12))
    return BiasShare(linear=lin, bias=c, share=share, total=total, fraction=fraction)


def spatial_positions(shape: tuple[int, ...], grid: int = 3) -> list[tuple[int, ...]]:
    """A ``grid x grid`` set of multi-indices spread over the last two (spatial) dims of ``shape``
    (other dims at 0)."""
    if len(shape) < 2:
        raise ConfigError(f"expected an image-like shape (..., H, W); found {shape}")
    H, W = shape[-2], shape[-1]
    rows = [round((i + 0.5) * H / grid - 0.5) for i in range(grid)]
    cols = [round((j + 0.5) * W / grid - 0.5) for j in range(grid)]
    lead = (0,) * (len(shape) - 2)
    return [(*lead, r, c) for r in rows for c in cols]


def basis_images(amap: AffineMap, positions: list | None = None, grid: int = 3) -> tuple[list, torch.Tensor]:
    """Columns of ``A`` for input positions (multi-indices into ``in_shape``; default a grid):
    ``(positions, [n, *out_shape])`` — the output produced by a unit impulse at each position."""
    positions = positions if positions is not None else spatial_positions(amap.in_shape, grid)
    return positions, amap.columns(positions)


def filter_rows(amap: AffineMap, positions: list | None = None, grid: int = 3) -> tuple[list, torch.Tensor]:
    """Rows of ``A`` for output positions (default a grid): ``(positions, [n, *in_shape])`` — the
    linear filter over the input that computes each output."""
    positions = positions if positions is not None else spatial_positions(amap.out_shape, grid)
    return positions, amap.rows(positions)


def token_attribution(amap: AffineMap) -> dict:
    """For a map from ``[pos, d_model]`` to a scalar: per-position contributions
    ``(A ⊙ x0).sum(-1)`` (``[pos]``), their sum, the bias and the output."""
    x0 = _x0(amap)
    if amap.out_numel != 1 or len(amap.in_shape) != 2:
        raise ConfigError(f"token_attribution expects a map [pos, d_model] -> scalar; found "
                          f"{amap.in_shape} -> {amap.out_shape}")
    row = amap.row(0)                                            # [pos, d_model]
    contrib = (row * x0).sum(-1)
    return {"row": row, "contribution": contrib, "linear_part": float(contrib.sum()),
            "bias": float(amap.bias.reshape(-1)[0]),
            "output": float(amap.y0.reshape(-1)[0]) if amap.y0 is not None else None}
