"""Induction heads, short- versus long-prefix (Kissane et al. 2024, section on long-prefix induction).

Prompts (all tokens distinct random ordinary tokens except the copied prefix)::

    BOS  f f f  P_1 .. P_p  T  f f f ... f  P_1 .. P_p          (query: the last P_p)
                            ^ t0 (source / induction target)     ^ q0 = n - 1

The first occurrence's prefix ends right before the target ``T`` at a fixed position ``t0``;
the second ends at the last position ``q0``. Only the number ``p`` of matching tokens changes
with the prefix length, not positions or distances.

* :func:`prefix_length_curve` — per head, the attention from ``q0`` to ``t0`` for ``p = 1 .. N``, and
  the logit of ``T`` at ``q0`` (minus the mean logit).
* :func:`causal_prefix_test` — with prefix ``p >= 2``, replace the token two before the source
  (``t0 - 2``) by a fresh token and measure the drop in attention to ``t0`` and in the logit of
  ``T``; controls replace ``t0 - 1`` (breaks every induction head) and a far filler token.
  A **long-prefix** head loses attention when ``t0 - 2`` is corrupted; a short-prefix head,
  which only checks ``t0 - 1``, does not.
* :func:`head_scores` — induction, duplicate-token and previous-token scores of every head on
  repeated random sequences (:func:`~mechscope.attention.families.repeated_sequences`).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
from torch import Tensor

from mechscope.attention.families import bos_token, repeated_sequences, token_pool
from mechscope.errors import ConfigError
from mechscope.models.model import as_model

Head = tuple[int, int]


def parse_head(s: str | Head) -> Head:
    """``"1.2"`` / ``"L1H2"`` / ``(1, 2)`` -> ``(1, 2)``."""
    if isinstance(s, (tuple, list)):
        return int(s[0]), int(s[1])
    t = str(s).upper().replace("L", "").replace("H", ".")
    try:
        a, b = t.split(".")
        return int(a), int(b)
    except ValueError:
        raise ConfigError(f"expected a head as 'L.H' (e.g. '1.2'); found {s!r}") from None


def check_heads(model, heads: list) -> list[Head]:
    """``heads`` parsed, each checked against the model's layers and heads per layer."""
    cfg = as_model(model).module.cfg
    parsed = [parse_head(h) for h in heads]
    bad = [f"{l}.{h}" for l, h in parsed if not (0 <= l < cfg.n_layers and 0 <= h < cfg.n_heads)]
    if bad:
        raise ConfigError(f"expected heads L.H with L in [0, {cfg.n_layers}) and H in [0, {cfg.n_heads}); found {', '.join(bad)}")
    return parsed


def head_name(h: Head) -> str:
    return f"{h[0]}.{h[1]}"


def _patterns(model, tokens: Tensor, batch_size: int = 64) -> Tensor:
    """``[layer, batch, head, query, key]`` attention patterns."""
    from mechscope.models import run_with_cache

    n_layers = model.module.cfg.n_layers
    cache = run_with_cache(model, tokens, [f"blocks.{l}.attn.hook_pattern" for l in range(n_layers)], batch_size=batch_size)
    return torch.stack([cache[f"blocks.{l}.attn.hook_pattern"] for l in range(n_layers)])


