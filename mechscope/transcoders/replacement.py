"""Transcoders on a model's MLPs, and one cached run of the *replacement model*.

A :class:`TranscoderSet` holds one transcoder (or skip-transcoder) per MLP layer: a
:class:`~mechscope.dictionaries.Dictionary` mapping the MLP's input to ``blocks.L.hook_mlp_out``.
Supported inputs (``hook_in``):

* ``blocks.L.ln2.hook_normalized`` — ``C(x) / s`` (LN: centred and scaled; RMS: scaled), the
  LayerNorm's output *before* its weight and bias (TransformerLens places the hook there);
* ``blocks.L.hook_resid_mid`` / ``blocks.L.hook_mlp_in`` — the raw residual stream.

A :class:`ReplacementRun` runs the model once on ``tokens [batch, pos]`` with every transcoder
encoding its MLP's input (``splice=True``: the transcoder's output *replaces* the MLP output, so
the rest of the network runs on the replacement model; ``splice=False``: the original MLPs run and
each layer's reconstruction error ``mlp_out - transcoder(x)`` is kept as an explicit error term).
It keeps, in float64, every quantity needed to write the residual stream as an exact sum of
components once the non-linearities are frozen at this input: token and position embeddings,
per-head attention patterns and LayerNorm inputs (``ln1.hook_normalized``, ``ln1.hook_scale``),
feature activations, decoder outputs, errors, and the final LayerNorm.

Residual-stream *stages* number the places a direction can be read: ``2L`` is
``blocks.L.hook_resid_pre`` (read by layer L's attention), ``2L + 1`` is ``blocks.L.hook_resid_mid``
(read by layer L's MLP / transcoder) and ``2 n_layers`` is the final residual (read by
``ln_final`` and the unembedding). In parallel blocks (GPT-NeoX / Pythia, GPT-J) the MLP reads the
block's input too, so stage ``2L + 1`` is ``blocks.L.hook_resid_pre`` and layer L's attention
writes only after it (:func:`attention_writes_before`); a raw-residual transcoder there reads
``blocks.L.hook_mlp_in``.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

from mechscope.dictionaries import Dictionary
from mechscope.errors import ConfigError
from mechscope.models.model import Model, as_model, sublayer_norms

_IN_RE = re.compile(r"^blocks\.(\d+)\.(ln2\.hook_normalized|hook_resid_mid|hook_mlp_in)$")
_OUT_RE = re.compile(r"^blocks\.(\d+)\.hook_mlp_out$")


class TranscoderError(ConfigError):
    """A transcoder set that does not fit the model, or a model this room cannot decompose."""


# ------------------------------------------------------------------------------------------
# the set
# ------------------------------------------------------------------------------------------
@dataclass
class TranscoderSet:
    """``{layer: transcoder}``; each transcoder reads its MLP's input and predicts ``hook_mlp_out``."""

    transcoders: dict[int, Dictionary]
    paths: dict[int, str] = field(default_factory=dict)

    def __post_init__(self):
        if not self.transcoders:
            raise TranscoderError("a transcoder set needs at least one transcoder; found none")
        fixed = {}
        for layer, d in self.transcoders.items():
            got = transcoder_layer(d)
            if int(layer) != got:
                raise TranscoderError(f"transcoder {d.cfg.name!r} reads layer {got} but was given for layer {layer}")
            fixed[int(layer)] = d.eval()
        self.transcoders = dict(sorted(fixed.items()))

    @property
    def layers(self) -> list[int]:
        return list(self.transcoders)

    def __getitem__(self, layer: int) -> Dictionary:
        if layer not in self.transcoders:
            raise TranscoderError(f"no transcoder for layer {layer}; this set covers layers {self.layers}")
        return self.transcoders[layer]

    def __contains__(self, layer: int) -> bool:
        return layer in self.transcoders

    def __len__(self) -> int:
        return len(self.transcoders)

    def input_is_normalized(self, layer: int) -> bool:
        """True when the transcoder reads ``ln2.hook_normalized`` (else the raw residual)."""
        return self[layer].cfg.hook_in.endswith("ln2.hook_normalized")

    @classmethod
    def from_list(cls, dictionaries: Iterable[Dictionary]) -> "TranscoderSet":
        out: dict[int, Dictionary] = {}
        for d in dictionaries:
            layer = transcoder_layer(d)
            if layer in out:
                raise TranscoderError(f"two transcoders for layer {layer}: {out[layer].cfg.name!r} and {d.cfg.name!r}")
            out[layer] = d
        return cls(out)

    @classmethod
    def load(cls, paths: str | os.PathLike | Iterable[str | os.PathLike], device: str = "cpu") -> "TranscoderSet":
        """Load transcoders from directories: each path is one dictionary directory (``cfg.json``)
        or a directory holding several (a training run's ``out_dir``: one sub-directory each)."""
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        dirs: list[Path] = []
        for p in map(Path, paths):
            if (p / "cfg.json").exists() or (p / "cfg.json").is_file():
                dirs.append(p)
            elif p.is_dir():
                subs = sorted(q for q in p.iterdir() if q.is_dir() and (q / "cfg.json").exists() and q.name != "checkpoints")
                if not subs:
                    raise TranscoderError(f"{p} holds no dictionary (no cfg.json in it or in a sub-directory)")
                dirs += subs
            else:
                raise TranscoderError(f"{p}: expected a transcoder directory (cfg.json + dictionary.safetensors), found nothing there")
        out: dict[int, Dictionary] = {}
        where: dict[int, str] = {}
        for d_path in dirs:
            d = Dictionary.load(d_path, device=device)
            if d.cfg.kind == "sae":
                raise TranscoderError(f"{d_path} is an SAE; expected a transcoder or skip_transcoder")
            layer = transcoder_layer(d)
            if layer in out:
                raise TranscoderError(f"two transcoders for layer {layer}: {where[layer]} and {d_path}")
            out[layer], where[layer] = d, str(d_path)
        return cls(out, where)

    def save(self, directory: str | os.PathLike) -> Path:
        """Save every transcoder under ``directory/<name>/`` (loadable with :meth:`load`)."""
        directory = Path(directory)
        for d in self.transcoders.values():
            d.save(directory / d.cfg.name)
        return directory

    def check(self, model: Model) -> None:
        """Raise :class:`TranscoderError` unless every transcoder fits ``model``'s MLPs."""
        cfg = check_model(model)
        for layer, d in self.transcoders.items():
            if layer >= cfg.n_layers:
                raise TranscoderError(f"transcoder {d.cfg.name!r} is for layer {layer}; the model has {cfg.n_layers} layers")
            if d.cfg.d_in != cfg.d_model or d.cfg.d_out != cfg.d_model:
                raise TranscoderError(f"transcoder {d.cfg.name!r} maps {d.cfg.d_in} -> {d.cfg.d_out}; the model's d_model is {cfg.d_model}")
            if d.cfg.hook_in.endswith("ln2.hook_normalized") and sublayer_norms(cfg).mlp_in is None:
                raise TranscoderError(f"transcoder {d.cfg.name!r} reads ln2.hook_normalized, but this model's MLP reads the raw "
                                      "residual (no norm before it); expected a transcoder on blocks.L.hook_resid_mid")

    def __repr__(self) -> str:
        return f"TranscoderSet(layers={self.layers}, " + ", ".join(f"{l}: {d.n_latents} latents ({d.cfg.activation})" for l, d in self.transcoders.items()) + ")"


