"""Offline neuron interpreter: probe the shipped vocabulary and name the features that explain it.

Probes a stratified sample (some words of every shipped concept, plus filler words). Binary
hypotheses — membership in each concept list, first letter, suffix, word length, a doubled
letter — enter an additive model ``y ~ b + sum_k w_k x_k`` by forward stepwise least squares:
at each step the hypothesis that most reduces the residual is added while its F statistic
exceeds :data:`F_MIN` (strict, since several hundred hypotheses compete), up to
:data:`MAX_TERMS` terms. So one concept, a union of concepts at different strengths
(polysemantic units), a suppressed concept (negative weight) and a noisy unit are all one model.
The code predicts from membership in the *full* concept lists, so it generalises to words that
were not probed. Conjunctions (a concept AND / AND NOT a surface feature, e.g. long animal
names) are hypotheses of a second pass, built from the concepts the first pass chose, and kept
when they predict clearly more variance (leave-one-out). When no hypothesis is significant, the code is a lookup table of the probed
words and the description lists the top-activating ones.
"""

from __future__ import annotations

import numpy as np

from mechscope.find.inputs import concepts
from mechscope.find.protocol import BlackBoxHandle, Interpretation


def _r2(x: np.ndarray, y: np.ndarray) -> float:
    if x.std() == 0 or y.std() == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1] ** 2)


def _lexical(words: list[str]) -> dict[str, tuple[str, str, callable]]:
    """Surface-feature hypotheses: name -> (source condition on ``w``, description, predicate)."""
    H: dict = {}
    for c in sorted({w[0] for w in words if w}):
        H[f"first:{c}"] = (f"w.startswith({c!r})", f"words starting with the letter {c!r}", lambda w, c=c: w.startswith(c))
    sfx = {}
    for w in words:
        for k in (1, 2, 3):
            if len(w) > k:
                sfx[w[-k:]] = sfx.get(w[-k:], 0) + 1
    for s_, n in sfx.items():
        if n >= 5:
            H[f"suffix:{s_}"] = (f"w.endswith({s_!r})", f"words ending in {s_!r} (suffix)", lambda w, s_=s_: w.endswith(s_))
    for k in range(3, 11):
        H[f"len>={k}"] = (f"len(w) >= {k}", f"long words: at least {k} letters", lambda w, k=k: len(w) >= k)
        H[f"len<={k}"] = (f"len(w) <= {k}", f"short words: at most {k} letters", lambda w, k=k: len(w) <= k)
    H["double"] = ("any(a == b for a, b in zip(w, w[1:]))", "words containing a doubled (repeated consecutive) letter",
                   lambda w: any(a == b for a, b in zip(w, w[1:])))
    H["vowel_start"] = ("w[:1] in 'aeiou'", "words starting with a vowel", lambda w: w[:1] in "aeiou")
    return H


def _interactions(hyps: dict, terms: list[str]) -> dict:
    """Hypotheses ``concept AND feature`` and ``concept AND NOT feature`` for the chosen concepts."""
    out = {}
    for t in terms:
        kind, name, cv = hyps[t]
        if kind != "concept":
            continue
        for k, (kk, what, lv) in hyps.items():
            if kk == "lexical":
                src, desc = what
                out[f"{t}&{k}"] = ("and", (name, src, desc), cv * lv)
                out[f"{t}&!{k}"] = ("and", (name, f"not ({src})", f"not {desc}"), cv * (1 - lv))
    return out


R2_GAIN = 0.02  # the conjunction pass must predict this much more variance (leave-one-out) to be kept
F_MIN = 25.0  # F(1, n) for adding a term: p < ~1e-6, a Bonferroni bar for ~500 hypotheses
MAX_TERMS = 4


