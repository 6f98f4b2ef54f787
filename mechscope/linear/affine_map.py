"""``AffineMap``: ``y = A x + c`` — the frozen network at ``x0``.

Shapes: the map takes inputs of shape ``in_shape`` (the model's own input shape, batch
dimension included when the model has one) to outputs of shape ``out_shape``. ``A`` is
``[out_numel, in_numel]`` on the flattened shapes. Every method accepts a single vector
(shape ``in_shape`` / ``out_shape``) or a batch with one extra leading dimension ``[k, ...]``.

* :class:`FrozenAffineMap` — matrix-free, backed by a :class:`~mechscope.linear.freeze.FrozenNetwork`:
  ``apply`` replays the frozen network (biases dropped), ``apply_T`` is the vector-Jacobian
  product of that linear replay (computed once, reused), so both are exact and input-independent.
* :class:`DenseAffineMap` — an explicit matrix (what :meth:`AffineMap.load` returns).
* :class:`LowRankAffineMap` — ``U diag(S) V^T`` from a saved truncated SVD (``exact`` is False).
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path
from typing import NamedTuple, Sequence

import torch

from mechscope.errors import ConfigError, FormatError
from mechscope.files import load_artifact, save_artifact
from mechscope.linear.errors import LinearizationError

FORMAT = "mechscope.affine_map"
VERSION = 1


class SVDResult(NamedTuple):
    """Top-k singular triplets: ``A ≈ U diag(S) V^T``.

    U: ``[out_numel, k]`` left singular vectors (output space; reshape a column to ``out_shape``).
    S: ``[k]`` singular values, descending.
    V: ``[in_numel, k]`` right singular vectors (input space; reshape a column to ``in_shape``).
    iterations: Krylov iterations used (0 for a dense SVD).
    """

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    iterations: int = 0


def _numel(shape: Sequence[int]) -> int:
    return int(math.prod(shape))


class AffineMap:
    """Base class. Subclasses implement ``_apply_flat`` ([k, in_numel] -> [k, out_numel]) and
    ``_apply_T_flat`` ([k, out_numel] -> [k, in_numel])."""

    exact: bool = True

    def __init__(self, in_shape: Sequence[int], out_shape: Sequence[int], bias: torch.Tensor,
                 x0: torch.Tensor | None = None, y0: torch.Tensor | None = None, meta: dict | None = None):
        self.in_shape = tuple(int(s) for s in in_shape)
        self.out_shape = tuple(int(s) for s in out_shape)
        self.bias = bias.detach().reshape(self.out_shape)  # c: [*out_shape]
        self.x0 = None if x0 is None else x0.detach().reshape(self.in_shape)
        self.y0 = None if y0 is None else y0.detach().reshape(self.out_shape)
        self.meta = dict(meta or {})

    # ---- shapes
    @property
    def in_numel(self) -> int:
        return _numel(self.in_shape)

    @property
    def out_numel(self) -> int:
        return _numel(self.out_shape)

    @property
    def shape(self) -> tuple[int, int]:
        """``(out_numel, in_numel)``: the shape of ``A``."""
        return (self.out_numel, self.in_numel)

    @property
    def dtype(self) -> torch.dtype:
        return self.bias.dtype

    @property
    def device(self) -> torch.device:
        return self.bias.device

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(in_shape={self.in_shape}, out_shape={self.out_shape}, "
                f"dtype={self.dtype}, exact={self.exact})")

    def _batch(self, v: torch.Tensor, shape: tuple[int, ...], what: str) -> tuple[torch.Tensor, bool]:
        if not isinstance(v, torch.Tensor):
            raise ConfigError(f"{what}: expected a tensor of shape {shape} or [k, *{shape}]; found {type(v).__name__}")
        if tuple(v.shape) == shape:
            return v.reshape(1, -1), False
        if v.dim() == len(shape) + 1 and tuple(v.shape[1:]) == shape:
            return v.reshape(v.shape[0], -1), True
        raise ConfigError(f"{what}: expected shape {list(shape)} or [k, {', '.join(map(str, shape))}]; "
                          f"found {list(v.shape)}")

    # ---- the map
    def apply(self, v: torch.Tensor) -> torch.Tensor:
        """``A v`` (the frozen network without its biases, on a second input).

        v: ``[*in_shape]`` or ``[k, *in_shape]`` -> ``[*out_shape]`` or ``[k, *out_shape]``."""
        flat, batched = self._batch(v, self.in_shape, "apply")
        out = self._apply_flat(flat.to(self.dtype))
        return out.reshape((-1, *self.out_shape)) if batched else out.reshape(self.out_shape)

    def apply_T(self, u: torch.Tensor) -> torch.Tensor:
        """``A^T u`` (a backward pass through the frozen network).

        u: ``[*out_shape]`` or ``[k, *out_shape]`` -> ``[*in_shape]`` or ``[k, *in_shape]``."""
        flat, batched = self._batch(u, self.out_shape, "apply_T")
        out = self._apply_T_flat(flat.to(self.dtype))
        return out.reshape((-1, *self.in_shape)) if batched else out.reshape(self.in_shape)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """``A x + c``."""
        out = self.apply(x)
        return out + self.bias

    def _index(self, i, shape: tuple[int, ...], what: str) -> int:
        n = _numel(shape)
        if isinstance(i, (tuple, list)):
            if len(i) != len(shape) or any(not (-s <= k < s) for k, s in zip(i, shape)):
                raise ConfigError(f"{what}: index {tuple(i)} is outside shape {shape}")
            flat = 0
            for k, s in zip(i, shape):
                flat = flat * s + (k % s)
            return flat
        i = int(i)
        if not -n <= i < n:
            raise ConfigError(f"{what}: flat index {i} is outside [0, {n})")
        return i % n

    def column(self, j) -> torch.Tensor:
        """Column ``j`` of ``A`` (``A e_j``), shape ``out_shape``: the output's response to a unit
        impulse at input position ``j`` (int flat index or a multi-index into ``in_shape``)."""
        e = torch.zeros(self.in_numel, dtype=self.dtype, device=self.device)
        e[self._index(j, self.in_shape, "column")] = 1
        return self.apply(e.reshape(self.in_shape))

    def row(self, i) -> torch.Tensor:
        """Row ``i`` of ``A`` (``A^T e_i``), shape ``in_shape``: the input weights of output ``i``."""
        e = torch.zeros(self.out_numel, dtype=self.dtype, device=self.device)
        e[self._index(i, self.out_shape, "row")] = 1
        return self.apply_T(e.reshape(self.out_shape))

    def columns(self, js: Sequence) -> torch.Tensor:
        """Several columns at once: ``[len(js), *out_shape]``."""
        E = torch.zeros(len(js), self.in_numel, dtype=self.dtype, device=self.device)
        for r, j in enumerate(js):
            E[r, self._index(j, self.in_shape, "columns")] = 1
        return self.apply(E.reshape(len(js), *self.in_shape))

    def rows(self, is_: Sequence) -> torch.Tensor:
        """Several rows at once: ``[len(is_), *in_shape]``."""
        E = torch.zeros(len(is_), self.out_numel, dtype=self.dtype, device=self.device)
        for r, i in enumerate(is_):
            E[r, self._index(i, self.out_shape, "rows")] = 1
        return self.apply_T(E.reshape(len(is_), *self.out_shape))

    def dense(self, chunk_size: int = 1024, max_elements: int = 200_000_000, side: str = "auto") -> torch.Tensor:
        """``A`` as a matrix ``[out_numel, in_numel]``, for small maps.

        side: ``"columns"`` (forward passes over input basis vectors), ``"rows"`` (backward passes
        over output basis vectors) or ``"auto"`` (the fewer passes; a backward pass counts double)."""
        m, n = self.shape
        if m * n > max_elements:
            raise ConfigError(f"dense(): A has {m} x {n} = {m * n:,} entries, more than max_elements="
                              f"{max_elements:,}; use apply/apply_T/svd, or raise max_elements")
        if side == "auto":
            side = "columns" if n <= 2 * m else "rows"
        if side not in ("columns", "rows"):
            raise ConfigError(f"side must be 'auto', 'columns' or 'rows'; found {side!r}")
        out = torch.empty(m, n, dtype=self.dtype, device=self.device)
        if side == "columns":
            for s in range(0, n, chunk_size):
                e = min(n, s + chunk_size)
                E = torch.zeros(e - s, n, dtype=self.dtype, device=self.device)
                E[torch.arange(e - s), torch.arange(s, e)] = 1
                out[:, s:e] = self._apply_flat(E).T
        else:
            for s in range(0, m, chunk_size):
                e = min(m, s + chunk_size)
                E = torch.zeros(e - s, m, dtype=self.dtype, device=self.device)
                E[torch.arange(e - s), torch.arange(s, e)] = 1
                out[s:e, :] = self._apply_T_flat(E)
        return out

    # ---- spectrum
    def svd(self, k: int = 8, *, block: int | None = None, max_iter: int = 40, tol: float = 1e-6,
            seed: int = 0) -> SVDResult:
        """Top-``k`` singular triplets, matrix-free: randomized block Krylov iteration using only
        ``apply`` / ``apply_T`` (see :func:`krylov_svd`; each iteration is one batched forward and
        one batched backward pass of ``block`` vectors, default ``k + 10``)."""
        return krylov_svd(self._apply_flat, self._apply_T_flat, self.shape, k, dtype=self.dtype,
                          device=self.device, block=block, max_iter=max_iter, tol=tol, seed=seed)

    # ---- checks
    def exactness(self) -> dict:
        """``||A x0 + c - f(x0)|| / ||f(x0)||`` (needs ``x0`` and ``y0``)."""
        if self.x0 is None or self.y0 is None:
            raise ConfigError("exactness() needs x0 and y0 (this map was built without them)")
        y = self.apply(self.x0) + self.bias
        err = (y - self.y0).double().norm().item()
        ref = self.y0.double().norm().item()
        return {"rel_error": err / max(ref, 1e-30), "abs_error": err, "norm_f_x0": ref}

    def adjoint_error(self, n: int = 3, seed: int = 0) -> float:
        """max over ``n`` random pairs of ``|<A v, u> - <v, A^T u>| / (||A v|| ||u|| + ||v|| ||A^T u||)``."""
        g = torch.Generator(device="cpu").manual_seed(seed)
        V = torch.randn(n, self.in_numel, generator=g, dtype=torch.float64).to(self.dtype).to(self.device)
        U = torch.randn(n, self.out_numel, generator=g, dtype=torch.float64).to(self.dtype).to(self.device)
        AV = self._apply_flat(V).double()
        ATU = self._apply_T_flat(U).double()
        lhs = (AV * U.double()).sum(1)
        rhs = (V.double() * ATU).sum(1)
        scale = AV.norm(dim=1) * U.double().norm(dim=1) + V.double().norm(dim=1) * ATU.norm(dim=1)
        return float(((lhs - rhs).abs() / scale.clamp_min(1e-30)).max())

    # ---- persistence
    def save(self, directory: str | Path, *, rank: int | None = None, max_elements: int = 50_000_000) -> Path:
        """Save to ``directory`` (``cfg.json`` + safetensors). The dense ``A`` is stored when it has
        at most ``max_elements`` entries; otherwise pass ``rank=k`` to store a truncated SVD
        (loaded as a :class:`LowRankAffineMap`, ``exact`` False)."""
        directory = Path(directory)
        tensors: dict[str, torch.Tensor] = {"bias": self.bias}
        if self.x0 is not None:
            tensors["x0"] = self.x0
        if self.y0 is not None:
            tensors["y0"] = self.y0
        if rank is None:
            if self.out_numel * self.in_numel > max_elements:
                raise ConfigError(f"save(): A has {self.out_numel * self.in_numel:,} entries (> max_elements="
                                  f"{max_elements:,}); pass rank=k to save a truncated SVD instead")
            tensors["A"] = self.dense()
            kind = "dense"
        else:
            r = self.svd(rank)
            tensors.update(U=r.U, S=r.S, V=r.V)
            kind = "lowrank"
        cfg = {"kind": kind, "in_shape": list(self.in_shape), "out_shape": list(self.out_shape),
               "dtype": str(self.dtype).removeprefix("torch."), "exact": kind == "dense" and self.exact,
               "meta": self.meta}
        save_artifact(directory, FORMAT, VERSION, cfg, {"map": tensors})
        return directory

    @staticmethod
    def load(directory: str | Path, device: str = "cpu") -> "AffineMap":
        """Read a map written by :meth:`save` (checks format, version, hashes and shapes)."""
        cfg, files = load_artifact(directory, FORMAT, VERSION, device=device)
        t = files.get("map", {})
        in_shape, out_shape = tuple(cfg["in_shape"]), tuple(cfg["out_shape"])
        m, n = _numel(out_shape), _numel(in_shape)

        def need(name: str, shape: tuple | None) -> torch.Tensor:
            if name not in t:
                raise FormatError(f"{directory}: expected tensor {name!r} in map.safetensors, found {sorted(t)}")
            if shape is not None and tuple(t[name].shape) != shape:
                raise FormatError(f"{directory}: tensor {name!r} has shape {list(t[name].shape)}, expected {list(shape)}")
            return t[name]

        bias = need("bias", out_shape)
        x0 = t.get("x0")
        y0 = t.get("y0")
        meta = cfg.get("meta", {})
        if cfg.get("kind") == "dense":
            return DenseAffineMap(need("A", (m, n)), bias, in_shape, out_shape, x0=x0, y0=y0, meta=meta)
        if cfg.get("kind") == "lowrank":
            S = need("S", None)
            k = S.shape[0]
            return LowRankAffineMap(need("U", (m, k)), S, need("V", (n, k)), bias, in_shape, out_shape,
                                    x0=x0, y0=y0, meta=meta)
        raise FormatError(f"{directory}: expected kind 'dense' or 'lowrank', found {cfg.get('kind')!r}")


class DenseAffineMap(AffineMap):
    """``A`` stored as a matrix ``[out_numel, in_numel]``."""

    def __init__(self, A: torch.Tensor, bias: torch.Tensor, in_shape: Sequence[int], out_shape: Sequence[int],
                 x0: torch.Tensor | None = None, y0: torch.Tensor | None = None, meta: dict | None = None):
        super().__init__(in_shape, out_shape, bias, x0, y0, meta)
        if tuple(A.shape) != self.shape:
            raise ConfigError(f"A must have shape {list(self.shape)} for in_shape {self.in_shape} and "
                              f"out_shape {self.out_shape}; found {list(A.shape)}")
        self.A = A

    def _apply_flat(self, V: torch.Tensor) -> torch.Tensor:
        return V @ self.A.T

    def _apply_T_flat(self, U: torch.Tensor) -> torch.Tensor:
        return U @ self.A

    def dense(self, chunk_size: int = 1024, max_elements: int = 200_000_000, side: str = "auto") -> torch.Tensor:
        return self.A.clone()


class LowRankAffineMap(AffineMap):
    """``A ≈ U diag(S) V^T`` (a saved truncated SVD); not exact."""

    exact = False

    def __init__(self, U, S, V, bias, in_shape, out_shape, x0=None, y0=None, meta=None):
        super().__init__(in_shape, out_shape, bias, x0, y0, meta)
        self.U, self.S, self.V = U, S, V

    def _apply_flat(self, V: torch.Tensor) -> torch.Tensor:
        return ((V @ self.V) * self.S) @ self.U.T

    def _apply_T_flat(self, U: torch.Tensor) -> torch.Tensor:
        return ((U @ self.U) * self.S) @ self.V.T


class FrozenAffineMap(AffineMap):
    """Matrix-free map backed by a frozen network (what :func:`mechscope.linear.linearize` returns).

    Batches of vectors are pushed through the frozen network with :func:`torch.func.vmap`
    (``chunk_size`` vectors at a time); if the network cannot be vmapped (e.g. it writes an
    input-dependent tensor into a constant buffer in place) it falls back to one pass per vector.
    """

    def __init__(self, frozen, bias: torch.Tensor | None = None, meta: dict | None = None, chunk_size: int = 256):
        self._vjp = None
        if bias is None:
            # one affine pass at v = 0 gives the bias c and, as its vector-Jacobian product, A^T
            # (the biases of the frozen network are constants, so the graph is that of A)
            zero = torch.zeros(frozen.in_shape, dtype=frozen.dtype, device=frozen.device)
            try:
                with torch.enable_grad():
                    bias, self._vjp = torch.func.vjp(frozen.affine, zero)
            except RuntimeError:  # not functorch-compatible (e.g. an autograd.Function without setup_context)
                with torch.no_grad():
                    bias = frozen.affine(zero)
        super().__init__(frozen.in_shape, frozen.out_shape, bias, frozen.x0, frozen.y0, meta)
        self.frozen = frozen
        self.chunk_size = chunk_size
        self._vmap_ok = True

    def _map_batched(self, fn, X: torch.Tensor, in_shape, out_numel) -> torch.Tensor:
        X = X.reshape(X.shape[0], *in_shape)
        if self._vmap_ok:
            try:
                chunk = None if X.shape[0] <= self.chunk_size else self.chunk_size
                out = torch.func.vmap(fn, chunk_size=chunk)(X)
                return out.reshape(X.shape[0], out_numel)
            except LinearizationError:
                raise
            except (RuntimeError, NotImplementedError) as e:
                warnings.warn(f"the frozen network cannot be vmapped ({str(e).splitlines()[0][:200]}); "
                              "falling back to one pass per vector", RuntimeWarning, stacklevel=3)
                self._vmap_ok = False
        return torch.stack([fn(x).reshape(out_numel) for x in X])

    def _apply_flat(self, V: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            if V.shape[0] == 1:
                return self.frozen.linear(V[0].reshape(self.in_shape)).reshape(1, -1)
            return self._map_batched(self.frozen.linear, V, self.in_shape, self.out_numel)

    def _vjp_fn(self):
        if self._vjp is None:
            zero = torch.zeros(self.in_shape, dtype=self.dtype, device=self.device)
            try:
                with torch.enable_grad():
                    _, self._vjp = torch.func.vjp(self.frozen.linear, zero)
            except RuntimeError:
                # classic autograd on one retained graph (one backward pass per vector)
                v = zero.clone().requires_grad_(True)
                with torch.enable_grad():
                    y = self.frozen.linear(v)

                def vjp(u):
                    if not y.requires_grad:
                        return (torch.zeros_like(zero),)
                    (g,) = torch.autograd.grad(y, v, u, retain_graph=True, allow_unused=True)
                    return (torch.zeros_like(zero) if g is None else g,)

                self._vjp = vjp
                self._vmap_ok = False
        return self._vjp

    def _apply_T_flat(self, U: torch.Tensor) -> torch.Tensor:
        vjp = self._vjp_fn()
        fn = lambda u: vjp(u)[0]  # noqa: E731
        if U.shape[0] == 1:
            return fn(U[0].reshape(self.out_shape)).reshape(1, -1).detach()
        return self._map_batched(fn, U, self.out_shape, self.in_numel).detach()


def krylov_svd(apply_flat, apply_T_flat, shape: tuple[int, int], k: int, *, dtype=torch.float32,
               device="cpu", block: int | None = None, max_iter: int = 40, tol: float = 1e-6,
               seed: int = 0) -> SVDResult:
    """Top-``k`` singular triplets by randomized block Krylov iteration (Musco & Musco 2015) with
    full re-orthogonalization, using only ``apply_flat`` ([p, n] -> [p, m]) and ``apply_T_flat``
    ([p, m] -> [p, n]).

    The basis ``Q = [Q_0, Q_1, …]`` spans ``A Ω, (A A^T) A Ω, …`` (blocks of ``block`` vectors,
    default ``k + 10``); each iteration costs one batched backward and one batched forward pass.
    ``A^T Q`` is a by-product, so the Ritz values (singular values of ``A^T Q``) are checked
    after every block; iteration stops when the top-``k`` change by less than ``tol`` (relative)
    or the basis spans ``min(m, n)`` dimensions (then the result is exact). Small
    factorizations are done in float64.
    """
    m, n = shape
    if not 1 <= k <= min(m, n):
        raise ConfigError(f"svd: k must be in [1, {min(m, n)}] for a {m} x {n} map; found {k}")
    p = min(block or (k + 10), m, n)
    cap = min(m, n)
    g = torch.Generator(device="cpu").manual_seed(seed)

    def A(X):  # [n, p] -> [m, p]
        return apply_flat(X.T.contiguous().to(dtype).to(device)).T.double().cpu()

    def AT(Y):  # [m, p] -> [n, p]
        return apply_T_flat(Y.T.contiguous().to(dtype).to(device)).T.double().cpu()

    def orth_against(Y, Q):
        for _ in range(2):  # classical Gram-Schmidt, twice
            if Q is not None:
                Y = Y - Q @ (Q.T @ Y)
        Qy, R = torch.linalg.qr(Y)
        keep = R.diagonal().abs() > 1e-10 * max(float(R.diagonal().abs().max()), 1e-300)
        return Qy[:, keep]

    Qb = orth_against(A(torch.randn(n, p, generator=g, dtype=torch.float64)), None)
    Q = Qb                      # [m, r] orthonormal basis so far
    Z = AT(Qb)                  # [n, r] = A^T Q
    prev = None
    it = 0
    for it in range(1, max_iter + 1):
        S = torch.linalg.svdvals(Z)[:k]
        converged = prev is not None and bool(((S - prev).abs() / S.abs().clamp_min(1e-30)).max() < tol)
        if converged or Q.shape[1] >= cap or Qb.shape[1] == 0:
            break
        prev = S
        Yb = A(Z[:, -Qb.shape[1]:])                 # (A A^T) applied to the newest block
        Qb = orth_against(Yb, Q)[:, : cap - Q.shape[1]]
        if Qb.shape[1] == 0:
            break
        Q = torch.cat([Q, Qb], 1)
        Z = torch.cat([Z, AT(Qb)], 1)
    Ub, S, Vbh = torch.linalg.svd(Z.T, full_matrices=False)  # Q^T A = Z^T = Ub S Vb^T
    U = Q @ Ub
    V = Vbh.T
    return SVDResult(U[:, :k].to(dtype), S[:k].to(dtype), V[:, :k].to(dtype), it)


def dense_svd(A: torch.Tensor, k: int) -> SVDResult:
    """Reference: top-``k`` triplets of a dense ``A`` with ``torch.linalg.svd``."""
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    return SVDResult(U[:, :k], S[:k], Vh[:k].T, 0)


def timed(fn, *args, repeat: int = 1, **kwargs):
    """(result, best seconds over ``repeat`` runs)."""
    best = float("inf")
    out = None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn(*args, **kwargs)
        best = min(best, time.perf_counter() - t)
    return out, best
