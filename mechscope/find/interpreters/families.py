"""The expression grammar of the symbolic interpreter.

A family is a linear combination of basis columns that depend on a few nonlinear
parameters ``theta``: ``f(x) = sum_k beta_k * phi_k(x; theta)``. Given ``theta`` the
coefficients ``beta`` are a least-squares solve (variable projection, Golub & Pereyra 1973),
so only ``theta`` (0–2 numbers) is searched. Every family knows how to make a grid of
initial ``theta``, render itself as Python source and describe itself in words.

Basis functions are vectorised: ``basis(x[n], T[m, p]) -> [m, n, k]`` for ``m`` parameter
vectors at once. Inputs are used through ``u = (x - c) / s`` (domain centre and half-width)
where that keeps the columns well conditioned.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Ctx:
    """The domain a fit lives on."""

    lo: float
    hi: float

    @property
    def c(self) -> float:
        return (self.lo + self.hi) / 2

    @property
    def s(self) -> float:
        return (self.hi - self.lo) / 2

    @property
    def W(self) -> float:
        return self.hi - self.lo

    def u(self, x):
        return (x - self.c) / self.s

    def usrc(self) -> str:
        return f"((x - {self.c!r}) / {self.s!r})"


def _r(v: float) -> str:
    """Full-precision source for a number."""
    return f"({float(v)!r})"


def _g(v: float) -> str:
    """A short readable number for descriptions."""
    return f"{float(v):.4g}"


@dataclass
class Family:
    """One family of the grammar; see the module docstring."""

    name: str
    n_theta: int
    basis: Callable  # (x[n], T[m, p], ctx) -> [m, n, k]
    grid: Callable  # (ctx, x, y) -> T[m, p]
    terms: Callable  # (theta, ctx) -> list of source expressions, one per column
    phrase: Callable  # (theta, beta, ctx) -> str

    def expr(self, theta, beta, ctx: Ctx) -> str:
        parts = []
        for b, t in zip(beta, self.terms(theta, ctx)):
            if b == 0:
                continue
            parts.append(_r(b) if t == "1" else f"{_r(b)}*{t}")
        return " + ".join(parts) or "0.0"

    def formula(self, theta, beta, ctx: Ctx) -> str:
        """A readable formula with rounded numbers."""
        if self.name.startswith("poly"):
            return _poly_formula(beta, ctx)
        if self.name == "sine" and beta[1] != 0 and beta[2] != 0:
            amp, ph = math.hypot(beta[1], beta[2]), math.atan2(beta[2], beta[1])
            return _tidy(f"{_g(amp)}*sin({_g(theta[0])}*x + {_g(ph)}) + {_g(beta[0])}")
        parts = []
        for b, t in zip(beta, self.terms(theta, ctx)):
            if b == 0:
                continue
            t = _short(t)
            parts.append(_g(b) if t == "1" else f"{_g(b)}*{t}")
        return _tidy(" + ".join(parts)) or "0"


def _tidy(src: str) -> str:
    """Cosmetics for formulas: ``+ -`` -> ``-``, drop ``1*``, ``x - 0`` -> ``x``, ``+ 0`` terms."""
    import re

    s = src.replace("+ -", "- ")
    s = re.sub(r"(?<![0-9.e])1\*", "", s)
    s = re.sub(r"x - 0(\.0)?(?![0-9.])", "x", s).replace("x - -", "x + ")
    s = re.sub(r"(?<![A-Za-z_])\(x\)", "x", s)
    s = re.sub(r" \+ 0(?![0-9.])", "", s)
    s = re.sub(r"x / 1(?![0-9.])", "x", s)
    return s


def _poly_formula(beta, ctx: Ctx) -> str:
    """The polynomial in ``u = (x - c)/s`` expanded into powers of ``x``."""
    P = np.polynomial.Polynomial
    p = P([0.0])
    for k, b in enumerate(beta):
        p = p + b * P([-ctx.c / ctx.s, 1 / ctx.s]) ** k
    coef = p.coef
    scale = max(np.max(np.abs(coef)), 1e-300)
    terms = []
    for k in range(len(coef) - 1, -1, -1):
        c = coef[k]
        if abs(c) < 1e-9 * scale:
            continue
        terms.append(_g(c) + ("" if k == 0 else "*x" if k == 1 else f"*x**{k}"))
    return _tidy(" + ".join(terms)) or "0"


def _short(src: str) -> str:
    import re

    return re.sub(r"\((-?[0-9.]+(?:e[-+]?[0-9]+)?)\)|(-?[0-9]+\.[0-9]{5,}(?:e[-+]?[0-9]+)?)",
                  lambda m: _g(float(m.group(1) or m.group(2))), src).replace("np.", "")


# ---------------------------------------------------------------- helpers for grids


def _locs(ctx: Ctx, n: int, pad: float = 0.0) -> np.ndarray:
    return np.linspace(ctx.lo - pad * ctx.W, ctx.hi + pad * ctx.W, n)


def _outside(ctx: Ctx, n: int) -> np.ndarray:
    d = ctx.W * np.logspace(-3, 1, n // 2)
    return np.concatenate([ctx.lo - d, ctx.hi + d])


def _widths(ctx: Ctx, n: int, a: float = -3, b: float = 0.3) -> np.ndarray:
    return ctx.W * np.logspace(a, b, n)


def _step_grid(ctx: Ctx, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Midpoints of the largest gaps between consecutive sorted samples, plus a coarse grid."""
    o = np.argsort(x)
    xs, ys = x[o], y[o]
    big = np.argsort(-np.abs(np.diff(ys)))[:8]
    return np.concatenate([(xs[big] + xs[big + 1]) / 2, _locs(ctx, 40)])[:, None]