def transcoder_layer(d: Dictionary) -> int:
    """The MLP layer a transcoder stands in for (checks its hooks)."""
    c = d.cfg
    if c.kind not in ("transcoder", "skip_transcoder"):
        raise TranscoderError(f"expected a transcoder or skip_transcoder, found kind={c.kind!r} ({c.name!r})")
    m_in = _IN_RE.match(c.hook_in or "")
    m_out = _OUT_RE.match(c.hook_out or "")
    if not m_in or not m_out:
        raise TranscoderError(f"transcoder {c.name!r} maps {c.hook_in!r} -> {c.hook_out!r}; expected "
                              "blocks.L.ln2.hook_normalized (or blocks.L.hook_resid_mid / hook_mlp_in) -> blocks.L.hook_mlp_out")
    if m_in.group(1) != m_out.group(1):
        raise TranscoderError(f"transcoder {c.name!r} reads layer {m_in.group(1)} but writes layer {m_out.group(1)}'s MLP output")
    return int(m_in.group(1))


def attention_writes_before(cfg, layer: int, stage: int) -> bool:
    """Whether layer ``layer``'s attention output is part of the residual at ``stage``."""
    return (2 * layer + (2 if getattr(cfg, "parallel_attn_mlp", False) else 1)) <= stage


def check_model(model) -> object:
    """The TransformerLens config of a model this room can decompose; a clear error otherwise."""
    module = as_model(model).module
    cfg = getattr(module, "cfg", None)
    if cfg is None or type(module).__name__ != "HookedTransformer":
        raise TranscoderError(f"transcoder circuits need a TransformerLens HookedTransformer; found {type(module).__name__}")
    if cfg.attn_only:
        raise TranscoderError("the model is attention-only; transcoders stand in for MLPs")
    problems = []
    if cfg.normalization_type not in (None, "LN", "LNPre", "RMS", "RMSPre"):
        problems.append(f"normalization {cfg.normalization_type!r}")
    if problems:
        raise TranscoderError(f"this model cannot be decomposed exactly: {', '.join(problems)} are not supported")
    return cfg


