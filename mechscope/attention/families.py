"""Feature families of an attention-output SAE, labelled automatically by measurable tests
(after Kissane et al. 2024).

Two probes:

1. **Repeated random sequences** ``BOS A A`` (``A``: ``repeat_len`` distinct random tokens). For
   a second-half query ``q`` the earlier occurrence of the current token is at ``q - L`` and the
   *induction target* (the token after it) at ``q - L + 1``. ``target_offsets`` (default ``(1,)``,
   Kissane et al.'s definition) names the offsets ``s`` of the target positions ``q - L + s``; a
   lagged induction circuit that copies from a few tokens after the earlier occurrence is
   measured with e.g. ``(3, 4)``, the shares and attention summed over those positions. A feature is an
   **induction** feature when it fires on the second occurrence (at least ``induction_min_fires``
   second-half positions, and mean activation there >= ``induction_ratio`` x the first half's),
   its DFA source mass comes from the target (share >= ``target_share``) and the head that
   carries most of its DFA attends to the target (mean attention >= ``target_attention``).
   With the same selectivity but DFA mass on ``q - L`` it is a **duplicate_token** feature.
2. **Corpus text**. For every other live feature, its DFA at its top-activating positions
   (at most ``max_rows`` per feature), split by source distance ``d = q - k``. Per row only
   positive net source terms count (summed over heads); shares are averaged over rows. Buckets:
   ``bos`` (k = 0), ``self`` (d = 0), ``prev`` (d = 1), ``short`` (2 <= d <= ``short_range``),
   ``long`` (d > ``short_range``). Decision list (``share`` = ``family_share``):
   prev >= share: **previous_token**; self >= share: **current_token**; bos >= share: **bos**;
   long >= share: **long_range**; self + prev + short >= share: **short_range**; else **mixed**.

A feature is live when it fires on either probe; the rest are **dead**. :attr:`Families.shares`
gives the share of live features in each family.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from mechscope.attention.dfa import AttentionInputs, attention_inputs, dfa_rows, zsae_info
from mechscope.errors import ConfigError

FAMILIES = ("induction", "duplicate_token", "previous_token", "current_token", "short_range", "long_range", "bos", "mixed", "dead")


@dataclass
class FamilyConfig:
    """Thresholds and probe sizes of :func:`label_families` (see the module docstring)."""

    n_repeats: int = 64
    repeat_len: int | None = None  # default: min(32, (n_ctx - 1) // 2)
    max_rows: int = 48
    induction_min_fires: int = 5
    induction_ratio: float = 2.0
    target_share: float = 0.3
    target_attention: float = 0.3
    target_offsets: tuple[int, ...] = (1,)  # induction target positions q - L + s
    family_share: float = 0.5
    short_range: int = 8
    batch_size: int = 32
    seed: int = 0

    def __post_init__(self):
        if min(self.n_repeats, self.max_rows, self.batch_size, self.short_range, self.induction_min_fires) < 1:
            raise ConfigError(f"n_repeats, max_rows, batch_size and short_range must be >= 1; found {self}")
        for name in ("target_share", "target_attention", "family_share"):
            v = getattr(self, name)
            if not 0 <= v <= 1:
                raise ConfigError(f"{name} must be in [0, 1]; found {v}")
        self.target_offsets = tuple(int(o) for o in self.target_offsets)
        if not self.target_offsets or min(self.target_offsets) < 1 or len(set(self.target_offsets)) != len(self.target_offsets):
            raise ConfigError(f"target_offsets must be distinct offsets >= 1 after the earlier occurrence; found {self.target_offsets}")


def token_pool(model, bos: int | None = None) -> list[int]:
    """Ordinary token ids to draw random sequences from: the tokenizer's non-special ids, or
    every id but ``bos`` for a model without a tokenizer."""
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        from mechscope.tasks.induction import token_pool as pool

        return pool(tok)
    d_vocab = model.module.cfg.d_vocab
    return [i for i in range(d_vocab) if i != bos]


def bos_token(model) -> int:
    """The BOS id: the tokenizer's, or ``model.meta['bos']``, or 0."""
    tok = getattr(model, "tokenizer", None)
    if tok is not None:
        from mechscope.data.tokenizer import bos_id

        return bos_id(tok)
    return int(model.meta.get("bos", 0))


