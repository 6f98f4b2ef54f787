"""Feature dashboards: for every latent of a dictionary, over a fixed slice of a corpus —

* the top-k activating tokens, each with a window of context and the feature's activation on
  every token of that window;
* a histogram of its non-zero activations (bins from 0 to its maximum) and its density (the
  fraction of tokens on which it is active);
* its decoder logit effects: the tokens its output direction raises and lowers most
  (``W_dec @ W_U``, through ``W_O`` for ``attn.hook_z`` SAEs; see
  :func:`mechscope.explorer.compute.logit_effects`).

Computed once per (dictionary, model, corpus slice, settings) in one model pass and two encoder
passes, then cached on disk as a saved artifact (``cfg.json`` + ``dashboards.safetensors``,
atomic writes) under ``cache_dir/dashboards/<dictionary hash>-<corpus hash>/``.

Shapes: ``N`` contexts of ``T`` tokens (rows ``r = context * T + position``), ``M`` latents,
``k`` top examples, ``W = window_before + 1 + window_after``, ``B`` histogram bins.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from mechscope.errors import FormatError, StoreError
from mechscope.explorer.compute import _r, encode, logit_effects, token_texts
from mechscope.explorer.config import DashboardConfig
from mechscope.explorer.errors import NotFoundError

log = logging.getLogger(__name__)

FORMAT = "mechscope.explorer.dashboards"
VERSION = 1
ENCODE_ELEMENTS = 4_000_000  # rows x latents encoded at once


# -- hashes ---------------------------------------------------------------------------------
def _hash_tensors(h, state: dict) -> None:
    for name in sorted(state):
        t = state[name].detach().contiguous().cpu()
        h.update(f"{name}|{t.dtype}|{list(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")  # reshape: 0-dim buffers (TL attention IGNORE)


def dictionary_hash(dictionary) -> str:
    """sha256 of the dictionary's config and weights."""
    h = hashlib.sha256(json.dumps(dictionary.cfg.to_dict(), sort_keys=True, default=str).encode())
    _hash_tensors(h, dictionary.state_dict())
    return h.hexdigest()


def model_hash(model) -> str:
    """The weights' sha256 recorded at load (native / zoo models), else a hash of the state dict."""
    known = model.meta.get("weights_sha256")
    if known:
        return str(known)
    h = hashlib.sha256()
    _hash_tensors(h, model.module.state_dict())
    return h.hexdigest()


def corpus_slice(stream, n_contexts: int) -> tuple[torch.Tensor, list[int]]:
    """``n_contexts`` contexts evenly spaced over ``stream`` (so the slice spans many documents):
    ``([N, T] tokens, context indices)``."""
    n = min(n_contexts, len(stream))
    idx = [int(i * len(stream) / n) for i in range(n)]
    return torch.stack([torch.as_tensor(stream[i]) for i in idx]), idx


def cache_key(dictionary_sha: str, model_sha: str, stream_sha: str, context_ids: list[int], cfg: DashboardConfig) -> str:
    """``<dictionary hash>-<corpus hash>``; the corpus hash covers the model, the token stream,
    the chosen contexts and every setting that changes the numbers."""
    corpus = hashlib.sha256(json.dumps({"model": model_sha, "stream": stream_sha, "contexts": context_ids, "cfg": cfg.key(),
                                        "version": VERSION}, sort_keys=True).encode()).hexdigest()
    return f"{dictionary_sha[:16]}-{corpus[:16]}"