@torch.no_grad()
def head_scores(model, n: int = 64, repeat_len: int | None = None, seed: int = 0, target_offsets: tuple[int, ...] = (1,)) -> dict:
    """Mean attention of every head, from second-half queries of ``BOS A A`` prompts, to the
    induction target ``q - L + 1`` (``induction``; summed over ``q - L + s`` for ``s`` in
    ``target_offsets`` for a lagged circuit) and to the earlier same token ``q - L``
    (``duplicate``); and from every query ``q >= 2`` to ``q - 1`` (``previous``). Values
    ``[n_layers, n_heads]`` as nested lists."""
    model = as_model(model)
    L = repeat_len or min(32, (model.module.cfg.n_ctx - 1) // 2)
    tokens = repeated_sequences(model, n, L, seed)
    pat = _patterns(model, tokens)  # [layer, b, h, q, k]
    q = torch.arange(L + 1, 2 * L + 1)
    ind = sum(pat[:, :, :, q, q - L + s] for s in target_offsets).mean((1, 3))
    dup = pat[:, :, :, q, q - L].mean((1, 3))
    qp = torch.arange(2, 2 * L + 1)
    prev = pat[:, :, :, qp, qp - 1].mean((1, 3))
    r = lambda t: [[round(float(x), 4) for x in row] for row in t]  # noqa: E731
    return {"repeat_len": L, "n": n, "seed": seed, "target_offsets": list(target_offsets), "induction": r(ind), "duplicate": r(dup),
            "previous": r(prev)}


def induction_heads(scores: dict, threshold: float = 0.3, min_layer: int = 1) -> list[Head]:
    """Heads whose induction score is at least ``threshold`` (layer 0 cannot compose with an
    earlier previous-token head, so it is skipped by default)."""
    return [(l, h) for l, row in enumerate(scores["induction"]) for h, s in enumerate(row) if l >= min_layer and s >= threshold]


@dataclass
class PrefixPrompts:
    """Prompts for one prefix length: ``tokens [n, len]``, the source ``t0`` and query ``q0``
    positions and the target token of each prompt ``[n]``."""

    tokens: Tensor
    t0: int
    q0: int
    target: Tensor
    prefix_len: int


def prompt_length(model, max_prefix: int) -> int:
    """Prompt length for prefix lengths up to ``max_prefix``: ``2 * max_prefix + 24`` capped by
    ``n_ctx`` and by the number of ordinary tokens (every token but the copies is distinct)."""
    return min(model.module.cfg.n_ctx, 2 * max_prefix + 24, len(token_pool(model, bos_token(model))))


def prefix_prompts(model, prefix_len: int, n: int, max_prefix: int, seed: int = 0, length: int | None = None) -> PrefixPrompts:
    """The layout of the module docstring. The same seed gives the same draws for every
    ``prefix_len``, so curves compare like with like."""
    model = as_model(model)
    n_ctx = model.module.cfg.n_ctx
    bos = bos_token(model)
    pool = token_pool(model, bos)
    length = length or prompt_length(model, max_prefix)
    t0 = max_prefix + 2
    q0 = length - 1
    if not 1 <= prefix_len <= max_prefix:
        raise ConfigError(f"prefix_len must be in [1, max_prefix={max_prefix}]; found {prefix_len}")
    if q0 - max_prefix + 1 <= t0 + 1:
        raise ConfigError(f"max_prefix={max_prefix} does not fit twice in {length} positions (n_ctx={n_ctx}); use a smaller max_prefix")
    if len(pool) < length:
        raise ConfigError(f"need {length} distinct ordinary tokens; the vocabulary has {len(pool)}")
    rng = random.Random(f"prefix|{seed}")
    rows, targets = [], []
    for _ in range(n):
        draw = rng.sample(pool, length - 1)
        row = [bos] + draw[: length - 1]
        for i in range(prefix_len):  # copy P_1..P_p (ending at t0 - 1) to end at q0
            row[q0 - i] = row[t0 - 1 - i]
        rows.append(row)
        targets.append(row[t0])
    return PrefixPrompts(torch.tensor(rows, dtype=torch.long), t0, q0, torch.tensor(targets), prefix_len)


@torch.no_grad()
def _measure(model, prompts: PrefixPrompts, heads: list[Head], target_offsets: tuple[int, ...] = (1,)) -> dict:
    """Mean attention ``q0 -> t0`` per head (summed over ``t0 - 1 + s``, ``s`` in
    ``target_offsets``) and the mean centred logit of the target at ``q0``."""
    from mechscope.models import run_with_cache

    names = sorted({f"blocks.{l}.attn.hook_pattern" for l, _ in heads})
    logits, cache = run_with_cache(model, prompts.tokens, names, return_output=True, stop_early=False)
    last = logits[:, prompts.q0].float()
    centred = last - last.mean(-1, keepdim=True)
    tgt = centred.gather(1, prompts.target[:, None]).squeeze(1)
    keys = [prompts.t0 - 1 + s for s in target_offsets]
    if not target_offsets or min(keys) < prompts.t0 or max(keys) >= prompts.q0:
        raise ConfigError(f"target_offsets must be >= 1 and end before the query; found {tuple(target_offsets)} (source {prompts.t0}, query {prompts.q0})")
    attn = {head_name(h): cache[f"blocks.{h[0]}.attn.hook_pattern"][:, h[1], prompts.q0, keys].sum(-1) for h in heads}
    return {"attention": {k: float(v.mean()) for k, v in attn.items()}, "logit": float(tgt.mean()),
            "top1": float((last.argmax(-1) == prompts.target).float().mean())}


@torch.no_grad()
def prefix_length_curve(model, heads: list[Head], max_prefix: int = 8, n: int = 64, seed: int = 0,
                        target_offsets: tuple[int, ...] = (1,)) -> dict:
    """Attention to the induction target per head, and the target's logit, for prefix lengths
    ``1 .. max_prefix`` (see the module docstring)."""
    model = as_model(model)
    heads = [parse_head(h) for h in heads]
    curve = {head_name(h): [] for h in heads}
    logit, top1 = [], []
    for p in range(1, max_prefix + 1):
        m = _measure(model, prefix_prompts(model, p, n, max_prefix, seed), heads, target_offsets)
        for k, v in m["attention"].items():
            curve[k].append(round(v, 4))
        logit.append(round(m["logit"], 4))
        top1.append(round(m["top1"], 4))
    return {"prefix_lengths": list(range(1, max_prefix + 1)), "attention_to_target": curve, "target_logit": logit,
            "target_top1": top1, "n": n, "seed": seed}


def _corrupt(prompts: PrefixPrompts, position: int, pool: list[int], seed: int) -> PrefixPrompts:
    """Replace the token at ``position`` of every prompt by a token that occurs nowhere in it."""
    rng = random.Random(f"corrupt|{seed}|{position}")
    toks = prompts.tokens.clone()
    for i in range(toks.shape[0]):
        present = set(toks[i].tolist())
        while True:
            t = rng.choice(pool)
            if t not in present:
                break
        toks[i, position] = t
    return PrefixPrompts(toks, prompts.t0, prompts.q0, prompts.target, prompts.prefix_len)


@torch.no_grad()
def causal_prefix_test(model, heads: list[Head], prefix_len: int = 4, n: int = 64, seed: int = 0,
                       max_prefix: int | None = None, target_offsets: tuple[int, ...] = (1,)) -> dict:
    """Corrupt the token two before the source (``t0 - 2``), and as controls ``t0 - 1`` and a far
    filler (``t0 - prefix_len - 1``, or position 1); report per head the attention to the
    target clean and corrupted, and the drops (absolute and relative to clean)."""
    model = as_model(model)
    if prefix_len < 2:
        raise ConfigError(f"the causal test corrupts the token two before the source, so it needs prefix_len >= 2; found {prefix_len}")
    heads = [parse_head(h) for h in heads]
    max_prefix = max(prefix_len, max_prefix or prefix_len)
    clean = prefix_prompts(model, prefix_len, n, max_prefix, seed)
    pool = token_pool(model, bos_token(model))
    far = max(1, clean.t0 - prefix_len - 1)
    variants = {"clean": clean, "minus2": _corrupt(clean, clean.t0 - 2, pool, seed),
                "minus1": _corrupt(clean, clean.t0 - 1, pool, seed), "far": _corrupt(clean, far, pool, seed)}
    res = {k: _measure(model, v, heads, target_offsets) for k, v in variants.items()}
    per_head = {}
    for h in heads:
        k = head_name(h)
        a = {v: res[v]["attention"][k] for v in variants}
        per_head[k] = {
            **{f"attention_{v}": round(x, 4) for v, x in a.items()},
            **{f"drop_{v}": round(a["clean"] - a[v], 4) for v in ("minus2", "minus1", "far")},
            **{f"relative_drop_{v}": round((a["clean"] - a[v]) / max(a["clean"], 1e-9), 4) for v in ("minus2", "minus1", "far")},
        }
    logit = {v: round(res[v]["logit"], 4) for v in variants}
    return {"prefix_len": prefix_len, "source": clean.t0, "query": clean.q0, "corrupted_positions":
            {"minus2": clean.t0 - 2, "minus1": clean.t0 - 1, "far": far}, "heads": per_head, "target_logit": logit,
            "target_logit_drop": {v: round(logit["clean"] - logit[v], 4) for v in ("minus2", "minus1", "far")},
            "n": n, "seed": seed}


@dataclass
class InductionAnalysis:
    """Head scores, the induction heads, their prefix-length curves, the causal test and a
    short/long-prefix verdict per head (with the numbers it rests on)."""

    scores: dict
    heads: list[Head]
    curve: dict
    causal: dict
    verdicts: dict = field(default_factory=dict)
    heads_source: str = "scores"

    def long_prefix_heads(self) -> list[str]:
        return [k for k, v in self.verdicts.items() if v["kind"] == "long_prefix"]

    def to_dict(self) -> dict:
        return {"scores": self.scores, "induction_heads": [head_name(h) for h in self.heads], "heads_source": self.heads_source,
                "prefix_length_curve": self.curve, "causal_test": self.causal, "verdicts": self.verdicts,
                "long_prefix_heads": self.long_prefix_heads()}


def classify(curve: list[float], causal: dict, gain: float = 0.1, relative_drop: float = 0.2) -> dict:
    """``long_prefix`` when attention grows with the prefix (``curve[-1] - curve[0] >= gain``) and
    corrupting ``t0 - 2`` removes at least ``relative_drop`` of it (beyond the far control);
    ``short_prefix`` otherwise."""
    g = curve[-1] - curve[0]
    d = causal["relative_drop_minus2"] - max(0.0, causal["relative_drop_far"])
    kind = "long_prefix" if g >= gain and d >= relative_drop else "short_prefix"
    return {"kind": kind, "gain_pmax_minus_p1": round(g, 4), "relative_drop_minus2_beyond_far": round(d, 4),
            "criteria": f"long_prefix iff gain >= {gain} and relative drop (t0-2 corrupted, minus the far control) >= {relative_drop}"}


@torch.no_grad()
def induction_analysis(model, heads: list | None = None, *, max_prefix: int = 8, n: int = 64, seed: int = 0,
                       threshold: float = 0.3, causal_prefix: int = 4, repeat_len: int | None = None,
                       target_offsets: tuple[int, ...] = (1,)) -> InductionAnalysis:
    """Find the induction heads (``heads`` given, else from the model's card roles, else every
    head with induction score >= ``threshold`` on repeats of ``repeat_len`` tokens), then
    measure their prefix-length curves and run the causal ``t0 - 2`` test."""
    model = as_model(model)
    target_offsets = tuple(target_offsets)
    if heads is not None:
        check_heads(model, heads)
    scores = head_scores(model, n=n, repeat_len=repeat_len, seed=seed, target_offsets=target_offsets)
    source = "given"
    if heads is None:
        roles = (model.meta.get("roles") or {}).get("induction")
        if roles:
            heads, source = [parse_head(h) for h in roles], "model roles"
        else:
            heads, source = induction_heads(scores, threshold), f"induction score >= {threshold}"
    heads = [parse_head(h) for h in heads]
    if not heads:
        return InductionAnalysis(scores, [], {}, {}, {}, source)
    max_prefix = min(max_prefix, (prompt_length(model, max_prefix) - 4) // 2)
    curve = prefix_length_curve(model, heads, max_prefix=max_prefix, n=n, seed=seed, target_offsets=target_offsets)
    causal = causal_prefix_test(model, heads, prefix_len=min(causal_prefix, max_prefix), n=n, seed=seed, max_prefix=max_prefix,
                                target_offsets=target_offsets)
    verdicts = {head_name(h): classify(curve["attention_to_target"][head_name(h)], causal["heads"][head_name(h)]) for h in heads}
    return InductionAnalysis(scores, heads, curve, causal, verdicts, source)
