"""The offline interpreters solve simple functions, and generalise to a suite from an unseen seed."""

import math
import re

import numpy as np
import pytest

from mechscope.errors import ConfigError
from mechscope.find import BlackBoxHandle, compile_code, evaluate, generate_suite, get_interpreter, run_suite
from mechscope.find.interpreters.neuron import NeuronInterpreter
from mechscope.find.interpreters.string_search import StringSearchInterpreter
from mechscope.find.interpreters.symbolic import SymbolicInterpreter


def test_symbolic_recovers_a_parabola():
    h = BlackBoxHandle(lambda x: 3 * x ** 2 - 1, "numeric", (-5, 5), 1000)
    it = SymbolicInterpreter().interpret(h)
    assert h.used <= 1000 and it.corrupted_interval is None
    assert "3*x**2 - 1" in it.description and "polynomial" in it.description
    rec = evaluate(lambda x: 3 * x ** 2 - 1, SymbolicInterpreter(), "numeric", (-5, 5))
    assert rec["nmse_var"] < 1e-3 and rec["nmse_ss"] < 1e-3 and rec["score"] > 0.99


def test_symbolic_finds_a_corrupted_interval():
    fn = lambda x: 6.0 if 1.0 <= x <= 2.5 else 2 * math.sin(0.8 * x) + 1  # noqa: E731
    rec = evaluate(fn, SymbolicInterpreter(), "numeric", (-8, 8), corrupted_interval=(1.0, 2.5))
    assert rec["iou"] > 0.8 and rec["score"] > 0.9
    assert "sinusoid" in rec["interpretation"]["description"]


def test_symbolic_step_and_noise():
    rec = evaluate(lambda x: 2.0 if x > 0.7 else -1.0, SymbolicInterpreter(), "numeric", (-3, 3))
    assert rec["score"] > 0.99 and "step" in rec["interpretation"]["description"]
    rec = evaluate(lambda x: math.exp(0.3 * x), SymbolicInterpreter(), "numeric", (-4, 4), noise=0.05)
    assert rec["score"] > 0.95 and "noisy" in rec["interpretation"]["description"]


def test_symbolic_fallback_code_runs_for_a_function_outside_the_grammar():
    fn = lambda x: math.sin(0.3 * x * x) * math.tanh(x)  # noqa: E731
    h = BlackBoxHandle(fn, "numeric", (-6, 6), 600)
    it = SymbolicInterpreter(try_sums=False).interpret(h)
    g = compile_code(it.code)
    xs = np.random.default_rng(0).uniform(-6, 6, 200)
    err = np.mean([(g(x) - fn(x)) ** 2 for x in xs]) / np.var([fn(x) for x in xs])
    assert h.used <= 600 and err < 0.05


@pytest.mark.parametrize("fn, words", [
    (lambda s: s[::-1], "reverse the string"),
    (lambda s: "".join(chr((ord(c) - 97 + 3) % 26 + 97) if c.islower() else c for c in s), "Caesar cipher: shift every letter forward by 3"),
    (lambda s: "<" + s.upper() + ">", "upper case"),
    (lambda s: sum(c in "aeiouAEIOU" for c in s), "vowels"),
])
def test_string_search_solves_simple_functions(fn, words):
    rec = evaluate(fn, StringSearchInterpreter(), "string", "mixed")
    assert rec["exact"] == 1.0
    assert words.lower() in rec["interpretation"]["description"].lower()


@pytest.mark.parametrize("fn, words", [
    (lambda s: s + str(len(s)), "the string, then (the number of characters)"),
    (lambda s: s + "|" + s[::-1], "'|', then (reverse the string)"),
    (lambda s: s[:3] + s[-3:], "(keep the first 3 characters), then (keep the last 3 characters)"),
    (lambda s: f"{sum(c in 'aeiouAEIOU' for c in s)} vowels", "(the number of vowels), then ' vowels'"),
    (lambda s: len(s) % 5, "modulo 5"),
    (lambda s: 3 * s.lower().count("e") + 1, "multiply the result by 3 and add 1"),
    (lambda s: s[-1] + s[1:-1] + s[0] if len(s) > 1 else s, "swap the first and last characters"),
])
def test_string_search_concatenations_and_count_arithmetic(fn, words):
    """Two pieces joined by a separator read off the outputs; arithmetic on a count."""
    rec = evaluate(fn, StringSearchInterpreter(), "string", "mixed")
    assert rec["exact"] == 1.0, rec["interpretation"]["description"]
    assert words.lower() in rec["interpretation"]["description"].lower()


def test_neuron_interpreter_names_the_concept():
    suite = generate_suite(3, 1, categories=("neuron",), families={"neuron": ["concept", "polysemantic"]})
    res = run_suite(suite, NeuronInterpreter())
    for rec, f in zip(res["records"], suite):
        assert rec["score"] > 0.9 and rec["description_keyword"] == 1.0, (f.description, rec["interpretation"]["description"])


