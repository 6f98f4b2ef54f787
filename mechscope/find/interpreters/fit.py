"""Fitting a family to data: grid search over ``theta`` then Levenberg–Marquardt refinement.

For each ``theta`` the linear coefficients are a least-squares solve (variable projection),
so the grid search is one batched solve and the refinement only moves 1–4 numbers.
Columns are rescaled before solving, so exponentials and high powers stay well conditioned.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mechscope.find.interpreters.families import Ctx, Family


@dataclass
class Fit:
    """A fitted family: ``theta`` (nonlinear), ``beta`` (linear) and its training RSS."""

    family: Family
    theta: np.ndarray
    beta: np.ndarray
    rss: float
    ctx: Ctx

    @property
    def k(self) -> int:
        """Number of fitted parameters."""
        return int(self.family.n_theta + np.count_nonzero(self.beta))

    def predict(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=float)
        with np.errstate(all="ignore"):
            return self.family.basis(x, self.theta[None, :], self.ctx)[0] @ self.beta

    def expr(self) -> str:
        return self.family.expr(self.theta, self.beta, self.ctx)

    def formula(self) -> str:
        return self.family.formula(self.theta, self.beta, self.ctx)

    def phrase(self) -> str:
        return self.family.phrase(self.theta, self.beta, self.ctx)


def batched_lstsq(Phi: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares for a stack of design matrices ``Phi[m, n, k]``; returns ``beta[m, k]``, ``rss[m]``.

    A design with a non-finite entry gets ``rss = inf``.
    """
    with np.errstate(all="ignore"):
        ok = np.all(np.isfinite(Phi), axis=(1, 2))
        P = np.where(np.isfinite(Phi), Phi, 0.0)
        scale = np.max(np.abs(P), axis=1, keepdims=True) + 1e-300  # [m, 1, k]
        Ps = P / scale
        G = np.einsum("mnk,mnl->mkl", Ps, Ps)
        b = np.einsum("mnk,n->mk", Ps, y)
        ridge = 1e-12 * np.trace(G, axis1=1, axis2=2)[:, None, None] * np.eye(G.shape[-1])[None] + 1e-300
        try:
            bs = np.linalg.solve(G + ridge, b[..., None])[..., 0]
        except np.linalg.LinAlgError:
            bs = np.stack([np.linalg.lstsq(g + r, v, rcond=None)[0] for g, r, v in zip(G, ridge, b)])
        r = y[None, :] - np.einsum("mnk,mk->mn", Ps, bs)
        rss = np.einsum("mn,mn->m", r, r)
    rss = np.where(ok & np.isfinite(rss), rss, np.inf)
    return bs / scale[:, 0, :], rss


def solve_one(Phi: np.ndarray, y: np.ndarray, exact: bool = False) -> tuple[np.ndarray, float]:
    """Least squares for one design ``Phi[n, k]`` with scaled columns: normal equations (fast),
    or ``lstsq`` when ``exact`` or when the normal equations are ill-conditioned."""
    scale = np.abs(Phi).max(axis=0) + 1e-300
    if not np.isfinite(scale).all():
        return np.zeros(Phi.shape[1]), np.inf
    Ps = Phi / scale
    bs = None
    if not exact:
        G = Ps.T @ Ps
        d = np.diag(G)
        try:
            bs = np.linalg.solve(G + 1e-13 * d.max() * np.eye(len(d)), Ps.T @ y)
        except np.linalg.LinAlgError:
            bs = None
    if bs is None:
        bs, *_ = np.linalg.lstsq(Ps, y, rcond=None)
    beta = bs / scale
    r = y - Phi @ beta
    return beta, float(r @ r)


def _vp(fam: Family, theta: np.ndarray, x, y, ctx) -> tuple[np.ndarray, np.ndarray, float]:
    with np.errstate(all="ignore"):
        Phi = fam.basis(x, theta[None, :], ctx)[0]
    beta, rss = solve_one(Phi, y, exact=fam.n_theta == 0)
    if np.isfinite(rss) and np.abs(beta).max(initial=0.0) > 1e9 * (np.abs(y).max() + 1.0):
        rss = np.inf  # a cancellation of huge terms: numerically meaningless, reject
    r = y - Phi @ beta if np.isfinite(rss) else np.full_like(y, np.inf)
    return r, beta, rss