def pole_candidates(x: np.ndarray, y: np.ndarray, n: int = 8) -> np.ndarray:
    """Likely poles inside the samples: between consecutive samples where ``y`` changes sign at a
    large magnitude, the point where ``A / (x - c)`` through both samples has its pole; largest first."""
    o = np.argsort(x)
    xs, ys = x[o], y[o]
    if len(xs) < 4:
        return np.zeros(0)
    a, b, xa, xb = ys[:-1], ys[1:], xs[:-1], xs[1:]
    mag = np.minimum(np.abs(a), np.abs(b))
    ok = (np.sign(a) * np.sign(b) < 0) & (mag > 3 * np.median(np.abs(ys - np.median(ys))) + 1e-300)
    with np.errstate(all="ignore"):
        c = (a * xa - b * xb) / (a - b)
    ok &= np.isfinite(c) & (c >= xa) & (c <= xb)
    idx = np.nonzero(ok)[0]
    return c[idx[np.argsort(-mag[idx])][:n]]


def _mesh(a, b) -> np.ndarray:
    A, B = np.meshgrid(a, b, indexing="ij")
    return np.stack([A.ravel(), B.ravel()], 1)


def periodogram_peaks(x: np.ndarray, y: np.ndarray, ctx: Ctx, n_peaks: int = 6, n_grid: int | None = None) -> np.ndarray:
    """Angular frequencies whose sine/cosine pair best explains ``y`` (a least-squares periodogram).

    Non-uniform samples (the interpreter mixes a grid with random points) let it see
    frequencies above the grid's Nyquist limit.
    """
    key = (hash(x.tobytes()), hash(y.tobytes()), ctx, n_peaks, n_grid)
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    if len(_PEAK_CACHE) > 64:
        _PEAK_CACHE.clear()
    _PEAK_CACHE[key] = out = _periodogram_peaks(x, y, ctx, n_peaks, n_grid)
    return out


_PEAK_CACHE: dict = {}


