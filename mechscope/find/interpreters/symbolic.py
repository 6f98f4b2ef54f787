"""Offline numeric interpreter: symbolic regression over a small grammar, with change points.

Plan (all queries batched):

1. sample a uniform grid and random points (held back for validation), and re-query a few
   grid points to tell noisy from deterministic functions;
2. find jumps (:mod:`.changepoints`) and bisect them with extra queries;
3. fit every family of the grammar (:mod:`.families`) by variable projection, then sums of two
   families; rank by a BIC-style criterion on the validation points;
4. if no formula explains the data to noise level, look for a *corrupted interval*: an interval
   outside of which one formula explains the data and inside of which it does not (interval
   guesses from jump pairs and from the maximal run of large residuals; ends bisected);
5. otherwise a piecewise-polynomial model over the jumps, or the nonparametric fallback
   (:mod:`.nonparam`), whichever predicts the validation points best.

The emitted code always defines ``f(x)`` and runs with numpy only.
"""

from __future__ import annotations

import math
import time

import numpy as np

from mechscope.find.interpreters.candidates import Candidate, choose, describe_shape, piecewise, sym_code
from mechscope.find.interpreters.changepoints import jump_candidates, refine_jumps
from mechscope.find.interpreters.corruption import find_corruption, slack
from mechscope.find.interpreters.families import Ctx, all_families
from mechscope.find.interpreters.fit import Fit, cancels, fit_family, fit_sum, lm_refine, snap
from mechscope.find.interpreters.nonparam import interp_code, smooth
from mechscope.find.protocol import BlackBoxHandle, Interpretation


def _g(v: float) -> str:
    return f"{float(v):.4g}"


