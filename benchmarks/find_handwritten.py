"""Benchmark: the offline interpreters on hand-written functions that no generator produced; prints JSON.

    .venv/bin/python benchmarks/find_handwritten.py

A generalisation check beside find_offline.py: these functions were written by hand in a
different style (FIND-like domain [-128, 128] for many numeric ones, other string operations
and compositions), so an interpreter tuned to our generator's families gets no free ride.
"""

from __future__ import annotations

import json
import time

from mechscope.find import Function, Suite, get_interpreter, run_suite

NUMERIC = [
    # (code expression in x, domain, noise, corrupted interval (lo, hi, replacement expression) or None)
    ("x**3 - 2*x", (-128, 128), 0, None),
    ("abs(x) + 5", (-128, 128), 0, None),
    ("np.sin(x) * x", (-20, 20), 0, None),
    ("1/(1 + np.exp(-x))", (-128, 128), 0, None),
    ("np.floor(x)", (-10, 10), 0, None),
    ("x % 7", (-30, 30), 0, None),
    ("np.log(abs(x) + 1)", (-128, 128), 0, None),
    ("np.exp(-x**2/100)", (-128, 128), 0, None),
    ("np.tanh(x/10)*50", (-128, 128), 0, None),
    ("round(x/5)*5", (-50, 50), 0, None),
    ("max(x, 0)**0.5", (-128, 128), 0, None),
    ("x if x > 0 else x**2", (-10, 10), 0, None),
    ("np.sin(x)", (-128, 128), 0, None),
    ("np.cos(3*x) + 2", (-128, 128), 0, None),
    ("0.01*x**2 - 3", (-128, 128), 0, None),
    ("np.sqrt(x + 128)", (-128, 128), 0, None),
    ("2**(x/20)", (-128, 128), 0, None),
    ("10 if x < -20 else (-5 if x < 40 else 3)", (-128, 128), 0, None),
    ("np.sin(x/10) + np.sin(x/3)", (-128, 128), 0, None),
    ("x/(1 + x**2)", (-10, 10), 0, None),
    ("np.arctan(x)", (-20, 20), 0, None),
    ("np.exp(-abs(x)/20) * np.cos(x/4)", (-128, 128), 0, None),
    ("(x > 3) * x", (-10, 10), 0, None),
    ("np.sin(np.sqrt(abs(x)))", (-128, 128), 0, None),
    ("7", (-128, 128), 0, None),
    ("-0.5*x + 12", (-128, 128), 0, None),
    ("x**2", (-5, 5), 0.5, None),
    ("np.sin(x/5)*10", (-128, 128), 1.0, None),
    ("3*x - 4", (-10, 10), 2.0, None),
    ("np.log(x + 129)", (-128, 128), 0.05, None),
    ("x**2", (-10, 10), 0, (2, 5, "0")),
    ("np.sin(x/8)*4", (-128, 128), 0, (-60, -40, "10")),
    ("0.5*x + 1", (-20, 20), 0, (-5, 0, "np.random.default_rng(int(abs(x)*1000)).normal()")),
    ("np.exp(x/50)", (-128, 128), 0, (30, 70, "-2")),
    ("abs(x - 3)", (-10, 10), 0, (-8, -6, "20 + x")),
    ("np.tanh(x)", (-5, 5), 0, (1, 2, "0.0")),
    ("x**3/1000", (-20, 20), 0, (-3, 6, "5*np.sin(50*x)")),
    ("np.cos(x/20)*30 + x", (-128, 128), 0, (0, 25, "-50")),
]

STRINGS = [
    "s.replace('a', 'b')",
    "' '.join(sorted(s.split(), key=len))",
    "s[::-1].upper()",
    "s.count('e')",
    "s[:3][::-1]",
    "''.join(c for i, c in enumerate(s) if i % 3 != 2)",
    "''.join(c * 2 if c.isalpha() and c.lower() not in 'aeiou' else c for c in s)",
    "sum(int(c) for c in s if c.isdigit())",
    "s.title()",
    "' '.join(s)",
    "''.join(c for c in s if c.lower() in 'aeiou')",
    "''.join(chr((ord(c) - 97 + i) % 26 + 97) if 'a' <= c <= 'z' else c for i, c in enumerate(s))",
    "s.replace(' ', '_')",
    "' '.join(s.split()[-2:][::-1])",
    "s.lower()[::-1]",
    "len(s.split())",
    "s + s",
    "s.upper().replace('E', '3')",
    "s[1:] + s[0] if s else s",
    "'-'.join(w[::-1] for w in s.split())",
    "''.join(sorted(set(s.lower())))",
    "s.swapcase()[::-1]",
    "''.join(c.upper() if c in 'aeiou' else c for c in s)",
    "str(len(s))",
    "s.center(len(s) + 4, '*')",
    "' '.join(w.capitalize() for w in s.split()[::-1])",
    "''.join(chr(219 - ord(c)) if 'a' <= c <= 'z' else c for c in s.lower())",
    "s.strip().split(' ')[0].upper() if s.strip() else ''",
    "''.join(c for c in s if not c.isdigit())",
    "len(set(s.split()))",
    "'#' + s.replace(' ', '') + '#'",
    "''.join(s[i] for i in range(len(s) - 1, -1, -2))",
    "s[len(s) // 2:]",
    "''.join(c + '!' if c == ' ' else c for c in s)",
    "s.capitalize()[::-1]",
    "' '.join(w for w in s.split() if len(w) > 3)",
    "''.join(str(ord(c) % 10) for c in s)",
    "sum(1 for c in s if c.isupper())",
    "s.replace('the', 'THE')",
    "(s * 2)[:len(s) + 2]",
]


def _numeric_functions() -> list[Function]:
    out = []
    for i, (expr, dom, noise, corr) in enumerate(NUMERIC):
        if corr is None:
            code = f"import numpy as np\n\n\ndef f(x):\n    return float({expr})\n"
            ci = None
        else:
            lo, hi, rep = corr
            code = (f"import numpy as np\n\n\ndef f(x):\n    if {lo} <= x <= {hi}:\n        return float({rep})\n"
                    f"    return float({expr})\n")
            ci = (lo, hi)
        out.append(Function(id=f"hw-num-{i:02d}", category="numeric", code=code, description=f"f(x) = {expr}",
                            domain=dom, noise=float(noise), corrupted_interval=ci, family="handwritten", seed=1000 + i))
    return out


def _string_functions() -> list[Function]:
    return [Function(id=f"hw-str-{i:02d}", category="string", code=f"def f(s):\n    return {expr}\n", description=expr,
                     domain="mixed", family="handwritten", seed=2000 + i) for i, expr in enumerate(STRINGS)]


def main() -> None:
    suite = Suite(_numeric_functions() + _string_functions(), {"name": "handwritten"})
    t0 = time.time()
    res = run_suite(suite, get_interpreter("offline"), suite_name="handwritten")
    board = res["leaderboard"]
    worst = sorted(res["records"], key=lambda r: r["score"])[:12]
    print(json.dumps({
        "benchmark": "find_handwritten",
        "score": {c: round(row["score"], 4) for c, row in board.items()},
        "leaderboard": board,
        "lowest": [{"id": r["id"], "truth": next(f.description for f in suite if f.id == r["id"]), "score": round(r["score"], 3),
                    "said": r["interpretation"]["description"][:120]} for r in worst],
        "seconds": round(time.time() - t0, 2),
    }, indent=2))


if __name__ == "__main__":
    main()