def _periodogram_peaks(x, y, ctx, n_peaks, n_grid):
    n_grid = n_grid or int(min(4000, 4 * len(x)))
    wmax = 2 * math.pi * len(x) / ctx.W
    ws = np.linspace(math.pi / ctx.W * 0.5, wmax, n_grid)
    yc = y - y.mean()
    ph = np.outer(ws, x)
    S, C = np.sin(ph), np.cos(ph)
    # power of the 2-column projection (Lomb-Scargle without the time shift; a 2x2 solve)
    ss, cc, sc = (S * S).sum(1), (C * C).sum(1), (S * C).sum(1)
    sy, cy = S @ yc, C @ yc
    det = ss * cc - sc * sc + 1e-12
    power = (cc * sy * sy + ss * cy * cy - 2 * sc * sy * cy) / det
    peaks = [i for i in range(1, len(ws) - 1) if power[i] >= power[i - 1] and power[i] >= power[i + 1]]
    peaks.sort(key=lambda i: -power[i])
    return ws[peaks[:n_peaks]] if peaks else ws[:1]


# ---------------------------------------------------------------- families


def _poly(deg: int) -> Family:
    def basis(x, T, ctx):
        u = ctx.u(x)
        return np.broadcast_to(np.stack([u ** k for k in range(deg + 1)], -1), (len(T), len(x), deg + 1))

    return Family(
        f"poly{deg}", 0, basis, lambda ctx, x, y: np.zeros((1, 0)),
        lambda th, ctx: ["1"] + [f"{ctx.usrc()}**{k}" if k > 1 else ctx.usrc() for k in range(1, deg + 1)],
        lambda th, b, ctx: "a constant" if deg == 0 else ("a straight line" if deg == 1 else f"a degree-{deg} polynomial"))


def _sine_terms(w):
    return [f"np.sin({_r(w)}*x)", f"np.cos({_r(w)}*x)"]


def _sine_phrase(th, b, ctx, extra=""):
    w = abs(th[0])
    return f"a sinusoid{extra} with period {_g(2 * math.pi / w)} (angular frequency {_g(w)})"


def _fam_sine() -> list[Family]:
    def b_sine(x, T, ctx):
        ph = T[:, :1] * x[None, :]
        return np.stack([np.ones_like(ph), np.sin(ph), np.cos(ph)], -1)

    def b_sine_lin(x, T, ctx):
        ph = T[:, :1] * x[None, :]
        u = np.broadcast_to(ctx.u(x)[None, :], ph.shape)
        return np.stack([np.ones_like(ph), u, np.sin(ph), np.cos(ph)], -1)

    def b_sine_am(x, T, ctx):
        ph = T[:, :1] * x[None, :]
        u = ctx.u(x)[None, :]
        s, c = np.sin(ph), np.cos(ph)
        return np.stack([np.ones_like(ph), s, c, u * s, u * c], -1)

    def b_sine2(x, T, ctx):
        p1, p2 = T[:, :1] * x[None, :], T[:, 1:2] * x[None, :]
        return np.stack([np.ones_like(p1), np.sin(p1), np.cos(p1), np.sin(p2), np.cos(p2)], -1)

    g1 = lambda ctx, x, y: periodogram_peaks(x, y, ctx)[:, None]  # noqa: E731

    def g2(ctx, x, y):
        p = periodogram_peaks(x, y, ctx, n_peaks=5)
        return np.array([[a, b] for i, a in enumerate(p) for b in p[i + 1:]]) if len(p) > 1 else np.array([[p[0], 2 * p[0]]])

    return [
        Family("sine", 1, b_sine, g1, lambda th, ctx: ["1", *_sine_terms(th[0])], _sine_phrase),
        Family("sine_linear", 1, b_sine_lin, g1, lambda th, ctx: ["1", ctx.usrc(), *_sine_terms(th[0])],
               lambda th, b, ctx: _sine_phrase(th, b, ctx, " plus a linear trend")),
        Family("sine_am", 1, b_sine_am, g1,
               lambda th, ctx: ["1", *_sine_terms(th[0]), *(f"{ctx.usrc()}*{t}" for t in _sine_terms(th[0]))],
               lambda th, b, ctx: _sine_phrase(th, b, ctx, " with linearly varying amplitude")),
        Family("sine2", 2, b_sine2, g2, lambda th, ctx: ["1", *_sine_terms(th[0]), *_sine_terms(th[1])],
               lambda th, b, ctx: f"a sum of two sinusoids with periods {_g(2 * math.pi / abs(th[0]))} and {_g(2 * math.pi / abs(th[1]))}"),
    ]


