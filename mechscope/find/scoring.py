"""Scorers: compare an :class:`Interpretation` with a function's ground truth on held-out inputs.

Numeric code (FIND, Schwettmann et al. 2023, §4: "normalized mean squared error" of the
interpreter's code against the ground truth on held-out inputs). We report two
normalisations of ``MSE = mean((f(x) - g(x))^2)`` over ``x ~ Uniform(domain)``:

- ``nmse_ss  = MSE / mean(f(x)^2)`` — relative to predicting zero (the sum-of-squares
  normalisation FIND uses);
- ``nmse_var = MSE / var(f(x))`` — relative to predicting the mean, i.e. ``1 - R^2``; it is
  the stricter one and ignores constant offsets. For (near-)constant ground truths, whose
  variance is below ``1e-8 * mean(f^2)``, it falls back to ``nmse_ss``.

The per-function numeric **score** is ``exp(-nmse_var / 0.1)``: 1 for an exact fit, 0.90 at
nMSE 0.01 (99% of the variance explained), 0.37 at nMSE 0.1, ~0 for a fit no better than the
mean. It is bounded, so one wild function cannot dominate a category mean, and it does not
reward predicting the mean. Points where the interpreter's code raises or is not finite count
as predictions of 0 (as if the code were missing there).

Ground truths that draw random numbers (noise written into the code rather than in
``Function.noise``) are detected by evaluating them twice; they are then scored against their
mean over ``TRUTH_SAMPLES`` draws per input (strings: the most frequent output), so that an
interpretation of the deterministic part scores near 1 (against single draws the noise capped it:
0.21 for ``10 sin(x/7)`` plus N(0, 3) noise, 0.95 against the mean). Scoring seeds Python's and NumPy's global generators (and
restores them), so it is reproducible.

Corrupted intervals: ``iou`` of the predicted and true intervals (only when the function
has one; a missing prediction scores 0). String code: the fraction of held-out inputs whose
output matches exactly (``exact``). Neuron code: Pearson correlation of predicted and true
activations on held-out vocabulary words, clipped at 0. Descriptions: an LLM judge when one
is configured; for neurons also offline keyword matching (``meta["keywords"]``).
"""

from __future__ import annotations

import contextlib
import math
import random
from collections import Counter
from typing import Any, Callable

import numpy as np

from mechscope.errors import FormatError, MechscopeError
from mechscope.find.functions import Function, compile_code
from mechscope.find.inputs import lexicon, string_inputs
from mechscope.find.protocol import BlackBoxHandle, Interpretation

SCORE_TAU = 0.1
N_HELDOUT = {"numeric": 2000, "string": 300}
TRUTH_SAMPLES = 32


@contextlib.contextmanager
def seeded_global_rngs(seed: int):
    """Seed ``random`` and ``np.random`` (the generators function code uses) and restore them after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    random.seed(seed)
    np.random.seed(int(seed) & 0xFFFFFFFF)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)


def is_stochastic(fn: Callable, inputs, numeric: bool) -> bool:
    """Whether two evaluations of ``fn`` on ``inputs`` differ (it draws random numbers)."""
    a, _ = _safe_eval(fn, inputs, numeric)
    b, _ = _safe_eval(fn, inputs, numeric)
    if numeric:
        return not np.array_equal(np.asarray(a, dtype=float), np.asarray(b, dtype=float), equal_nan=True)
    return a != b


def expected(fn: Callable, numeric: bool, k: int = TRUTH_SAMPLES) -> Callable:
    """``x -> `` the mean of ``k`` evaluations of a stochastic ``fn`` (non-numeric: the most frequent output)."""
    def mean_fn(x):
        ys = [float(fn(x)) for _ in range(k)]
        return float(np.mean(ys))

    def mode_fn(x):
        outs = [fn(x) for _ in range(k)]
        top = Counter(repr(y) for y in outs).most_common(1)[0][0]
        return next(y for y in outs if repr(y) == top)

    return mean_fn if numeric else mode_fn


def numeric_heldout(domain: tuple[float, float], n: int, seed: int) -> np.ndarray:
    """``n`` held-out inputs uniform on ``domain`` (a stream independent of interpreters' seeds)."""
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 271828])
    return rng.uniform(domain[0], domain[1], size=n)