# ------------------------------------------------------------------------------------------
# LayerNorm helpers: the frozen map x -> C(x) / s (LN) or x / s (RMS), and its transpose
# ------------------------------------------------------------------------------------------
def norm_centers(cfg) -> bool:
    return cfg.normalization_type in ("LN", "LNPre")


def ln_weight(module, cfg) -> Tensor | None:
    """A LayerNorm's elementwise weight ``w`` (``None`` for LNPre / RMSPre / no norm)."""
    if cfg.normalization_type in ("LN", "RMS"):
        return module.w.detach().double()
    return None


def ln_bias(module, cfg) -> Tensor | None:
    if cfg.normalization_type == "LN":
        return module.b.detach().double()
    return None


def center(u: Tensor) -> Tensor:
    """Subtract the mean over the last (d_model) dimension."""
    return u - u.mean(-1, keepdim=True)


def read_direction(u: Tensor, cfg, scale: Tensor | float | None = None) -> Tensor:
    """The residual-stream direction that reads ``u · norm(x)``: ``C(u) / s`` for LN (``u / s``
    for RMS; ``u`` with no normalization). ``scale`` is the frozen ``s`` (``None``: dropped, the
    input-invariant form)."""
    if cfg.normalization_type is None:
        return u
    v = center(u) if norm_centers(cfg) else u
    return v if scale is None else v / scale


def attention_input_read(u: Tensor, cfg, norms, scale: Tensor | float | None = None) -> Tensor:
    """``u`` read through the norm before attention (:func:`read_direction`; ``scale`` ``None``:
    the input-invariant form), or ``u`` itself when attention reads the raw residual (``norms``:
    :func:`~mechscope.models.model.sublayer_norms` of ``cfg``)."""
    return read_direction(u, cfg, scale) if norms.attn_in else u


