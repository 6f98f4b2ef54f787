"""Candidate models of a numeric function and how the symbolic interpreter chooses among them.

A :class:`Candidate` knows how to predict, its code, a description, its size ``k`` and its
error on the validation samples. Besides formulas (:mod:`.fit`) and corrupted-interval models
(:mod:`.corruption`) there are piecewise polynomials between jumps and the nonparametric
fallback; :func:`choose` prefers the most interpretable candidate that predicts as well.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from mechscope.find.interpreters.fit import Fit


def _g(v: float) -> str:
    return f"{float(v):.4g}"


@dataclass
class Candidate:
    """A candidate model: ``kind`` is symbolic, corruption, piecewise or nonparametric."""

    kind: str
    predict: object
    code: str
    description: str
    k: int
    mse_v: float = math.inf
    interval: tuple[float, float] | None = None
    fit: Fit | None = None


def sym_code(expr: str) -> str:
    """Source for ``f`` returning one expression."""
    return f"import numpy as np\n\n\ndef f(x):\n    return float({expr})\n"


def choose(cands: list[Candidate], thr: float) -> Candidate:
    """A formula that explains the data to noise level (``mse_v <= thr``); else the smallest
    corruption / piecewise model that does; else, among models within 1.5x of the best
    validation error, a corruption model, a formula, a piecewise model; else the best predictor."""
    best = min(m.mse_v for m in cands)
    sym = [m for m in cands if m.kind == "symbolic" and m.mse_v <= thr]
    if sym:
        return sym[0]
    good = [m for m in cands if m.kind in ("corruption", "piecewise") and m.mse_v <= thr]
    if good:
        return min(good, key=lambda m: m.k)
    for kind in ("corruption", "symbolic", "piecewise"):
        for m in cands:
            if m.kind == kind and m.mse_v <= 1.5 * best + thr:
                return m
    return min(cands, key=lambda m: m.mse_v)


def piecewise(xf, yf, xv, yv, jumps: list[float], thr: float) -> Candidate | None:
    """Polynomials of degree <= 3 between consecutive jumps."""
    if not jumps or len(jumps) > 40:
        return None
    edges = [-math.inf] + list(jumps) + [math.inf]
    pieces, k = [], len(jumps)
    for a, b in zip(edges[:-1], edges[1:]):
        m = (xf > a) & (xf < b)
        xs, ys = xf[m], yf[m]
        if len(xs) == 0:
            pieces.append((a, b, np.zeros(1), 0.0, 1.0))
            continue
        c0, s0 = float(xs.mean()), float(np.ptp(xs)) / 2 or 1.0
        best = None
        for deg in range(0, min(3, len(xs) - 1) + 1):
            coef = np.polyfit((xs - c0) / s0, ys, deg)
            r = float(np.mean((ys - np.polyval(coef, (xs - c0) / s0)) ** 2))
            if best is None or r < best[1] * 0.5 and best[1] > thr:
                best = (coef, r)
            if r <= thr:
                break
        pieces.append((a, b, best[0], c0, s0))
        k += len(best[0])

    def predict(t, pieces=pieces):
        t = np.asarray(t, float)
        out = np.zeros_like(t)
        for a, b, coef, c0, s0 in pieces:
            sel = (t >= a) & (t < b) if b != math.inf else (t >= a)
            out[sel] = np.polyval(coef, (t[sel] - c0) / s0)
        return out

    lines = ["import numpy as np", "", "", "def f(x):"]
    for a, b, coef, c0, s0 in pieces:
        body = f"float(np.polyval({[float(c) for c in coef]!r}, (x - {c0!r}) / {s0!r}))"
        lines.append(f"    if x < {b!r}:\n        return {body}" if b != math.inf else f"    return {body}")
    model = Candidate("piecewise", predict, "\n".join(lines) + "\n", describe_pieces(pieces, jumps), k)
    with np.errstate(all="ignore"):
        model.mse_v = float(np.mean((yv - predict(xv)) ** 2))
    return model


def describe_pieces(pieces, jumps) -> str:
    consts = all(len(p[2]) == 1 for p in pieces)
    vals = [float(p[2][-1]) for p in pieces]
    js = ", ".join(_g(j) for j in jumps)
    if consts and len(jumps) == 1:
        return f"a step function: {_g(vals[0])} for x < {_g(jumps[0])}, {_g(vals[1])} above."
    if consts and len(jumps) == 2 and abs(vals[0] - vals[2]) <= 1e-6 * (1 + abs(vals[0])):
        return f"a rectangle (box) function: {_g(vals[1])} on [{_g(jumps[0])}, {_g(jumps[1])}], {_g(vals[0])} elsewhere."
    if len(jumps) >= 3:
        gaps = np.diff(jumps)
        levels = sorted(set(round(v, 6) for v in vals))
        if consts and len(levels) == 2:
            return (f"a square wave alternating between {_g(levels[0])} and {_g(levels[1])} with period about "
                    f"{_g(gaps[0] + gaps[1] if len(gaps) > 1 else gaps[0])} (jumps at {js}).")
        if consts:
            return f"a staircase (piecewise constant) with jumps at {js}; levels {', '.join(_g(v) for v in vals)}."
        if np.std(gaps) < 0.05 * np.mean(gaps):
            return f"a periodic piecewise-polynomial (sawtooth-like) function with period about {_g(np.mean(gaps))} (jumps at {js})."
    return f"a piecewise polynomial function with jumps at {js}."


def describe_shape(kx, ky, jumps, noisy) -> str:
    d = np.diff(ky)
    s = np.sign(d[np.abs(d) > 1e-9 * (np.ptp(ky) + 1e-300)])
    turns = int(np.sum(s[1:] != s[:-1])) if len(s) > 1 else 0
    trend = ("increasing" if s.size and np.all(s > 0) else "decreasing" if s.size and np.all(s < 0)
             else f"non-monotonic with about {turns} turning points" if turns < 12 else "oscillating")
    i_min, i_max = int(np.argmin(ky)), int(np.argmax(ky))
    parts = [f"No simple formula found; a {'discontinuous' if jumps else 'continuous'} function, {trend}, "
             f"ranging from {_g(ky[i_min])} (at x = {_g(kx[i_min])}) to {_g(ky[i_max])} (at x = {_g(kx[i_max])})."]
    if jumps:
        parts.append(f" Jumps at x = {', '.join(_g(j) for j in jumps[:10])}{' ...' if len(jumps) > 10 else ''}.")
    else:
        parts.append(_oscillation(kx, ky))
    return "".join(parts)


def _oscillation(kx, ky) -> str:
    """A sentence on regular oscillation: the period (the spacing of the local maxima, when at
    least three are evenly spaced) and whether the peaks are of one height (the same shape
    repeating) or not (a varying amplitude); ``""`` otherwise."""
    d = np.diff(ky)
    peaks = [i + 1 for i in range(len(d) - 1) if d[i] > 0 >= d[i + 1]]
    if len(peaks) < 3:
        return ""
    gaps = np.diff(np.asarray(kx)[peaks])
    if np.std(gaps) > 0.1 * np.mean(gaps):
        return ""
    heights = np.asarray(ky)[peaks]
    same = np.ptp(heights) <= 0.05 * (np.ptp(ky) + 1e-300)
    return (f" It oscillates with period about {_g(np.mean(gaps))}"
            f"{', the same shape repeating' if same else ', with a varying amplitude'}.")