def _safe_eval(fn: Callable, xs, numeric: bool) -> tuple[list, int]:
    """Apply ``fn`` to each input; a raise (or, for numbers, a non-finite value) gives NaN / None."""
    out, bad = [], 0
    with np.errstate(all="ignore"):
        for x in xs:
            try:
                y = fn(x)
                if numeric:
                    y = float(y)
                    if not math.isfinite(y):
                        raise ValueError("non-finite")
            except Exception:  # scored as a miss, and counted
                y, bad = (math.nan if numeric else None), bad + 1
            out.append(y)
    return out, bad


def numeric_errors(truth: Callable, pred: Callable, xs) -> dict:
    """MSE, both normalised MSEs and the bounded score of ``pred`` against ``truth`` on ``xs``."""
    xs = np.asarray(xs, dtype=float)
    yt = np.asarray(_safe_eval(truth, xs, True)[0])
    keep = np.isfinite(yt)
    if not keep.any():
        raise FormatError("ground truth is not finite on any held-out input")
    yt, xs = yt[keep], xs[keep]
    yp, bad = _safe_eval(pred, xs, True)
    yp = np.nan_to_num(np.asarray(yp), nan=0.0)
    mse = float(np.mean((yt - yp) ** 2))
    ss, var = float(np.mean(yt ** 2)), float(np.var(yt))
    nmse_ss = mse / ss if ss > 0 else (0.0 if mse == 0 else math.inf)
    nmse_var = mse / var if var > 1e-8 * ss else nmse_ss
    return {"mse": mse, "nmse_ss": nmse_ss, "nmse_var": nmse_var, "score": numeric_score(nmse_var),
            "pred_failures": bad, "n": int(len(xs))}


def numeric_score(nmse: float) -> float:
    """``exp(-nmse / 0.1)`` (see the module docstring)."""
    return float(math.exp(-nmse / SCORE_TAU)) if math.isfinite(nmse) else 0.0


def interval_iou(pred: tuple[float, float] | None, true: tuple[float, float] | None) -> float | None:
    """Intersection over union of two intervals; ``None`` when neither exists, 0 when one is missing."""
    if pred is None and true is None:
        return None
    if pred is None or true is None:
        return 0.0
    (a, b), (c, d) = sorted(pred), sorted(true)
    inter = max(0.0, min(b, d) - max(a, c))
    union = max(b, d) - min(a, c)
    return float(inter / union) if union > 0 else float(a == c and b == d)


def same_output(a: Any, b: Any) -> bool:
    """Exact match, treating ``3``, ``3.0`` and ``"3"`` as the same output."""
    if a == b:
        return True
    if a is None or b is None:
        return False
    if isinstance(a, (int, float)) or isinstance(b, (int, float)):
        try:
            return float(a) == float(b)
        except (TypeError, ValueError):
            return False
    return str(a) == str(b)


def string_exact(truth: Callable, pred: Callable, inputs: list[str]) -> dict:
    """Fraction of ``inputs`` (where the truth is defined) on which ``pred`` matches exactly."""
    yt, _ = _safe_eval(truth, inputs, False)
    pairs = [(s, y) for s, y in zip(inputs, yt) if y is not None]
    if not pairs:
        raise FormatError("ground truth raised on every held-out input")
    yp, bad = _safe_eval(pred, [s for s, _ in pairs], False)
    hits = sum(same_output(p, y) for p, (_, y) in zip(yp, pairs))
    return {"exact": hits / len(pairs), "score": hits / len(pairs), "pred_failures": bad, "n": len(pairs)}