def repeated_sequences(model, n: int, repeat_len: int, seed: int = 0) -> Tensor:
    """``[n, 1 + 2 * repeat_len]`` prompts ``BOS A A`` with ``A`` distinct random ordinary tokens."""
    bos = bos_token(model)
    pool = token_pool(model, bos)
    if len(pool) < repeat_len:
        raise ConfigError(f"need {repeat_len} distinct ordinary tokens for a repeated sequence; the vocabulary has {len(pool)}")
    n_ctx = model.module.cfg.n_ctx
    if 1 + 2 * repeat_len > n_ctx:
        raise ConfigError(f"a repeated sequence of length {repeat_len} needs {1 + 2 * repeat_len} positions; the model has n_ctx={n_ctx}")
    rng = random.Random(f"repeated|{seed}")
    rows = []
    for _ in range(n):
        a = rng.sample(pool, repeat_len)
        rows.append([bos] + a + a)
    return torch.tensor(rows, dtype=torch.long)


@dataclass
class Families:
    """Family labels of every feature of one attention-output SAE, with the evidence."""

    hook: str
    layer: int
    labels: list[str]
    live: Tensor  # [n_latents] bool
    stats: list[dict]  # per feature: the measured numbers behind its label
    config: FamilyConfig = field(default_factory=FamilyConfig)

    def counts(self) -> dict[str, int]:
        c = Counter(self.labels)
        return {f: c.get(f, 0) for f in FAMILIES}

    @property
    def n_live(self) -> int:
        return int(self.live.sum())

    @property
    def shares(self) -> dict[str, float]:
        """Share of live features in each family (dead excluded)."""
        n = max(1, self.n_live)
        return {f: round(c / n, 4) for f, c in self.counts().items() if f != "dead"}

    def features(self, family: str) -> list[int]:
        if family not in FAMILIES:
            raise ConfigError(f"unknown family {family!r}; expected one of {FAMILIES}")
        return [i for i, lab in enumerate(self.labels) if lab == family]

    def by_head(self, dominant_head: Tensor) -> dict[str, dict[str, int]]:
        """``{family: {"L.H": count}}`` with each feature counted for ``dominant_head[f]``."""
        out: dict[str, dict[str, int]] = {}
        for f, lab in enumerate(self.labels):
            if lab == "dead":
                continue
            key = f"{self.layer}.{int(dominant_head[f])}"
            out.setdefault(lab, {})
            out[lab][key] = out[lab].get(key, 0) + 1
        return {lab: dict(sorted(v.items())) for lab, v in out.items()}

    def to_dict(self) -> dict:
        return {"hook": self.hook, "layer": self.layer, "n_latents": len(self.labels), "n_live": self.n_live,
                "counts": self.counts(), "shares_of_live": self.shares, "config": asdict(self.config),
                "labels": self.labels, "features": self.stats}


@torch.no_grad()
def _inputs_and_codes(model, sae, tokens: Tensor, layer: int, batch_size: int) -> tuple[AttentionInputs, Tensor]:
    """Attention inputs for every prompt (concatenated) and the SAE codes ``[batch, pos, n_latents]``."""
    parts, codes = [], []
    for s in range(0, tokens.shape[0], batch_size):
        inp = attention_inputs(model, tokens[s : s + batch_size], layer)
        parts.append(inp)
        z = inp.z.flatten(2)
        codes.append(sae.encode(z.to(sae.W_enc.dtype)).float())
    cat = lambda name: torch.cat([getattr(p, name) for p in parts])  # noqa: E731
    inputs = AttentionInputs(tokens=tokens, layer=layer, pattern=cat("pattern"), v=cat("v"), z=cat("z"), b_V=parts[0].b_V)
    return inputs, torch.cat(codes)


def _top_rows(codes: Tensor, mask: Tensor, max_rows: int, features: Tensor | None = None) -> Tensor:
    """``[n, 3]`` (batch, query, feature): each feature's ``max_rows`` largest activations among
    positions where ``mask [batch, pos]`` is true (only ``features`` when given)."""
    acts = codes * mask[..., None]
    if features is not None:
        keep = torch.zeros(codes.shape[-1], dtype=torch.bool)
        keep[features] = True
        acts = acts * keep
    nz = (acts > 0).nonzero()
    if nz.numel() == 0:
        return torch.zeros(0, 3, dtype=torch.long)
    vals = acts[nz[:, 0], nz[:, 1], nz[:, 2]]
    order = torch.argsort(vals, descending=True, stable=True)
    nz = nz[order]
    order = torch.argsort(nz[:, 2], stable=True)  # group by feature, largest first within
    nz = nz[order]
    counts = torch.bincount(nz[:, 2], minlength=codes.shape[-1])
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(len(nz)) - starts[nz[:, 2]]
    return nz[rank < max_rows]