def _one_col(name: str, n_theta: int, col: Callable, grid: Callable, term: Callable, phrase: Callable, linear: bool = False) -> Family:
    """A family ``b0 [+ b1*u] + b2 * col(x; theta)``."""

    def basis(x, T, ctx):
        g = col(x[None, :], T, ctx)
        cols = [np.ones_like(g)] + ([np.broadcast_to(ctx.u(x)[None, :], g.shape)] if linear else []) + [g]
        return np.stack(cols, -1)

    return Family(name, n_theta, basis, grid,
                  lambda th, ctx: ["1"] + ([ctx.usrc()] if linear else []) + [term(th, ctx)], phrase)


def _valid_pow(T, ctx: Ctx, v):
    """NaN (a rejected fit) for exponents outside [0.05, 6] or centres far outside the domain."""
    bad = (T[:, 1:2] < 0.05) | (T[:, 1:2] > 6) | (np.abs(T[:, :1] - ctx.c) > 10 * ctx.W)
    return np.where(bad, np.nan, v)


def _c(T):
    return T[:, :1]


def _w(T):
    return np.abs(T[:, 1:2]) + 1e-300


def _families_other() -> list[Family]:
    F = []
    # exponential a + b*exp(k*(x - c))
    F.append(_one_col(
        "exp", 1, lambda x, T, ctx: np.exp(np.clip(T[:, :1] * (x - ctx.c), -700, 700)),
        lambda ctx, x, y: (np.concatenate([-np.logspace(-2, 1.7, 40), np.logspace(-2, 1.7, 40)]) / ctx.s)[:, None],
        lambda th, ctx: f"np.exp({_r(th[0])}*(x - {ctx.c!r}))",
        lambda th, b, ctx: f"an exponential {'growth' if th[0] * b[-1] > 0 else 'decay'} (rate {_g(th[0])})"))
    # logarithm of the distance to a point outside the domain
    F.append(_one_col(
        "log", 1, lambda x, T, ctx: np.log(np.abs(x - T[:, :1]) + 1e-300),
        lambda ctx, x, y: _outside(ctx, 80)[:, None],
        lambda th, ctx: f"np.log(abs(x - {_r(th[0])}))",
        lambda th, b, ctx: f"a logarithm, log|x - {_g(th[0])}|"))
    # power of the distance to a point; and the signed (odd) power
    F.append(_one_col(
        "power", 2, lambda x, T, ctx: _valid_pow(T, ctx, (np.abs(x - _c(T)) / ctx.s) ** T[:, 1:2]),
        lambda ctx, x, y: _mesh(np.concatenate([_locs(ctx, 25), _outside(ctx, 16)]), [0.25, 1 / 3, 0.5, 0.75, 1.5, 2, 2.5, 3, 4]),
        lambda th, ctx: f"(abs(x - {_r(th[0])}) / {ctx.s!r})**{_r(th[1])}",
        lambda th, b, ctx: (f"a square root of |x - {_g(th[0])}|" if abs(th[1] - 0.5) < 0.02
                            else f"a power |x - {_g(th[0])}|^{_g(th[1])}")))
    F.append(_one_col(
        "signed_power", 2, lambda x, T, ctx: _valid_pow(T, ctx, np.sign(x - _c(T)) * (np.abs(x - _c(T)) / ctx.s) ** T[:, 1:2]),
        lambda ctx, x, y: _mesh(_locs(ctx, 25), [0.2, 1 / 3, 0.5, 0.75]),
        lambda th, ctx: f"np.sign(x - {_r(th[0])})*(abs(x - {_r(th[0])}) / {ctx.s!r})**{_r(th[1])}",
        lambda th, b, ctx: (f"a cube root of (x - {_g(th[0])})" if abs(th[1] - 1 / 3) < 0.02
                            else f"a signed power sign(x - c)|x - c|^{_g(th[1])} with c = {_g(th[0])}")))
    # one-sided powers: max(0, x - c)^p and max(0, c - x)^p (square roots and ramps that start at c)
    F.append(_one_col(
        "ramp_power", 2, lambda x, T, ctx: _valid_pow(T, ctx, (np.maximum(0.0, x - _c(T)) / ctx.s) ** T[:, 1:2]),
        lambda ctx, x, y: _mesh(_locs(ctx, 30), [1 / 3, 0.5, 0.75, 1.5, 2, 3]),
        lambda th, ctx: f"(max(0.0, x - {_r(th[0])}) / {ctx.s!r})**{_r(th[1])}",
        lambda th, b, ctx: f"zero for x < {_g(th[0])}, then a power (x - {_g(th[0])})^{_g(th[1])}"))
    F.append(_one_col(
        "ramp_power_left", 2, lambda x, T, ctx: _valid_pow(T, ctx, (np.maximum(0.0, _c(T) - x) / ctx.s) ** T[:, 1:2]),
        lambda ctx, x, y: _mesh(_locs(ctx, 30), [1 / 3, 0.5, 0.75, 1.5, 2, 3]),
        lambda th, ctx: f"(max(0.0, {_r(th[0])} - x) / {ctx.s!r})**{_r(th[1])}",
        lambda th, b, ctx: f"a power ({_g(th[0])} - x)^{_g(th[1])} for x < {_g(th[0])}, zero above"))
    # hinge: ReLU, leaky ReLU and |x| are all a + b*u + d*max(0, x - c)
    F.append(_one_col(
        "hinge", 1, lambda x, T, ctx: np.maximum(0.0, x - _c(T)) / ctx.s,
        lambda ctx, x, y: _locs(ctx, 150)[:, None],
        lambda th, ctx: f"max(0.0, x - {_r(th[0])}) / {ctx.s!r}",
        lambda th, b, ctx: f"piecewise linear with a kink at x = {_g(th[0])} (ReLU-like)", linear=True))
    F.append(_one_col(
        "softplus", 2, lambda x, T, ctx: _w(T) * np.logaddexp(0.0, (x - _c(T)) / _w(T)) / ctx.s,
        lambda ctx, x, y: _mesh(_locs(ctx, 30), _widths(ctx, 10, -3, -0.5)),
        lambda th, ctx: f"{float(abs(th[1]))!r}*np.logaddexp(0.0, (x - {_r(th[0])}) / {float(abs(th[1]))!r}) / {ctx.s!r}",
        lambda th, b, ctx: f"a smooth ReLU (softplus) bending at x = {_g(th[0])}", linear=True))
    F.append(_one_col(
        "sigmoid", 2, lambda x, T, ctx: np.tanh((x - _c(T)) / _w(T)),
        lambda ctx, x, y: _mesh(_locs(ctx, 30), _widths(ctx, 12, -3, 0)),
        lambda th, ctx: f"np.tanh((x - {_r(th[0])}) / {float(abs(th[1]))!r})",
        lambda th, b, ctx: f"a sigmoid (tanh) step centred at x = {_g(th[0])} with width {_g(abs(th[1]))}"))
    F.append(_one_col(
        "gaussian", 2, lambda x, T, ctx: np.exp(-(((x - _c(T)) / _w(T)) ** 2)),
        lambda ctx, x, y: _mesh(_locs(ctx, 40, 0.1), _widths(ctx, 12, -2.5, 0)),
        lambda th, ctx: f"np.exp(-((x - {_r(th[0])}) / {float(abs(th[1]))!r})**2)",
        lambda th, b, ctx: f"a Gaussian bump centred at x = {_g(th[0])} with width {_g(abs(th[1]))}"))
    F.append(_one_col(
        "sinc", 2, lambda x, T, ctx: np.sinc((x - _c(T)) / _w(T)),
        lambda ctx, x, y: _mesh(_locs(ctx, 40), _widths(ctx, 10, -2.5, -0.5)),
        lambda th, ctx: f"np.sinc((x - {_r(th[0])}) / {float(abs(th[1]))!r})",
        lambda th, b, ctx: f"a sinc, sin(pi z)/(pi z) with z = (x - {_g(th[0])})/{_g(abs(th[1]))}"))
    F.append(_one_col(
        "step", 1, lambda x, T, ctx: (x > _c(T)).astype(float),
        lambda ctx, x, y: _step_grid(ctx, x, y),
        lambda th, ctx: f"float(x > {_r(th[0])})",
        lambda th, b, ctx: f"a step at x = {_g(th[0])} (from {_g(b[0])} to {_g(b[0] + b[1])})"))
    F.append(_one_col(
        "hyperbola", 1, lambda x, T, ctx: ctx.s / (x - _c(T)),
        lambda ctx, x, y: _outside(ctx, 80)[:, None],
        lambda th, ctx: f"{ctx.s!r} / (x - {_r(th[0])})",
        lambda th, b, ctx: f"a hyperbola 1/(x - {_g(th[0])})"))

    F += _families_poles()

    def b_lor(x, T, ctx):
        d, w = x[None, :] - _c(T), _w(T)
        den = d * d + w * w
        return np.stack([np.ones_like(d), w * w / den, w * d / den], -1)

    F.append(Family(
        "rational", 2, b_lor, lambda ctx, x, y: _mesh(_locs(ctx, 40, 0.2), _widths(ctx, 12, -2.5, 0.3)),
        lambda th, ctx: ["1", f"{float(th[1] ** 2)!r} / ((x - {_r(th[0])})**2 + {float(th[1] ** 2)!r})",
                         f"{float(abs(th[1]))!r}*(x - {_r(th[0])}) / ((x - {_r(th[0])})**2 + {float(th[1] ** 2)!r})"],
        lambda th, b, ctx: f"a rational function (Lorentzian) centred at x = {_g(th[0])} with width {_g(abs(th[1]))}"))
    return F