def test_neuron_interpreter_additive_model_noise_unions_and_suppression():
    """A noisy unit (its concept explains only ~20% of the variance), a union of three concepts
    at three strengths, and a unit suppressed on one concept: the stepwise model recovers each
    (these scored 0.00 / 0.85 / 0.00 with the single-concept model it replaced)."""
    from mechscope.find.inputs import concepts

    c = {k: set(v["words"]) for k, v in concepts()["concepts"].items()}
    rng = np.random.default_rng(0)
    noisy = lambda w: (0.8 if w in c["animals"] else 0.1) + float(rng.normal(0, 0.3))  # noqa: E731
    union = lambda w: 1.0 if w in c["fruits"] else 0.6 if w in c["vegetables"] else 0.3 if w in c["drinks"] else 0.0  # noqa: E731
    suppressed = lambda w: 0.2 if w in c["weather"] else 0.7  # noqa: E731
    rec = evaluate(noisy, NeuronInterpreter(), "neuron", "vocab")
    assert rec["score"] > 0.9 and "animal" in rec["interpretation"]["description"]
    rec = evaluate(union, NeuronInterpreter(), "neuron", "vocab")
    assert rec["score"] > 0.99 and all(k in rec["interpretation"]["description"] for k in ("fruit", "vegetable", "drink"))
    rec = evaluate(suppressed, NeuronInterpreter(), "neuron", "vocab")
    assert rec["score"] > 0.99 and "suppressed on weather" in rec["interpretation"]["description"]


def test_offline_interpreters_generalise_to_an_unseen_seed():
    """A held-out seed (development used seeds 0-3): numeric >= 0.6 and strings >= 0.5, as the goal asks."""
    fams = {"numeric": ["poly", "sine", "gaussian", "square_wave", "noisy", "corrupted"],
            "string": None}
    suite = generate_suite(90210, 1, categories=("numeric", "string"), families=fams)
    board = run_suite(suite, get_interpreter("offline"))["leaderboard"]
    assert board["numeric"]["score"] >= 0.6 and board["string"]["score"] >= 0.5, board
    assert board["numeric"]["errors"] == 0 and board["string"]["errors"] == 0


def test_get_interpreter_names_and_errors():
    assert get_interpreter("offline").name == "offline"
    assert get_interpreter("mechscope.find.interpreters.neuron:NeuronInterpreter").name == "neuron"
    with pytest.raises(ConfigError, match="unknown interpreter"):
        get_interpreter("gpt-17")
    with pytest.raises(ConfigError, match="could not import"):
        get_interpreter("no.such.module:Thing")


def _caesar(s: str, k: int) -> str:
    return "".join(chr((ord(c) - b + k) % 26 + b) if c.isascii() and c.isalpha() and (b := 97 if c.islower() else 65) else c
                   for c in s)


@pytest.mark.parametrize("fn, domain, words", [
    (lambda s: s.lower() if s[:1].isupper() else s.swapcase(), "mixed",
     "if the string starts with an upper-case letter: convert to lower case; otherwise: swap the case"),
    (lambda s: ("odd:" + s) if len(s) % 2 else s[::-1], "words", "otherwise: prepend 'odd:'"),
    (lambda s: " ".join(w + w[0] for w in s.split()), "sentences", "in each word: write the string, then"),
    (lambda s: _caesar(s, len(s.split()) + 2), "sentences",
     "shift every letter forward by (the number of words + 2) mod 26"),
    (lambda s: "<" + " ".join(sorted(s.split()))[::-1] + ">", "sentences", "sort the words; then reverse the string; then prepend '<'"),
])
def test_string_search_conditionals_per_word_keyed_and_three_steps(fn, domain, words):
    """Conditionals on a property of the input, a program applied to each word, a Caesar shift
    keyed by a count, two ops and a learned affix: each scored well below 1 before these searches."""
    rec = evaluate(fn, StringSearchInterpreter(), "string", domain)
    assert rec["exact"] == 1.0, rec["interpretation"]["description"]
    assert words.lower() in rec["interpretation"]["description"].lower()


def _vigenere(s: str, key: list[int]) -> str:
    """Shift the i-th letter by key[i % len(key)] (letters only advance the key)."""
    out, i = [], 0
    for c in s:
        if c.isascii() and c.isalpha():
            out.append(_caesar(c, key[i % len(key)]))
            i += 1
        else:
            out.append(c)
    return "".join(out)


@pytest.mark.parametrize("fn, domain, words", [
    (lambda s: _vigenere(s[::-1].upper(), [3, 1, 4]), "mixed", "vigenère cipher: shift letters cyclically by [3, 1, 4]"),
    # the prefix is enciphered too, so it is constant in the outputs and the key continues after it
    (lambda s: _vigenere("ok" + s[0::2], [5, 20, 2]), "mixed", "vigenère cipher: shift letters cyclically by [2, 5, 20]; then prepend"),
])
def test_string_search_vigenere_after_other_ops(fn, domain, words):
    """A periodic shift learned after one or two fixed ops (the key read position by position off the
    intermediate string), before a constant affix; the free character map fitted the probes by chance."""
    rec = evaluate(fn, StringSearchInterpreter(), "string", domain)
    assert rec["exact"] == 1.0, rec["interpretation"]["description"]
    assert words in rec["interpretation"]["description"].lower()