def lm_refine(fam: Family, theta0: np.ndarray, x, y, ctx: Ctx, iters: int = 30) -> tuple[np.ndarray, np.ndarray, float]:
    """Levenberg–Marquardt on ``theta`` with the linear part projected out; returns (theta, beta, rss)."""
    theta = np.array(theta0, dtype=float)
    r, beta, cost = _vp(fam, theta, x, y, ctx)
    if fam.n_theta == 0 or not np.isfinite(cost):
        return theta, beta, cost
    lam = 1e-3
    floor = 1e-26 * float(y @ y) + 1e-300
    for _ in range(iters):
        if cost <= floor:
            break
        eps = 1e-7 * (np.abs(theta) + ctx.s * 1e-3)
        J = np.empty((len(y), len(theta)))
        for j in range(len(theta)):
            t = theta.copy()
            t[j] += eps[j]
            rj, _, cj = _vp(fam, t, x, y, ctx)
            if not np.isfinite(cj):
                t[j] -= 2 * eps[j]
                rj, _, cj = _vp(fam, t, x, y, ctx)
                J[:, j] = (r - rj) / eps[j] if np.isfinite(cj) else 0.0
            else:
                J[:, j] = (rj - r) / eps[j]
        g, H = J.T @ r, J.T @ J
        improved = False
        for _ in range(8):
            try:
                step = -np.linalg.solve(H + lam * (np.diag(np.diag(H)) + 1e-12 * np.trace(H) * np.eye(len(theta)) + 1e-300), g)
            except np.linalg.LinAlgError:
                lam *= 10
                continue
            tn = theta + step
            rn, bn, cn = _vp(fam, tn, x, y, ctx)
            if np.isfinite(cn) and cn < cost:
                rel = (cost - cn) / max(cost, 1e-300)
                theta, r, beta, cost = tn, rn, bn, cn
                lam = max(lam / 3, 1e-9)
                improved = True
                break
            lam *= 4
        if not improved or rel < 1e-10:
            break
    return theta, beta, cost


