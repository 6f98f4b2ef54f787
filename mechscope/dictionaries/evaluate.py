"""How good is a dictionary?

* :func:`reconstruction_metrics` over held-out rows: MSE, FVU (= 1 - explained variance),
  L0, dead and dense latent fractions, mean cosine similarity between target and
  reconstruction, and the feature-density histogram (PNG).
* :func:`splice_scores` runs the model with the reconstruction spliced in place of the
  activation (for a transcoder: its prediction replaces ``hook_out``, e.g. the MLP output)
  and compares against the clean run and a zero-ablation baseline:
  ``CE score = (CE_zero - CE_spliced) / (CE_zero - CE_clean)`` and
  ``KL score = (KL_zero - KL_spliced) / KL_zero`` with ``KL = KL(clean || run)``.
  1 means the dictionary loses nothing; 0 means it is as bad as deleting the activation.

The BOS position is left untouched in every run (stores skip it; its activations are outliers).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterable

import torch
import torch.nn.functional as F

from mechscope.dictionaries.dictionary import Dictionary
from mechscope.errors import ConfigError


@torch.no_grad()
def reconstruction_metrics(d: Dictionary, batches: Iterable[dict[str, torch.Tensor]], *, dense_threshold: float = 0.1,
                           histogram: str | Path | None = None) -> dict:
    """Metrics over ``batches`` (``{hook: [rows, d]}`` dicts, as sources yield them)."""
    was_training = d.training
    d.eval()
    cfg = d.cfg
    sse = n = 0.0
    s1 = s2 = None
    l0_sum = cos_sum = 0.0
    counts = torch.zeros(d.n_latents, dtype=torch.long)
    for batch in batches:
        x = batch[cfg.hook_in].to(d.device, d.W_enc.dtype)
        y = batch[cfg.target_hook].to(d.device, d.W_dec.dtype)
        out = d(x, y)
        err = (y - out.recon).double()
        yd = y.double()
        sse += float(err.pow(2).sum())
        s1 = yd.sum(0) if s1 is None else s1 + yd.sum(0)
        s2 = yd.pow(2).sum(0) if s2 is None else s2 + yd.pow(2).sum(0)
        l0_sum += float((out.latent_acts > 0).sum())
        cos_sum += float(F.cosine_similarity(out.recon.double(), yd, dim=-1).sum())
        counts += d.counts(out).cpu()
        n += x.shape[0]
    d.train(was_training)
    if n == 0:
        raise ConfigError("reconstruction_metrics got no batches; expected at least one")
    total_var = float((s2 - s1.pow(2) / n).sum())
    density = counts.double() / n
    result = {"tokens": int(n), "mse": sse / n, "fvu": sse / total_var if total_var > 0 else float("nan"),
              "l0": l0_sum / n, "dead_frac": float((counts == 0).double().mean()),
              "dense_frac": float((density > dense_threshold).double().mean()), "cosine": cos_sum / n}
    result["explained_variance"] = 1 - result["fvu"]
    if histogram is not None:
        result["histogram"] = str(density_histogram(density, histogram, title=cfg.name))
    return result


def density_histogram(density: torch.Tensor, path: str | Path, title: str = "") -> Path:
    """Histogram of log10 feature density (fraction of tokens each latent fires on) as a PNG;
    dead latents are counted in the leftmost bar."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ConfigError("the density histogram needs matplotlib (pip install 'mechscope[report]')") from e
    from mechscope.files import atomic_write

    logd = torch.log10(density.double().clamp_min(1e-10)).numpy()
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    ax.hist(logd, bins=60, color="#3b6ea5")
    ax.set_xlabel("log10 feature density (dead at -10)")
    ax.set_ylabel("latents")
    ax.set_title(f"feature density {title}".strip(), fontsize=9)
    fig.tight_layout()
    path = Path(path)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    plt.close(fig)
    return path


def _logits(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor) and output.dim() == 3:
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise ConfigError(f"splicing scores need a language model returning [batch, pos, vocab] logits; found {type(output).__name__}")


