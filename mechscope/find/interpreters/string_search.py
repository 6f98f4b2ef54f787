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
tries, simplest first: one fixed op; the learned map before or after one fixed op (before an op
that changes a few single characters too, e.g. sorting words drops a lone space); the same
inside a constant affix; a keyed shift; a concatenation; two fixed ops; a per-word program; a
conditional; two fixed ops (or one) and a learned last step (affix, truncation, Vigenère shift or
character map, the last two also before an affix); three fixed ops.
The first program consistent with every probe wins; else the one matching the most probes.

Programs and their steps are :mod:`.string_program`; the learners built from sub-programs (keyed
shifts, per-word programs, conditionals) are :mod:`.string_lifted`.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from mechscope.find.inputs import string_inputs
from mechscope.find.interpreters.string_dsl import COUNTS, COUNTS_AS_TEXT, EMPTY, IDENTITY, OPS, Op
from mechscope.find.interpreters.string_lifted import _conditional, _keyed_shift, _per_word
from mechscope.find.interpreters.string_program import (_STR, Program, Step, _affixes, _aligned_table, _distinct_outputs, _eq,
                                                         _frac, _matches)
from mechscope.find.protocol import BlackBoxHandle, Interpretation

SINGLES = list("abcdefghijklmnopqrstuvwxyz") + list("ABCDEFGHIJKLMNOPQRSTUVWXYZ") + list("0123456789") + list(" .,!?-_'")
DESIGNED = ["ab", "ba", "abc", "hello", "Hello", "HELLO", "hello world", "Hello World", "the quick brown fox",
            "The Quick Brown Fox jumps", "aaabbbccc", "aabbcc", "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            "zyxwv", "Mississippi", "a1b2c3", "12345", "hello world 123", "banana", "apple pie", "racecar",
            "one two three four five", "Cat", "dog!", "a b c", "aeiou", "bcdfg", "The cat sat on the mat.",
            "  spaced  out ", "MiXeD CaSe", "word", "hi", "x y", ""]


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


def _letter_shifts(v: Any, o: Any) -> list[tuple[int, int]] | None:
    """``[(position, shift)]`` for the letters of ``v`` if ``o`` is ``v`` with each letter shifted
    (case kept, other characters unchanged), else ``None``."""
    if not isinstance(v, str) or not isinstance(o, str) or len(v) != len(o):
        return None
    out = []
    for i, (a, b) in enumerate(zip(v, o)):
        if a.isascii() and a.isalpha():
            if not (b.isascii() and b.isalpha() and a.islower() == b.islower()):
                return None
            out.append((i, (ord(b.lower()) - ord(a.lower())) % 26))
        elif a != b:
            return None
    return out


def _periodic_key(pairs: list[tuple[str, str]], max_period: int = 8) -> tuple[list[int], bool] | None:
    """The shortest key (period 2..``max_period``) of a Vigenère shift taking every ``v`` to its
    ``o``, counting letters only or every character, as ``(key, letters_only)``; ``None`` if none
    fits (period 1, a Caesar shift, is a character map and is found as one)."""
    shifts = [_letter_shifts(v, o) for v, o in pairs]
    for period in range(2, max_period + 1):
        for letters_only in (True, False):
            key: dict[int, int] = {}
            if all(key.setdefault((j if letters_only else i) % period, k) == k for seq in shifts for j, (i, k) in enumerate(seq)):
                if len(key) == period and len(set(key.values())) > 1:
                    return [key[j] for j in range(period)], letters_only
    return None


def _aligned_map(g: Op, data) -> dict | None:
    """A character map ``M`` with ``o == ''.join(M[c] for c in g(p))`` position by position, if one exists."""
    try:
        ts = [g(p) for p, _ in data]
    except Exception:
        return None
    return _aligned_table(ts, [o for _, o in data])


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


def _maps_before(ops: list[Op], data, table: dict, done: list[Op]):
    """``(g, map)`` for a map applied before an op ``g`` that changes a few single characters
    (``sort the words`` drops a lone space): where ``g(c) != c`` the probe cannot show ``M(c)``, so
    ``M(c) = c`` is assumed, and kept only if the probe's output is ``g(c)``; elsewhere ``M(c)`` is
    the probe's output. Ops changing more than a fifth of the single characters are skipped."""
    singles = [c for c in table if len(c) == 1]
    for g in ops:
        if g in done:
            continue
        try:
            moved = [c for c in singles if g(c) != c]
            if not moved or len(moved) > len(singles) // 5 or any(not _eq(table[c], g(c)) for c in moved):
                continue
        except Exception:  # an op that fails on a single character: no map before it
            continue
        yield g, {c: (c if c in moved else o) for c, o in table.items()}


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
    for learn in (_depth2, _per_word, _conditional, _depth3, _three_ops) if lift else (_depth2,):
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
        for g, tg in _maps_before(OPS, data, table, pres):
            for sep in _seps(data, tg):
                yield Program([Step("map", table=tg, sep=sep), Step("op", g)])
    for g in [IDENTITY] + OPS:  # a position-wise map after any op (it commutes with structural ops)
        table = _aligned_map(g, data)
        if table is not None:
            yield Program([Step("op", g), Step("map", table=table)])
    for st in _learn_shifts(data):
        for g in [IDENTITY] + OPS:
            yield Program([Step("op", g), st])


def _string_candidates(data):
    yield from _core_candidates(data)
    for P, S in _affixes(data):
        core = [(p, o[len(P):len(o) - len(S)]) for p, o in data]
        aff = Step("affix", pre=P, suf=S)
        for prog in _core_candidates(core):
            yield Program(prog.steps + [aff])


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
    return _two_ops(data, deadline, [(None, None)])