def _ops(name: str):
    from mechscope.find.interpreters.string_dsl import OPS

    return next(op for op in OPS if op.name == name)


@pytest.mark.parametrize("fn, domain, words", [
    # a map before an op that drops a lone space: the space probe cannot show the map, so it is taken as kept
    (lambda s: " ".join(sorted("".join("x" if c in "aeiouAEIOU" else c for c in s).split())), "sentences",
     "with 'x'; then sort the words"),
    # two ops, then a deletion map read off the single-character probes
    (lambda s: "".join(c for c in _ops("last_word")(_ops("sort_words")(s)) if c not in "aeiouAEIOU"), "sentences",
     "sort the words; then keep the last word; then delete the characters"),
    # three fixed ops of the library, none of them a learned step: pig latin, '*' between characters, each word reversed
    (lambda s: _ops("reverse_each_word")(_ops("interleave'*'")(_ops("pig_latin")(s))), "sentences",
     "pig latin: move each word's first letter to its end and add 'ay'; then insert '*' between characters; then reverse each word"),
])
def test_string_search_maps_before_lossy_ops_and_three_fixed_ops(fn, domain, words):
    rec = evaluate(fn, StringSearchInterpreter(time_budget=60.0), "string", domain)  # the three-op search takes seconds
    assert rec["exact"] == 1.0, rec["interpretation"]["description"]
    assert words in rec["interpretation"]["description"].lower()


@pytest.mark.parametrize("fn, words", [
    (lambda x: math.exp(math.sin(x)), "oscillates with period about 6.2"),
    (lambda x: math.sqrt(abs(x)) * math.sin(x), "with a varying amplitude"),
])
def test_numeric_fallback_description_names_the_period(fn, words):
    """Compositions outside the grammar are fitted by interpolation; the description still says
    that they oscillate, with which period, and whether the peaks keep one height."""
    rec = evaluate(fn, SymbolicInterpreter(), "numeric", (-10, 10))
    assert rec["score"] > 0.95 and words in rec["interpretation"]["description"]


def test_sums_whose_terms_cancel_are_not_formulas():
    """Two ReLU-like families summed have two linear columns: +1000 u and -1000 u fit anything the
    rest fits, and describe nothing; such sums are left out of the candidates (a degree-7
    polynomial was described as 2177 sin(1.39x) - 2168 sin(1.37x))."""
    from mechscope.find.interpreters.families import Ctx, all_families
    from mechscope.find.interpreters.fit import Fit, cancels, sum_family

    hinge = next(f for f in all_families() if f.name == "hinge")
    fam, ctx, x = sum_family(hinge, hinge), Ctx(-5, 5), np.linspace(-5, 5, 101)
    assert not cancels(Fit(fam, np.array([0.0, 1.0]), np.array([0.5, 1.0, 2.0, 0.0, 0.0]), 0.0, ctx), x)
    assert cancels(Fit(fam, np.array([0.0, 1.0]), np.array([0.5, 1000.0, 2.0, -1000.0, 0.0]), 0.0, ctx), x)
    rec = evaluate(lambda v: 0.001 * v ** 7 - v ** 3 + 2 * v, SymbolicInterpreter(), "numeric", (-3, 3))
    numbers = [abs(float(t)) for t in re.findall(r"\d+\.?\d*(?:e[+-]?\d+)?", rec["interpretation"]["description"])]
    assert rec["score"] > 0.95 and max(numbers, default=0.0) < 500  # outputs span about 40; no cancelling giants


def test_neuron_interpreter_conjunction_of_concept_and_feature():
    """A unit firing on short body-part words only (concept AND length <= 4): the additive model
    could only say "body parts"."""
    from mechscope.find.inputs import concepts

    body = set(concepts()["concepts"]["body_parts"]["words"])
    rec = evaluate(lambda w: 1.0 if w in body and len(w) <= 4 else 0.0, NeuronInterpreter(), "neuron", "vocab")
    assert rec["score"] > 0.95 and "body parts words that are also" in rec["interpretation"]["description"]


@pytest.mark.parametrize("fn, domain, words", [
    (lambda x: 2 / (x + 1.3) - 0.5 * x, (-6, 6), "a pole at x = -1.3"),
    (lambda x: 1 / ((x - 2) * (x + 3)), (-8, 8), "poles at x ="),
    (lambda x: 3 * math.tan(0.4 * x + 0.3), (-8, 8), "poles every 7.854"),
])
def test_symbolic_poles_inside_the_domain(fn, domain, words):
    """Poles inside the domain (one with a linear trend, two, a tangent); these scored ~0."""
    rec = evaluate(fn, SymbolicInterpreter(), "numeric", domain)
    assert rec["score"] > 0.95 and words in rec["interpretation"]["description"], rec["interpretation"]["description"]