@torch.no_grad()
def splice_scores(d: Dictionary, model, tokens: torch.Tensor, *, batch_size: int = 16, skip_bos: bool = True) -> dict:
    """CE and KL scores of ``d`` spliced into ``model`` over ``tokens [batch, pos]``."""
    from mechscope.models import run_with_hooks
    from mechscope.models.model import as_model

    model = as_model(model)
    cfg = d.cfg
    if cfg.hook_in is None:
        raise ConfigError("splice_scores needs the dictionary's hook_in (and hook_out for transcoders)")
    was_training = d.training
    d.eval()
    pos0 = 1 if skip_bos else 0
    captured: dict[str, torch.Tensor] = {}

    def capture(act, hook):
        captured["x"] = act
        return None

    def splice(act, hook):
        x = act if cfg.kind == "sae" else captured.pop("x")
        inp = x[:, pos0:].reshape(x.shape[0], x.shape[1] - pos0, -1).to(d.device)
        rec = d.reconstruct(inp).to(act.dtype).reshape(act[:, pos0:].shape)
        new = act.clone()
        new[:, pos0:] = rec
        return new

    def zero(act, hook):
        new = act.clone()
        new[:, pos0:] = 0
        return new

    target = cfg.target_hook
    runs = {"clean": [], "spliced": [(target, splice)] if cfg.kind == "sae" else [(cfg.hook_in, capture), (target, splice)],
            "zero": [(target, zero)]}
    sums = {k: 0.0 for k in ("ce_clean", "ce_spliced", "ce_zero", "kl_spliced", "kl_zero")}
    n = 0
    for start in range(0, tokens.shape[0], batch_size):
        tok = tokens[start : start + batch_size].to(model.device)
        logp = {name: F.log_softmax(_logits(run_with_hooks(model, tok, hooks)).double(), -1) for name, hooks in runs.items()}
        nxt = tok[:, 1:]
        count = nxt.numel()
        for name, lp in logp.items():
            sums[f"ce_{name}"] += float(-lp[:, :-1].gather(-1, nxt.unsqueeze(-1)).sum())
        p = logp["clean"].exp()
        for name in ("spliced", "zero"):
            sums[f"kl_{name}"] += float((p * (logp["clean"] - logp[name])).sum(-1)[:, :-1].sum())
        n += count
    d.train(was_training)
    r = {k: v / n for k, v in sums.items()}
    gap = r["ce_zero"] - r["ce_clean"]
    r["ce_score"] = (r["ce_zero"] - r["ce_spliced"]) / gap if abs(gap) > 1e-12 else float("nan")
    r["kl_score"] = (r["kl_zero"] - r["kl_spliced"]) / r["kl_zero"] if r["kl_zero"] > 1e-12 else float("nan")
    r["ce_delta"] = r["ce_spliced"] - r["ce_clean"]
    r["predictions"] = n
    return r


def evaluate(d: Dictionary, source=None, *, n_tokens: int = 65_536, batch_size: int = 4096, seed: int = 1,
             model=None, stream=None, n_contexts: int = 32, context_start: int = 0, histogram: str | Path | None = None,
             dense_threshold: float = 0.1, splice: bool = True) -> dict:
    """Reconstruction metrics over ``n_tokens`` rows of ``source`` (a store source, store,
    or ``ModelSource``; by default the model streamed over ``stream``), and — when ``model`` and
    ``stream`` are given and ``splice`` — CE / KL splice scores over ``n_contexts`` contexts of
    ``stream`` from ``context_start``."""
    from mechscope.dictionaries.trainer import _as_source

    for name, v, lo in (("n_tokens", n_tokens, 1), ("batch_size", batch_size, 1), ("n_contexts", n_contexts, 0)):
        if v < lo:
            raise ConfigError(f"{name} must be >= {lo}; found {v}")
    batch_size = min(batch_size, n_tokens)  # n_tokens rows, not a whole default-sized batch more
    result: dict = {"dictionary": d.cfg.name, "kind": d.cfg.kind, "activation": d.cfg.activation, "n_latents": d.n_latents}
    if source is None and model is not None and stream is not None:
        from mechscope.dictionaries.sources import ModelSource

        hooks = list(dict.fromkeys([d.cfg.hook_in, d.cfg.target_hook]))
        source = ModelSource(model, stream, hooks, buffer_tokens=max(n_tokens, batch_size))
    if source is not None:
        source = _as_source(source)
        n_batches = max(1, math.ceil(n_tokens / batch_size))
        it = source.iterate(batch_size, seed=seed, device=d.device)
        result |= reconstruction_metrics(d, (next(it) for _ in range(n_batches)), dense_threshold=dense_threshold, histogram=histogram)
    if splice and model is not None and stream is not None and n_contexts > 0:
        n = min(n_contexts, len(stream) - context_start)
        result |= splice_scores(d, model, stream.batch(context_start, n), skip_bos=stream.prepend_bos)
    if len(result) == 4:
        raise ConfigError("evaluate needs a source of activations and/or a model with a token stream; found neither")
    return result