# ------------------------------------------------------------------------------------------
# one run
# ------------------------------------------------------------------------------------------
class ReplacementRun:
    """The model on ``tokens [batch, pos]`` with every transcoder encoding its MLP's input.

    Attributes (float64 on CPU unless said; ``b`` batch, ``p`` position):

    * ``tokens [b, p]``, ``logits [b, p, vocab]`` (float32, the run's output);
    * ``embed [b, p, d_model]``, ``pos_embed [b, p, d_model]`` (zeros unless standard positions);
    * per layer ``l``: ``ln1[l] [b, p, d_model]`` (``ln1.hook_normalized``, or the residual without
      LayerNorm), ``s1[l] [b, p, 1]``, ``pattern[l] [b, head, q, k]``;
    * per transcoder layer: ``x_tc[l] [b, p, d_in]`` (its input), ``s2[l] [b, p, 1]`` (ln2's
      frozen scale; 1 for a raw-residual input), ``codes[l] [b, p, n_latents]``, ``recon[l]``,
      ``error[l] = mlp_out - recon`` (zero up to rounding when spliced);
    * ``mlp_out[l] [b, p, d_model]``: what each MLP (or its transcoder) wrote to the residual;
    * ``resid[stage] [b, p, d_model]``: the residual stream at each stage (module docstring);
    * ``lnf_scale [b, p, 1]``: ``ln_final``'s frozen scale;
    * a norm after attention (:func:`~mechscope.models.model.sublayer_norms`: Gemma 2's ``ln1_post``,
      OLMo 2's ``ln1``): ``s1_post[l] [b, p, 1]``, its frozen scale (ones otherwise).
    """

    def __init__(self, model, transcoders: TranscoderSet, tokens: Tensor, *, splice: bool = True):
        from mechscope.models import run_with_hooks

        self.model = as_model(model)
        self.module = self.model.module
        self.cfg = check_model(self.model)
        transcoders.check(self.model)
        self.ts = transcoders
        self.splice = splice
        cfg = self.cfg
        n_layers = cfg.n_layers
        if tokens.dim() == 1:
            tokens = tokens[None]
        self.tokens = tokens.to(self.model.device)
        self.has_norm = cfg.normalization_type is not None
        self.has_pos = cfg.positional_embedding_type == "standard"
        self.parallel = bool(getattr(cfg, "parallel_attn_mlp", False))
        self.norms = sublayer_norms(cfg)
        cache: dict[str, Tensor] = {}

        def keep(name):
            def fn(act, hook):
                cache[name] = act.detach()
                return None
            return fn

        hooks = [("hook_embed", keep("hook_embed"))]
        if self.has_pos:
            hooks.append(("hook_pos_embed", keep("hook_pos_embed")))
        for l in range(n_layers):
            hooks += [(f"blocks.{l}.hook_resid_pre", keep(f"resid_pre{l}")), (f"blocks.{l}.attn.hook_pattern", keep(f"pattern{l}"))]
            if not self.parallel:
                hooks.append((f"blocks.{l}.hook_resid_mid", keep(f"resid_mid{l}")))
            if self.norms.attn_in:
                hooks += [(f"blocks.{l}.ln1.hook_normalized", keep(f"ln1{l}")), (f"blocks.{l}.ln1.hook_scale", keep(f"s1{l}"))]
            if self.norms.mlp_in:
                hooks.append((f"blocks.{l}.ln2.hook_scale", keep(f"s2{l}")))
            if self.norms.attn_out:
                hooks.append((f"blocks.{l}.{self.norms.attn_out}.hook_scale", keep(f"s1_post{l}")))
            if l in transcoders:
                d = transcoders[l]

                def encode(act, hook, l=l, d=d):
                    x = act.detach()
                    cache[f"x_tc{l}"] = x
                    cache[f"codes{l}"] = d.encode(x.to(d.device, d.W_enc.dtype)).detach()
                    return None

                def replace(act, hook, l=l, d=d):
                    cache[f"mlp_orig{l}"] = act.detach()
                    if not splice:
                        cache[f"mlp_out{l}"] = act.detach()
                        return None
                    rec = d.reconstruct(cache[f"x_tc{l}"].to(d.device, d.W_enc.dtype)).to(act.device, act.dtype)
                    cache[f"mlp_out{l}"] = rec.detach()
                    return rec

                hooks += [(d.cfg.hook_in, encode), (f"blocks.{l}.hook_mlp_out", replace)]
            else:
                hooks.append((f"blocks.{l}.hook_mlp_out", keep(f"mlp_out{l}")))
        hooks.append((f"blocks.{n_layers - 1}.hook_resid_post", keep("resid_final")))
        if self.has_norm:
            hooks.append(("ln_final.hook_scale", keep("lnf_scale")))
        with torch.no_grad():
            self.logits = run_with_hooks(self.model, self.tokens, hooks).detach()
        f64 = lambda t: t.detach().to("cpu", torch.float64)  # noqa: E731
        B, P = self.tokens.shape
        self.tokens = self.tokens.cpu()
        self.logits = self.logits.cpu()
        self.embed = f64(cache["hook_embed"])
        self.pos_embed = f64(cache["hook_pos_embed"]) if self.has_pos else torch.zeros_like(self.embed)
        self.resid = {}
        for l in range(n_layers):
            self.resid[2 * l] = f64(cache[f"resid_pre{l}"])
            self.resid[2 * l + 1] = self.resid[2 * l] if self.parallel else f64(cache[f"resid_mid{l}"])
        self.resid[2 * n_layers] = f64(cache["resid_final"])
        ones = torch.ones(B, P, 1, dtype=torch.float64)
        self.pattern = {l: f64(cache[f"pattern{l}"]) for l in range(n_layers)}
        self.ln1 = {l: f64(cache[f"ln1{l}"]) if self.norms.attn_in else self.resid[2 * l] for l in range(n_layers)}
        self.s1 = {l: _scale(cache.get(f"s1{l}"), ones) for l in range(n_layers)}
        self.s2_ln = {l: _scale(cache.get(f"s2{l}"), ones) for l in range(n_layers)}
        self.s1_post = {l: _scale(cache.get(f"s1_post{l}"), ones) for l in range(n_layers)}
        self.lnf_scale = _scale(cache.get("lnf_scale"), ones)
        self.mlp_out = {l: f64(cache[f"mlp_out{l}"]) for l in range(n_layers)}
        self.x_tc, self.codes, self.recon, self.error, self.skip_out, self.s2 = {}, {}, {}, {}, {}, {}
        for l, d in transcoders.transcoders.items():
            x = f64(cache[f"x_tc{l}"])
            z = f64(cache[f"codes{l}"])
            W_dec, b_dec = d.W_dec.detach().double().cpu(), d.b_dec.detach().double().cpu()
            skip = x @ d.W_skip.detach().double().cpu().T if d.cfg.kind == "skip_transcoder" else torch.zeros_like(self.embed)
            self.x_tc[l], self.codes[l], self.skip_out[l] = x, z, skip
            self.recon[l] = z @ W_dec + b_dec + skip
            self.error[l] = self.mlp_out[l] - self.recon[l]
            self.s2[l] = self.s2_ln[l] if transcoders.input_is_normalized(l) else ones
        self.mlp_orig = {l: f64(cache[f"mlp_orig{l}"]) for l in transcoders.layers}
        self._weights: dict = {}

    # -- shapes and weights --------------------------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def final_stage(self) -> int:
        return 2 * self.cfg.n_layers

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def w(self, name: str, layer: int | None = None) -> Tensor:
        """Model weights in float64 on CPU (cached): ``W_V, W_O, b_V, b_O, W_E, W_U, b_U, W_pos``,
        ``ln1_w, ln1_b, lnf_w, lnf_b``."""
        key = (name, layer)
        if key not in self._weights:
            self._weights[key] = _weight(self.module, self.cfg, name, layer)
        return self._weights[key]

    def tc(self, layer: int, name: str) -> Tensor:
        """Transcoder parameters in float64 on CPU (cached): ``W_enc, b_enc, W_dec, b_dec, W_skip``."""
        key = ("tc", name, layer)
        if key not in self._weights:
            self._weights[key] = getattr(self.ts[layer], name).detach().double().cpu()
        return self._weights[key]

    def attention_read(self, layer: int, d: Tensor, batch: int, pos: int) -> Tensor:
        """The direction along which layer ``layer``'s summed attention output (heads and ``b_O``,
        before any post-norm) is read when the residual at ``(batch, pos)`` is read along ``d``:
        ``w1p ⊙ d / s1p`` when a norm follows attention (Gemma 2's ``ln1_post``, OLMo 2's ``ln1``; its
        scale frozen), ``d`` otherwise."""
        if self.norms.attn_out is None:
            return d
        return d * self.w("ln1_post_w", layer) / self.s1_post[layer][batch, pos]

    def source_read(self, u: Tensor, layer: int, batch: int, pos: int) -> Tensor:
        """The residual-stream direction at ``(batch, pos)`` whose dot product with the residual is
        ``u`` read through layer ``layer``'s attention-input norm (scale frozen): ``C(u) / s1``, or
        ``u`` when attention reads the raw residual (no norm, or OLMo 2's post-norm-only blocks)."""
        return attention_input_read(u, self.cfg, self.norms, self.s1[layer][batch, pos])

    def raw_logits(self, batch: int, pos: int) -> Tensor:
        """``[vocab]`` float64: the logits before the output soft-cap, recomputed from the final residual."""
        x = self.resid[self.final_stage][batch, pos]
        if self.has_norm:
            x = read_direction(x, self.cfg, self.lnf_scale[batch, pos]) * self.w("lnf_w") + self.w("lnf_b")
        return x @ self.w("W_U") + self.w("b_U")

    def encoder_direction(self, layer: int, feature: int, batch: int, pos: int) -> Tensor:
        """The residual-stream (stage ``2 layer + 1``) direction whose dot product with the
        residual is feature ``feature``'s pre-activation minus ``b_enc`` at this position
        (LayerNorm scale frozen): ``C(W_enc[i]) / s2``."""
        u = self.tc(layer, "W_enc")[feature]
        if not self.ts.input_is_normalized(layer):
            return u
        return read_direction(u, self.cfg, self.s2[layer][batch, pos])

    def pre_activation(self, layer: int, feature: int, batch: int, pos: int) -> float:
        """``W_enc[i] · x + b_enc[i]`` from the transcoder's actual input."""
        return float(self.x_tc[layer][batch, pos] @ self.tc(layer, "W_enc")[feature] + self.tc(layer, "b_enc")[feature])


