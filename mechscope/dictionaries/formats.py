"""Dictionary files: the native directory, SAELens directories (read and write) and
sparsify directories (read).

* native: ``cfg.json`` (format ``mechscope.dictionary``, the :class:`DictionaryConfig`,
  per-file sha256) + ``dictionary.safetensors`` (our parameter names and layout).
* SAELens (v6): ``cfg.json`` with ``architecture`` + ``sae_weights.safetensors`` holding
  ``W_enc [d_in, d_sae]``, ``b_enc``, ``W_dec [d_sae, d_out]``, ``b_dec`` (+ ``threshold``,
  ``W_skip [d_out, d_in]``).
* sparsify: ``cfg.json`` (``SparseCoderConfig`` + ``d_in``) + ``sae.safetensors`` holding
  ``encoder.weight [M, d_in]``, ``encoder.bias``, ``W_dec [M, d]``, ``b_dec`` (+ ``W_skip``).

No reader imports sae-lens or sparsify; they are only needed to test interoperability.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from mechscope.dictionaries.config import DictionaryConfig
from mechscope.dictionaries.dictionary import Dictionary
from mechscope.errors import ConfigError, FormatError, StoreError
from mechscope.files import atomic_write, ensure_dir, load_artifact, load_tensors, read_json, save_artifact

NATIVE_FORMAT = "mechscope.dictionary"
NATIVE_VERSION = 1
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
SAELENS_VERSION = "6.0.0"  # the config layout we write (v6: metadata block, architecture names)


def detect_format(path: str | os.PathLike) -> str:
    """``native``, ``saelens`` or ``sparsify`` for a dictionary directory."""
    path = Path(path)
    if not (path / "cfg.json").exists():
        subdirs = sorted(p.name for p in path.iterdir() if (p / "cfg.json").exists()) if path.is_dir() else []
        hint = f"; it holds dictionaries in: {', '.join(subdirs[:8])}" if subdirs else ""
        raise FormatError(f"expected a dictionary directory with cfg.json at {path}, found none{hint}")
    cfg = read_json(path / "cfg.json")
    if cfg.get("format") == NATIVE_FORMAT:
        return "native"
    if (path / SAELENS_WEIGHTS).exists():
        return "saelens"
    if (path / SPARSIFY_WEIGHTS).exists():
        return "sparsify"
    raise FormatError(f"{path}: cfg.json is neither mechscope ({NATIVE_FORMAT!r}) nor next to {SAELENS_WEIGHTS} (SAELens) or {SPARSIFY_WEIGHTS} (sparsify)")


def load_dictionary(path: str | os.PathLike, device: str | torch.device = "cpu") -> Dictionary:
    """Load a dictionary directory in any supported format, in eval mode (a BatchTopK dictionary
    then encodes with its learned threshold, row by row, not with the batch's top k)."""
    fmt = detect_format(path)
    return {"native": load_native, "saelens": load_saelens, "sparsify": load_sparsify}[fmt](path, device=device)


# -- native -------------------------------------------------------------------------------
def save_native(d: Dictionary, path: str | os.PathLike, extra: dict | None = None) -> Path:
    path = Path(path)
    save_artifact(path, NATIVE_FORMAT, NATIVE_VERSION, {"dictionary": d.cfg.to_dict(), **(extra or {})}, {"dictionary": d.state_dict()})
    return path


def _build(cfg: DictionaryConfig, state: dict, where: Path, device) -> Dictionary:
    d = Dictionary(cfg)
    want = d.state_dict()
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        raise FormatError(f"{where}: expected tensors {sorted(want)}, found {sorted(state)} (missing {missing}, unexpected {unexpected})")
    for name, t in want.items():
        if tuple(state[name].shape) != tuple(t.shape):
            raise FormatError(f"{where}: tensor {name!r} should have shape {list(t.shape)} for this config, found {list(state[name].shape)}")
    d.load_state_dict({k: v.to(want[k].dtype) for k, v in state.items()})
    return d.to(device).eval()


def load_native(path: str | os.PathLike, device: str | torch.device = "cpu") -> Dictionary:
    path = Path(path)
    try:
        cfg, tensors = load_artifact(path, NATIVE_FORMAT, NATIVE_VERSION)
    except StoreError as e:
        raise StoreError(f"dictionary at {path} is corrupt: {e}") from e
    if "dictionary" not in cfg or "dictionary" not in tensors:
        raise FormatError(f"{path}: expected a 'dictionary' config and dictionary.safetensors, found keys {sorted(cfg)}")
    return _build(DictionaryConfig.from_dict(cfg["dictionary"]), tensors["dictionary"], path, device)


# -- SAELens ------------------------------------------------------------------------------
_SAELENS_ARCH = {  # (kind, inference activation) -> SAELens architecture
    ("sae", "relu"): "standard", ("sae", "topk"): "topk", ("sae", "jumprelu"): "jumprelu", ("sae", "batchtopk"): "jumprelu",
    ("transcoder", "relu"): "transcoder", ("skip_transcoder", "relu"): "skip_transcoder",
    ("transcoder", "jumprelu"): "jumprelu_transcoder", ("skip_transcoder", "jumprelu"): "jumprelu_skip_transcoder",
    ("transcoder", "batchtopk"): "jumprelu_transcoder", ("skip_transcoder", "batchtopk"): "jumprelu_skip_transcoder",
}
_FROM_SAELENS = {"standard": ("sae", "relu"), "topk": ("sae", "topk"), "jumprelu": ("sae", "jumprelu"),
                 "transcoder": ("transcoder", "relu"), "skip_transcoder": ("skip_transcoder", "relu"),
                 "jumprelu_transcoder": ("transcoder", "jumprelu"), "jumprelu_skip_transcoder": ("skip_transcoder", "jumprelu")}


def save_saelens(d: Dictionary, path: str | os.PathLike, model_name: str | None = None) -> Path:
    """Write ``d`` as a SAELens (v6) inference directory that ``SAE.load_from_disk`` reads.

    BatchTopK dictionaries are written as JumpReLU with their learned threshold (SAELens does
    the same); the original activation is kept in the metadata so mechscope reads it back.
    SAELens has no TopK transcoder, so those raise :class:`FormatError`.
    """
    from mechscope.files import save_tensors

    cfg = d.cfg
    arch = _SAELENS_ARCH.get((cfg.kind, cfg.activation))
    if arch is None:
        raise FormatError(f"SAELens has no {cfg.activation} {cfg.kind} architecture; expected one of {sorted(set(_SAELENS_ARCH.values()))} (save it natively instead)")
    sd = {k: v.detach().cpu().contiguous() for k, v in d.state_dict().items()}
    t = {"W_enc": sd["W_enc"].t().contiguous(), "b_enc": sd["b_enc"], "W_dec": sd["W_dec"], "b_dec": sd["b_dec"]}
    if cfg.activation == "jumprelu":
        t["threshold"] = sd["threshold"]
    elif cfg.activation == "batchtopk":
        t["threshold"] = torch.full((cfg.n_latents,), float(sd["threshold"]), dtype=sd["W_enc"].dtype)
    if cfg.kind == "skip_transcoder":
        t["W_skip"] = sd["W_skip"]
    hook_z = bool(cfg.act_shape and len(cfg.act_shape) == 2 and (cfg.hook_in or "").endswith("hook_z"))
    metadata = {"sae_lens_version": SAELENS_VERSION, "hook_name": cfg.hook_in, "model_name": model_name or cfg.meta.get("model"),
                "mechscope": {"kind": cfg.kind, "activation": cfg.activation, "k": cfg.k, "act_shape": cfg.act_shape,
                              "hook_out": cfg.hook_out}}
    if cfg.kind != "sae":
        metadata["hook_name_out"] = cfg.hook_out
    out = {"d_in": cfg.d_in, "d_sae": cfg.n_latents, "dtype": cfg.dtype, "device": "cpu",
           "apply_b_dec_to_input": bool(cfg.apply_b_dec_to_input), "normalize_activations": "none",
           "reshape_activations": "hook_z" if hook_z else "none", "metadata": metadata, "architecture": arch}
    if arch == "topk":
        out.update(k=cfg.k, rescale_acts_by_decoder_norm=False)
    if cfg.kind != "sae":
        out["d_out"] = cfg.d_out
    path = Path(path)
    ensure_dir(path)
    save_tensors(path / SAELENS_WEIGHTS, t)
    with atomic_write(path / "cfg.json", "w") as f:
        json.dump(out, f, indent=2)
    return path


def load_saelens(path: str | os.PathLike, device: str | torch.device = "cpu") -> Dictionary:
    """Read a SAELens (v6, or older standard/topk) directory."""
    path = Path(path)
    raw = read_json(path / "cfg.json")
    arch = raw.get("architecture", "standard")
    if arch not in _FROM_SAELENS:
        raise FormatError(f"{path}: SAELens architecture {arch!r} is not supported; expected one of {sorted(_FROM_SAELENS)}")
    norm = raw.get("normalize_activations", "none")
    if norm not in ("none", None):
        raise FormatError(f"{path}: normalize_activations={norm!r} is not supported (expected 'none'); fold the normalisation into the weights first")
    kind, activation = _FROM_SAELENS[arch]
    meta = raw.get("metadata") or {}
    ours = meta.get("mechscope") or {}
    if ours.get("activation") == "batchtopk" and activation == "jumprelu":
        activation = "batchtopk"
    state = load_tensors(path / SAELENS_WEIGHTS)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        if name not in state:
            raise FormatError(f"{path / SAELENS_WEIGHTS}: expected tensor {name!r}, found {sorted(state)}")
    W_enc, W_dec = state["W_enc"], state["W_dec"]
    b_enc = state["b_enc"]
    if raw.get("rescale_acts_by_decoder_norm"):  # fold: same codes and outputs with unit-norm rows
        n = W_dec.norm(dim=1).clamp_min(1e-8)
        W_enc, b_enc, W_dec = W_enc * n, b_enc * n, W_dec / n[:, None]
    d_in, d_sae = int(raw["d_in"]), int(raw["d_sae"])
    if tuple(W_enc.shape) != (d_in, d_sae):
        raise FormatError(f"{path}: W_enc should be [d_in={d_in}, d_sae={d_sae}], found {list(W_enc.shape)}")
    k = raw.get("k", ours.get("k", 32))
    cfg = DictionaryConfig(
        d_in=d_in, n_latents=d_sae, kind=kind, activation=activation, d_out=int(raw.get("d_out", d_in)),
        k=int(k) if activation in ("topk", "batchtopk") else 32, apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        hook_in=meta.get("hook_name") or raw.get("hook_name"), hook_out=meta.get("hook_name_out") or ours.get("hook_out"),
        act_shape=ours.get("act_shape"), dtype=str(raw.get("dtype", "float32")).removeprefix("torch."),
        meta={"source_format": "saelens", "model": meta.get("model_name") or raw.get("model_name"), "saelens_architecture": arch})
    if kind == "sae":
        cfg.hook_out = None
    sd = {"W_enc": W_enc.t().contiguous(), "b_enc": b_enc, "W_dec": W_dec.contiguous(), "b_dec": state["b_dec"]}
    if activation == "jumprelu":
        sd["threshold"] = state["threshold"]
        sd["bandwidth"] = torch.tensor(cfg.jumprelu_bandwidth, dtype=torch.float64)
    elif activation == "batchtopk":
        sd["threshold"] = state["threshold"].reshape(-1)[0].clone()
    if kind == "skip_transcoder":
        sd["W_skip"] = state["W_skip"]
    return _build(cfg, sd, path, device)


# -- sparsify -----------------------------------------------------------------------------
def load_sparsify(path: str | os.PathLike, device: str | torch.device = "cpu") -> Dictionary:
    """Read a sparsify ``SparseCoder`` directory (TopK activation; groupmax is not supported)."""
    path = Path(path)
    raw = read_json(path / "cfg.json")
    if raw.get("activation", "topk") != "topk":
        raise FormatError(f"{path}: sparsify activation {raw.get('activation')!r} is not supported; expected 'topk'")
    if "d_in" not in raw:
        raise FormatError(f"{path}: sparsify cfg.json should carry d_in, found keys {sorted(raw)}")
    state = load_tensors(path / SPARSIFY_WEIGHTS)
    for name in ("encoder.weight", "encoder.bias", "W_dec", "b_dec"):
        if name not in state:
            raise FormatError(f"{path / SPARSIFY_WEIGHTS}: expected tensor {name!r}, found {sorted(state)}")
    W_enc = state["encoder.weight"]
    d_in = int(raw["d_in"])
    n_latents = W_enc.shape[0]
    if W_enc.shape[1] != d_in:
        raise FormatError(f"{path}: encoder.weight should be [n_latents, d_in={d_in}], found {list(W_enc.shape)}")
    transcode, skip = bool(raw.get("transcode")), bool(raw.get("skip_connection"))
    kind = "skip_transcoder" if skip else ("transcoder" if transcode else "sae")
    if kind == "skip_transcoder" and not transcode:
        raise FormatError(f"{path}: a sparsify SAE with a skip connection (transcode=False, skip_connection=True) is not supported")
    try:
        cfg = DictionaryConfig(d_in=d_in, n_latents=n_latents, kind=kind, activation="topk", d_out=int(state["W_dec"].shape[1]),
                               k=int(raw.get("k", 32)), dtype=str(W_enc.dtype).removeprefix("torch."),
                               meta={"source_format": "sparsify"})
    except ConfigError as e:
        raise FormatError(f"{path}: {e}") from e
    sd = {"W_enc": W_enc, "b_enc": state["encoder.bias"], "W_dec": state["W_dec"], "b_dec": state["b_dec"]}
    if skip:
        sd["W_skip"] = state["W_skip"]
    return _build(cfg, sd, path, device)


def check_trained_on(d: Dictionary, model) -> None:
    """A :class:`ConfigError` when ``d`` records (``cfg.meta["model"]``) that it was trained on
    another zoo organism than ``model``: the widths of the organisms agree, so nothing else would
    notice and every number computed from the pair would be silently wrong. Only ``zoo:`` names are
    compared; a model directory or a hub name can be spelled several ways."""
    trained = str((d.cfg.meta or {}).get("model") or "")
    name = str(getattr(model, "name", "") or "")
    if trained.startswith("zoo:") and name.startswith("zoo:") and trained != name:
        raise ConfigError(f"dictionary {d.cfg.name!r} was trained on {trained}; expected it to be used with that model, "
                          f"found model {name}")
