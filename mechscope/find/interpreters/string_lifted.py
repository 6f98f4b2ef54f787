"""Learners of the string interpreter built from a count or from sub-programs (:mod:`.string_search`
calls them after the simpler ones): a Caesar shift keyed by a count of the input, a program applied
to every word (searched on the (word, output word) pairs), and a conditional ``A(s) if cond(s) else
B(s)`` over the predicate library of :mod:`.string_dsl`.
"""

from __future__ import annotations

import time
from typing import Any

from mechscope.find.interpreters.string_dsl import COUNTS, IDENTITY, OPS, PREDICATES
from mechscope.find.interpreters.string_program import (Program, Step, _affixes, _aligned_table, _distinct_outputs, _eq,
                                                         _matches)


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
        from mechscope.find.interpreters.string_search import search  # the search calls this learner

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