class SymbolicInterpreter:
    """Symbolic search with change-point detection for numeric functions (see module docstring).

    ``budget_fraction`` of the handle's remaining queries may be used; ``time_budget`` (seconds)
    bounds the optional searches (sums of families, corrupted intervals).
    """

    name = "symbolic"

    def __init__(self, seed: int = 0, max_grid: int = 500, budget_fraction: float = 1.0, time_budget: float = 30.0,
                 try_sums: bool = True):
        self.seed, self.max_grid, self.budget_fraction = seed, max_grid, budget_fraction
        self.time_budget, self.try_sums = time_budget, try_sums
        self.families = all_families()

    # ------------------------------------------------------------------ sampling
    def _query(self, handle: BlackBoxHandle, xs) -> np.ndarray:
        xs = [float(v) for v in xs]
        if not xs:
            return np.zeros(0)
        ys = handle.query(xs)
        return np.array([np.nan if v is None else float(v) for v in ys])

    def interpret(self, handle: BlackBoxHandle) -> Interpretation:
        t0 = time.time()
        lo, hi = (float(v) for v in handle.domain)
        ctx = Ctx(lo, hi)
        B = int(handle.remaining * self.budget_fraction)
        n_grid = int(np.clip(0.45 * B, min(B, 8), self.max_grid))
        n_rand = int(np.clip(0.15 * B, 0, 200)) if B >= 40 else 0
        n_rep = 10 if B >= 100 else 0
        rng = np.random.default_rng([self.seed, 99])
        xg = np.linspace(lo, hi, n_grid)
        xr = np.sort(rng.uniform(lo, hi, n_rand))
        rep = np.linspace(0, n_grid - 1, n_rep).astype(int) if n_rep else np.zeros(0, int)
        y = self._query(handle, np.concatenate([xg, xr, xg[rep]]))
        yg, yr, yrep = y[:n_grid], y[n_grid:n_grid + n_rand], y[n_grid + n_rand:]
        d = yrep - yg[rep]
        d = d[np.isfinite(d)]
        sigma = float(np.sqrt(np.mean(d ** 2) / 2)) if len(d) else 0.0  # repeats differ only by the noise
        yg[rep] = (yg[rep] + yrep) / 2
        noisy = sigma > 1e-9 * (np.nanmax(np.abs(y)) + 1e-12) if len(d) else False
        if noisy:  # refine the repeat-based estimate with second differences on the whole grid
            d2 = np.diff(yg[np.isfinite(yg)], 2)
            s2 = float(np.sqrt(np.median(d2 ** 2) / 0.4549 / 6)) if len(d2) > 10 else sigma
            sigma = s2 if 0.6 * sigma <= s2 <= 1.6 * sigma else sigma
        sig_eff = sigma if noisy else 0.0

        # jumps
        gm = np.isfinite(yg)
        xgf, ygf = xg[gm], yg[gm]
        iters = 8 if noisy else 12
        spare = handle.remaining - (int(B * 0.1) if B > 200 else 0)
        cand = jump_candidates(xgf, ygf, sig_eff, max_n=max(0, min(24, spare // iters)))
        jumps, extra = refine_jumps(lambda v: self._query(handle, v).tolist(), xgf, ygf, cand, iters, sig_eff) if cand else ([], [])
        xf = np.concatenate([xgf, [p[0] for p in extra]])
        yf = np.concatenate([ygf, [p[1] for p in extra]])
        m = np.isfinite(yf)
        xf, yf = xf[m], yf[m]
        rm = np.isfinite(yr)
        xv, yv = xr[rm], yr[rm]
        if len(xv) < 5:  # tiny budgets: validate on the fit points
            xv, yv = xf, yf
        # scales from the uniform samples only: points bisected towards a pole are huge and would
        # make any model "explain the data"
        y_unif = np.concatenate([ygf, yv])
        var_y = float(np.var(y_unif)) or 1e-300
        ms_y = float(np.mean(y_unif ** 2))
        thr = 1.5 * sigma ** 2 + 1e-7 * var_y + 1e-20 * ms_y + 1e-300  # "explains the data to noise level"

        def mse(pred, xs, ys):
            with np.errstate(all="ignore"):
                p = pred(xs)
            return float(np.mean((ys - p) ** 2)) if np.all(np.isfinite(p)) else math.inf

        def crit(mv, k):
            return len(xv) * math.log(max(mv, thr / 1.5) / var_y) + k * math.log(max(len(xv), 2))

        # single families, then sums
        fits: list[tuple[float, Fit, float]] = []
        for fam in self.families:
            f = fit_family(fam, xf, yf, ctx)
            if f is not None:
                mv = mse(f.predict, xv, yv)
                fits.append((crit(mv, f.k), f, mv))
        fits.sort(key=lambda t: t[0])
        explained = bool(fits) and fits[0][2] <= thr
        pw = None if explained else piecewise(xf, yf, xv, yv, jumps, thr)
        pw_explains = pw is not None and pw.mse_v <= thr
        if self.try_sums and fits and not explained and not pw_explains:
            firsts = [t[1] for t in fits if not t[1].family.name.startswith("poly")][:2]
            seconds = [fm for fm in self.families if not fm.name.startswith("poly") or fm.name == "poly2"]
            for f1 in firsts:
                for fam2 in seconds:
                    if time.time() - t0 > self.time_budget * 0.5:  # a safety net; normally never reached
                        break
                    f = fit_sum(f1, fam2, xf, yf)
                    if f is not None and not cancels(f, xf):
                        mv = mse(f.predict, xv, yv)
                        fits.append((crit(mv, f.k), f, mv))
            fits.sort(key=lambda t: t[0])
            explained = fits[0][2] <= thr

        models: list[Candidate] = []
        if fits:
            _, f, mv = fits[0]
            f = _refit_all(f, xf, yf, xv, yv)
            xa_, ya_ = np.concatenate([xf, xv]), np.concatenate([yf, yv])
            f = snap(f, xa_, ya_, slack(len(xa_), sigma, var_y))
            models.append(Candidate("symbolic", f.predict, sym_code(f.expr()), f"{f.phrase()}: f(x) = {f.formula()}", f.k, mv, fit=f))
        if not explained:
            cm = None if pw_explains and len(jumps) > 6 else find_corruption(
                lambda v: self._query(handle, v).tolist(), lambda: handle.remaining, ctx, xf, yf, xv, yv, jumps, fits,
                self.families, sigma, thr, t0 + self.time_budget)
            if cm is not None:
                models.append(cm)
            if pw is not None:
                models.append(pw)
            kx, ky = smooth(xf, yf, jumps, noisy)
            npm = Candidate("nonparametric", lambda t, kx=kx, ky=ky: np.interp(t, kx, ky), "", "", len(kx))
            npm.mse_v = mse(npm.predict, xv, yv)
            models.append(npm)
        chosen = choose(models, thr)
        if chosen.kind == "nonparametric":
            kx, ky = smooth(np.concatenate([xf, xv]), np.concatenate([yf, yv]), jumps, noisy)
            chosen.code = "import numpy as np\n\n" + interp_code(kx, ky)
            chosen.description = describe_shape(kx, ky, jumps, noisy)
        meta = {"model": chosen.kind, "mse_val": chosen.mse_v, "noise_std": sigma, "jumps": jumps,
                "family": chosen.fit.family.name if chosen.fit is not None else None, "seconds": time.time() - t0}
        desc = chosen.description + (f" Observed outputs look noisy (std about {_g(sigma)})." if noisy else "")
        return Interpretation(desc, chosen.code, chosen.interval, meta)


def _refit_all(f: Fit, xf, yf, xv, yv) -> Fit:
    """Refine a fit on fit and validation samples together (kept only if it does not get worse)."""
    x, y = np.concatenate([xf, xv]), np.concatenate([yf, yv])
    theta, beta, rss = lm_refine(f.family, f.theta, x, y, f.ctx, iters=20)
    ok = np.isfinite(rss) and rss <= f.rss + np.sum((yv - f.predict(xv)) ** 2)
    return Fit(f.family, theta, beta, rss, f.ctx) if ok else f
