"""Offline neuron interpreter: probe the shipped vocabulary and name the feature that explains it.

Probes a stratified sample (some words of every shipped concept, plus filler words), then
scores binary hypotheses — membership in each concept list, first letter, suffix, word
length, a doubled letter — by the variance of activations they explain (R^2 of a two-level
fit). A second concept is added when it explains much of what is left (a polysemantic unit).
The code predicts one activation level per group over the *full* concept lists, so it
generalises to words that were not probed. When nothing explains the unit well, the code is a
lookup table of the probed words and the description lists the top-activating ones.
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
        scored = sorted(((_r2(v[2], y), k) for k, v in hyps.items()), reverse=True)
        best_r2, best = scored[0] if scored else (0.0, None)
        meta = {"r2": best_r2, "hypothesis": best, "n_probes": len(ws)}
        lens = np.array([len(w) for w in ws], float)
        r2_len = _r2(lens, y)
        if r2_len > max(best_r2 + 0.05, 0.3):  # a graded response to word length
            b, a = np.polyfit(lens, y, 1)
            meta.update(r2=r2_len, hypothesis="length")
            code = f"def f(word):\n    return {float(a)!r} + {float(b)!r} * len(word.strip())\n"
            return Interpretation(f"Activation grows linearly with word length (about {a:.2g} + {b:.2g} per letter).",
                                  code, None, meta)
        if best is None or best_r2 < 0.3:
            return self._lookup(pairs, meta)
        kind, what, x1 = hyps[best]
        hi, lo = float(y[x1 == 1].mean()), float(y[x1 == 0].mean())
        if kind == "lexical":
            src, desc = what
            code = (f"def f(word):\n    w = word.strip().lower()\n"
                    f"    return {hi!r} if {src} else {lo!r}\n")
            return Interpretation(f"Fires on {desc} (activation about {hi:.2g} vs {lo:.2g} otherwise).", code, None, meta)
        # polysemantic? look for a second concept among the words the first one leaves out
        resid = y - np.where(x1 == 1, hi, lo)
        second = None
        for k, (kind2, name2, x2) in hyps.items():
            if kind2 != "concept" or k == best or x2.sum() < 2:
                continue
            sel = x1 == 0
            r2 = _r2(x2[sel], resid[sel])
            gain = (resid[sel & (x2 == 1)].mean() - resid[sel & (x2 == 0)].mean()) if (sel & (x2 == 1)).any() else 0
            if r2 > 0.4 and gain > 0.15 * (hi - lo) and (second is None or r2 > second[0]):
                second = (r2, name2, x2)
        levels = {w: round(hi, 4) for w in data["concepts"][what]["words"]}
        c1 = what.replace("_", " ")
        kws = data["concepts"][what]["keywords"]
        desc = f"Fires on {c1} words ({kws[0]}), e.g. {', '.join(data['concepts'][what]['words'][:4])}"
        if second is not None:
            _, name2, x2 = second
            mid = float(y[(x2 == 1) & (x1 == 0)].mean())
            for w in data["concepts"][name2]["words"]:
                levels.setdefault(w, round(mid, 4))
            lo = float(y[(x1 == 0) & (x2 == 0)].mean())
            desc = (f"Polysemantic: fires strongly on {c1} words ({kws[0]}) and more weakly on "
                    f"{name2.replace('_', ' ')} words ({data['concepts'][name2]['keywords'][0]})")
            meta["second"] = name2
        code = (f"_LEVEL = {dict(sorted(levels.items()))!r}\n\n\ndef f(word):\n"
                f"    return _LEVEL.get(word.strip().lower(), {lo!r})\n")
        return Interpretation(desc + f" (activation about {hi:.2g} vs {lo:.2g} otherwise).", code, None, meta)

    def _lookup(self, pairs, meta) -> Interpretation:
        y = np.array([o for _, o in pairs])
        base = float(np.median(y)) if len(y) else 0.0
        top = sorted(pairs, key=lambda t: -t[1])[:8]
        table = {w: round(o, 4) for w, o in pairs}
        code = f"_SEEN = {table!r}\n\n\ndef f(word):\n    return _SEEN.get(word.strip().lower(), {base!r})\n"
        desc = f"No shipped concept or surface feature explains this unit; its top-activating words are {', '.join(w for w, _ in top)}."
        return Interpretation(desc, code, None, meta)
