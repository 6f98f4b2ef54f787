"""The ``Model`` type: an ``nn.Module`` plus what mechscope needs to know about it."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn


@dataclass
class Model:
    """A loaded model.

    Attributes:
        module: the network. For ``kind == "transformer_lens"`` a ``HookedTransformer``.
        name: a stable identifier written into manifests (zoo name, path, hub name, class name).
        kind: ``"transformer_lens"`` (hook names are TL hook points) or ``"module"``
            (hook names are module paths; covers CNNs and plain HF models).
        tokenizer: an HF-compatible tokenizer, when the model reads text.
        meta: free-form facts (source spec, config hash, …) recorded in manifests.
    """

    module: nn.Module
    name: str
    kind: str = "module"
    tokenizer: Any = None
    meta: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    @property
    def is_transformer_lens(self) -> bool:
        return self.kind == "transformer_lens"

    def to(self, device: str | torch.device) -> "Model":
        if type(self.module).__name__ == "HookedTransformer":
            self.module.to(device, print_details=False)  # TL otherwise prints to stdout
        else:
            self.module.to(device)
        return self

    def __call__(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def to_tokens(self, text: str | list[str], prepend_bos: bool = True) -> torch.Tensor:
        """Tokenise text into ``[batch, pos]`` ids (padded on the right), BOS first if asked."""
        from mechscope.data.tokenizer import encode_batch

        if self.tokenizer is None:
            from mechscope.errors import ConfigError

            raise ConfigError(f"model {self.name!r} has no tokenizer; pass token ids instead of text")
        texts = [text] if isinstance(text, str) else list(text)
        return encode_batch(self.tokenizer, texts, prepend_bos=prepend_bos).to(self.device)

    def __repr__(self) -> str:
        n = sum(p.numel() for p in self.module.parameters())
        return f"Model(name={self.name!r}, kind={self.kind!r}, params={n:,})"


def as_model(model: Model | nn.Module) -> Model:
    """Wrap a bare module (TL HookedTransformer or any nn.Module) in a ``Model``."""
    if isinstance(model, Model):
        return model
    if not isinstance(model, nn.Module):
        from mechscope.errors import ModelSpecError

        raise ModelSpecError(f"expected a mechscope Model or torch.nn.Module, found {type(model).__name__}")
    kind = "transformer_lens" if _is_hooked_transformer(model) else "module"
    return Model(module=model, name=type(model).__name__, kind=kind, tokenizer=getattr(model, "tokenizer", None))


def _is_hooked_transformer(module: nn.Module) -> bool:
    """TransformerLens HookedTransformer / TransformerBridge: both expose ``hook_dict``."""
    return isinstance(getattr(module, "hook_dict", None), dict)


def require_hooked_transformer(model: Model | nn.Module, what: str, error: type[Exception] | None = None) -> Model:
    """``model`` as a :class:`Model` when it is a classic TransformerLens ``HookedTransformer``
    (per-head ``hook_z`` / ``hook_v`` / ``hook_q_input``); else ``error`` (default
    :class:`ConfigError`) saying why ``what`` cannot run on it."""
    from mechscope.errors import ConfigError

    error = error or ConfigError
    model = as_model(model)
    if type(model.module).__name__ == "TransformerBridge":
        raise error(f"{what} needs a classic TransformerLens HookedTransformer (per-head hook points); {model.name!r} was "
                          "loaded through TransformerBridge, whose attention hooks are not split by head, because TransformerLens "
                          "could not convert it (load_model warned why)")
    if not model.is_transformer_lens:
        raise error(f"{what} needs a TransformerLens model (attention hook points); {model.name!r} is a {model.kind} model")
    return model


@functools.cache
def post_norm_architectures() -> frozenset[str]:
    """TransformerLens's post-norm architectures (OLMo 2 / 3: attention and MLP read the raw
    residual, ``ln1`` / ``ln2`` normalize their *outputs*); empty for TransformerLens releases
    that lack the set. Read once."""
    import importlib

    try:
        arch = importlib.import_module("transformer_lens.utilities.architectures")
    except ModuleNotFoundError:
        return frozenset()
    return frozenset(getattr(arch, "POST_NORM_ARCHITECTURES", ()))


@dataclass(frozen=True)
class SublayerNorms:
    """TransformerLens module names of the norms around a block's attention and MLP (``None``: no
    such norm). ``attn_in`` / ``mlp_in`` normalize what the sublayer reads; ``attn_out`` /
    ``mlp_out`` normalize what it writes, before the residual add (their hooks sit inside
    ``hook_attn_out`` / ``hook_mlp_out``)."""

    attn_in: str | None
    attn_out: str | None
    mlp_in: str | None
    mlp_out: str | None


def sublayer_norms(cfg) -> SublayerNorms:
    """GPT-2 / Llama: ``ln1`` / ``ln2`` before each sublayer. Gemma 2
    (``use_normalization_before_and_after``): also ``ln1_post`` / ``ln2_post`` after. OLMo 2 / 3
    (:func:`post_norm_architectures`): no norm before, ``ln1`` / ``ln2`` after. No norm: none."""
    if getattr(cfg, "normalization_type", None) is None:
        return SublayerNorms(None, None, None, None)
    if getattr(cfg, "original_architecture", None) in post_norm_architectures():
        return SublayerNorms(None, "ln1", None, "ln2")
    if getattr(cfg, "use_normalization_before_and_after", False):
        return SublayerNorms("ln1", "ln1_post", "ln2", "ln2_post")
    return SublayerNorms("ln1", None, "ln2", None)


def context_window(model: Model) -> int | None:
    """The longest input ``model`` reads (TL ``n_ctx``; HF ``n_positions`` / ``max_position_embeddings``), if it says."""
    tl_cfg, hf_cfg = getattr(model.module, "cfg", None), getattr(model.module, "config", None)
    n = getattr(tl_cfg, "n_ctx", None) or getattr(hf_cfg, "n_positions", None) or getattr(hf_cfg, "max_position_embeddings", None)
    return int(n) if n else None


def resolve_context_len(model: Model, requested: int | None, default: int = 128) -> int:
    """Tokens per context for streaming a corpus through ``model``: ``requested``, or ``default``
    capped at the model's context window; a :class:`ConfigError` when ``requested`` exceeds it."""
    from mechscope.errors import ConfigError

    n_ctx = context_window(model)
    if requested is None:
        return min(default, n_ctx) if n_ctx else default
    if n_ctx and requested > n_ctx:
        raise ConfigError(f"--context-len {requested} is longer than the model's context window (n_ctx={n_ctx})")
    return requested