# -- the data -------------------------------------------------------------------------------
@dataclass
class Dashboards:
    """Every feature's dashboard data for one dictionary (see the module docstring).

    tensors: ``tokens [N, T]``; ``top_values [M, k]``, ``top_rows [M, k]`` (-1: fewer than k
    active tokens); ``window_tokens [M, k, W]`` (-1: outside the context), ``window_acts [M, k,
    W]``; ``hist [M, B]`` (bin b spans ``(b, b+1] * max / B``), ``max_act [M]``, ``count [M]``
    (active tokens), ``sum_act [M]``; ``logit_top_ids / logit_top_vals / logit_bottom_ids /
    logit_bottom_vals [M, n]`` when the decoder maps to the residual stream.
    meta: settings, hashes, ``n_tokens`` (tokens counted for density).
    """

    tensors: dict[str, torch.Tensor]
    meta: dict

    @property
    def n_latents(self) -> int:
        return int(self.tensors["max_act"].shape[0])

    def save(self, directory: str | Path) -> Path:
        from mechscope.files import save_artifact

        save_artifact(directory, FORMAT, VERSION, {"meta": self.meta}, {"dashboards": self.tensors})
        return Path(directory)

    @classmethod
    def load(cls, directory: str | Path) -> "Dashboards":
        from mechscope.files import load_artifact

        cfg, files = load_artifact(directory, FORMAT, VERSION)
        t = files.get("dashboards") or {}
        need = ("tokens", "top_values", "top_rows", "window_tokens", "window_acts", "hist", "max_act", "count", "sum_act")
        missing = [n for n in need if n not in t]
        if missing:
            raise FormatError(f"{directory}: dashboards file lacks tensors {missing}; found {sorted(t)}")
        return cls(tensors=t, meta=cfg["meta"])

    def feature(self, f: int, tokenizer) -> dict:
        """One feature's dashboard as plain data."""
        if not 0 <= f < self.n_latents:
            raise NotFoundError(f"features are 0..{self.n_latents - 1}; found {f}")
        t, m = self.tensors, self.meta
        wb = m["window_before"]
        top = []
        for j in range(t["top_rows"].shape[1]):
            row = int(t["top_rows"][f, j])
            if row < 0:
                break
            ids = t["window_tokens"][f, j].tolist()
            acts = t["window_acts"][f, j].tolist()
            keep = [i for i, tok in enumerate(ids) if tok >= 0]
            texts = token_texts(tokenizer, [ids[i] for i in keep])
            top.append({"value": _r(t["top_values"][f, j]), "context": m["context_ids"][row // m["context_len"]],
                        "position": row % m["context_len"],
                        "tokens": [{"text": s, "act": _r(acts[i]), "current": i == wb} for i, s in zip(keep, texts)]})
        mx = float(t["max_act"][f])
        bins = t["hist"].shape[1]
        count = int(t["count"][f])
        out = {
            "feature": f, "n_tokens": m["n_tokens"], "count": count, "density": _r(count / max(1, m["n_tokens"]), 8),
            "max": _r(mx), "mean_when_active": _r(float(t["sum_act"][f]) / count) if count else 0.0,
            "histogram": {"edges": [_r(mx * b / bins) for b in range(bins + 1)], "counts": t["hist"][f].tolist()},
            "top": top, "logits": None, "corpus": m["corpus"], "cache_key": m["cache_key"],
        }
        if "logit_top_ids" in t:
            out["logits"] = {
                side: [{"id": int(i), "text": s, "value": _r(v)} for i, s, v in
                       zip(t[f"logit_{side}_ids"][f].tolist(), token_texts(tokenizer, t[f"logit_{side}_ids"][f].tolist()), t[f"logit_{side}_vals"][f].tolist())]
                for side in ("top", "bottom")}
        return out


def compute_dashboards(model, dictionary, tokens: torch.Tensor, cfg: DashboardConfig, *, context_ids: list[int] | None = None,
                       meta: dict | None = None, progress: Callable[[str, float], None] | None = None) -> Dashboards:
    """Dashboards of every latent of ``dictionary`` over ``tokens [N, T]`` (see the module docstring).

    Position 0 of each context (BOS) is left out of every statistic when ``cfg.exclude_bos``
    (attention sinks there give outsized activations that say little about the feature).
    """
    from mechscope.models import run_with_cache

    say = progress or (lambda what, frac: None)
    N, T = tokens.shape
    M = dictionary.cfg.n_latents
    hook = dictionary.cfg.hook_in
    acts = []
    for s in range(0, N, cfg.batch_size):
        say("model", s / N)
        cache = run_with_cache(model, tokens[s : s + cfg.batch_size].to(model.device), [hook], cache_device="cpu")
        a = cache[hook].float()
        acts.append(a.reshape(a.shape[0] * a.shape[1], -1))
    X = torch.cat(acts)  # [N*T, d_in]
    rows = X.shape[0]
    valid = torch.ones(N, T, dtype=torch.bool)
    if cfg.exclude_bos:
        valid[:, 0] = False
    valid = valid.reshape(-1)
    chunk = max(64, ENCODE_ELEMENTS // max(1, M))
    k = min(cfg.top_k, rows)

    # pass A: counts, sums, top-k
    top_vals = torch.zeros(k, M)
    top_rows = torch.full((k, M), -1, dtype=torch.long)
    count = torch.zeros(M, dtype=torch.long)
    sum_act = torch.zeros(M, dtype=torch.float64)
    for s in range(0, rows, chunk):
        say("encode", s / rows)
        codes = encode(dictionary, X[s : s + chunk])
        codes[~valid[s : s + chunk]] = 0
        count += (codes > 0).sum(0)
        sum_act += codes.sum(0, dtype=torch.float64)
        ids = torch.arange(s, s + codes.shape[0])[:, None].expand_as(codes)
        vals = torch.cat([top_vals, codes])
        order = vals.topk(k, dim=0).indices
        top_vals = vals.gather(0, order)
        top_rows = torch.cat([top_rows, ids]).gather(0, order)
    top_rows = torch.where(top_vals > 0, top_rows, torch.full_like(top_rows, -1))
    max_act = top_vals[0].clone()
    top_vals, top_rows = top_vals.T.contiguous(), top_rows.T.contiguous()  # [M, k]

    # windows around each top example (clipped to its context)
    offsets = torch.arange(-cfg.window_before, cfg.window_after + 1)
    G = top_rows[..., None] + offsets  # [M, k, W]
    same_ctx = (G >= 0) & (G // T == top_rows[..., None] // T)
    wvalid = same_ctx & (top_rows[..., None] >= 0)
    flat_tokens = tokens.reshape(-1)
    window_tokens = torch.where(wvalid, flat_tokens[G.clamp(0, rows - 1)], torch.full_like(G, -1))
    window_acts = torch.zeros(G.shape)
    feat = torch.arange(M)[:, None, None].expand_as(G)

    # pass B: histograms and window activations
    bins = cfg.n_bins
    hist = torch.zeros(M * bins, dtype=torch.long)
    scale = torch.where(max_act > 0, bins / max_act, torch.zeros_like(max_act))
    for s in range(0, rows, chunk):
        say("histograms", s / rows)
        codes = encode(dictionary, X[s : s + chunk])
        sel = wvalid & (G >= s) & (G < s + codes.shape[0])
        window_acts[sel] = codes[G[sel] - s, feat[sel]]
        codes[~valid[s : s + chunk]] = 0
        r, f = (codes > 0).nonzero(as_tuple=True)
        b = (codes[r, f] * scale[f]).ceil().long().clamp(1, bins) - 1
        hist += torch.bincount(f * bins + b, minlength=M * bins)
    tensors = {"tokens": tokens.to(torch.int32), "top_values": top_vals, "top_rows": top_rows.to(torch.int32),
               "window_tokens": window_tokens.to(torch.int32),
               "window_acts": window_acts, "hist": hist.view(M, bins), "max_act": max_act, "count": count, "sum_act": sum_act}
    say("logits", 1.0)
    effects = logit_effects(model, dictionary, n=cfg.n_logits)
    if effects is not None:
        for name, t in zip(("logit_top_ids", "logit_top_vals", "logit_bottom_ids", "logit_bottom_vals"), effects):
            tensors[name] = t.contiguous()
    info = {**cfg.key(), "context_len": T, "n_contexts_used": N, "context_ids": list(context_ids or range(N)),
            "n_tokens": int(valid.sum()), "hook": hook, **(meta or {})}
    return Dashboards(tensors=tensors, meta=info)


def load_or_compute(directory: Path, compute: Callable[[], Dashboards]) -> tuple[Dashboards, str]:
    """The dashboards cached in ``directory`` (``"disk"``), or ``compute()`` saved there
    (``"computed"``). A corrupt cache entry is logged and recomputed over."""
    if (directory / "cfg.json").exists():
        try:
            return Dashboards.load(directory), "disk"
        except (StoreError, FormatError, KeyError) as e:
            log.warning("dashboard cache %s is unreadable (%s); recomputing it", directory, e)
    dash = compute()
    dash.save(directory)
    return dash, "computed"