def fit_family(fam: Family, x, y, ctx: Ctx, n_starts: int = 3, grid: np.ndarray | None = None,
               chunk: int = 4_000_000) -> Fit | None:
    """Fit ``fam`` to ``(x, y)``: the best ``n_starts`` grid points, each refined; ``None`` if nothing is finite."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if fam.n_theta == 0:
        theta = np.zeros(0)
        _, beta, rss = _vp(fam, theta, x, y, ctx)
        return Fit(fam, theta, beta, rss, ctx) if np.isfinite(rss) else None
    T = fam.grid(ctx, x, y) if grid is None else grid
    if len(T) == 0:  # a data-driven grid found nothing to start from (e.g. no pole in the samples)
        return None
    rss = []
    k_guess = fam.basis(x[:2], T[:1], ctx).shape[-1]
    step = max(1, chunk // max(1, len(x) * k_guess))
    for i in range(0, len(T), step):
        with np.errstate(all="ignore"):
            Phi = fam.basis(x, T[i:i + step], ctx)
        rss.append(batched_lstsq(Phi, y)[1])
    rss = np.concatenate(rss)
    order = [i for i in np.argsort(rss) if np.isfinite(rss[i])]
    starts: list[np.ndarray] = []
    for i in order:
        if all(np.max(np.abs(T[i] - s) / (np.abs(s) + ctx.W * 1e-2)) > 0.05 for s in starts):
            starts.append(T[i])
        if len(starts) >= n_starts:
            break
    best = None
    for t0 in starts:
        theta, beta, c = lm_refine(fam, t0, x, y, ctx)
        if np.isfinite(c) and (best is None or c < best.rss):
            best = Fit(fam, theta, beta, c, ctx)
    return best


def cancels(fit: Fit, x, ratio: float = 20.0) -> bool:
    """Whether some term of ``fit`` varies ``ratio`` times more than their sum over ``x``: terms
    that cancel each other (e.g. 2177 sin(1.39x) - 2168 sin(1.37x) standing in for a polynomial),
    a formula that fits but describes nothing."""
    with np.errstate(all="ignore"):
        cols = fit.family.basis(np.asarray(x, float), fit.theta[None, :], fit.ctx)[0] * fit.beta  # [n, k]
    spread = np.ptp(cols, axis=0)
    return bool(np.all(np.isfinite(spread)) and spread.max() > ratio * max(float(np.ptp(cols.sum(-1))), 1e-300))


def sum_family(f1: Family, f2: Family) -> Family:
    """The family ``f1 + f2`` (one shared constant column)."""
    n1 = f1.n_theta

    def basis(x, T, ctx):
        B1 = f1.basis(x, T[:, :n1], ctx)
        B2 = f2.basis(x, T[:, n1:], ctx)[..., 1:]
        B1 = np.broadcast_to(B1, (max(len(B1), len(B2)),) + B1.shape[1:])
        B2 = np.broadcast_to(B2, (len(B1),) + B2.shape[1:])
        return np.concatenate([B1, B2], -1)

    return Family(
        f"{f1.name}+{f2.name}", n1 + f2.n_theta, basis, lambda ctx, x, y: np.zeros((1, n1 + f2.n_theta)),
        lambda th, ctx: f1.terms(th[:n1], ctx) + f2.terms(th[n1:], ctx)[1:],
        lambda th, b, ctx: (f"the sum of {f1.phrase(th[:n1], b, ctx)} and {f2.phrase(th[n1:], b, ctx)}"))


def fit_sum(fit1: Fit, fam2: Family, x, y) -> Fit | None:
    """Fit ``fam2`` to the residual of ``fit1``, then refine both jointly."""
    ctx = fit1.ctx
    resid = y - fit1.predict(x)
    sub = slice(None, None, max(1, len(x) // 200))
    f2 = fit_family(fam2, x[sub], resid[sub], ctx, n_starts=2)
    if f2 is None:
        return None
    fam = sum_family(fit1.family, fam2)
    theta, beta, rss = lm_refine(fam, np.concatenate([fit1.theta, f2.theta]), x, y, ctx, iters=30)
    return Fit(fam, theta, beta, rss, ctx) if np.isfinite(rss) else None


def _nice(v: float) -> list[float]:
    """Rounder versions of ``v``: zero, then 1..6 significant digits."""
    out = [0.0]
    for d in range(1, 7):
        r = float(f"{v:.{d}g}")
        if r not in out:
            out.append(r)
    return out


def snap(fit: Fit, x, y, slack: float) -> Fit:
    """Round parameters to short numbers (or zero) while the RSS stays within ``fit.rss + slack``.

    Makes formulas readable (``sin(x)`` rather than ``1.0000000002*sin(0.99999999*x + 3e-16)``)
    without changing predictions beyond the data's resolution. Polynomials are snapped in
    their raw coefficients of ``x``.
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    fam, ctx = fit.family, fit.ctx
    _, _, base = _vp(fam, fit.theta, x, y, ctx)
    if not np.isfinite(base):
        return fit
    limit = base + slack
    if fam.name.startswith("poly"):
        return _snap_poly(fit, x, y, limit)
    theta = fit.theta.copy()
    for j in range(len(theta)):
        for v in _nice(theta[j]):
            t = theta.copy()
            t[j] = v
            if _vp(fam, t, x, y, ctx)[2] <= limit:
                theta = t
                break
    with np.errstate(all="ignore"):
        Phi = fam.basis(x, theta[None, :], ctx)[0]
    beta, rss = solve_one(Phi, y)
    fixed: dict[int, float] = {}
    for j in range(len(beta)):
        for v in _nice(beta[j]):
            trial = {**fixed, j: v}
            b, r = _solve_fixed(Phi, y, trial)
            if r <= limit:
                fixed, beta, rss = trial, b, r
                break
    return Fit(fam, theta, beta, rss, ctx)


def _solve_fixed(Phi, y, fixed: dict[int, float]) -> tuple[np.ndarray, float]:
    free = [k for k in range(Phi.shape[1]) if k not in fixed]
    target = y - sum((Phi[:, k] * v for k, v in fixed.items()), np.zeros_like(y))
    beta = np.zeros(Phi.shape[1])
    for k, v in fixed.items():
        beta[k] = v
    if free:
        bf, _ = solve_one(Phi[:, free], target, exact=True)
        beta[free] = bf
    r = y - Phi @ beta
    return beta, float(r @ r)


def _snap_poly(fit: Fit, x, y, limit: float) -> Fit:
    P = np.polynomial.Polynomial
    ctx = fit.ctx
    raw = P(fit.beta)(P([-ctx.c / ctx.s, 1 / ctx.s])).coef  # coefficients of x^k
    raw = np.concatenate([raw, np.zeros(len(fit.beta) - len(raw))])
    for j in range(len(raw) - 1, -1, -1):
        for v in _nice(raw[j]):
            c = raw.copy()
            c[j] = v
            r = y - P(c)(x)
            if float(r @ r) <= limit:
                raw = c
                break
    beta = P(raw)(P([ctx.c, ctx.s])).coef
    beta = np.concatenate([beta, np.zeros(len(fit.beta) - len(beta))])[: len(fit.beta)]
    r = y - P(raw)(x)
    return Fit(fit.family, fit.theta, beta, float(r @ r), ctx)
