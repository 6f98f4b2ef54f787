"""Scorers of the function-interpretation benchmark on hand-made cases."""

import math

import numpy as np
import pytest

from mechscope.errors import ConfigError
from mechscope.find.functions import Function
from mechscope.find.protocol import BlackBoxHandle, Interpretation
from mechscope.find.scoring import (interval_iou, keyword_match, neuron_correlation, numeric_errors, numeric_score,
                                    same_output, score_interpretation, string_exact)


def test_numeric_errors_both_normalisations():
    xs = np.array([-1.0, 0.0, 1.0, 2.0])
    truth = lambda x: x + 10.0  # noqa: E731  y = 9, 10, 11, 12: mean(y^2) = 111.5, var(y) = 1.25
    pred = lambda x: x + 11.0  # noqa: E731  off by exactly 1 everywhere: MSE = 1
    e = numeric_errors(truth, pred, xs)
    assert e["mse"] == pytest.approx(1.0)
    assert e["nmse_ss"] == pytest.approx(1.0 / 111.5)
    assert e["nmse_var"] == pytest.approx(1.0 / 1.25)
    assert e["score"] == pytest.approx(math.exp(-0.8 / 0.1))


def test_numeric_exact_and_zero_predictions():
    xs = np.linspace(-2, 2, 101)
    sq = lambda x: x * x  # noqa: E731
    assert numeric_errors(sq, sq, xs)["score"] == 1.0
    zero = numeric_errors(sq, lambda x: 0.0, xs)
    assert zero["nmse_ss"] == pytest.approx(1.0)  # predicting zero is nMSE 1 under FIND's normalisation
    assert zero["nmse_var"] > 1.0 and zero["score"] < 1e-4


def test_numeric_failures_count_as_zero_and_constant_truth_falls_back():
    xs = np.array([1.0, 2.0, 3.0, 4.0])

    def flaky(x):
        if x > 2.5:
            raise ValueError("nope")
        return 5.0

    e = numeric_errors(lambda x: 5.0, flaky, xs)
    assert e["pred_failures"] == 2
    assert e["mse"] == pytest.approx(12.5)  # two misses of 5 -> (25 + 25) / 4
    assert e["nmse_var"] == e["nmse_ss"] == pytest.approx(0.5)  # constant truth: variance normalisation undefined
    assert numeric_score(math.inf) == 0.0


def test_interval_iou():
    assert interval_iou((0, 2), (1, 3)) == pytest.approx(1 / 3)
    assert interval_iou((1, 3), (1, 3)) == 1.0
    assert interval_iou((3, 1), (1, 3)) == 1.0  # order does not matter
    assert interval_iou((0, 1), (2, 3)) == 0.0
    assert interval_iou(None, (2, 3)) == 0.0
    assert interval_iou(None, None) is None


def test_string_exact_and_same_output():
    inputs = ["ab", "abc", "hello", "x"]
    truth = lambda s: s[::-1]  # noqa: E731
    wrong_on_long = lambda s: s[::-1] if len(s) < 4 else s  # noqa: E731
    assert string_exact(truth, truth, inputs)["exact"] == 1.0
    assert string_exact(truth, wrong_on_long, inputs)["exact"] == 0.75
    assert same_output(3, "3") and same_output(3, 3.0) and not same_output("3", "4") and not same_output(None, "")


def test_neuron_correlation_and_keywords():
    words = ["dog", "cat", "red", "blue", "chair"]
    truth = lambda w: 1.0 if w in ("dog", "cat") else 0.0  # noqa: E731
    assert neuron_correlation(truth, truth, words)["score"] == pytest.approx(1.0)
    anti = neuron_correlation(truth, lambda w: 1.0 - truth(w), words)
    assert anti["corr"] == pytest.approx(-1.0) and anti["score"] == 0.0
    assert neuron_correlation(truth, lambda w: 0.5, words)["score"] == 0.0
    # constant activations whose float std is not exactly 0 (0.1 summed): no correlation either way
    many = [f"w{i}" for i in range(560)]
    assert neuron_correlation(lambda w: 0.1, lambda w: 0.1, many)["score"] == 0.0
    assert neuron_correlation(lambda w: 0.1, lambda w: 0.7, many)["corr"] == 0.0
    assert keyword_match("Fires on animal words", [["animal", "creature"]]) == 1.0
    assert keyword_match("Fires on colours", [["animal"]]) == 0.0
    assert keyword_match("anything", []) is None


def test_score_interpretation_numeric_with_corruption_and_bad_code():
    f = Function(id="t", category="numeric", code="def f(x):\n    return 7.0 if 1 <= x <= 2 else x\n",
                 domain=(-5, 5), corrupted_interval=(1, 2), seed=3)
    good = Interpretation("identity except [1, 2]", f.code, (1.0, 2.0))
    s = score_interpretation(f, good)
    assert s["score"] == 1.0 and s["iou"] == 1.0 and s["code_error"] is None and not s["false_corruption"]
    bad = score_interpretation(f, Interpretation("?", "this is not python", None))
    assert "code failed to run" in bad["code_error"] and bad["iou"] == 0.0 and bad["score"] < 0.01


def test_score_interpretation_string_excludes_queried_inputs():
    f = Function(id="rev", category="string", code="def f(s):\n    return s[::-1]\n", domain="words", seed=1)
    h = BlackBoxHandle(f.compile(), "string", "words", 10)
    h.query(["dog", "cat"])
    s = score_interpretation(f, Interpretation("reverse", "def f(s):\n    return s[::-1]\n"), h, n_heldout=50)
    assert s["exact"] == 1.0 and s["n"] == 50


def test_stochastic_ground_truth_is_scored_against_its_mean():
    """Noise written into the truth's code: a clean interpretation of its deterministic part scores
    near 1 (it scored ~0.2 against single noisy draws); scoring is reproducible and leaves the
    global random generators as they were."""
    import random

    code = "import numpy as np\ndef f(x):\n    return 10 * np.sin(x / 7) + np.random.normal(0, 3)\n"
    f = Function(id="noisy", category="numeric", code=code, domain=(-128, 128), seed=2)
    clean = Interpretation("10 sin(x/7) plus noise", "import numpy as np\ndef f(x):\n    return 10 * np.sin(x / 7)\n")
    np.random.seed(5)
    random.seed(5)
    before = (np.random.random(), random.random())
    np.random.seed(5)
    random.seed(5)
    s1, s2 = score_interpretation(f, clean), score_interpretation(f, clean)
    assert (np.random.random(), random.random()) == before
    assert s1["stochastic_truth"] and s1["score"] > 0.9 and s1 == s2
    wrong = score_interpretation(f, Interpretation("", "import numpy as np\ndef f(x):\n    return 10 * np.cos(x / 7)\n"))
    assert wrong["score"] < 0.01
    det = Function(id="det", category="numeric", code="def f(x):\n    return x\n", domain=(-1, 1))
    assert not score_interpretation(det, Interpretation("", det.code))["stochastic_truth"]


def test_string_function_domain_is_checked_when_built():
    with pytest.raises(ConfigError, match="input distribution.*'ascii'"):
        Function(id="rev", category="string", code="def f(s):\n    return s[::-1]\n", domain="ascii")
