"""Corrupted intervals: find an interval outside of which one formula explains the function.

Interval guesses come from the maximal run of large residuals of the best global fits
(Kadane's algorithm, and a widened copy), from pairs of consecutive jumps, from dense runs of
jumps, and from the domain's ends. For each guess every family is fitted to the samples
outside it; a guess is kept when a family explains the outside to noise level and misses the
inside. Its ends are then bisected with new queries, and the inside is modelled as a
constant, a line, the formula shifted, an interpolated curve, or — for unpredictable values —
their mean (the best guess in squared error).
"""

from __future__ import annotations

import math
import time
from typing import Callable

import numpy as np

from mechscope.find.functions import compile_code
from mechscope.find.interpreters.candidates import Candidate
from mechscope.find.interpreters.changepoints import bisect_boundary, max_run
from mechscope.find.interpreters.families import Ctx, Family
from mechscope.find.interpreters.fit import Fit, fit_family, lm_refine, snap


def _g(v: float) -> str:
    return f"{float(v):.4g}"


def slack(n: int, sigma: float, var_y: float) -> float:
    """How much RSS rounding parameters may add: negligible next to the noise, or 1e-12 of the variance."""
    return n * 1e-12 * var_y + 2.0 * sigma ** 2


def find_corruption(query: Callable, remaining: Callable[[], int], ctx: Ctx, xf, yf, xv, yv, jumps: list[float],
                    fits: list, families: list[Family], sigma: float, thr: float, deadline: float) -> Candidate | None:
    """Look for an interval outside of which a single formula explains the data."""
    W = ctx.W
    xa, ya = np.concatenate([xf, xv]), np.concatenate([yf, yv])
    order = np.argsort(xa)
    xa, ya = xa[order], ya[order]
    guesses: list[tuple[float, float]] = []
    for _, f, _ in fits[:3]:
        r2 = (ya - f.predict(xa)) ** 2
        base = float(np.median(r2))
        i, j, _ = max_run(xa, r2 - max(8 * base, 4 * thr))
        if j > i and xa[j] - xa[i] <= 0.6 * W:
            a, b = float(xa[i]), float(xa[j])
            guesses += [(a, b), (max(ctx.lo, a - 0.2 * (b - a)), min(ctx.hi, b + 0.2 * (b - a)))]
    js = sorted(jumps)
    for a, b in zip(js[:-1], js[1:]):
        if b - a <= 0.6 * W:
            guesses.append((a, b))
    runs, cur = [], [js[0]] if js else []
    for p in js[1:]:
        if p - cur[-1] < 0.1 * W:
            cur.append(p)
        else:
            runs.append(cur)
            cur = [p]
    if cur:
        runs.append(cur)
    guesses += [(r[0], r[-1]) for r in runs if len(r) >= 3 and r[-1] - r[0] <= 0.6 * W]
    if js:
        guesses += [g for g in ((ctx.lo, js[0]), (js[-1], ctx.hi)) if g[1] - g[0] <= 0.3 * W]
    uniq: list[tuple[float, float]] = []
    for g in guesses:
        if all(abs(g[0] - u[0]) + abs(g[1] - u[1]) > 0.01 * W for u in uniq):
            uniq.append(g)
    ranked = [f.family for _, f, _ in fits if "+" not in f.family.name]
    best: Candidate | None = None
    for a, b in uniq[:8]:
        if time.time() > deadline or (best is not None and best.mse_v <= thr):
            break
        res = _explain_outside(ctx, xa, ya, xv, a, b, families, ranked, thr, deadline)
        if res is None:
            continue
        M = res
        cand = _build(query, remaining, ctx, xa, ya, xv, yv, M, sigma, thr, a, b)
        if cand is not None and (best is None or cand.mse_v < best.mse_v):
            best = cand
    return best

