"""The nonparametric fallback: piecewise-linear interpolation of (optionally smoothed) samples.

Deterministic functions are interpolated through every sample. Noisy ones are first smoothed
by local-linear regression whose window is chosen by leave-one-out cross-validation (the
closed form ``r_i / (1 - h_ii)``; Hastie, Tibshirani & Friedman, ESL §6.1). Smoothing never
crosses a detected jump. The result is emitted as ``np.interp`` over inline knots, so the
code runs anywhere and scores well numerically even when no formula fits.
"""

from __future__ import annotations

import numpy as np


def _unique_mean(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(x, kind="stable")
    x, y = x[order], y[order]
    ux, inv, cnt = np.unique(x, return_inverse=True, return_counts=True)
    return ux, np.bincount(inv, weights=y) / cnt


def local_linear(x: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Box-window local-linear fit with ``k`` neighbours each side; returns (fitted, LOO residuals)."""
    n = len(x)
    if n < 3:
        return y.copy(), np.zeros_like(y)
    xs = (x - x.mean()) / (x.std() + 1e-300)
    c = lambda v: np.concatenate([[0.0], np.cumsum(v)])  # noqa: E731
    C0, C1, C2, T0, T1 = c(np.ones(n)), c(xs), c(xs * xs), c(y), c(xs * y)
    i = np.arange(n)
    a, b = np.clip(i - k, 0, n), np.clip(i + k + 1, 0, n)
    S0, S1, S2 = C0[b] - C0[a], C1[b] - C1[a], C2[b] - C2[a]
    U0, U1 = T0[b] - T0[a], T1[b] - T1[a]
    x0 = xs
    S1c, S2c, U1c = S1 - S0 * x0, S2 - 2 * x0 * S1 + S0 * x0 * x0, U1 - x0 * U0
    det = S0 * S2c - S1c * S1c
    good = det > 1e-12 * np.maximum(S0 * S2c, 1e-300)
    fit = np.where(good, (S2c * U0 - S1c * U1c) / np.where(good, det, 1), U0 / S0)
    lev = np.where(good, S2c / np.where(good, det, 1), 1 / S0)
    loo = (y - fit) / np.maximum(1 - lev, 1e-6)
    return fit, loo


def smooth(x: np.ndarray, y: np.ndarray, breaks: list[float], noisy: bool) -> tuple[np.ndarray, np.ndarray]:
    """Knots ``(x, y)`` for interpolation: the samples, smoothed within segments when ``noisy``."""
    x, y = _unique_mean(np.asarray(x, float), np.asarray(y, float))
    if not noisy:
        return x, y
    seg = np.searchsorted(np.sort(breaks), x, side="right") if breaks else np.zeros(len(x), int)
    best, best_cv = y, np.inf
    for k in (1, 2, 3, 5, 8, 12, 18, 27, 40):
        fit, loo = np.empty_like(y), np.empty_like(y)
        for s in np.unique(seg):
            m = seg == s
            fit[m], loo[m] = local_linear(x[m], y[m], k)
        cv = float(np.mean(loo ** 2))
        if cv < best_cv:
            best, best_cv = fit, cv
    return x, best


def interp_code(kx: np.ndarray, ky: np.ndarray) -> str:
    """Source for ``f`` interpolating the knots (constant beyond the ends)."""
    xs = ", ".join(repr(float(v)) for v in kx)
    ys = ", ".join(repr(float(v)) for v in ky)
    return f"_KX = np.array([{xs}])\n_KY = np.array([{ys}])\n\n\ndef f(x):\n    return float(np.interp(x, _KX, _KY))\n"
