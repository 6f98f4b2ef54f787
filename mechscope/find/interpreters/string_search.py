"""Offline string interpreter: designed probes, then a program search verified on every probe.

Programs are chains of steps: fixed operations (:mod:`.string_dsl`), a *learned character
map* (each character -> a string, optionally joined by a separator; read off single-character
probes — this covers substitutions, deletions, duplications, case maps and ciphers with any
key), a *constant affix* (prefix/suffix read off the common start/end of all outputs) and, for
integer outputs, a *learned counting set* and *count arithmetic* (``a * count + b`` or
``count % m``, read off the outputs); a *concatenation* ``A(s) + sep + B(s)`` of two pieces (any
op, the string itself, a count written as text, or nothing; ``sep`` read off the outputs); a
*keyed Caesar shift* (by ``a * count(s) + b``); a *per-word program* (any program found on the
(word, output word) pairs); a *conditional* ``A(s) if cond(s) else B(s)`` (a predicate library
on the input; each branch one op, alone, inside an affix or before a character map). The search
tries, simplest first: one fixed op; the learned map before or after one fixed op; the same
inside a constant affix; a keyed shift; a concatenation; two fixed ops; a per-word program; a
conditional; two fixed ops and a learned last step (affix, truncation or character map).
The first program consistent with every probe wins; else the one matching the most probes.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mechscope.find.inputs import string_inputs
from mechscope.find.interpreters.string_dsl import COUNTS, COUNTS_AS_TEXT, EMPTY, IDENTITY, OPS, PREDICATES, Op
from mechscope.find.protocol import BlackBoxHandle, Interpretation

SINGLES = list("abcdefghijklmnopqrstuvwxyz") + list("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + list("0123456789") + list(" .,!?-_'")
DESIGNED = ["ab", "ba", "abc", "hello", "Hello", "HELLO", "hello world", "Hello World", "the quick brown fox",
            "The Quick Brown Fox jumps", "aaabbbccc", "aabbcc", "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            "zyxwv", "Mississippi", "a1b2c3", "12345", "hello world 123", "banana", "apple pie", "racecar",
            "one two three four five", "Cat", "dog!", "a b c", "aeiou", "bcdfg", "The cat sat on the mat.",
            "  spaced  out ", "MiXeD CaSe", "word", "hi", "x y", ""]


_STR = Op("to_text", "return str(s)", "written as text")


def _eq(a: Any, b: Any) -> bool:
    if a == b:
        return True
    return a is not None and b is not None and str(a) == str(b)


# ------------------------------------------------------------------ program steps


@dataclass
class Step:
    """One step: ``kind`` is ``op`` (an :class:`Op`), ``map`` (``table``, ``sep``), ``affix``
    (``pre``, ``suf``), ``countset`` (``chars``), ``concat`` (``op`` + ``sep`` + ``other``),
    ``arith`` on a count (``table``: ``a``, ``b`` or ``m``), ``keyed`` (a Caesar shift by
    ``table["a"] * op(s) + table["b"]``, ``op`` a count), ``words`` (the program ``subs[0]`` applied
    to each word; ``table["split"]``) or ``cond`` (``subs[0](s) if op(s) else subs[1](s)``)."""

    kind: str
    op: Op | None = None
    table: dict | None = None
    sep: str = ""
    pre: str = ""
    suf: str = ""
    chars: frozenset | None = None
    other: Op | None = None
    subs: tuple = ()

    def __call__(self, s):
        if self.kind == "arith":
            return _arith(s, self.table)
        if not isinstance(s, str):
            raise TypeError("string step applied to a non-string")
        if self.kind == "op":
            return self.op(s)
        if self.kind == "map":
            return self.sep.join(self.table.get(c, c) for c in s)
        if self.kind == "affix":
            return self.pre + s + self.suf
        if self.kind == "concat":
            return self.op(s) + self.sep + self.other(s)
        if self.kind == "shifts":
            return _shift_letters(s, self.table["key"], self.table["letters_only"])
        if self.kind == "keyed":
            return _shift_letters(s, [(self.table["a"] * self.op(s) + self.table["b"]) % 26], True)
        if self.kind == "words":
            return " ".join(self.subs[0](w) for w in s.split(self.table["split"]))
        if self.kind == "cond":
            return self.subs[0](s) if self.op(s) else self.subs[1](s)
        return sum(c in self.chars for c in s)

    def source(self, i: int, pre: str = "") -> str:
        """Source defining ``{pre}_step{i}`` (and its helpers, all named with the same prefix)."""
        src = self._source(i)
        return src.replace("_step", f"{pre}_step").replace("_MAP", f"{pre}_MAP").replace("_CHARS", f"{pre}_CHARS") if pre else src

    def _source(self, i: int) -> str:
        if self.kind in ("keyed", "words", "cond"):
            return self._nested_source(i)
        if self.kind == "op":
            return f"def _step{i}(s):\n    {self.op.body}\n"
        if self.kind == "map":
            table = {k: v for k, v in sorted(self.table.items()) if k != v}
            return f"_MAP{i} = {table!r}\n\n\ndef _step{i}(s):\n    return {self.sep!r}.join(_MAP{i}.get(c, c) for c in s)\n"
        if self.kind == "affix":
            return f"def _step{i}(s):\n    return {self.pre!r} + s + {self.suf!r}\n"
        if self.kind == "concat":
            return (f"def _step{i}a(s):\n    {self.op.body}\n\n\ndef _step{i}b(s):\n    {self.other.body}\n\n\n"
                    f"def _step{i}(s):\n    return _step{i}a(s) + {self.sep!r} + _step{i}b(s)\n")
        if self.kind == "arith":
            t = self.table
            expr = f"v % {t['m']}" if "m" in t else f"{t['a']!r} * v + {t['b']!r}"
            return f"def _step{i}(v):\n    return {expr}\n"
        if self.kind == "shifts":
            key, lo = self.table["key"], self.table["letters_only"]
            return (f"def _step{i}(s):\n    out, i = [], 0\n    for c in s:\n        k = {key!r}[i % {len(key)}]\n"
                    "        if c.isascii() and c.isalpha():\n            b = 97 if c.islower() else 65\n"
                    "            out.append(chr((ord(c) - b + k) % 26 + b))\n            i += 1\n"
                    f"        else:\n            out.append(c)\n            i += {0 if lo else 1}\n    return ''.join(out)\n")
        return f"_CHARS{i} = {''.join(sorted(self.chars))!r}\n\n\ndef _step{i}(s):\n    return sum(c in _CHARS{i} for c in s)\n"

    def _nested_source(self, i: int) -> str:
        """Steps built from an op and/or sub-programs: the helpers are ``_step{i}k`` (the op) and
        ``_step{i}a``, ``_step{i}b`` (the sub-programs)."""
        parts = [f"def _step{i}k(s):\n    {self.op.body}\n"] if self.op is not None else []
        parts += [sub.source(f"_step{i}{ab}") for sub, ab in zip(self.subs, "ab")]
        if self.kind == "keyed":
            a, b = self.table["a"], self.table["b"]
            body = (f"k = ({a} * _step{i}k(s) + {b}) % 26\n    return ''.join(chr((ord(c) - 97 + k) % 26 + 97) if 'a' <= c <= 'z' "
                    "else chr((ord(c) - 65 + k) % 26 + 65) if 'A' <= c <= 'Z' else c for c in s)")
        elif self.kind == "words":
            body = f"return ' '.join(_step{i}a(w) for w in s.split({self.table['split']!r}))"
        else:
            body = f"return _step{i}a(s) if _step{i}k(s) else _step{i}b(s)"
        return "\n\n".join(parts + [f"def _step{i}(s):\n    {body}\n"])

    def describe(self) -> str:
        if self.kind == "op":
            return self.op.desc
        if self.kind == "concat":
            pieces = [d for d in (_piece(self.op), repr(self.sep) if self.sep else "", _piece(self.other)) if d]
            return "write " + ", then ".join(pieces)
        if self.kind == "arith":
            t = self.table
            if "m" in t:
                return f"take the result modulo {t['m']}"
            return " and ".join(([f"multiply the result by {t['a']:g}"] if t["a"] != 1 else []) + ([f"add {t['b']:g}"] if t["b"] else []))
        if self.kind == "affix":
            return " and ".join(p for p in ([f"prepend {self.pre!r}"] if self.pre else []) + ([f"append {self.suf!r}"] if self.suf else []))
        if self.kind == "map":
            return describe_map(self.table, self.sep)
        if self.kind == "keyed":
            a, b = self.table["a"], self.table["b"]
            k = self.op.desc if a == 1 else f"{a} times {self.op.desc}"
            return f"Caesar cipher keyed by the input: shift every letter forward by ({k}{f' + {b}' if b else ''}) mod 26"
        if self.kind == "words":
            return f"split into words and in each word: {self.subs[0].phrase()}"
        if self.kind == "cond":
            return f"if {self.op.desc}: {self.subs[0].phrase()}; otherwise: {self.subs[1].phrase()}"
        if self.kind == "shifts":
            key, unit = self.table["key"], "letter" if self.table["letters_only"] else "character"
            d = (key[1] - key[0]) % 26
            if len(key) > 8 and all((key[i] - key[0] - i * d) % 26 == 0 for i in range(len(key))):
                return f"shift the i-th {unit} (from 0) forward by ({key[0]} + {d}*i) mod 26 letters"
            return f"Vigenère cipher: shift letters cyclically by {key}"
        return describe_set(self.chars)


@dataclass
class Program:
    steps: list[Step]

    def __call__(self, s):
        for st in self.steps:
            s = st(s)
        return s

    def code(self) -> str:
        return self.source()

    def source(self, name: str = "") -> str:
        """Source defining ``name`` (``f`` when empty) from helpers ``{name}_step1``, ``{name}_step2``, ..."""
        parts = [st.source(i, name) for i, st in enumerate(self.steps, 1)]
        call = "s"
        for i in range(1, len(self.steps) + 1):
            call = f"{name}_step{i}({call})"
        return "\n\n".join(parts + [f"def {name or 'f'}(s):\n    return {call}\n"])

    def phrase(self) -> str:
        """The steps in words, joined by "; then"."""
        ds = [st.describe() for st in self.steps if not (st.kind == "op" and st.op.name == "identity")]
        return "; then ".join(ds) or "leave the string unchanged"

    def describe(self) -> str:
        d = self.phrase()
        return d[:1].upper() + d[1:] + "."


def _piece(op: Op) -> str:
    """How a concatenation names one of its pieces."""
    if op is EMPTY:
        return ""
    if op is IDENTITY:
        return "the string"
    return f"({op.desc})"


def _arith(v, t: dict):
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise TypeError("count arithmetic applied to a non-number")
    return v % t["m"] if "m" in t else t["a"] * v + t["b"]


def describe_map(table: dict, sep: str) -> str:
    """Name a learned character map when it is a known one (cipher, case map, ...)."""
    low = "abcdefghijklmnopqrstuvwxyz"
    changed = {k: v for k, v in table.items() if k != v}
    tail = f", joining the pieces with {sep!r}" if sep else ""
    if not changed:
        return "keep every character" + tail
    lows = [c for c in low if c in table]
    if lows and all(len(table[c]) == 1 and table[c].islower() for c in lows):
        shifts = {(ord(table[c]) - ord(c)) % 26 for c in lows}
        if len(shifts) == 1 and shifts != {0}:
            return f"Caesar cipher: shift every letter forward by {shifts.pop()}{tail}"
        if all(ord(table[c]) == 219 - ord(c) for c in lows):
            return f"Atbash cipher: reverse the alphabet (a<->z, b<->y, ...){tail}"
    if all(v == k.upper() for k, v in changed.items()):
        return "convert letters to upper case" + tail
    if all(v == k.lower() for k, v in changed.items()):
        return "convert letters to lower case" + tail
    if all(v == k.swapcase() for k, v in changed.items()):
        return "swap the case of letters" + tail
    every = len(changed) == len(table) and len(table) > 20
    if all(v == "" for v in changed.values()):
        return f"delete the characters {''.join(sorted(changed))!r}" + tail
    if all(v == k * 2 for k, v in changed.items()):
        return ("double every character" if every else f"double the characters {''.join(sorted(changed))!r}") + tail
    if all(v.startswith(k) and len(v) == 2 for k, v in changed.items()) and len({v[1] for v in changed.values()}) == 1:
        return f"insert {next(iter(changed.values()))[1]!r} after " + ("every character" if every else f"each of {''.join(sorted(changed))!r}") + tail
    vals = {v for v in changed.values()}
    if len(vals) == 1:
        return f"replace each of {''.join(sorted(changed))!r} with {vals.pop()!r}" + tail
    items = sorted(changed.items())
    shown = ", ".join(f"{k!r}->{v!r}" for k, v in items[:12])
    return f"substitute characters ({shown}{', ...' if len(items) > 12 else ''}){tail}"


def describe_set(chars: frozenset) -> str:
    """Name a learned counting set."""
    vowels = set("aeiouAEIOU")
    cs = set(chars)
    if cs == vowels or cs == set("aeiou"):
        return "count the vowels"
    if cs == set("0123456789"):
        return "count the digits"
    if cs and all(c.isupper() for c in cs) and len(cs) >= 20:
        return "count the upper-case letters"
    if cs and all(c.isalpha() and c.lower() not in "aeiou" for c in cs) and len(cs) >= 20:
        return "count the consonants"
    if cs and all(c.isalpha() for c in cs) and len(cs) >= 40:
        return "count the letters"
    if len({c.lower() for c in cs}) == 1:
        return f"count the occurrences of {sorted(cs)[0].lower()!r} (any case)" if len(cs) == 2 else f"count the occurrences of {sorted(cs)[0]!r}"
    return f"count the characters in {''.join(sorted(cs))!r}"


# ------------------------------------------------------------------ search


class StringSearchInterpreter:
    """Program search over string operations (see the module docstring)."""

    name = "string_search"

    def __init__(self, n_random: int = 40, seed: int = 0, time_budget: float = 5.0):
        self.n_random, self.seed, self.time_budget = n_random, seed, time_budget

    def probes(self, budget: int) -> list[str]:
        rand = string_inputs("mixed", self.n_random // 2, self.seed + 11) + string_inputs("sentences", self.n_random // 4, self.seed + 12) \
            + string_inputs("chars", self.n_random // 4, self.seed + 13)
        p = list(dict.fromkeys(SINGLES[:26] + DESIGNED[:20] + SINGLES[26:] + DESIGNED[20:] + rand))
        return p[:budget]

    def interpret(self, handle: BlackBoxHandle) -> Interpretation:
        t0 = time.time()
        probes = self.probes(handle.remaining)
        outs = handle.query(probes)
        data = [(p, o) for p, o in zip(probes, outs) if o is not None]
        prog, frac = search(data, deadline=t0 + self.time_budget)
        return Interpretation(prog.describe(), prog.code(), None,
                              {"probe_match": frac, "n_probes": len(data), "seconds": time.time() - t0,
                               "steps": [st.op.name if st.op else st.kind for st in prog.steps]})


def _matches(prog, data) -> bool:
    for p, o in data:
        try:
            if not _eq(prog(p), o):
                return False
        except Exception:
            return False
    return True


def _frac(prog, data) -> float:
    n = 0
    for p, o in data:
        try:
            n += _eq(prog(p), o)
        except Exception:
            pass
    return n / max(1, len(data))


def _shift_letters(s: str, key: list[int], letters_only: bool) -> str:
    out, i = [], 0
    for c in s:
        k = key[i % len(key)]
        if c.isascii() and c.isalpha():
            b = 97 if c.islower() else 65
            out.append(chr((ord(c) - b + k) % 26 + b))
            i += 1
        else:
            out.append(c)
            i += 0 if letters_only else 1
    return "".join(out)


def _learn_shifts(data) -> list[Step]:
    """Periodic letter shifts (Vigenère), read off the longest all-letter probe."""
    pairs = [(p, o) for p, o in data if isinstance(o, str) and len(p) == len(o) and len(p) >= 6 and p.isascii() and p.isalpha()]
    if not pairs:
        return []
    p, o = max(pairs, key=lambda t: len(t[0]))
    sh = [(ord(b.lower()) - ord(a.lower())) % 26 for a, b in zip(p, o) if b.isascii() and b.isalpha()]
    if len(sh) != len(p):
        return []
    for period in range(2, 9):
        if all(sh[i] == sh[i % period] for i in range(len(sh))):
            return [Step("shifts", table={"key": sh[:period], "letters_only": lo}) for lo in (True, False)]
    step = (sh[1] - sh[0]) % 26
    if step and all((sh[i] - sh[0] - i * step) % 26 == 0 for i in range(len(sh))):  # shift grows with the position
        key = [(sh[0] + i * step) % 26 for i in range(26 // np.gcd(step, 26))]
        return [Step("shifts", table={"key": key, "letters_only": lo}) for lo in (True, False)]
    return []


def _aligned_map(g: Op, data) -> dict | None:
    """A character map ``M`` with ``o == ''.join(M[c] for c in g(p))`` position by position, if one exists."""
    try:
        ts = [g(p) for p, _ in data]
    except Exception:
        return None
    return _aligned_table(ts, [o for _, o in data])


def _aligned_table(ts: list, outs: list) -> dict | None:
    """A character map taking each ``ts[i]`` to ``outs[i]`` position by position (not the identity), if one exists."""
    table: dict = {}
    for t, o in zip(ts, outs):
        if not isinstance(o, str) or not isinstance(t, str) or len(t) != len(o):
            return None
        for a, b in zip(t, o):
            if table.setdefault(a, b) != b:
                return None
    return table if any(k != v for k, v in table.items()) else None


def _learn_map(data) -> dict | None:
    table = {p: o for p, o in data if len(p) == 1 and isinstance(o, str)}
    return table or None


def _seps(data, table) -> list[str]:
    seps = {""}
    for p, o in data:
        if len(p) == 2 and isinstance(o, str) and p[0] in table and p[1] in table:
            for a, b in ((p[0], p[1]), (p[1], p[0])):
                ma, mb = table[a], table[b]
                if len(o) >= len(ma) + len(mb) and o.startswith(ma) and o.endswith(mb):
                    seps.add(o[len(ma):len(o) - len(mb)])
    return sorted(seps, key=len)[:3]


def _preserving(ops: list[Op], data) -> list[Op]:
    """Ops that leave every single-character probe unchanged (they commute with learning a map from singles)."""
    singles = [p for p, _ in data if len(p) == 1]
    out = []
    for op in ops:
        try:
            if all(op(c) == c for c in singles):
                out.append(op)
        except Exception:
            pass
    return out


def _count_set(data) -> frozenset | None:
    singles = [(p, o) for p, o in data if len(p) == 1]
    if not singles or not all(isinstance(o, (int, float)) and o in (0, 1) for _, o in singles):
        return None
    return frozenset(p for p, o in singles if o == 1)


def search(data: list[tuple[str, Any]], deadline: float | None = None, lift: bool = True) -> tuple[Program, float]:
    """The simplest program consistent with every ``(input, output)`` pair, and its match fraction.

    When none is found, the candidate matching the most pairs (fraction < 1). ``lift`` allows
    programs built from sub-programs (per-word programs, conditionals).
    """
    deadline = deadline or (time.time() + 5.0)
    if os.environ.get("MECHSCOPE_FIND_DEBUG"):
        print(f"string search over {len(data)} probes")
    best: list = [Program([Step("op", IDENTITY)]), _frac(Program([Step("op", IDENTITY)]), data)]

    def consider(prog: Program) -> bool:
        if _matches(prog, data):
            best[0], best[1] = prog, 1.0
            return True
        f = _frac(prog, data)
        if f > best[1]:
            best[0], best[1] = prog, f
        return False

    numeric_out = data and all(isinstance(o, (int, float)) and not isinstance(o, bool) for _, o in data)
    digits_out = data and all(isinstance(o, str) and o.isdigit() for _, o in data)
    if digits_out:  # counts returned as strings: compare as text
        for prog in _count_candidates([(p, int(o)) for p, o in data]):
            if _matches(prog, data):
                return Program(prog.steps + [Step("op", _STR)]), 1.0
    if numeric_out:
        for prog in _count_candidates(data):
            if consider(prog):
                return best[0], 1.0
        return best[0], best[1]
    for prog in _string_candidates(data):
        if consider(prog):
            return best[0], 1.0
        if time.time() > deadline:
            return best[0], best[1]
    for learn in (_keyed_shift, _concat):
        prog = learn(data)
        if prog is not None:
            return prog, 1.0
    for learn in (_depth2, _per_word, _conditional, _depth3) if lift else (_depth2,):
        prog = learn(data, deadline) if time.time() < deadline else None
        if prog is not None:
            return prog, 1.0
    return best[0], best[1]


def _count_candidates(data):
    pres = _preserving(OPS, data)
    cset = _count_set(data)
    for g in [IDENTITY] + OPS:
        for c in COUNTS:
            yield Program([Step("op", g), Step("op", c)])
        if cset is not None and g in pres + [IDENTITY]:
            yield Program([Step("op", g), Step("countset", chars=cset)])
    # a count, then arithmetic on it (the count set is learned from singles, which arithmetic
    # hides: so also every single character as its own set)
    counts = [Step("op", c) for c in COUNTS] + [Step("countset", chars=frozenset({ch, ch.upper()})) for ch in "abcdefghijklmnopqrstuvwxyz"] \
        + [Step("countset", chars=frozenset(ch)) for ch in "abcdefghijklmnopqrstuvwxyz0123456789 .,!?"]
    if cset is not None:
        counts.append(Step("countset", chars=cset))
    for c in counts:
        for t in _fit_arith(c, data):
            yield Program([c, Step("arith", table=t)])


def _fit_arith(count: Step, data) -> list[dict]:
    """Arithmetic tables (``a * v + b`` with ``(a, b) != (1, 0)``, or ``v % m``) that map
    ``count(p)`` to every output exactly."""
    try:
        vs = [count(p) for p, _ in data]
    except Exception:
        return []
    os_ = [float(o) for _, o in data]
    out = []
    (v0, o0), (v1, o1) = min(zip(vs, os_)), max(zip(vs, os_))
    if v1 != v0:
        a = (o1 - o0) / (v1 - v0)
        b = o0 - a * v0
        a, b = (round(a) if abs(a - round(a)) < 1e-9 else a), (round(b) if abs(b - round(b)) < 1e-9 else b)
        if (a, b) != (1, 0) and all(abs(a * v + b - o) < 1e-9 for v, o in zip(vs, os_)):
            out.append({"a": a, "b": b})
    for m in range(2, 13):
        if any(v >= m for v in vs) and all(v % m == o for v, o in zip(vs, os_)):
            out.append({"m": m})
            break
    return out


def _core_candidates(data):
    """Candidates without an affix: one op; the learned map around one preserving op."""
    yield Program([Step("op", IDENTITY)])
    for op in OPS:
        yield Program([Step("op", op)])
    table = _learn_map(data)
    if table:
        pres = [IDENTITY] + _preserving(OPS, data)
        for sep in _seps(data, table):
            m = Step("map", table=table, sep=sep)
            for g in pres:
                yield Program([Step("op", g), m])
                yield Program([m, Step("op", g)])
    for g in [IDENTITY] + OPS:  # a position-wise map after any op (it commutes with structural ops)
        table = _aligned_map(g, data)
        if table is not None:
            yield Program([Step("op", g), Step("map", table=table)])
    for st in _learn_shifts(data):
        for g in [IDENTITY] + OPS:
            yield Program([Step("op", g), st])


def _affixes(data):
    outs = [o for _, o in data if isinstance(o, str)]
    if not outs or len(outs) < len(data):
        return []
    pre = os.path.commonprefix(outs)
    suf = os.path.commonprefix([o[::-1] for o in outs])[::-1]
    opts = []
    for P, S in ((pre, ""), ("", suf), (pre, suf)):
        if (P or S) and all(len(o) >= len(P) + len(S) for o in outs) and (P, S) not in opts:
            opts.append((P, S))
    return opts


def _string_candidates(data):
    yield from _core_candidates(data)
    for P, S in _affixes(data):
        core = [(p, o[len(P):len(o) - len(S)]) for p, o in data]
        aff = Step("affix", pre=P, suf=S)
        for prog in _core_candidates(core):
            yield Program(prog.steps + [aff])


def _distinct_outputs(ops: list[Op], inputs: list[str]) -> dict[tuple, Op]:
    """``{outputs on inputs: the first op giving them}`` over the ops that run on every input."""
    out: dict[tuple, Op] = {}
    for op in ops:
        try:
            out.setdefault(tuple(op(p) for p in inputs), op)
        except Exception:
            continue
    return out


def _concat(data) -> Program | None:
    """``A(s) + sep + B(s)`` consistent with every probe: ``A`` must give a prefix of every output;
    ``B`` is looked up by its outputs on the probes; ``sep`` is read off what is left between."""
    if not data or not all(isinstance(o, str) for _, o in data):
        return None
    outs = [o for _, o in data]
    by_outputs = {v: op for v, op in _distinct_outputs([EMPTY, IDENTITY] + OPS + COUNTS_AS_TEXT, [p for p, _ in data]).items()
                  if all(isinstance(x, str) for x in v)}
    for va, a in by_outputs.items():
        if not all(o.startswith(x) for o, x in zip(outs, va)):
            continue
        rests = [o[len(x):] for o, x in zip(outs, va)]
        common = os.path.commonprefix(rests)
        for n in range(len(common) + 1):
            b = by_outputs.get(tuple(r[n:] for r in rests))
            if b is not None and not (a is EMPTY and b is EMPTY) and not (b is EMPTY and n == 0):
                return Program([Step("concat", op=a, sep=common[:n], other=b)])
    return None


def _depth2(data, deadline) -> Program | None:
    """Two fixed ops (pruned by output signature on the probes)."""
    return _two_ops(data, deadline, [None])


def _depth3(data, deadline) -> Program | None:
    """Two fixed ops and a learned last step: a constant affix read off the outputs, a truncation
    to the longest output's length, or a position-wise character map."""
    outs = [o for _, o in data]
    if not all(isinstance(o, str) for o in outs):
        return None
    k = max(len(o) for o in outs)
    cut = [Op(f"take{k}", f"return s[:{k}]", f"keep the first {k} characters"),
           Op(f"take_last{k}", f"return s[-{k}:]", f"keep the last {k} characters")] if k else []
    return _two_ops(data, deadline, _affixes(data) + cut + ["map"])


