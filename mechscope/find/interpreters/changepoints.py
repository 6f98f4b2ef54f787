"""Change points: jumps in a sampled function, located by bisection, and runs of large residuals.

A jump candidate is a grid gap where linear extrapolation from *both* sides misses the other
side by far more than it does nearby. Each candidate is then bisected with new queries
(classifying the midpoint by which side's extrapolation it is closer to); a true jump keeps
its size as the bracket shrinks, a kink or a steep slope does not. Corrupted intervals are
found as the maximum-sum run of residual excess (Kadane's algorithm), see :func:`max_run`.
"""

from __future__ import annotations

from typing import Callable

import numpy as np


def jump_candidates(x: np.ndarray, y: np.ndarray, sigma: float, max_n: int = 40) -> list[int]:
    """Indices ``i`` (of sorted ``x``) with a suspected jump between ``x[i]`` and ``x[i+1]``, strongest first."""
    n = len(x)
    if n < 6:
        return []
    rng_y = float(np.ptp(y)) or 1.0
    e = np.zeros(n - 1)
    for i in range(n - 1):
        eL = abs(y[i + 1] - (2 * y[i] - y[i - 1])) if i >= 1 else np.inf
        eR = abs(y[i] - (2 * y[i + 1] - y[i + 2])) if i + 2 < n else np.inf
        e[i] = min(eL, eR)
    e[~np.isfinite(e)] = 0.0
    z = np.zeros_like(e)
    for i in range(len(e)):
        lo, hi = max(0, i - 10), min(len(e), i + 11)
        nb = np.concatenate([e[lo:max(lo, i - 1)], e[min(hi, i + 2):hi]])
        base = np.median(nb) if len(nb) else 0.0
        z[i] = e[i] / (3 * base + 6 * sigma + 1e-7 * rng_y)
    cand = [i for i in np.argsort(-z) if z[i] > 3 and e[i] > 1e-5 * rng_y]
    return [int(i) for i in cand[:max_n]]


def _line(x0, y0, x1, y1):
    s = (y1 - y0) / (x1 - x0) if x1 != x0 else 0.0
    return lambda t: y0 + s * (t - x0)


def refine_jumps(query: Callable[[list[float]], list[float]], x: np.ndarray, y: np.ndarray, idx: list[int],
                 iters: int, sigma: float) -> tuple[list[float], list[tuple[float, float]]]:
    """Bisect every candidate gap ``idx`` for ``iters`` rounds (one batched query per round).

    Returns the confirmed jump locations and every new ``(x, y)`` sample.
    """
    if not idx:
        return [], []
    n = len(x)
    st = []
    for i in idx:
        L = _line(x[max(i - 1, 0)], y[max(i - 1, 0)], x[i], y[i]) if i >= 1 else (lambda t, v=y[i]: v)
        R = _line(x[i + 1], y[i + 1], x[min(i + 2, n - 1)], y[min(i + 2, n - 1)]) if i + 2 < n else (lambda t, v=y[i + 1]: v)
        st.append({"a": x[i], "b": x[i + 1], "ya": y[i], "yb": y[i + 1], "L": L, "R": R})
    samples: list[tuple[float, float]] = []
    for _ in range(iters):
        mids = [(s["a"] + s["b"]) / 2 for s in st]
        ys = query(mids)
        for s, m, ym in zip(st, mids, ys):
            ym = float(ym) if ym is not None else np.nan
            samples.append((m, ym))
            if not np.isfinite(ym):
                s["b"] = m
                continue
            if abs(ym - s["L"](m)) <= abs(ym - s["R"](m)):
                s["a"], s["ya"] = m, ym
            else:
                s["b"], s["yb"] = m, ym
    jumps = []
    for s in st:
        m = (s["a"] + s["b"]) / 2
        gap, expect = abs(s["yb"] - s["ya"]), abs(s["R"](m) - s["L"](m))
        if gap > 0.5 * expect and gap > 5 * sigma:
            jumps.append(float(m))
    return sorted(jumps), samples


def max_run(x: np.ndarray, excess: np.ndarray) -> tuple[int, int, float]:
    """Kadane: the index range ``[i, j]`` of sorted ``x`` maximising ``sum(excess[i:j+1])``."""
    best, cur, start, bi, bj = -np.inf, 0.0, 0, 0, -1
    for k, v in enumerate(excess):
        if cur <= 0:
            cur, start = v, k
        else:
            cur += v
        if cur > best:
            best, bi, bj = cur, start, k
    return bi, bj, float(best)


def bisect_boundary(query: Callable, inside: float, outside: float, is_inside: Callable[[float, float], bool],
                    iters: int) -> tuple[float, list[tuple[float, float]]]:
    """Locate the boundary between a point known inside a region and one known outside."""
    a, b, samples = inside, outside, []
    for _ in range(iters):
        m = (a + b) / 2
        ym = query([m])[0]
        ym = float(ym) if ym is not None else np.nan
        samples.append((m, ym))
        if np.isfinite(ym) and is_inside(m, ym):
            a = m
        else:
            b = m
    return (a + b) / 2, samples
