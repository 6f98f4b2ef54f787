"""Programs of the offline string interpreter (:mod:`.string_search`): a :class:`Program` is a
chain of :class:`Step` s (a fixed op, a learned character map, an affix, a counting set, count
arithmetic, a concatenation, a keyed shift, a per-word program or a conditional). A program runs
on a string, prints itself as self-contained Python source (``def f(s)``) and describes itself in
words. Also the helpers that run candidates on probes (``_matches``, ``_frac``,
``_distinct_outputs``) and read structure off outputs (``_affixes``, ``_aligned_table``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from mechscope.find.interpreters.string_dsl import EMPTY, IDENTITY, Op


_STR = Op("to_text", "return str(s)", "written as text")


def _eq(a: Any, b: Any) -> bool:
    if a == b:
        return True
    return a is not None and b is not None and str(a) == str(b)


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


def _distinct_outputs(ops: list[Op], inputs: list[str]) -> dict[tuple, Op]:
    """``{outputs on inputs: the first op giving them}`` over the ops that run on every input."""
    out: dict[tuple, Op] = {}
    for op in ops:
        try:
            out.setdefault(tuple(op(p) for p in inputs), op)
        except Exception:
            continue
    return out