def _two_ops(data, deadline, lasts: list) -> Program | None:
    """``op2(op1(s))`` then each of ``lasts`` (``None``: nothing; ``(pre, suf)``: an affix; an
    :class:`Op`; ``"map"``: a learned character map); each pair is abandoned at the first probe
    it cannot explain."""
    firsts = [(op, outs) for outs, op in _distinct_outputs(OPS, [p for p, _ in data]).items()]
    outs = [o for _, o in data]
    for last in lasts:
        target = outs if not isinstance(last, tuple) else [o[len(last[0]):len(o) - len(last[1])] for o in outs]
        for op1, outs1 in firsts:
            if time.time() > deadline:
                return None
            for op2 in OPS:
                prog = _explains(op1, op2, outs1, target, last)
                if prog is not None:
                    return prog
    return None


def _explains(op1: Op, op2: Op, outs1, target, last) -> Program | None:
    """``op2`` after ``op1`` (whose outputs are ``outs1``), then ``last``, if that gives every target."""
    table: dict = {}
    for t, o in zip(outs1, target):
        try:
            v = op2(t)
            v = last(v) if isinstance(last, Op) else v
        except Exception:
            return None
        if last != "map":
            if not _eq(v, o):
                return None
            continue
        if not isinstance(v, str) or len(v) != len(o) or any(table.setdefault(a, b) != b for a, b in zip(v, o)):
            return None
    steps = [Step("op", op1), Step("op", op2)]
    if isinstance(last, tuple):
        steps.append(Step("affix", pre=last[0], suf=last[1]))
    elif isinstance(last, Op):
        steps.append(Step("op", last))
    elif last == "map":
        if all(k == v for k, v in table.items()):
            return None
        steps.append(Step("map", table=table))
    return Program(steps)