def _depth3(data, deadline) -> Program | None:
    """Two fixed ops (or one) and a learned last step: a constant affix read off the outputs, a
    truncation to the longest output's length, a Vigenère shift, a position-wise character map, or
    a shift / map followed by a constant affix (the affix itself may have been shifted: it is read
    off the outputs, so it is constant)."""
    outs = [o for _, o in data]
    if not all(isinstance(o, str) for o in outs):
        return None
    k = max(len(o) for o in outs)
    cut = [Op(f"take{k}", f"return s[:{k}]", f"keep the first {k} characters"),
           Op(f"take_last{k}", f"return s[-{k}:]", f"keep the last {k} characters")] if k else []
    affixes = _affixes(data)
    singles = _learn_map(data)  # the map read off single-character probes (deletions, duplications, ...)
    # not when most single characters vanish: the last fixed op then emptied them (drop the last character), nothing to read
    keeps = singles and sum(v != "" for v in singles.values()) > len(singles) // 2
    read = [Step("map", table=singles, sep=sep) for sep in _seps(data, singles)] if keeps else []
    # a periodic shift (period >= 2) is tried before a free character map, which has more room to fit the probes by chance
    lasts = [(a, None) for a in affixes] + [(None, c) for c in cut] + [(None, m) for m in read] + [(None, "shifts"), (None, "map")]
    lasts += [(a, learned) for learned in ("shifts", "map") for a in affixes]
    return _two_ops(data, deadline, lasts)


def _two_ops(data, deadline, lasts: list) -> Program | None:
    """``op2(op1(s))``, then a final step, then an affix, for each ``(affix, final)`` of ``lasts``
    (``affix``: ``(pre, suf)`` or ``None``; ``final``: ``None``, an :class:`Op`, a ready :class:`Step`,
    ``"map"`` — a position-wise character map learned here — or ``"shifts"`` — a periodic letter
    shift learned here; with a learned or ready final step ``op2`` may also be the identity); each
    pair is abandoned at the first probe it cannot explain."""
    firsts = [(op, outs) for outs, op in _distinct_outputs(OPS, [p for p, _ in data]).items()]
    outs = [o for _, o in data]
    for affix, final in lasts:
        target = outs if affix is None else [o[len(affix[0]):len(o) - len(affix[1])] for o in outs]
        seconds = [IDENTITY] + OPS if isinstance(final, Step) or final in ("map", "shifts") else OPS
        for op1, outs1 in firsts:
            if time.time() > deadline:
                return None
            for op2 in seconds:
                prog = _explains(op1, op2, outs1, target, final)
                if prog is not None:
                    return prog if affix is None else Program(prog.steps + [Step("affix", pre=affix[0], suf=affix[1])])
    return None


def _explains(op1: Op, op2: Op, outs1, target, final) -> Program | None:
    """``op2`` after ``op1`` (whose outputs are ``outs1``), then ``final`` (see :func:`_two_ops`), if
    that gives every target."""
    table: dict = {}
    shifted: list[tuple[str, str]] = []
    for t, o in zip(outs1, target):
        try:
            v = op2(t)
            v = final(v) if isinstance(final, (Op, Step)) else v
        except Exception:
            return None
        if final == "shifts":
            if _letter_shifts(v, o) is None:
                return None
            shifted.append((v, o))
        elif final == "map":
            if not isinstance(v, str) or len(v) != len(o) or any(table.setdefault(a, b) != b for a, b in zip(v, o)):
                return None
        elif not _eq(v, o):
            return None
    steps = [Step("op", op1), Step("op", op2)]
    if isinstance(final, Op):
        steps.append(Step("op", final))
    elif isinstance(final, Step):
        steps.append(final)
    elif final == "map":
        if all(k == v for k, v in table.items()):
            return None
        steps.append(Step("map", table=table))
    elif final == "shifts":
        key = _periodic_key(shifted)
        if key is None:
            return None
        steps.append(Step("shifts", table={"key": key[0], "letters_only": key[1]}))
    return Program(steps)


def _three_ops(data, deadline, n_sample: int = 12) -> Program | None:
    """Three fixed ops. The two-op prefixes are told apart by their outputs on ``n_sample`` of the
    longest probes (one prefix per distinct output); prefixes with the same output on the first of
    those probes share one check of each third op there; the rest of the sample, then every probe,
    must agree."""
    sample = sorted(range(len(data)), key=lambda i: -len(data[i][0]))[:n_sample]
    inputs = [data[i][0] for i in sample]
    prefixes: dict[tuple, tuple[Op, Op]] = {}
    for outs1, op1 in _distinct_outputs(OPS, inputs).items():
        for outs2, op2 in _distinct_outputs(OPS, list(outs1)).items():
            prefixes.setdefault(outs2, (op1, op2))
            if time.time() > deadline:
                return None
    by_first: dict = {}
    for outs2, pair in prefixes.items():
        by_first.setdefault(outs2[0], []).append((outs2, pair))
    targets = [data[i][1] for i in sample]
    for first, members in by_first.items():
        if time.time() > deadline:
            return None
        for op3 in OPS:
            if not _all_equal(op3, [first], targets[:1]):
                continue
            for outs2, (op1, op2) in members:
                if _all_equal(op3, outs2[1:], targets[1:]):
                    prog = Program([Step("op", op1), Step("op", op2), Step("op", op3)])
                    if _matches(prog, data):
                        return prog
    return None


def _all_equal(op: Op, inputs, targets) -> bool:
    """``op(x) == target`` for every pair (an op that raises explains nothing)."""
    try:
        return all(_eq(op(x), t) for x, t in zip(inputs, targets))
    except Exception:
        return False
