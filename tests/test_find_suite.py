"""Functions, suites (JSONL) and the query protocol."""

import json

import numpy as np
import pytest

from mechscope.errors import ConfigError, FormatError
from mechscope.find import BlackBoxHandle, Function, Interpretation, QueryBudgetError, generate_suite, load_suite, save_suite
from mechscope.find.generators import NUMERIC_FAMILIES, generate_neurons, generate_numeric, generate_strings


def test_same_seed_same_suite_including_mlp():
    fams = {"numeric": ["poly", "corrupted", "mlp", "noisy"], "string": ["cipher", "composition"], "neuron": ["concept"]}
    a = generate_suite(5, 1, families=fams)
    b = generate_suite(5, 1, families=fams)
    assert [f.to_dict() for f in a] == [f.to_dict() for f in b]
    c = generate_suite(6, 1, families={**fams, "numeric": ["poly", "corrupted", "noisy"]})
    assert [f.code for f in a] != [f.code for f in c]
    mlp = next(f for f in a if f.family == "mlp")
    g = mlp.compile()
    assert np.isfinite([g(x) for x in np.linspace(*mlp.domain, 20)]).all()


def test_generators_cover_every_family_and_are_finite():
    fs = generate_numeric(11, 1, families=[f for f in NUMERIC_FAMILIES if f != "mlp"])
    assert {f.family for f in fs} >= {"poly", "sine", "rectangle", "square_wave", "rational", "gaussian", "constant", "composition"}
    for f in fs:
        g = f.compile()
        ys = [g(x) for x in np.linspace(*f.domain, 64)]
        assert np.isfinite(ys).all(), f.id
        assert f.description and f.difficulty in ("easy", "medium", "hard")
    cor = [f for f in fs if f.family == "corrupted"][0]
    lo, hi = cor.corrupted_interval
    assert cor.domain[0] <= lo < hi <= cor.domain[1]
    strs = generate_strings(11, 1)
    assert len({f.family for f in strs}) == 8 and all(isinstance(f.compile()("Hello world"), (str, int)) for f in strs)
    neus = generate_neurons(11, 2)
    assert all(0 <= f.compile()("dog") <= 1.5 for f in neus)


def test_suite_roundtrip(tmp_path):
    suite = generate_suite(1, 1, families={"numeric": ["sine", "corrupted"], "string": ["word"], "neuron": ["lexical"]})
    p = tmp_path / "s.jsonl"
    save_suite(suite, p)
    back = load_suite(p)
    assert [f.to_dict() for f in back] == [f.to_dict() for f in suite]
    assert back.meta["seed"] == 1 and back.categories() == {"numeric": 2, "string": 1, "neuron": 1}
    assert isinstance(back.functions[1].corrupted_interval, tuple)


def test_foreign_suite_without_header_and_defaults(tmp_path):
    p = tmp_path / "plug.jsonl"
    p.write_text(json.dumps({"id": "sq", "category": "numeric", "code": "def f(x):\n    return x * x\n", "author": "them"}) + "\n\n")
    s = load_suite(p)
    f = s.functions[0]
    assert f.domain == (-10.0, 10.0) and f.difficulty == "unknown" and f.meta["author"] == "them"


@pytest.mark.parametrize("lines, match", [
    (['{"id": "a", "category": "numeric", "code": "def f(x):\\n    return x\\n"}', "{not json"], r":2: not valid JSON"),
    (['{"id": "a", "category": "numeric"}'], r":1: .*missing required key\(s\) \['code'\]"),
    (['{"id": "a", "category": "weird", "code": "def f(x): return x"}'], r":1: .*category must be one of"),
    (['{"id": "a", "category": "numeric", "code": "def g(x): return x"}'], r":1: .*define a callable 'f'"),
    (['{"id": "a", "category": "numeric", "code": "def f(x): return x"}'] * 2, r":2: duplicate function id 'a' \(first on line 1\)"),
    (['{"id": "a", "category": "numeric", "code": "def f(x): return x", "domain": [3, 1]}'], r":1: .*lo < hi"),
    (['[1, 2]'], r":1: expected a JSON object, found list"),
    (['{"format": "something.else"}'], r":1: expected header format"),
])
def test_malformed_suites_name_the_line(tmp_path, lines, match):
    p = tmp_path / "bad.jsonl"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(FormatError, match=match):
        load_suite(p)


def test_missing_and_empty_suite(tmp_path):
    with pytest.raises(FormatError, match="found nothing"):
        load_suite(tmp_path / "nope.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n")
    with pytest.raises(FormatError, match="at least one function"):
        load_suite(tmp_path / "empty.jsonl")


def test_unknown_family_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown numeric families"):
        generate_numeric(0, 1, families=["polynomials"])


def test_handle_counts_logs_and_enforces_budget():
    h = BlackBoxHandle(lambda x: 2 * x, "numeric", (-1, 1), budget=5)
    assert h.query([1, 2, 3]) == [2.0, 4.0, 6.0]
    assert h.used == 3 and h.remaining == 2 and h.log[0]["inputs"] == [1.0, 2.0, 3.0]
    with pytest.raises(QueryBudgetError, match="3 input\\(s\\) exceeds the budget: 3 of 5 used, 2 remaining"):
        h.query([1, 2, 3])
    assert h.used == 3  # a refused batch costs nothing
    assert h.query([0.5, 0.25]) == [1.0, 0.5]
    with pytest.raises(QueryBudgetError):
        h.query([0])
    with pytest.raises(ConfigError):
        h.query("abc")


def test_handle_noise_is_seeded_and_errors_become_none():
    a = BlackBoxHandle(lambda x: 0.0, "numeric", (0, 1), 10, noise=1.0, seed=4).query([0.1] * 5)
    b = BlackBoxHandle(lambda x: 0.0, "numeric", (0, 1), 10, noise=1.0, seed=4).query([0.1] * 5)
    assert a == b and len(set(a)) == 5
    h = BlackBoxHandle(lambda s: s[5], "string", "words", 10)
    assert h.query(["abcdefg", "ab"]) == ["f", None] and h.errors == 1


def test_interpretation_and_function_roundtrip():
    i = Interpretation("d", "def f(x):\n    return x\n", (1.0, 2.0), {"k": 1})
    assert Interpretation.from_dict(json.loads(json.dumps(i.to_dict()))) == i
    with pytest.raises(ConfigError, match="noise"):
        Function(id="x", category="numeric", code="", noise=-1)
