"""``load_model(spec)``: one entry point for every way a model can arrive.

Specs, tried in this order:
  * a ``Model`` or any ``torch.nn.Module``  -> wrapped as is;
  * ``"zoo:NAME"`` or a bare zoo name        -> a shipped model organism (``mechscope.zoo``);
  * a directory with a mechscope ``cfg.json`` -> the native format (config + safetensors);
  * a directory with an HF ``config.json``    -> a TransformerLens ``HookedTransformer`` when
    TransformerLens converts the architecture and the converted model's logits match the HF
    model's (what every mechscope room expects: circuits, transcoders, attention SAEs);
    otherwise TransformerLens's TransformerBridge; plain ``transformers`` (module-path hooks)
    when neither supports it;
  * a TransformerLens model name              -> ``HookedTransformer.from_pretrained`` (hub; needs network).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import json
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mechscope.errors import FormatError, ModelSpecError
from mechscope.files import load_artifact, save_artifact
from mechscope.models.model import Model, as_model

NATIVE_FORMAT = "mechscope.model"
NATIVE_VERSION = 1


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(spec: Any, device: str | None = None) -> Model:
    """Load a model from ``spec`` (see module docstring). Models are put in eval mode."""
    device = device or default_device()
    if isinstance(spec, (Model, nn.Module)):
        model = as_model(spec)
        model.meta.setdefault("spec", model.name)
        return model.to(device)
    if not isinstance(spec, (str, os.PathLike)):
        raise ModelSpecError(f"expected a model spec (zoo name, directory, TransformerLens name or nn.Module), found {type(spec).__name__}")
    spec = str(spec)
    from mechscope.zoo.registry import find_organism, organism_names

    if spec.startswith("zoo:") or (not os.path.exists(spec) and spec in organism_names()):
        name = spec.removeprefix("zoo:")
        model = _load_native(find_organism(name), device)
        model.name = f"zoo:{name}"
        return model
    path = Path(spec)
    if path.is_dir():
        if (path / "cfg.json").exists():
            return _load_native(path, device)
        if (path / "config.json").exists():
            return _load_hf_dir(path, device)
        raise ModelSpecError(f"{path} is a directory but holds neither a mechscope cfg.json nor an HF config.json")
    if path.exists():
        raise ModelSpecError(f"{path} is a file; expected a model directory (cfg.json + model.safetensors)")
    return _load_transformer_lens_name(spec, device)


def _tl_config_to_dict(cfg: Any) -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        if not f.init:
            continue
        v = getattr(cfg, f.name)
        if isinstance(v, torch.dtype):
            v = str(v).removeprefix("torch.")
        if f.name == "device":
            v = None
        out[f.name] = v
    return out


def _tl_config_from_dict(d: dict):
    from transformer_lens import HookedTransformerConfig

    d = dict(d)
    if isinstance(d.get("dtype"), str):
        d["dtype"] = getattr(torch, d["dtype"])
    known = {f.name for f in dataclasses.fields(HookedTransformerConfig) if f.init}
    unknown = set(d) - known
    if unknown:
        raise FormatError(f"model config has fields this TransformerLens does not know: {sorted(unknown)}")
    return HookedTransformerConfig(**d)


def save_model(model: Model | nn.Module, directory: str | os.PathLike, extra: dict | None = None) -> Path:
    """Save a TransformerLens ``HookedTransformer`` in the native format:
    ``cfg.json`` (TL config, name, extra facts) + ``model.safetensors`` (+ ``tokenizer.json``)."""
    model = as_model(model)
    module = model.module
    if type(module).__name__ != "HookedTransformer":
        raise ModelSpecError(f"the native format stores TransformerLens HookedTransformers; found {type(module).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {"architecture": "hooked_transformer", "name": model.name, "config": _tl_config_to_dict(module.cfg), **(extra or {})}
    if model.tokenizer is not None:
        from mechscope.data.tokenizer import save_tokenizer

        save_tokenizer(model.tokenizer, directory / "tokenizer.json")
        cfg["tokenizer"] = "tokenizer.json"
    save_artifact(directory, NATIVE_FORMAT, NATIVE_VERSION, cfg, {"model": module.state_dict()})
    return directory


def _load_native(path: Path, device: str) -> Model:
    from transformer_lens import HookedTransformer

    cfg, tensors = load_artifact(path, NATIVE_FORMAT, NATIVE_VERSION, device="cpu")
    if cfg.get("architecture") != "hooked_transformer":
        raise FormatError(f"{path}: unknown architecture {cfg.get('architecture')!r}; expected 'hooked_transformer'")
    tl_cfg = _tl_config_from_dict({**cfg["config"], "device": "cpu"})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TL 3.x nudges towards TransformerBridge
        module = HookedTransformer(tl_cfg)
    state = tensors["model"]
    missing, unexpected = module.load_state_dict(state, strict=False)
    # TL registers non-parameter buffers (IGNORE, mask) that a state_dict may omit.
    missing = [k for k in missing if not k.endswith((".IGNORE", ".mask"))]
    if missing or unexpected:
        raise FormatError(f"{path}: weights do not match the config (missing {missing[:5]}, unexpected {unexpected[:5]})")
    tokenizer = None
    if cfg.get("tokenizer"):
        from mechscope.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(path / cfg["tokenizer"])
        module.tokenizer = tokenizer
    weights_hash = cfg["files"]["model.safetensors"]
    meta = {"spec": str(path), "weights_sha256": weights_hash, **{k: v for k, v in cfg.items() if k not in ("config", "files")}}
    model = Model(module=module.eval(), name=cfg.get("name") or path.name, kind="transformer_lens", tokenizer=tokenizer, meta=meta)
    return model.to(device)


def _load_hf_dir(path: Path, device: str) -> Model:
    config = json.loads((path / "config.json").read_text())
    tokenizer = None
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(path))
    except (OSError, ValueError):
        tokenizer = None  # a weights-only directory: the caller passes token ids
    module, kind = _hooked_transformer_from_hf_dir(path, tokenizer, device), "transformer_lens"
    if module is None:
        module, kind = _bridge_or_transformers(path, tokenizer, device, config)
    meta = {"spec": str(path), "backend": type(module).__name__, "architectures": config.get("architectures"), "config_sha256": hashlib.sha256((path / "config.json").read_bytes()).hexdigest()}
    return Model(module=module.eval(), name=str(path), kind=kind, tokenizer=tokenizer, meta=meta)


HF_CHECK_TOL = 1e-3  # largest |log-softmax difference| accepted between the converted and the HF model


def _hooked_transformer_from_hf_dir(path: Path, tokenizer, device: str):
    """The directory's model as a classic ``HookedTransformer`` (weights as stored: no LayerNorm
    folding or centring), or ``None`` with a warning saying why when TransformerLens cannot
    convert it or the conversion does not reproduce the HF model's next-token distribution."""
    from transformer_lens import HookedTransformer
    from transformer_lens import loading_from_pretrained as tl_loading
    from transformers import AutoModelForCausalLM

    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory(prefix="mechscope-hf-") as stage:
            warnings.simplefilter("ignore")
            # TransformerLens picks hard-coded configs by substrings of the name ("llama", "gemma"): it
            # reads a staged copy (links to the files) under a neutral name, so that the config comes
            # from config.json — with the keys it still reads that newer transformers no longer write
            neutral = Path(stage) / "model"
            neutral.mkdir()
            for f in path.iterdir():
                if f.name != "config.json":
                    (neutral / f.name).symlink_to(f.resolve())
            (neutral / "config.json").write_text(json.dumps(_config_for_transformer_lens(json.loads((path / "config.json").read_text()))))
            cfg = tl_loading.get_pretrained_model_config(str(neutral), device=device)
            cfg.tokenizer_name = None  # the directory's own tokenizer (or none) is set below
            hf = AutoModelForCausalLM.from_pretrained(str(path)).eval()
            state = tl_loading.get_pretrained_state_dict(str(neutral), cfg, hf)
            module = HookedTransformer(cfg, tokenizer=tokenizer, move_to_device=False)
            module.load_and_process_state_dict(state, fold_ln=False, center_writing_weights=False, center_unembed=False,
                                               fold_value_biases=False, refactor_factored_attn_matrices=False)
    except (AttributeError, KeyError, ValueError, NotImplementedError, TypeError, RuntimeError, OSError) as e:
        warnings.warn(f"TransformerLens cannot convert {path} into a HookedTransformer ({type(e).__name__}: {e}); "
                      "loading it through TransformerBridge")
        return None
    module.eval()
    tokens = torch.randint(0, min(int(cfg.d_vocab), int(hf.config.vocab_size)), (1, min(8, int(cfg.n_ctx))),
                           generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        gap = float((module(tokens).log_softmax(-1) - hf(tokens).logits.log_softmax(-1)).abs().max())
    if not gap <= HF_CHECK_TOL:
        warnings.warn(f"TransformerLens's conversion of {path} does not reproduce the HF model (log-probabilities differ by "
                      f"{gap:.3g} > {HF_CHECK_TOL}); loading it through TransformerBridge")
        return None
    return module.to(device, print_details=False)


def _config_for_transformer_lens(config: dict) -> dict:
    """An HF config with the keys TransformerLens's converter reads that transformers >= 5 no
    longer writes: GPT-2's ``n_ctx`` (the same as ``n_positions``)."""
    if config.get("model_type") == "gpt2" and "n_ctx" not in config and "n_positions" in config:
        return {**config, "n_ctx": config["n_positions"]}
    return config


def _bridge_or_transformers(path: Path, tokenizer, device: str, config: dict):
    """TransformerBridge in compatibility mode, or plain ``transformers`` with module-path hooks."""
    try:
        from transformer_lens.model_bridge import TransformerBridge

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            bridge = TransformerBridge.boot_transformers(str(path), device=device, tokenizer=tokenizer)
        bridge.enable_compatibility_mode()
        return bridge, "transformer_lens"
    except (ValueError, KeyError, NotImplementedError) as e:
        # Architecture that TransformerLens does not map: fall back to plain transformers,
        # with module paths as hook names.
        from transformers import AutoModel

        warnings.warn(f"TransformerLens does not support {config.get('architectures')}: loading with plain transformers ({e})")
        return AutoModel.from_pretrained(str(path)).to(device), "module"


def _load_transformer_lens_name(name: str, device: str) -> Model:
    from transformer_lens import loading_from_pretrained as tl_loading

    official = list(tl_loading.OFFICIAL_MODEL_NAMES)
    aliases = [a for names in tl_loading.MODEL_ALIASES.values() for a in names]
    if name not in official and name not in aliases:
        close = difflib.get_close_matches(name, official + aliases + _zoo_names(), n=5, cutoff=0.5)
        hint = f"; did you mean: {', '.join(close)}" if close else ""
        raise ModelSpecError(
            f"{name!r} is not a zoo organism, a model directory, or a TransformerLens model name{hint}. "
            f"Zoo organisms: {', '.join(_zoo_names()) or '(none)'}"
        )
    from transformer_lens import HookedTransformer

    # TransformerLens prints "Loaded pretrained model ..." on stdout, where it would break
    # `--json` output: it goes to stderr instead
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore", DeprecationWarning)
        module = HookedTransformer.from_pretrained(name, device=device)
    return Model(module=module.eval(), name=name, kind="transformer_lens", tokenizer=module.tokenizer, meta={"spec": name, "source": "transformer_lens_hub"})


def _zoo_names() -> list[str]:
    from mechscope.zoo.registry import organism_names

    return organism_names()