def _stepwise(X: np.ndarray, y: np.ndarray) -> tuple[list[int], np.ndarray, float]:
    """Forward stepwise least squares over the columns of ``X [n, H]`` (see the module docstring).
    Returns the chosen columns, the coefficients ``[intercept, w_1, ...]`` and the R^2 of the fit."""
    n = len(y)
    chosen: list[int] = []
    A = np.ones((n, 1))
    coef = np.array([y.mean()])
    rss = tss = float(((y - y.mean()) ** 2).sum())
    usable = [j for j in range(X.shape[1]) if 2 <= X[:, j].sum() <= n - 2]
    while len(chosen) < MAX_TERMS and rss > 1e-12:
        best = None
        for j in usable:
            if j in chosen:
                continue
            B = np.column_stack([A, X[:, j]])
            c, *_ = np.linalg.lstsq(B, y, rcond=None)
            r = float(((y - B @ c) ** 2).sum())
            if best is None or r < best[0] - 1e-12:
                best = (r, j, B, c)
        if best is None:
            break
        r, j, B, c = best
        dof = n - B.shape[1]
        if dof < 1 or (rss - r) / max(r / dof, 1e-12) < F_MIN:
            break
        chosen, A, coef, rss = chosen + [j], B, c, r
    return chosen, coef, 1 - rss / max(tss, 1e-12)


def _fit(hyps: dict, y: np.ndarray) -> tuple[list[str], list[int], np.ndarray, float]:
    """Stepwise fit over the hypotheses' columns: their keys, the chosen columns, coefficients, R^2."""
    keys = list(hyps)
    X = np.column_stack([hyps[k][2] for k in keys]) if keys else np.zeros((len(y), 0))
    return (keys, *_stepwise(X, y))


def _loo_r2(hyps: dict, keys: list[str], chosen: list[int], y: np.ndarray) -> float:
    """Leave-one-out R^2 of least squares on the chosen hypotheses (PRESS residuals ``e / (1 - h)``):
    terms resting on one or two words, which fit them exactly, predict them badly."""
    A = np.column_stack([np.ones(len(y))] + [hyps[keys[j]][2] for j in chosen])
    P = A @ np.linalg.pinv(A)
    e = (y - P @ y) / np.maximum(1 - np.diag(P), 1e-6)
    return 1 - float(e @ e) / max(float(((y - y.mean()) ** 2).sum()), 1e-12)