# ------------------------------------------------------------------ keyed ciphers, per-word programs, conditionals


def _uniform_shift(p: str, o: Any) -> int | None:
    """The one Caesar shift taking ``p`` to ``o`` (non-letters unchanged), or ``None``."""
    if not isinstance(o, str) or len(o) != len(p):
        return None
    ks = set()
    for a, b in zip(p, o):
        if a.isascii() and a.isalpha():
            if not (b.isascii() and b.isalpha() and a.islower() == b.islower()):
                return None
            ks.add((ord(b.lower()) - ord(a.lower())) % 26)
        elif a != b:
            return None
    return ks.pop() if len(ks) == 1 else None


def _keyed_shift(data) -> Program | None:
    """A Caesar shift ``(a * count(s) + b) mod 26`` keyed by one of the counts (length, words, ...)."""
    keyed = [(p, k) for p, o in data if any(c.isascii() and c.isalpha() for c in p) and (k := _uniform_shift(p, o)) is not None]
    if len(keyed) < max(5, len(data) // 2) or len({k for _, k in keyed}) < 2:
        return None
    for count in COUNTS:
        vs = [count(p) for p, _ in keyed]
        for a in range(1, 26):
            b = (keyed[0][1] - a * vs[0]) % 26
            if all((a * v + b) % 26 == k for v, (_, k) in zip(vs, keyed)):
                prog = Program([Step("keyed", op=count, table={"a": a, "b": b})])
                if _matches(prog, data):
                    return prog
    return None


def _per_word(data, deadline: float) -> Program | None:
    """A program applied to every word: searched on the (word, output word) pairs, then verified."""
    if not all(isinstance(o, str) for _, o in data):
        return None
    for split in (" ", None):
        pairs = [list(zip(p.split(split), o.split(split))) for p, o in data if len(p.split(split)) == len(o.split(split))]
        words = list(dict.fromkeys(pw for ps in pairs for pw in ps))
        if len(pairs) < len(data) or len(words) < 10 or all(w == v for w, v in words) or time.time() > deadline:
            continue
        sub, frac = search(words, deadline, lift=False)
        prog = Program([Step("words", table={"split": split}, subs=(sub,))])
        if frac == 1.0 and _matches(prog, data):
            return prog
    return None


def _mask(bits) -> int:
    return sum(1 << i for i, b in enumerate(bits) if b)


class _Branches:
    """Programs that explain a subset of the probes (a bit mask), for conditionals: one op, one op
    inside a constant affix, or one op followed by a position-wise character map."""

    def __init__(self, data):
        self.data = data
        self.outs = [(op, outs) for outs, op in _distinct_outputs([IDENTITY] + OPS, [p for p, _ in data]).items()]
        self.masks = [(op, _mask(_eq(t, o) for t, (_, o) in zip(outs, data))) for op, outs in self.outs]
        self.memo: dict[int, Program | None] = {}

    def find(self, mask: int) -> Program | None:
        if mask not in self.memo:
            self.memo[mask] = self._find(mask)
        return self.memo[mask]

    def _find(self, mask: int) -> Program | None:
        for op, m in self.masks:
            if m & mask == mask:
                return Program([Step("op", op)])
        idx = [i for i in range(len(self.data)) if mask >> i & 1]
        group = [self.data[i] for i in idx]
        for P, S in _affixes(group):
            core = [o[len(P):len(o) - len(S)] for _, o in group]
            for op, outs in self.outs:
                if all(_eq(outs[i], c) for i, c in zip(idx, core)):
                    return Program([Step("op", op), Step("affix", pre=P, suf=S)])
        for op, outs in self.outs:
            table = _aligned_table([outs[i] for i in idx], [o for _, o in group])
            if table is not None:
                return Program([Step("op", op), Step("map", table=table)])
        return None


def _conditional(data, deadline: float) -> Program | None:
    """``A(s) if cond(s) else B(s)``: for each predicate, a branch program for each side of the split."""
    if not all(isinstance(o, str) for _, o in data):
        return None
    branches = _Branches(data)
    full = (1 << len(data)) - 1
    for pred in PREDICATES:
        if time.time() > deadline:
            return None
        t = _mask(bool(pred(p)) for p, _ in data)  # the predicates are total on strings
        if min(bin(t).count("1"), bin(full ^ t).count("1")) < 3:
            continue
        a = branches.find(t)
        b = branches.find(full ^ t) if a is not None else None
        if b is not None:
            return Program([Step("cond", op=pred, subs=(a, b))])
    return None
