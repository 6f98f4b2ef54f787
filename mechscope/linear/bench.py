"""Benchmark of the linear interpreter (``benchmarks/linear.py``, ``mechscope linear bench``).

For each model and input ``x0``:

* **full map**: ``linearize(model, x0)`` + ``dense()`` (batched forward passes over input basis
  vectors, or batched backward passes over output basis vectors, whichever is fewer) against
  ``torch.func.jacrev`` of the same frozen network (its record pass included, as ours is), and
  ``torch.func.jacfwd`` for reference; the max abs difference between the matrices.
* **spectrum**: the matrix-free top-``k`` SVD (block Krylov on ``apply`` / ``apply_T``) against
  ``torch.linalg.svd`` of the dense map — given the dense map, and including forming it; the
  largest relative singular-value difference.

Times are the best of ``repeat`` runs (wall clock, CPU). Models: the three demo image models
(trained and cached; random init with ``quick``) and a 2-layer random HookedTransformer
(token embeddings -> logit difference, and -> all logits at the last position).
"""

from __future__ import annotations

import platform
import time

import torch

from mechscope.linear.affine_map import dense_svd
from mechscope.linear.freeze import FrozenNetwork


def _best(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return out, best


CASES = ("digits", "superres", "denoise", "transformer_logit_diff", "transformer_logits")


def _cases(quick: bool, cache_dir=None, only=None):
    from mechscope.linear import demos
    from mechscope.linear.linearize import linearize, linearize_transformer, logit_diff
    from mechscope.linear.report import tiny_random_transformer

    for name in demos.DEMOS:
        if only is not None and name not in only:
            continue
        if quick:
            torch.manual_seed(0)
            model = demos.build(name).eval()
            x0, _ = demos.example_input(name)
        else:
            d = demos.load_or_train(name, cache_dir=cache_dir)
            model, x0 = d.model, d.x0
        yield (name, lambda model=model, x0=x0: linearize(model, x0, verify=False),
               lambda model=model, x0=x0: FrozenNetwork(model, x0))
    if only is not None and not any(c.startswith("transformer") for c in only):
        return
    tl = tiny_random_transformer(seed=0)
    tokens = torch.randint(0, tl.cfg.d_vocab, (12,), generator=torch.Generator().manual_seed(0))
    for label, ro in (("transformer_logit_diff", logit_diff(3, 5)), ("transformer_logits", None)):
        if only is not None and label not in only:
            continue

        def ours(ro=ro):
            return linearize_transformer(tl, tokens, ro, verify=False)

        def frozen(ro=ro):
            return ours(ro).frozen  # the same frozen network (record pass) as jacrev's input

        yield label, ours, frozen


def run_benchmark(quick: bool = False, repeat: int = 3, k: int = 8, threads: int | None = 2,
                  cache_dir=None, cases=None) -> dict:
    """Run every case (or those named in ``cases``, see :data:`CASES`); returns a JSON-able dict
    (see the module docstring)."""
    if cases is not None:
        unknown = [c for c in cases if c not in CASES]
        if unknown:
            from mechscope.errors import ConfigError

            raise ConfigError(f"unknown benchmark case(s) {unknown}; expected some of {list(CASES)}")
    if threads:
        torch.set_num_threads(threads)
    results = []
    for name, make_map, make_frozen in _cases(quick, cache_dir, cases):
        amap = make_map()
        m, n = amap.shape
        side = "columns" if n <= 2 * m else "rows"

        def ours():
            a = make_map()
            return a, a.dense(side=side)

        (_, D), t_ours = _best(ours, repeat)

        def jac(fwd: bool):
            fr = make_frozen()
            J = (torch.func.jacfwd if fwd else torch.func.jacrev)(fr.affine)(fr.x0)
            return J.detach().reshape(m, n)

        J, t_jacrev = _best(lambda: jac(False), repeat)
        Jf, t_jacfwd = _best(lambda: jac(True), 1 if m * n > 200_000 else repeat)
        scale = float(J.abs().max()) or 1.0
        diff = float((D - J).abs().max())
        kk = min(k, m, n)
        amap = make_map()
        mf, t_svd = _best(lambda: amap.svd(kk), repeat)
        ref, t_dsvd = _best(lambda: dense_svd(D, kk), repeat)
        rel_s = float(((mf.S - ref.S).abs() / ref.S.abs().clamp_min(1e-30)).max())
        results.append({
            "case": name, "out_numel": m, "in_numel": n, "dense_side": side,
            "ours_full_map_s": round(t_ours, 5), "jacrev_full_map_s": round(t_jacrev, 5),
            "jacfwd_full_map_s": round(t_jacfwd, 5), "speedup_vs_jacrev": round(t_jacrev / t_ours, 2),
            "max_abs_diff_vs_jacrev": diff, "rel_diff_vs_jacrev": diff / scale,
            "max_abs_diff_jacfwd_vs_jacrev": float((Jf.reshape(m, n) - J).abs().max()),
            "svd_k": kk, "matrix_free_svd_s": round(t_svd, 5), "matrix_free_svd_iterations": mf.iterations,
            "dense_svd_given_dense_s": round(t_dsvd, 5), "dense_svd_including_dense_map_s": round(t_dsvd + t_ours, 5),
            "max_rel_singular_value_diff": rel_s,
        })
    faster = [r["case"] for r in results if r["speedup_vs_jacrev"] > 1.0]
    equal = all(r["rel_diff_vs_jacrev"] < 1e-5 for r in results)
    return {
        "benchmark": "mechscope.linear", "quick": quick, "repeat": repeat,
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "device": "cpu",
        "cases": results,
        "summary": {"faster_than_jacrev": faster, "not_faster_than_jacrev": [r["case"] for r in results if r["case"] not in faster],
                    "all_equal_accuracy_rel_1e-5": equal,
                    "svd_max_rel_singular_value_diff": max(r["max_rel_singular_value_diff"] for r in results)},
    }


def main(argv=None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(description="Benchmark the linear interpreter against torch.func.jacrev; prints JSON.")
    ap.add_argument("--quick", action="store_true", help="random-init models (no training), fewer repeats")
    ap.add_argument("--repeat", type=int, default=None, help="runs per timing (best is kept); default 3, quick 1")
    ap.add_argument("--k", type=int, default=8, help="singular triplets for the SVD comparison")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    ap.add_argument("--cases", nargs="*", default=None, choices=CASES, help="run only these cases")
    args = ap.parse_args(argv)
    repeat = args.repeat or (1 if args.quick else 3)
    print(json.dumps(run_benchmark(quick=args.quick, repeat=repeat, k=args.k, threads=args.threads,
                                   cases=args.cases), indent=2))
    return 0
