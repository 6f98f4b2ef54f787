"""Sparse kernels for the TopK family: the dense encoder matmul is the only dense work.

* :func:`select_topk` runs the encoder in row chunks (each chunk's ``[rows, n_latents]``
  pre-activations stay small enough to be reused by the allocator and to stay in cache)
  and keeps the top ``k`` per row; no gradient, no ``[batch, n_latents]`` tensor.
* :func:`gather_preacts` makes the kept pre-activations differentiable:
  ``pre[n, j] = x[n] . W_enc[idx[n, j]] + b_enc[idx[n, j]]``. Its backward touches only
  the active (row, latent) pairs.
* :func:`sparse_decode` sums the ``k`` active decoder rows per token (``embedding_bag``);
  its backward computes ``grad W_dec`` over the active rows and ``grad acts`` as a sampled
  dense-dense product (SDDMM).

Both backward passes group the active pairs by latent (:func:`latent_order`, one sort per
step) so the weight gradients are latent-major ``embedding_bag`` sums: no scatter, no atomics,
deterministic.
"""

from __future__ import annotations

import functools
import warnings
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from mechscope.errors import ConfigError

CHUNK_ELEMENTS = 1 << 21  # pre-activation elements per encoder chunk on CPU (8 MB in fp32)


class LatentOrder(NamedTuple):
    """The active (row, slot) pairs of an ``idx [N, k]`` grouped by latent."""

    perm: Tensor  # [N*k] flat positions in idx, sorted by latent (stable)
    rows: Tensor  # [N*k] the row of each sorted pair
    offsets: Tensor  # [n_latents] where each latent's run starts in perm