def neuron_correlation(truth: Callable, pred: Callable, words: list[str]) -> dict:
    """Pearson correlation of activations on ``words`` (clipped at 0 for the score)."""
    yt, _ = _safe_eval(truth, words, True)
    yp, bad = _safe_eval(pred, words, True)
    yt, yp = np.asarray(yt), np.asarray(yp)
    r = 0.0 if _constant(yt) or _constant(yp) else float(np.corrcoef(yt, yp)[0, 1])
    return {"corr": r, "score": max(0.0, r), "pred_failures": bad, "n": len(words)}


def _constant(y: np.ndarray) -> bool:
    """No variation beyond float rounding (a correlation with it is undefined)."""
    y = y[np.isfinite(y)]
    return y.size < 2 or float(np.ptp(y)) <= 1e-9 * max(1.0, float(np.abs(y).max()))


def keyword_match(description: str, groups: list[list[str]]) -> float | None:
    """1.0 when the description mentions a keyword of every group (case-insensitive), else 0.0."""
    if not groups:
        return None
    d = description.lower()
    return float(all(any(k.lower() in d for k in g) for g in groups))


def score_interpretation(function: Function, interp: Interpretation, handle: BlackBoxHandle | None = None,
                         judge=None, n_heldout: int | None = None, truth: Callable | None = None) -> dict:
    """Score one interpretation against ``function``'s ground truth; returns a flat dict.

    Always has ``score`` (the category's headline code score, in [0, 1]) and ``code_error``
    (why the code could not be compiled, else ``None``). ``handle`` lets the string and neuron
    scorers exclude inputs the interpreter already queried. ``truth`` replaces the function's
    compiled code (to score against any callable).
    """
    with seeded_global_rngs(function.seed + 314159):
        return _score(function, interp, handle, judge, n_heldout, truth or function.compile())


def _score(function: Function, interp: Interpretation, handle, judge, n_heldout, truth: Callable) -> dict:
    out: dict[str, Any] = {"code_error": None}
    try:
        pred = compile_code(interp.code or "", what="interpretation code")
    except FormatError as e:
        out["code_error"] = str(e)
        pred = (lambda x: 0.0) if function.category != "string" else (lambda s: None)
    seen = set(handle.queried_inputs()) if handle is not None else set()
    numeric = function.category != "string"
    probe = numeric_heldout(function.domain, 128, function.seed + 7) if function.category == "numeric" else \
        string_inputs(str(function.domain), 64, function.seed + 7) if function.category == "string" else lexicon()[::8]
    out["stochastic_truth"] = is_stochastic(truth, probe, numeric)
    if out["stochastic_truth"]:
        truth = expected(truth, numeric)
    if function.category == "numeric":
        xs = numeric_heldout(function.domain, n_heldout or N_HELDOUT["numeric"], function.seed)
        out.update(numeric_errors(truth, pred, xs))
        if function.corrupted_interval is not None:
            out["iou"] = interval_iou(interp.corrupted_interval, function.corrupted_interval)
        out["false_corruption"] = bool(function.corrupted_interval is None and interp.corrupted_interval is not None)
    elif function.category == "string":
        n = n_heldout or N_HELDOUT["string"]
        inputs = [s for s in string_inputs(str(function.domain), 2 * n, function.seed + 1) if s not in seen][:n]
        out.update(string_exact(truth, pred, inputs))
    else:
        words = [w for w in lexicon() if w not in seen]
        out["heldout"] = len(words) >= 50
        out.update(neuron_correlation(truth, pred, words if out["heldout"] else list(lexicon())))
    out["description_keyword"] = keyword_match(interp.description, function.meta.get("keywords", []))
    out["description_judge"] = None
    if judge is not None and function.description:
        try:
            out["description_judge"] = judge.score(function.description, interp.description)
        except MechscopeError as e:  # recorded next to the score; the code scores still stand
            out["judge_error"] = str(e)
    return out
