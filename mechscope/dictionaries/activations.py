"""The four latent activations.

* ReLU: ``relu(pre)``; trained with a decoder-norm-weighted L1 penalty.
* TopK: keep each row's ``k`` largest pre-activations (then ReLU).
* BatchTopK: keep the batch's ``batch * k`` largest activations, so rows may use more or
  fewer than ``k``; at inference a learned threshold replaces the batch (it is a JumpReLU
  with one shared threshold).
* JumpReLU: ``pre * (pre > threshold)`` with per-latent thresholds, trained through a
  straight-through estimator: the step's derivative is replaced by a rectangle kernel of
  width ``bandwidth`` around the threshold (Rajamanoharan et al. 2024).
"""

from __future__ import annotations

import torch
from torch import Tensor

BATCHTOPK_CANDIDATES = 4  # BatchTopK picks among each row's top (4 k) pre-activations


def _rectangle(u: Tensor) -> Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLU(torch.autograd.Function):
    """``pre * H(pre - theta)``; d/dpre = H, d/dtheta = -(theta / eps) K((pre - theta) / eps)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return pre * (pre > threshold)

    @staticmethod
    def backward(ctx, g):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        g_pre = g * (pre > threshold)
        g_theta = -(threshold / eps) * _rectangle((pre - threshold) / eps) * g
        return g_pre, g_theta.reshape(-1, threshold.shape[-1]).sum(0), None


class _Step(torch.autograd.Function):
    """``H(pre - theta)`` for the L0 penalty; gradient flows to theta only: -(1/eps) K(.)."""

    @staticmethod
    def forward(ctx, pre, threshold, bandwidth: float):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, g):
        pre, threshold = ctx.saved_tensors
        eps = ctx.bandwidth
        g_theta = -(1.0 / eps) * _rectangle((pre - threshold) / eps) * g
        return None, g_theta.reshape(-1, threshold.shape[-1]).sum(0), None


def jumprelu(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """JumpReLU with the straight-through estimator (plain masking when no grad is needed)."""
    if torch.is_grad_enabled() and (pre.requires_grad or threshold.requires_grad):
        return _JumpReLU.apply(pre, threshold, float(bandwidth))
    return pre * (pre > threshold)


def step(pre: Tensor, threshold: Tensor, bandwidth: float) -> Tensor:
    """Heaviside step ``pre > threshold`` as a float, with the STE gradient to ``threshold``."""
    if torch.is_grad_enabled() and threshold.requires_grad:
        return _Step.apply(pre, threshold, float(bandwidth))
    return (pre > threshold).to(pre.dtype)


def relu(pre: Tensor) -> Tensor:
    return torch.relu(pre)


def topk(pre: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Dense ``[..., n]`` pre-activations -> ``(values [..., k], indices [..., k])``, ReLU applied."""
    vals, idx = pre.topk(min(k, pre.shape[-1]), dim=-1, sorted=False)
    return vals.relu(), idx


def batchtopk_mask(acts: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Which of the candidate activations ``acts [N, c]`` (ReLU applied) are among the batch's
    top ``N * k``; returns ``(mask [N, c], threshold)`` where threshold is the smallest kept
    positive value (the running estimate for inference is built from it)."""
    flat = acts.detach().reshape(-1)
    n_keep = min(flat.numel(), acts.shape[0] * k)
    kth = flat.topk(n_keep, sorted=False).values.min()
    mask = (acts >= kth) & (acts > 0)
    kept = acts.detach()[mask]
    threshold = kept.min() if kept.numel() else acts.new_zeros(())
    return mask, threshold


def threshold_relu(pre: Tensor, threshold: Tensor) -> Tensor:
    """Inference form of BatchTopK / JumpReLU: ``pre * (pre > threshold)`` (threshold >= 0)."""
    return pre * (pre > threshold)
