"""The ``Dictionary`` module: one class for SAEs, transcoders and skip-transcoders with any of
the four activations.

Parameters (``M = n_latents``)::

    W_enc [M, d_in]    b_enc [M]    W_dec [M, d_out]    b_dec [d_out]
    W_skip [d_out, d_in]            (skip_transcoder)
    threshold [M]                   (jumprelu: a parameter; batchtopk: a scalar buffer)

Encoding: ``pre = (x - b_dec) @ W_enc.T + b_enc`` (SAEs; transcoders encode ``x``), then the
activation. Decoding: ``z @ W_dec + b_dec`` (+ ``x @ W_skip.T``).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

from mechscope.dictionaries import activations as A
from mechscope.dictionaries import sparse as S
from mechscope.dictionaries.config import TOPK_FAMILY, DictionaryConfig
from mechscope.errors import ConfigError


class ForwardOutput(NamedTuple):
    """Everything one forward pass computes; every loss term is named."""

    recon: Tensor  # [batch, d_out] reconstruction of the target
    latent_acts: Tensor  # [batch, k] active values (TopK family in training) or [batch, n_latents] codes
    latent_indices: Tensor | None  # [batch, k] latent ids, or None when latent_acts is dense
    mse: Tensor  # squared error summed over dims, mean over rows
    fvu: Tensor  # squared error / total variance of the target (1 - explained variance)
    sparsity_loss: Tensor  # L1 (relu) or L0 (jumprelu) penalty, coefficient applied; 0 for TopK
    auxk_loss: Tensor  # AuxK reconstruction of the residual by dead latents (TopK family)
    total: Tensor  # fvu + sparsity_loss + auxk_coeff * auxk_loss: what training minimises
    l0: Tensor  # mean number of active latents per row


def _dtype(name: str) -> torch.dtype:
    return getattr(torch, name)


class Dictionary(nn.Module):
    """A sparse dictionary (see module docstring). Build with a :class:`DictionaryConfig`;
    ``seed`` fixes the initial weights."""

    def __init__(self, cfg: DictionaryConfig, *, seed: int = 0, device: str | torch.device | None = None):
        super().__init__()
        if not isinstance(cfg, DictionaryConfig):
            raise ConfigError(f"expected a DictionaryConfig, found {type(cfg).__name__}")
        self.cfg = cfg
        m, d_in, d_out = cfg.n_latents, cfg.d_in, cfg.d_out
        dtype = _dtype(cfg.dtype)
        gen = torch.Generator().manual_seed(seed)
        W_dec = torch.randn(m, d_out, generator=gen, dtype=torch.float64)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        if cfg.kind == "sae":
            W_enc = W_dec.clone()  # tied initialisation
        else:
            W_enc = torch.randn(m, d_in, generator=gen, dtype=torch.float64)
            W_enc /= W_enc.norm(dim=1, keepdim=True)
        # Encoder rows of norm sqrt(1/3), the scale of PyTorch's default Linear init (which
        # sparsify uses): on the SAE benchmark's planted data, FVU after 40 TopK steps is
        # 0.492 at this norm, 0.498 at 0.25 and 0.535 at 1 (benchmarks/sae_training.py).
        W_enc *= cfg.encoder_init_norm
        self.W_enc = nn.Parameter(W_enc.to(dtype))
        self.b_enc = nn.Parameter(torch.zeros(m, dtype=dtype))
        self.W_dec = nn.Parameter(W_dec.to(dtype))
        self.b_dec = nn.Parameter(torch.zeros(d_out, dtype=dtype))
        if cfg.kind == "skip_transcoder":
            self.W_skip = nn.Parameter(torch.zeros(d_out, d_in, dtype=dtype))
        if cfg.activation == "jumprelu":
            self.threshold = nn.Parameter(torch.full((m,), cfg.jumprelu_threshold, dtype=dtype))
            self.register_buffer("bandwidth", torch.tensor(cfg.jumprelu_bandwidth, dtype=torch.float64))
        elif cfg.activation == "batchtopk":
            self.register_buffer("threshold", torch.zeros((), dtype=dtype))
        if device is not None:
            self.to(device)

    # -- facts ---------------------------------------------------------------------------
    @property
    def n_latents(self) -> int:
        return self.cfg.n_latents

    @property
    def device(self) -> torch.device:
        return self.W_enc.device

    def __repr__(self) -> str:
        c = self.cfg
        hooks = c.hook_in if c.kind == "sae" else f"{c.hook_in} -> {c.hook_out}"
        k = f", k={c.k}" if c.activation in TOPK_FAMILY else ""
        return f"Dictionary({c.kind}, {c.activation}{k}, {c.d_in} -> {c.n_latents} -> {c.d_out}, hooks={hooks})"

    def heads(self) -> Tensor:
        """Per-head decoder blocks of an attention-output (``hook_z``) SAE:
        ``[n_latents, n_heads, d_head]``. ``heads().norm(dim=-1)`` is each latent's weight on
        each head."""
        shape = self.cfg.act_shape
        if self.cfg.kind != "sae" or shape is None or len(shape) != 2:
            raise ConfigError(f"heads() needs an SAE on a [n_heads, d_head] hook (e.g. attn.hook_z); this dictionary has kind={self.cfg.kind!r}, act_shape={shape}")
        return self.W_dec.detach().view(self.n_latents, *shape)

    # -- shapes ----------------------------------------------------------------------------
    def _flat_in(self, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
        """``[..., d_in]`` or ``[..., *act_shape]`` -> ``([rows, d_in], leading shape)``."""
        shape = self.cfg.act_shape
        if shape and len(shape) > 1 and tuple(x.shape[-len(shape):]) == tuple(shape):
            lead = tuple(x.shape[: -len(shape)])
        elif x.shape[-1] == self.cfg.d_in:
            lead = tuple(x.shape[:-1])
        elif (shape is None and (self.cfg.hook_in or "").endswith("hook_z") and x.dim() >= 3
              and x.shape[-2] * x.shape[-1] == self.cfg.d_in):  # [..., n_heads, d_head] (e.g. a SAELens hook_z SAE)
            lead = tuple(x.shape[:-2])
        else:
            want = f"[..., {self.cfg.d_in}]" + (f" or [..., {', '.join(map(str, shape))}]" if shape else "")
            raise ConfigError(f"expected input of shape {want}, found {list(x.shape)}")
        return x.reshape(-1, self.cfg.d_in).to(self.W_enc.dtype), lead

    # -- inference -------------------------------------------------------------------------
    def _x_enc(self, x: Tensor) -> Tensor:
        return x - self.b_dec if self.cfg.apply_b_dec_to_input else x

    def encode(self, x: Tensor) -> Tensor:
        """Latent codes ``[..., n_latents]`` for ``x [..., d_in]`` (or ``[..., *act_shape]``)."""
        flat, lead = self._flat_in(x)
        xe = self._x_enc(flat)
        act = self.cfg.activation
        if act == "topk" or (act == "batchtopk" and self.training):
            k = self.cfg.k if act == "topk" else min(self.n_latents, A.BATCHTOPK_CANDIDATES * self.cfg.k)
            vals, idx = S.select_topk(xe, self.W_enc, self.b_enc, k)
            vals = vals.relu()
            if act == "batchtopk":
                mask, _ = A.batchtopk_mask(vals, self.cfg.k)
                vals = vals * mask
            z = S.densify(vals, idx, self.n_latents)
        else:
            pre = torch.addmm(self.b_enc, xe, self.W_enc.t())
            if act == "relu":
                z = pre.relu()
            else:  # jumprelu, or batchtopk at inference
                z = pre.relu() * (pre > self.threshold)
        return z.reshape(*lead, self.n_latents)

    def encode_sparse(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """TopK only: ``(values [..., k], indices [..., k])`` without the dense codes."""
        if self.cfg.activation != "topk":
            raise ConfigError(f"encode_sparse needs activation='topk'; this dictionary uses {self.cfg.activation!r} (use encode)")
        flat, lead = self._flat_in(x)
        vals, idx = S.select_topk(self._x_enc(flat), self.W_enc, self.b_enc, self.cfg.k)
        return vals.relu().reshape(*lead, -1), idx.reshape(*lead, -1)

    def decode(self, z: Tensor) -> Tensor:
        """``[..., n_latents]`` codes -> ``[..., d_out]`` (the skip path is in :meth:`reconstruct`)."""
        if z.shape[-1] != self.n_latents:
            raise ConfigError(f"expected codes of shape [..., {self.n_latents}], found {list(z.shape)}")
        return z.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def reconstruct(self, x: Tensor) -> Tensor:
        """The dictionary's output for ``x``: the SAE reconstruction (shaped like ``x``) or
        the transcoder's prediction of ``hook_out`` (``[..., d_out]``)."""
        flat, lead = self._flat_in(x)
        out = self.decode(self.encode(flat))
        if self.cfg.kind == "skip_transcoder":
            out = out + flat @ self.W_skip.t()
        if self.cfg.kind == "sae" and x.dim() - len(lead) > 1:  # input came as [..., *act_shape]: answer in kind
            return out.reshape(x.shape)
        return out.reshape(*lead, self.cfg.d_out)

    # -- training forward ------------------------------------------------------------------
    def forward(self, x: Tensor, y: Tensor | None = None, *, dead_mask: Tensor | None = None,
                sparsity_scale: float = 1.0, auxk_coeff: float = 0.0) -> ForwardOutput:
        """Training / evaluation pass on flat rows.

        Args:
            x: ``[batch, d_in]`` input rows; y: ``[batch, d_out]`` target rows (transcoders; an
                SAE's target is ``x``).
            dead_mask: ``[n_latents]`` bool, latents considered dead (AuxK, TopK family).
            sparsity_scale: warmup factor for the L1 / L0 coefficient.
            auxk_coeff: weight of the AuxK loss in ``total``.
        """
        cfg = self.cfg
        if cfg.kind == "sae":
            y = x
        elif y is None:
            raise ConfigError(f"a {cfg.kind} needs a target batch y (rows of {cfg.hook_out or 'hook_out'})")
        x = x.to(self.W_enc.dtype)
        y = y.to(self.W_dec.dtype)
        xe = self._x_enc(x)
        centred = y - y.mean(0)
        total_var = centred.pow(2).sum().clamp_min(torch.finfo(y.dtype).tiny)
        zero = x.new_zeros(())
        sparsity, idx, order = zero, None, None
        sparse_path = cfg.activation == "topk" or (cfg.activation == "batchtopk" and self.training)
        if sparse_path:
            k = cfg.k if cfg.activation == "topk" else min(cfg.n_latents, A.BATCHTOPK_CANDIDATES * cfg.k)
            vals, idx = S.select_topk(xe.detach(), self.W_enc.detach(), self.b_enc.detach(), k,
                                      candidates="auto" if torch.is_grad_enabled() else "exact")
            order = S.latent_order(idx, cfg.n_latents) if torch.is_grad_enabled() else None
            acts = S.gather_preacts(xe, self.W_enc, self.b_enc, idx, vals, order).relu()
            if cfg.activation == "batchtopk":
                mask, thr = A.batchtopk_mask(acts, cfg.k)
                acts = acts * mask
                self._batch_threshold = thr  # the trainer folds it into the running threshold
            recon = S.sparse_decode(acts, idx, self.W_dec, order) + self.b_dec
        else:
            pre = torch.addmm(self.b_enc, xe, self.W_enc.t())
            if cfg.activation == "relu":
                acts = pre.relu()
                norms = self.W_dec.norm(dim=1)
                rms = (total_var / x.shape[0]).sqrt().detach()
                sparsity = cfg.l1_coeff * sparsity_scale * (acts * norms).sum(-1).mean() / rms
            elif cfg.activation == "jumprelu":
                bw = float(self.bandwidth)
                acts = A.jumprelu(pre, self.threshold, bw)
                sparsity = cfg.l0_coeff * sparsity_scale * A.step(pre, self.threshold, bw).sum(-1).mean()
            else:  # batchtopk in eval mode: the learned threshold
                acts = A.threshold_relu(pre, self.threshold)
            recon = acts @ self.W_dec + self.b_dec
        if cfg.kind == "skip_transcoder":
            recon = recon + x @ self.W_skip.t()
        err = y - recon
        sq = err.pow(2).sum()
        fvu = sq / total_var
        auxk = zero
        if sparse_path and dead_mask is not None and auxk_coeff > 0 and bool(dead_mask.any()):
            auxk = self._auxk(xe, err.detach(), total_var, dead_mask)
        l0 = (acts > 0).sum(-1).to(torch.float32).mean()
        total = fvu + sparsity + auxk_coeff * auxk
        return ForwardOutput(recon, acts, idx, sq / x.shape[0], fvu, sparsity, auxk, total, l0)

    def _auxk(self, xe: Tensor, residual: Tensor, total_var: Tensor, dead_mask: Tensor) -> Tensor:
        """AuxK (Gao et al. 2024): the top ``k_aux = d_out / 2`` dead latents reconstruct the
        residual; scaled down when fewer latents are dead. Encodes only the dead columns."""
        dead = dead_mask.nonzero().squeeze(1)
        k_aux = min(max(1, self.cfg.d_out // 2), dead.numel())
        scale = min(dead.numel() / max(1, self.cfg.d_out // 2), 1.0)
        W_dead = self.W_enc.detach().index_select(0, dead)
        vals, local = S.select_topk(xe.detach(), W_dead, self.b_enc.detach().index_select(0, dead), k_aux)
        idx = dead[local]
        if k_aux > 1:
            idx, perm = idx.sort(dim=1)
            vals = vals.gather(1, perm)
        order = S.latent_order(idx, self.n_latents) if torch.is_grad_enabled() else None
        acts = S.gather_preacts(xe, self.W_enc, self.b_enc, idx, vals, order).relu()
        e_hat = S.sparse_decode(acts, idx, self.W_dec, order)
        return scale * (e_hat - residual).pow(2).sum() / total_var

    # -- training helpers ------------------------------------------------------------------
    @torch.no_grad()
    def init_from_data(self, x: Tensor, y: Tensor | None = None) -> None:
        """Data-dependent initialisation from a first batch: ``b_dec`` = the target's mean;
        JumpReLU threshold and bandwidth scaled by the data's per-dimension RMS."""
        target = x if self.cfg.kind == "sae" else y
        if target is None:
            raise ConfigError(f"init_from_data for a {self.cfg.kind} needs the target batch y")
        target = target.to(self.b_dec.dtype)
        self.b_dec.copy_(target.mean(0))
        if self.cfg.activation == "jumprelu":
            xe = self._x_enc(x.to(self.W_enc.dtype))
            rms = float(((xe - xe.mean(0)).pow(2).sum(-1).mean() / self.cfg.d_in).sqrt())
            rms = rms if math.isfinite(rms) and rms > 0 else 1.0
            self.threshold.fill_(self.cfg.jumprelu_threshold * rms)
            self.bandwidth.fill_(self.cfg.jumprelu_bandwidth * rms)

    @torch.no_grad()
    def normalize_decoder_(self) -> None:
        """Scale decoder rows to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12))

    @torch.no_grad()
    def remove_parallel_grad_(self) -> None:
        """Remove the component of ``W_dec.grad`` parallel to each (unit) decoder row, so a
        step does not fight the unit-norm constraint."""
        g = self.W_dec.grad
        if g is not None:
            g.sub_((g * self.W_dec).sum(1, keepdim=True) * self.W_dec)

    @torch.no_grad()
    def fired(self, out: ForwardOutput) -> Tensor:
        """``[n_latents]`` bool: latents active on at least one row of ``out``."""
        if out.latent_indices is None:
            return (out.latent_acts > 0).any(0)
        hit = torch.zeros(self.n_latents, dtype=torch.bool, device=out.latent_acts.device)
        hit[out.latent_indices[out.latent_acts > 0]] = True
        return hit

    def counts(self, out: ForwardOutput) -> Tensor:
        """``[n_latents]`` number of rows on which each latent is active."""
        with torch.no_grad():
            if out.latent_indices is None:
                return (out.latent_acts > 0).sum(0)
            return torch.bincount(out.latent_indices[out.latent_acts > 0], minlength=self.n_latents)

    # -- files -----------------------------------------------------------------------------
    def save(self, path, extra: dict | None = None):
        """Save in the native format (``cfg.json`` + ``dictionary.safetensors``)."""
        from mechscope.dictionaries.formats import save_native

        return save_native(self, path, extra=extra)

    @classmethod
    def load(cls, path, device: str | torch.device = "cpu") -> "Dictionary":
        """Load a native, SAELens or sparsify directory (the format is detected)."""
        from mechscope.dictionaries.formats import load_dictionary

        return load_dictionary(path, device=device)