def latent_order(idx: Tensor, n_latents: int) -> LatentOrder:
    flat = idx.reshape(-1)
    perm = torch.argsort(flat, stable=True)
    counts = torch.bincount(flat, minlength=n_latents)
    offsets = torch.cumsum(counts, 0) - counts
    return LatentOrder(perm, perm // idx.shape[-1], offsets)


# Training steps on CPUs with AMX-BF16 pick top-k *candidates* with a bf16 encoder matmul (3x the
# fp32 speed there) and then rank them by exact fp32 pre-activations; None: when the CPU has
# AMX-BF16, False: never, True: always (on CPU, fp32). See select_topk.
BF16_CANDIDATES: bool | None = None
BF16_EXTRA = 8  # candidates beyond k, re-ranked in fp32


def bf16_candidates_enabled(x: Tensor) -> bool:
    """Whether :func:`select_topk` with ``candidates="auto"`` uses bf16 candidates for ``x``."""
    if x.device.type != "cpu" or x.dtype != torch.float32:
        return False
    if BF16_CANDIDATES is not None:
        return bool(BF16_CANDIDATES)
    return _cpu_has_amx_bf16()


@functools.cache
def _cpu_has_amx_bf16() -> bool:
    probe = getattr(torch._C._cpu, "_get_cpu_capability", None)  # private: absent in some torch builds
    return bool(probe is not None and probe().get("amx_bf16", False))


@torch.no_grad()
def select_topk(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, chunk: int | None = None, *,
                candidates: str = "exact") -> tuple[Tensor, Tensor]:
    """Top-``k`` encoder pre-activations per row, without building ``[N, n_latents]``.

    Args:
        x: ``[N, d_in]``; W_enc: ``[n_latents, d_in]``; b_enc: ``[n_latents]``.
        candidates: ``"exact"`` — fp32 matmul and top-k; ``"auto"`` — when
            :func:`bf16_candidates_enabled`, the ``k + BF16_EXTRA`` largest bf16 pre-activations
            are candidates and the ``k`` largest of their exact fp32 values are kept. The values
            are exact either way; a latent is chosen differently only if bf16 rounding moves it
            past ``BF16_EXTRA`` others. Over the 40 steps of benchmarks/sae_training.py (163,840
            rows) that happened once (the 33rd-largest pre-activation, 0.5100, kept instead of
            the 32nd, 0.5106); 5 more rows broke an fp32 tie (equal to 1e-6) the other way.
            The training forward uses ``"auto"``; ``encode`` stays exact.
    Returns:
        ``(values [N, k], indices [N, k])``, indices ascending within each row.
    """
    n, m = x.shape[0], W_enc.shape[0]
    k = min(k, m)
    if chunk is None:
        chunk = n if x.is_cuda else max(16, CHUNK_ELEMENTS // m)
    if candidates == "auto" and m >= 4 * (k + BF16_EXTRA) and bf16_candidates_enabled(x):
        return _select_topk_bf16(x, W_enc, b_enc, k, chunk)
    if candidates not in ("exact", "auto"):
        raise ConfigError(f"candidates must be 'exact' or 'auto'; found {candidates!r}")
    vals = torch.empty(n, k, dtype=x.dtype, device=x.device)
    idx = torch.empty(n, k, dtype=torch.long, device=x.device)
    wt = W_enc.t()
    for s in range(0, n, chunk):
        pre = torch.addmm(b_enc, x[s : s + chunk], wt)
        torch.topk(pre, k, dim=1, sorted=False, out=(vals[s : s + chunk], idx[s : s + chunk]))
    idx, perm = idx.sort(dim=1)
    return vals.gather(1, perm), idx


def _select_topk_bf16(x: Tensor, W_enc: Tensor, b_enc: Tensor, k: int, chunk: int) -> tuple[Tensor, Tensor]:
    n, kc = x.shape[0], k + BF16_EXTRA
    xb, wt, bb = x.to(torch.bfloat16), W_enc.to(torch.bfloat16).t(), b_enc.to(torch.bfloat16)
    cand = torch.empty(n, kc, dtype=torch.long, device=x.device)
    scratch = torch.empty(n, kc, dtype=torch.bfloat16, device=x.device)
    for s in range(0, n, chunk):
        pre = torch.addmm(bb, xb[s : s + chunk], wt)
        torch.topk(pre, kc, dim=1, sorted=False, out=(scratch[s : s + chunk], cand[s : s + chunk]))
    cand = cand.sort(dim=1).values
    exact = _sddmm(x, W_enc, cand).add_(b_enc[cand])  # [n, kc] fp32 pre-activations of the candidates
    vals, j = exact.topk(k, dim=1, sorted=False)
    idx, perm = cand.gather(1, j).sort(dim=1)
    return vals.gather(1, perm), idx


def _sddmm(g: Tensor, W: Tensor, idx: Tensor) -> Tensor:
    """``out[n, j] = g[n] . W[idx[n, j]]`` for ``g [N, d]``, ``W [M, d]``, ``idx [N, k]`` (rows ascending)."""
    n, k = idx.shape
    if g.device.type == "cpu" and g.dtype in (torch.float32, torch.float64):
        crow = torch.arange(0, n * k + 1, k, device=g.device)
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(crow, idx.reshape(-1), torch.zeros(n * k, dtype=g.dtype), (n, W.shape[0]), check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, g, W.t(), beta=0.0).values().view(n, k)
    step = max(1, (1 << 24) // max(1, k * W.shape[1]))
    return torch.cat([torch.bmm(F.embedding(idx[s : s + step], W), g[s : s + step].unsqueeze(2)).squeeze(2) for s in range(0, n, step)])


def _rows_grad(order: LatentOrder, weights: Tensor, src: Tensor, n_latents: int) -> Tensor:
    """``grad[i] = sum over pairs (n, j) with idx[n, j] == i of weights[n, j] * src[n]`` -> ``[n_latents, d]``."""
    w = weights.reshape(-1)[order.perm].to(src.dtype)
    return F.embedding_bag(order.rows, src, order.offsets, mode="sum", per_sample_weights=w)


class _GatherPreacts(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_enc, b_enc, idx, values, order):
        ctx.save_for_backward(x, W_enc, idx)
        ctx.order = order
        return values.clone()

    @staticmethod
    def backward(ctx, g):
        x, W_enc, idx = ctx.saved_tensors
        g = g.contiguous()
        gx = gW = gb = None
        if ctx.needs_input_grad[0]:
            gx = F.embedding_bag(idx, W_enc, mode="sum", per_sample_weights=g.to(W_enc.dtype))
        if ctx.needs_input_grad[1]:
            gW = _rows_grad(ctx.order, g, x, W_enc.shape[0]).to(W_enc.dtype)
        if ctx.needs_input_grad[2]:
            gb = torch.zeros(W_enc.shape[0], dtype=W_enc.dtype, device=g.device).index_add_(0, idx.reshape(-1), g.reshape(-1).to(W_enc.dtype))
        return gx, gW, gb, None, None, None


class _SparseDecode(torch.autograd.Function):
    @staticmethod
    def forward(ctx, acts, idx, W_dec, order):
        ctx.save_for_backward(acts, idx, W_dec)
        ctx.order = order
        return F.embedding_bag(idx, W_dec, mode="sum", per_sample_weights=acts.to(W_dec.dtype))

    @staticmethod
    def backward(ctx, g):
        acts, idx, W_dec = ctx.saved_tensors
        g = g.contiguous()
        ga = gW = None
        if ctx.needs_input_grad[0]:
            ga = _sddmm(g, W_dec, idx).to(acts.dtype)
        if ctx.needs_input_grad[2]:
            gW = _rows_grad(ctx.order, acts, g, W_dec.shape[0]).to(W_dec.dtype)
        return ga, None, gW, None


def gather_preacts(x: Tensor, W_enc: Tensor, b_enc: Tensor, idx: Tensor, values: Tensor, order: LatentOrder) -> Tensor:
    """Differentiable ``[N, k]`` pre-activations at ``idx`` (``values`` from :func:`select_topk`)."""
    return _GatherPreacts.apply(x, W_enc, b_enc, idx, values, order)


def sparse_decode(acts: Tensor, idx: Tensor, W_dec: Tensor, order: LatentOrder | None = None) -> Tensor:
    """``sum_j acts[n, j] * W_dec[idx[n, j]]`` -> ``[N, d_out]`` (no bias)."""
    if order is None and torch.is_grad_enabled() and W_dec.requires_grad:
        order = latent_order(idx, W_dec.shape[0])
    return _SparseDecode.apply(acts, idx, W_dec, order)


def densify(acts: Tensor, idx: Tensor, n_latents: int) -> Tensor:
    """``[..., k]`` values at ``[..., k]`` indices -> dense ``[..., n_latents]`` codes."""
    return torch.zeros(*acts.shape[:-1], n_latents, dtype=acts.dtype, device=acts.device).scatter_(-1, idx, acts)