def _mean_by_feature(values: Tensor, feats: Tensor, n: int) -> Tensor:
    """Mean of ``values [rows, ...]`` per feature id (``nan`` where a feature has no rows)."""
    shape = (n, *values.shape[1:])
    total = torch.zeros(shape, dtype=torch.float64).index_add_(0, feats, values.to(torch.float64))
    cnt = torch.bincount(feats, minlength=n).to(torch.float64)
    cnt = cnt.reshape(n, *([1] * (values.dim() - 1)))
    return torch.where(cnt > 0, total / cnt.clamp_min(1), torch.full_like(total, float("nan")))


def _positive_shares(src: Tensor) -> Tensor:
    """Row-normalised positive parts of ``src [n, K]``."""
    pos = src.clamp_min(0)
    return pos / pos.sum(-1, keepdim=True).clamp_min(1e-12)


@torch.no_grad()
def label_families(model, sae, corpus_tokens: Tensor, config: FamilyConfig | None = None, progress=None) -> Families:
    """Label every feature of ``sae`` (on ``blocks.L.attn.hook_z``) with a family (module docstring).

    Args:
        corpus_tokens: ``[n_contexts, pos]`` text contexts, BOS first (e.g. ``TokenStream.batch``).
        progress: optional ``callable(str)`` for status messages.
    """
    from mechscope.models.model import as_model

    model = as_model(model)
    cfg = config or FamilyConfig()
    say = progress or (lambda msg: None)
    info = zsae_info(sae, model)
    M = sae.n_latents
    n_ctx = model.module.cfg.n_ctx
    L = cfg.repeat_len or min(32, (n_ctx - 1) // 2)
    if max(cfg.target_offsets) > L:
        raise ConfigError(f"target_offsets {cfg.target_offsets} must lie inside the first copy (<= repeat_len {L})")

    # -- probe 1: repeated random sequences -----------------------------------------------
    say(f"repeated sequences: {cfg.n_repeats} x BOS + 2 x {L} tokens")
    rep = repeated_sequences(model, cfg.n_repeats, L, cfg.seed)
    rin, rcodes = _inputs_and_codes(model, sae, rep, info.layer, cfg.batch_size)
    first, second = rcodes[:, 1 : L + 1], rcodes[:, L + 1 :]
    mean1, mean2 = first.mean((0, 1)), second.mean((0, 1))
    rate1, rate2 = (first > 0).float().mean((0, 1)), (second > 0).float().mean((0, 1))
    fires2 = (second > 0).sum((0, 1))
    selective = (fires2 >= cfg.induction_min_fires) & (mean2 >= cfg.induction_ratio * mean1) & (mean2 > 0)
    sel_feats = selective.nonzero().squeeze(1)
    second_mask = torch.zeros(rcodes.shape[:2], dtype=torch.bool)
    second_mask[:, L + 1 :] = True
    rows = _top_rows(rcodes, second_mask, cfg.max_rows, sel_feats)
    target_share = torch.full((M,), float("nan"), dtype=torch.float64)
    dup_share = target_share.clone()
    target_attn = target_share.clone()
    rep_head = torch.full((M,), -1, dtype=torch.long)
    if len(rows):
        say(f"DFA on {len(rows)} second-occurrence rows of {len(sel_feats)} selective features")
        d = dfa_rows(sae, rin, rows, info=info)
        shares = _positive_shares(d.by_source())
        q = rows[:, 1]
        idx = torch.arange(len(rows))
        t_sh = sum(shares[idx, q - L + s] for s in cfg.target_offsets)
        d_sh = shares[idx, q - L]
        head = d.by_head().argmax(1)
        att = sum(rin.pattern[rows[:, 0], head, q, q - L + s] for s in cfg.target_offsets).to(torch.float64)
        f = rows[:, 2]
        target_share = _mean_by_feature(t_sh, f, M)
        dup_share = _mean_by_feature(d_sh, f, M)
        target_attn = _mean_by_feature(att, f, M)
        rep_head = _mean_by_feature(torch.nn.functional.one_hot(head, info.n_heads).to(torch.float64), f, M).nan_to_num(-1).argmax(1)
    is_induction = selective & (target_share >= cfg.target_share) & (target_attn >= cfg.target_attention)
    is_duplicate = selective & ~is_induction & (dup_share >= cfg.target_share)

    # -- probe 2: corpus text ----------------------------------------------------------------
    corpus_tokens = torch.as_tensor(corpus_tokens, dtype=torch.long)
    if corpus_tokens.dim() != 2 or corpus_tokens.shape[1] > n_ctx:
        raise ConfigError(f"expected corpus tokens [n_contexts, pos <= {n_ctx}]; found {list(corpus_tokens.shape)}")
    say(f"corpus: {corpus_tokens.shape[0]} contexts x {corpus_tokens.shape[1]} tokens")
    cin, ccodes = _inputs_and_codes(model, sae, corpus_tokens, info.layer, cfg.batch_size)
    cmask = torch.ones(ccodes.shape[:2], dtype=torch.bool)
    cmask[:, 0] = False  # the BOS position attends only to itself
    fires_corpus = ((ccodes > 0) & cmask[..., None]).sum((0, 1))
    fires_rep = (rcodes[:, 1:] > 0).sum((0, 1))
    live = (fires_corpus + fires_rep) > 0
    todo = (live & ~is_induction & ~is_duplicate).nonzero().squeeze(1)
    crow = _top_rows(ccodes, cmask, cfg.max_rows, todo)
    buckets = torch.full((M, 5), float("nan"), dtype=torch.float64)  # bos, self, prev, short, long
    ctx_head = torch.full((M,), -1, dtype=torch.long)
    n_rows = torch.zeros(M, dtype=torch.long)
    # features live only on the repeated probe: take their rows there
    only_rep = todo[fires_corpus[todo] == 0]
    rrow = _top_rows(rcodes, rcodes.new_ones(rcodes.shape[:2], dtype=torch.bool).index_fill_(1, torch.tensor([0]), False),
                     cfg.max_rows, only_rep) if len(only_rep) else torch.zeros(0, 3, dtype=torch.long)
    for inputs, rws in ((cin, crow), (rin, rrow)):
        if not len(rws):
            continue
        say(f"DFA by source distance on {len(rws)} rows")
        d = dfa_rows(sae, inputs, rws, info=info)
        shares = _positive_shares(d.by_source())  # [n, K]
        K = shares.shape[1]
        dist = rws[:, 1:2] - torch.arange(K)[None]  # q - k
        is_bos = torch.zeros_like(dist, dtype=torch.bool)
        is_bos[:, 0] = True
        b = torch.stack([
            (shares * is_bos).sum(1),
            (shares * ((dist == 0) & ~is_bos)).sum(1),
            (shares * ((dist == 1) & ~is_bos)).sum(1),
            (shares * ((dist >= 2) & (dist <= cfg.short_range) & ~is_bos)).sum(1),
            (shares * ((dist > cfg.short_range) & ~is_bos)).sum(1),
        ], 1)
        f = rws[:, 2]
        mb = _mean_by_feature(b, f, M)
        has = torch.bincount(f, minlength=M) > 0
        buckets[has] = mb[has]
        n_rows += torch.bincount(f, minlength=M)
        head = d.by_head().argmax(1)
        hm = _mean_by_feature(torch.nn.functional.one_hot(head, info.n_heads).to(torch.float64), f, M)
        ctx_head[has] = hm[has].argmax(1)

    labels: list[str] = []
    stats: list[dict] = []
    sh = cfg.family_share
    r = lambda x: None if x != x else round(float(x), 4)  # noqa: E731  (nan -> None)
    for i in range(M):
        bos, self_, prev, short, long_ = buckets[i].tolist()
        if not bool(live[i]):
            lab = "dead"
        elif bool(is_induction[i]):
            lab = "induction"
        elif bool(is_duplicate[i]):
            lab = "duplicate_token"
        elif prev != prev:
            lab = "mixed"
        elif prev >= sh:
            lab = "previous_token"
        elif self_ >= sh:
            lab = "current_token"
        elif bos >= sh:
            lab = "bos"
        elif long_ >= sh:
            lab = "long_range"
        elif self_ + prev + short >= sh:
            lab = "short_range"
        else:
            lab = "mixed"
        labels.append(lab)
        stats.append({
            "feature": i, "family": lab, "live": bool(live[i]),
            "fires_corpus": int(fires_corpus[i]), "fire_rate_corpus": r(fires_corpus[i] / max(1, int(cmask.sum()))),
            "repeat": {"mean_act_first": r(mean1[i]), "mean_act_second": r(mean2[i]), "fire_rate_first": r(rate1[i]),
                       "fire_rate_second": r(rate2[i]), "selective": bool(selective[i]), "target_share": r(target_share[i]),
                       "duplicate_share": r(dup_share[i]), "target_attention": r(target_attn[i]),
                       "dfa_head": f"{info.layer}.{int(rep_head[i])}" if rep_head[i] >= 0 else None},
            "distance_shares": {"bos": r(bos), "self": r(self_), "prev": r(prev), "short": r(short), "long": r(long_),
                                "rows": int(n_rows[i])},
            "dfa_head": f"{info.layer}.{int(ctx_head[i])}" if ctx_head[i] >= 0 else (
                f"{info.layer}.{int(rep_head[i])}" if rep_head[i] >= 0 else None),
        })
    return Families(hook=info.hook, layer=info.layer, labels=labels, live=live, stats=stats, config=cfg)