def _explain_outside(ctx, xa, ya, xv, a, b, families, ranked, thr, deadline):
    """The simplest family fitting outside ``[a, b]`` to noise level while missing inside; with the outside mask."""
    margin = 0.002 * ctx.W
    out = (xa < a - margin) | (xa > b + margin)
    if out.sum() < 10 or (~out).sum() < 2:
        return None
    vset = set(xv.tolist())
    isv = np.array([v in vset for v in xa])
    fo, vo = out & ~isv, out & isv
    if vo.sum() < 3:
        vo = fo
    polys = [fm for fm in families if fm.name.startswith("poly")]
    others = [fm for fm in ranked if not fm.name.startswith("poly")]
    found = []
    sub = np.where(fo)[0]
    sub = sub[:: max(1, len(sub) // 150)]
    for fam in polys + others:
        if time.time() > deadline:
            break
        f = fit_family(fam, xa[sub], ya[sub], ctx, n_starts=2)
        if f is None:
            continue
        with np.errstate(all="ignore"):
            r_out = float(np.mean((ya[vo] - f.predict(xa[vo])) ** 2))
            r_in = float(np.mean((ya[~out] - f.predict(xa[~out])) ** 2))
        if r_out <= 2 * thr and r_in > 25 * thr:
            found.append((f.k, r_out, f))
    if not found:
        return None
    f = min(found, key=lambda t: (t[0], t[1]))[2]
    theta, beta, rss = lm_refine(f.family, f.theta, xa[out], ya[out], ctx, iters=20)
    if np.isfinite(rss):
        f = Fit(f.family, theta, beta, rss, ctx)
    sigma2 = max(0.0, (thr - 1e-7 * float(np.var(ya))) / 1.5)
    f = snap(f, xa[out], ya[out], slack(int(out.sum()), math.sqrt(sigma2), float(np.var(ya[out]))))
    return f

def _build(query, remaining, ctx, xa, ya, xv, yv, M: Fit, sigma, thr, a, b) -> Candidate | None:
    """Bisect the interval's ends, model the inside, and assemble the corruption candidate."""
    pt_thr = max(5 * sigma, math.sqrt(thr) * 3)
    with np.errstate(all="ignore"):
        dev = np.abs(ya - M.predict(xa)) > pt_thr
    near = (xa >= a - 0.05 * ctx.W) & (xa <= b + 0.05 * ctx.W)
    idx = np.where(dev & near)[0]
    if len(idx) < 2:
        return None
    i0, i1 = idx[0], idx[-1]
    is_in = lambda t, yt: abs(yt - float(M.predict(np.array([t]))[0])) > pt_thr  # noqa: E731
    q = lambda v: list(query(v))  # noqa: E731
    iters = min(12, max(0, remaining() // 2))
    lo_b, hi_b = float(xa[i0]), float(xa[i1])
    extra: list = []
    if iters:
        if i0 > 0:
            lo_b, s1 = bisect_boundary(q, float(xa[i0]), float(xa[i0 - 1]), is_in, iters)
            extra += s1
        if i1 < len(xa) - 1:
            hi_b, s2 = bisect_boundary(q, float(xa[i1]), float(xa[i1 + 1]), is_in, min(iters, remaining()))
            extra += s2
    # inside model: constant, line, formula + offset, or interpolation of the inside samples
    xi = np.concatenate([xa[i0:i1 + 1], [p[0] for p in extra if lo_b <= p[0] <= hi_b]])
    yi = np.concatenate([ya[i0:i1 + 1], [p[1] for p in extra if lo_b <= p[0] <= hi_b]])
    ok = np.isfinite(yi)
    xi, yi = xi[ok], yi[ok]
    o = np.argsort(xi)
    xi, yi = xi[o], yi[o]
    base = M.predict(xi)
    opts = []
    for deg in (0, 1):
        if len(xi) > deg + 1:
            coef = np.polyfit(xi, yi, deg)
            r = float(np.mean((yi - np.polyval(coef, xi)) ** 2))
            opts.append((r, f"float(np.polyval({[float(c) for c in coef]!r}, x))",
                         "a constant" if deg == 0 else "a straight line", deg + 1))
    off = float(np.mean(yi - base))
    opts.append((float(np.mean((yi - base - off) ** 2)), f"_base(x) + {off!r}", f"the same formula shifted by {_g(off)}", 1))
    r_ok = [o for o in opts if o[0] <= thr * 2]
    if r_ok:
        _, body, what, kin = min(r_ok, key=lambda o: o[3])
        inside_pred = None
    elif len(xi) >= 3 and _loo_interp(xi, yi) < float(np.var(yi)):
        body = "float(np.interp(x, _IX, _IY))"
        what, kin = "a different curve (interpolated here)", len(xi)
        inside_pred = (xi, yi)
    else:  # unpredictable (noise-like) values: their mean is the best guess in squared error
        body = repr(float(np.mean(yi)))
        what, kin = f"irregular, noise-like values (mean {_g(np.mean(yi))}, std {_g(np.std(yi))})", 1
        inside_pred = None
    if M.family.name in ("poly0", "step") and what == "a constant":
        return None  # a constant with a box of another constant is a rectangle, not a corruption
    pre = ""
    if inside_pred is not None:
        pre = (f"_IX = np.array({[float(v) for v in inside_pred[0]]!r})\n"
               f"_IY = np.array({[float(v) for v in inside_pred[1]]!r})\n\n\n")
    code = (f"import numpy as np\n\n{pre}def _base(x):\n    return float({M.expr()})\n\n\n"
            f"def f(x):\n    if {lo_b!r} <= x <= {hi_b!r}:\n        return {body}\n    return _base(x)\n")
    from mechscope.find.functions import compile_code

    fn = compile_code(code, what="corruption model")

    def predict(t, fn=fn):
        return np.array([fn(v) for v in np.atleast_1d(t)])

    desc = (f"{M.phrase()}: f(x) = {M.formula()}, except on the interval [{_g(lo_b)}, {_g(hi_b)}], "
            f"where the output is replaced by {what}.")
    m = Candidate("corruption", predict, code, desc, M.k + 2 + kin, interval=(lo_b, hi_b), fit=M)
    with np.errstate(all="ignore"):
        m.mse_v = float(np.mean((yv - predict(xv)) ** 2))
    return m


def _loo_interp(x: np.ndarray, y: np.ndarray) -> float:
    """Leave-one-out error of linear interpolation (each interior point from its neighbours)."""
    w = (x[1:-1] - x[:-2]) / np.maximum(x[2:] - x[:-2], 1e-300)
    pred = y[:-2] + w * (y[2:] - y[:-2])
    return float(np.mean((y[1:-1] - pred) ** 2))