def _scale(t: Tensor | None, ones: Tensor) -> Tensor:
    if t is None:
        return ones
    t = t.detach().to("cpu", torch.float64)
    return t if t.dim() == 3 else t[..., None]


def _weight(module, cfg, name: str, layer: int | None) -> Tensor:
    f = lambda t: t.detach().to("cpu", torch.float64)  # noqa: E731
    if name in ("W_V", "W_O", "b_V"):
        return f(getattr(module.blocks[layer].attn, name))
    if name == "b_O":
        return f(module.blocks[layer].attn.b_O)
    if name in ("W_E", "W_U", "b_U", "W_pos"):
        return f(getattr(module, name))
    if name in ("ln1_w", "ln1_b") and sublayer_norms(cfg).attn_in is None:  # attention reads the raw residual
        return torch.ones(cfg.d_model, dtype=torch.float64) if name == "ln1_w" else torch.zeros(cfg.d_model, dtype=torch.float64)
    if name in ("ln1_w", "ln1_b"):
        ln = module.blocks[layer].ln1
        v = ln_weight(ln, cfg) if name == "ln1_w" else ln_bias(ln, cfg)
        return v if v is not None else (torch.ones(cfg.d_model, dtype=torch.float64) if name == "ln1_w" else torch.zeros(cfg.d_model, dtype=torch.float64))
    if name == "ln1_post_w":  # the norm after attention (ln1_post in Gemma 2, ln1 in OLMo 2)
        return f(getattr(module.blocks[layer], sublayer_norms(cfg).attn_out).w)
    if name in ("lnf_w", "lnf_b"):
        ln = getattr(module, "ln_final", None)
        v = None if ln is None else (ln_weight(ln, cfg) if name == "lnf_w" else ln_bias(ln, cfg))
        return v if v is not None else (torch.ones(cfg.d_model, dtype=torch.float64) if name == "lnf_w" else torch.zeros(cfg.d_model, dtype=torch.float64))
    raise KeyError(name)