class NeuronInterpreter:
    """Names the concept or surface feature a word-level unit responds to (see module docstring)."""

    name = "neuron"

    def __init__(self, n_filler: int = 60, seed: int = 0):
        self.n_filler, self.seed = n_filler, seed

    def probe_words(self, budget: int) -> list[str]:
        data = concepts()
        rng = np.random.default_rng([self.seed, 31])
        names = sorted(data["concepts"])
        filler = list(data["filler"])
        n_fill = min(self.n_filler, len(filler), budget // 5)
        per = max(2, (budget - n_fill) // max(1, len(names)))
        words = []
        for n in names:
            ws = data["concepts"][n]["words"]
            words += [ws[i] for i in rng.permutation(len(ws))[:per]]
        words += [filler[i] for i in rng.permutation(len(filler))[:n_fill]]
        return list(dict.fromkeys(words))[:budget]

    def interpret(self, handle: BlackBoxHandle) -> Interpretation:
        data = concepts()
        words = self.probe_words(handle.remaining)
        outs = handle.query(words)
        pairs = [(w, float(o)) for w, o in zip(words, outs) if o is not None]
        ws = [w for w, _ in pairs]
        y = np.array([o for _, o in pairs])
        hyps: dict[str, tuple] = {}
        for name, c in data["concepts"].items():
            members = set(c["words"])
            hyps[f"concept:{name}"] = ("concept", name, np.array([w in members for w in ws], float))
        for name, (src, desc, pred) in _lexical(ws).items():
            hyps[name] = ("lexical", (src, desc), np.array([pred(w) for w in ws], float))
        keys, chosen, coef, fit_r2 = _fit(hyps, y)
        more = _interactions(hyps, [keys[j] for j in chosen])
        if more:
            both = {**hyps, **more}
            fit2 = _fit(both, y)
            if _loo_r2(both, fit2[0], fit2[1], y) > _loo_r2(hyps, keys, chosen, y) + R2_GAIN:
                hyps = both
                keys, chosen, coef, fit_r2 = fit2
        meta = {"r2": fit_r2, "hypothesis": keys[chosen[0]] if chosen else None, "terms": [keys[j] for j in chosen],
                "n_probes": len(ws)}
        lens = np.array([len(w) for w in ws], float)
        r2_len = _r2(lens, y)
        if r2_len > max(fit_r2 + 0.05, 0.3):  # a graded response to word length
            b, a = np.polyfit(lens, y, 1)
            meta.update(r2=r2_len, hypothesis="length", terms=["length"])
            code = f"def f(word):\n    return {float(a)!r} + {float(b)!r} * len(word.strip())\n"
            return Interpretation(f"Activation grows linearly with word length (about {a:.2g} + {b:.2g} per letter).",
                                  code, None, meta)
        if not chosen:
            return self._lookup(pairs, meta)
        terms = [(keys[j], float(w)) for j, w in zip(chosen, coef[1:])]
        base = float(coef[0])
        return Interpretation(_describe(terms, base, hyps, data), _code(terms, base, hyps, data), None, meta)

    def _lookup(self, pairs, meta) -> Interpretation:
        y = np.array([o for _, o in pairs])
        base = float(np.median(y)) if len(y) else 0.0
        top = sorted(pairs, key=lambda t: -t[1])[:8]
        table = {w: round(o, 4) for w, o in pairs}
        code = f"_SEEN = {table!r}\n\n\ndef f(word):\n    return _SEEN.get(word.strip().lower(), {base!r})\n"
        desc = f"No shipped concept or surface feature explains this unit; its top-activating words are {', '.join(w for w, _ in top)}."
        return Interpretation(desc, code, None, meta)


def _term_name(key: str, hyps: dict, data: dict) -> str:
    kind, what, _ = hyps[key]
    if kind == "lexical":
        return what[1]
    if kind == "and":
        return f"{what[0].replace('_', ' ')} words that are also {what[2]}"
    kws = data["concepts"][what]["keywords"]
    return f"{what.replace('_', ' ')} words ({kws[0]}), e.g. {', '.join(data['concepts'][what]['words'][:4])}"


def _describe(terms: list[tuple[str, float]], base: float, hyps: dict, data: dict) -> str:
    """``Fires on X`` for one term; the terms by strength for several (negative: suppressed)."""
    terms = sorted(terms, key=lambda t: -abs(t[1]))
    if len(terms) == 1 and terms[0][1] > 0:
        key, w = terms[0]
        return f"Fires on {_term_name(key, hyps, data)} (activation about {base + w:.2g} vs {base:.2g} otherwise)."
    ups = [(k, w) for k, w in terms if w > 0]
    downs = [(k, w) for k, w in terms if w < 0]
    parts = []
    if ups:
        head = "Polysemantic: fires" if len(ups) > 1 else "Fires"
        parts.append(f"{head} " + ", and more weakly ".join(f"on {_term_name(k, hyps, data)} (+{w:.2g})" for k, w in ups))
    if downs:
        parts.append("is suppressed on " + " and ".join(f"{_term_name(k, hyps, data)} ({w:.2g})" for k, w in downs))
    return "; ".join(parts) + f"; baseline about {base:.2g}."


def _code(terms: list[tuple[str, float]], base: float, hyps: dict, data: dict) -> str:
    """Source of ``f(word)``: the baseline plus each term's weight where its condition holds."""
    lines, conds = [], []
    for i, (key, w) in enumerate(terms):
        kind, what, _ = hyps[key]
        if kind in ("concept", "and"):
            name = what if kind == "concept" else what[0]
            lines.append(f"_C{i} = {sorted(data['concepts'][name]['words'])!r}\n")
            conds.append((f"w in _C{i}" if kind == "concept" else f"w in _C{i} and ({what[1]})", w))
        else:
            conds.append((what[0], w))
    body = "".join(f"    if {c}:\n        y += {w!r}\n" for c, w in conds)
    return "\n".join(lines) + f"\n\ndef f(word):\n    w = word.strip().lower()\n    y = {base!r}\n{body}    return y\n"