def _families_poles() -> list[Family]:
    """Poles inside the domain: ``a + b*u + d/(x - c)``, two simple poles, and a tangent ``cot(w (x - c))``
    (poles every ``pi / w``); the grids start at the poles seen in the samples."""
    def g_one(ctx, x, y):
        return pole_candidates(x, y)[:, None]

    def g_two(ctx, x, y):
        p = pole_candidates(x, y, 6)
        return np.array([[a, b] for i, a in enumerate(p) for b in p[i + 1:]]).reshape(-1, 2)

    def g_tan(ctx, x, y):
        p = pole_candidates(x, y, 6)
        gaps = [abs(a - b) for i, a in enumerate(p) for b in p[i + 1:]]
        ws = np.concatenate([math.pi / np.array(gaps + [1.0]), math.pi / (ctx.W * np.logspace(-0.3, 0.7, 8))])
        return _mesh(p, ws[ws > 0]).reshape(-1, 2)

    def b_two(x, T, ctx):
        d1, d2 = x[None, :] - T[:, :1], x[None, :] - T[:, 1:2]
        return np.stack([np.ones_like(d1), ctx.s / d1, ctx.s / d2], -1)

    return [
        _one_col("pole", 1, lambda x, T, ctx: ctx.s / (x - _c(T)), g_one, lambda th, ctx: f"{ctx.s!r} / (x - {_r(th[0])})",
                 lambda th, b, ctx: f"a pole at x = {_g(th[0])} (a hyperbola plus a linear trend)", linear=True),
        Family("two_poles", 2, b_two, g_two, lambda th, ctx: ["1", f"{ctx.s!r} / (x - {_r(th[0])})", f"{ctx.s!r} / (x - {_r(th[1])})"],
               lambda th, b, ctx: f"a rational function with poles at x = {_g(th[0])} and x = {_g(th[1])}"),
        _one_col("tangent", 2, lambda x, T, ctx: 1 / np.tan(T[:, 1:2] * (x - _c(T))), g_tan,
                 lambda th, ctx: f"1 / np.tan({_r(th[1])}*(x - {_r(th[0])}))",
                 lambda th, b, ctx: f"a tangent-like periodic function with poles every {_g(math.pi / abs(th[1]))} (at x = {_g(th[0])} + k*{_g(math.pi / abs(th[1]))})"),
    ]


def all_families(max_degree: int = 6) -> list[Family]:
    """Every family of the grammar, simplest first."""
    return [_poly(d) for d in range(max_degree + 1)] + _fam_sine() + _families_other()
