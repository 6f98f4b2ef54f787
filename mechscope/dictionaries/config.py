"""Configs as data: what a dictionary is (:class:`DictionaryConfig`) and how it is trained
(:class:`TrainConfig`). Both are plain dataclasses that round-trip through JSON and are
checked on construction; a bad value raises :class:`~mechscope.errors.ConfigError` saying
what was expected and what was found."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from mechscope.errors import ConfigError

KINDS = ("sae", "transcoder", "skip_transcoder")
ACTIVATIONS = ("relu", "topk", "batchtopk", "jumprelu")
TOPK_FAMILY = ("topk", "batchtopk")


def _one_of(name: str, value: Any, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{name} must be one of {', '.join(valid)}; found {value!r}")


def _positive(name: str, value: float, allow_zero: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if not (isinstance(value, (int, float)) and math.isfinite(value) and ok):
        raise ConfigError(f"{name} must be {'>= 0' if allow_zero else '> 0'} and finite; found {value!r}")


def from_dict(cls, d: dict):
    """Build ``cls`` from a dict, naming unknown keys instead of ignoring them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s) {unknown}; expected some of {sorted(names)}")
    return cls(**d)


@dataclass
class DictionaryConfig:
    """One sparse dictionary.

    kind: ``sae`` reconstructs ``hook_in``; ``transcoder`` maps ``hook_in`` to ``hook_out``
        (e.g. ``blocks.L.ln2.hook_normalized`` -> ``blocks.L.hook_mlp_out``);
        ``skip_transcoder`` adds a linear skip path ``W_skip``.
    activation: ``relu`` (+ decoder-norm-weighted L1), ``topk``, ``batchtopk`` (k per row on
        average over the batch; a learned threshold at inference), ``jumprelu`` (learned
        per-latent thresholds, straight-through estimator with a bandwidth, L0 penalty).
    act_shape: the per-position shape of ``hook_in`` when it is not flat, e.g.
        ``[n_heads, d_head]`` for ``blocks.L.attn.hook_z``; the dictionary works on the
        flattened vector (``d_in = n_heads * d_head``) and keeps the head structure for
        :meth:`~mechscope.dictionaries.Dictionary.heads`.
    jumprelu_threshold / jumprelu_bandwidth: in units of the data's per-dimension RMS
        (measured at initialisation), so they do not depend on the activations' scale.
    """

    d_in: int
    n_latents: int
    kind: str = "sae"
    activation: str = "topk"
    d_out: int | None = None  # defaults to d_in
    k: int | None = None  # topk / batchtopk: active latents per row (default min(32, n_latents))
    l1_coeff: float = 1.0  # relu: weight of the decoder-norm-weighted L1 penalty
    l0_coeff: float = 0.1  # jumprelu: weight of the L0 penalty
    jumprelu_threshold: float = 0.5
    jumprelu_bandwidth: float = 0.1
    apply_b_dec_to_input: bool = True  # SAEs: encode x - b_dec (transcoders never do)
    encoder_init_norm: float = 0.577  # initial encoder row norm (decoder rows are unit); see Dictionary
    hook_in: str | None = None
    hook_out: str | None = None
    act_shape: list[int] | None = None
    dtype: str = "float32"
    meta: dict = field(default_factory=dict)  # free-form: model name, source format, ...

    def __post_init__(self):
        _one_of("kind", self.kind, KINDS)
        _one_of("activation", self.activation, ACTIVATIONS)
        for name in ("d_in", "n_latents"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer; found {v!r}")
        if self.d_out is None:
            self.d_out = self.d_in
        if not isinstance(self.d_out, int) or self.d_out < 1:
            raise ConfigError(f"d_out must be a positive integer; found {self.d_out!r}")
        if self.kind == "sae" and self.d_out != self.d_in:
            raise ConfigError(f"an SAE reconstructs its input: expected d_out == d_in ({self.d_in}), found d_out={self.d_out}; use kind='transcoder'")
        if self.kind == "sae" and self.hook_out not in (None, self.hook_in):
            raise ConfigError(f"an SAE reads and reconstructs one hook; found hook_out={self.hook_out!r} != hook_in={self.hook_in!r}; use kind='transcoder'")
        if self.kind != "sae":
            self.apply_b_dec_to_input = False
        if self.k is None:
            self.k = min(32, self.n_latents)
        if self.activation in TOPK_FAMILY and not (isinstance(self.k, int) and 1 <= self.k <= self.n_latents):
            raise ConfigError(f"k must be an integer in [1, n_latents={self.n_latents}]; found {self.k!r}")
        _positive("l1_coeff", self.l1_coeff, allow_zero=True)
        _positive("l0_coeff", self.l0_coeff, allow_zero=True)
        _positive("jumprelu_threshold", self.jumprelu_threshold, allow_zero=True)
        _positive("jumprelu_bandwidth", self.jumprelu_bandwidth)
        _positive("encoder_init_norm", self.encoder_init_norm)
        if self.act_shape is not None:
            self.act_shape = [int(s) for s in self.act_shape]
            if math.prod(self.act_shape) != self.d_in:
                raise ConfigError(f"act_shape {self.act_shape} has {math.prod(self.act_shape)} elements; expected d_in={self.d_in}")
        _one_of("dtype", self.dtype, ("float32", "float64", "bfloat16", "float16"))

    @property
    def name(self) -> str:
        """A directory-safe name: the input hook for SAEs, ``in__out`` for transcoders."""
        if self.hook_in is None:
            return "dictionary"
        return self.hook_in if self.kind == "sae" else f"{self.hook_in}__{self.hook_out}"

    @property
    def target_hook(self) -> str | None:
        return self.hook_in if self.kind == "sae" else self.hook_out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "DictionaryConfig":
        return from_dict(cls, d)


@dataclass
class TrainConfig:
    """How to train one or more dictionaries in one pass over the data.

    Learning rate: linear warmup over ``warmup_steps``, constant, then linear decay to
    ``lr * min_lr_ratio`` over the last ``decay_fraction`` of ``steps``. The sparsity
    coefficient (L1 / L0) ramps linearly from 0 over ``sparsity_warmup_steps``.
    Dead latents: a latent that has not fired for ``dead_tokens`` tokens is dead; the TopK
    family trains dead latents with the AuxK loss (``auxk_coeff``), ReLU / JumpReLU
    dictionaries re-initialise them every ``resample_every`` steps (0: never).
    """

    steps: int = 1000
    batch_size: int = 4096
    lr: float = 4e-4
    betas: tuple[float, float] = (0.9, 0.999)
    warmup_steps: int = 100
    decay_fraction: float = 0.2
    min_lr_ratio: float = 0.0
    sparsity_warmup_steps: int = 0
    auxk_coeff: float = 1 / 32
    dead_tokens: int = 1_000_000
    resample_every: int = 0
    grad_clip: float = 1.0  # max global grad norm per dictionary; 0 disables
    normalize_decoder: bool = True  # unit-norm decoder rows, parallel gradient removed
    seed: int = 0
    checkpoint_every: int = 0  # steps; 0: only at the end (and when `until` stops a run)
    keep_checkpoints: int = 2
    log_every: int = 10
    buffer_tokens: int = 262_144  # streaming from a model: rows per shuffle-buffer refill
    model_batch_size: int = 16  # streaming from a model: contexts per forward pass
    wandb_project: str | None = None

    def __post_init__(self):
        for name in ("steps", "batch_size", "buffer_tokens", "model_batch_size"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ConfigError(f"{name} must be a positive integer; found {v!r}")
        for name in ("warmup_steps", "sparsity_warmup_steps", "dead_tokens", "resample_every", "checkpoint_every", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 0:
                raise ConfigError(f"{name} must be an integer >= 0; found {v!r}")
        if self.keep_checkpoints < 1:
            raise ConfigError(f"keep_checkpoints must be >= 1; found {self.keep_checkpoints}")
        _positive("lr", self.lr)
        _positive("auxk_coeff", self.auxk_coeff, allow_zero=True)
        _positive("grad_clip", self.grad_clip, allow_zero=True)
        if not 0 <= self.decay_fraction <= 1:
            raise ConfigError(f"decay_fraction must be in [0, 1]; found {self.decay_fraction}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ConfigError(f"min_lr_ratio must be in [0, 1]; found {self.min_lr_ratio}")
        self.betas = tuple(float(b) for b in self.betas)
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"betas must be two numbers in [0, 1); found {self.betas}")

    def lr_at(self, step: int) -> float:
        """Learning rate for 0-based ``step``."""
        warm = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        decay_start = self.steps * (1 - self.decay_fraction)
        if self.decay_fraction > 0 and step >= decay_start:
            frac = (step - decay_start) / max(1.0, self.steps - decay_start)
            warm *= 1 - (1 - self.min_lr_ratio) * min(1.0, frac)
        return self.lr * warm

    def sparsity_scale_at(self, step: int) -> float:
        return min(1.0, (step + 1) / self.sparsity_warmup_steps) if self.sparsity_warmup_steps else 1.0

    # Fields that may change between a run and its resumption without changing the numbers.
    CADENCE = ("checkpoint_every", "keep_checkpoints", "log_every", "wandb_project")

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return from_dict(cls, d)
