"""An LLM agent interpreter over any OpenAI-compatible chat endpoint (FIND's agent protocol).

The model sees the task, then talks to the black box in a parseable format:

- ``QUERY: [x1, x2, ...]`` (a JSON list; several lines allowed) → we answer ``RESULTS: ...``;
- the final answer: ``DESCRIPTION: ...``, ``CODE:`` with a fenced Python block defining ``f``,
  and for numeric functions ``CORRUPTED: [lo, hi]`` or ``CORRUPTED: none``.

Replies are read leniently (:mod:`~mechscope.find.interpreters.llm_reply`: markdown, multi-line
and Python-literal lists, reasoning blocks dropped). Two steps are added around the bare loop, as
an experimenter would do for the model (both can be switched off):

- **warm start**: the first message already holds the results of a small spread of inputs
  (``warm_start`` per category: evenly spaced numbers over the domain, strings from the domain's
  distribution, words across the lexicon), counted against the budget;
- **self-check**: a final answer's code is run on every input queried so far; if it does not run,
  or disagrees with the black box (numeric: normalised MSE > ``CHECK_NMSE``; strings: any
  mismatch; neurons: correlation < ``CHECK_CORR``), the model is shown the worst disagreements
  and may revise, up to ``check_rounds`` times. Its last final answer is kept either way.

Queries go through the handle, so they are counted and budgeted; a budget error is reported
back to the model. Every conversation is saved as JSON in ``transcript_dir`` when given.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import numpy as np

from mechscope.errors import FormatError
from mechscope.files import write_json
from mechscope.find.functions import compile_code
from mechscope.find.interpreters.llm_reply import parse_final, parse_queries
from mechscope.find.llm import ChatClient, LLMConfig
from mechscope.find.protocol import BlackBoxHandle, Interpretation, QueryBudgetError
from mechscope.find.scoring import same_output

__all__ = ["LLMAgentInterpreter", "parse_final", "parse_queries", "self_check", "warm_start_inputs"]

WARM_START = {"numeric": 21, "string": 10, "neuron": 20}
CHECK_NMSE = 0.05
CHECK_CORR = 0.8
SHOWN = 8  # disagreements shown to the model

SYSTEM = """You are an interpretability agent. A black-box function f is hidden from you; find out what it does.
{what}
To query f, write one or more lines of the form
QUERY: [input1, input2, ...]
(a JSON list of at most {max_batch} inputs). You will get back RESULTS with the outputs. You have a budget of {budget} inputs in total.
When you are confident, reply with your final answer and no QUERY lines, in exactly this format:
DESCRIPTION: <one or two sentences describing f>
CODE:
```python
def f(x):
    ...
```
{extra}"""

WHAT = {
    "numeric": ("f takes a real number x and returns a real number. Inputs of interest lie in [{lo}, {hi}]. "
                "Outputs may carry noise, and f may behave differently (be 'corrupted') on one sub-interval.",
                "CORRUPTED: [a, b]   (the interval where f is corrupted, or CORRUPTED: none)\n"
                "Your code may use `math` and `np` (numpy)."),
    "string": ("f takes a string and returns a string or an integer. Inputs are JSON strings.", ""),
    "neuron": ("f is a neuron: it takes a single English word and returns an activation (a number, mostly 0..1). "
               "Find which words it responds to.", "Your code should define f(word) returning a number."),
}

def warm_start_inputs(handle: BlackBoxHandle, n: int, seed: int = 0) -> list:
    """``n`` inputs spread over what ``handle`` accepts: evenly spaced numbers over the domain,
    strings drawn from the domain's distribution, or words taken evenly across the lexicon."""
    if n <= 0:
        return []
    if handle.category == "numeric":
        lo, hi = handle.domain
        return [round(float(x), 6) for x in np.linspace(lo, hi, n)]
    from mechscope.find.inputs import lexicon, string_inputs

    if handle.category == "string":
        return string_inputs(str(handle.domain), n, seed)
    words = lexicon()
    return [words[int(i)] for i in np.linspace(0, len(words) - 1, n)]


def _observed(handle: BlackBoxHandle) -> list[tuple]:
    """Every (input, output) the black box has answered (inputs it rejected left out)."""
    return [(x, y) for e in handle.log for x, y in zip(e["inputs"], e["outputs"]) if y is not None]


def self_check(code: str, handle: BlackBoxHandle) -> str | None:
    """``None`` when ``code`` runs and agrees with every answer the black box gave so far (within the
    category's tolerance); otherwise a message for the model naming the problem and the worst
    disagreements."""
    try:
        f = compile_code(code, what="your CODE")
    except FormatError as e:
        return f"Your CODE does not run: {e}. Fix it and give the final answer again."
    seen = _observed(handle)
    if not seen:
        return None
    preds, crashed = [], []
    for x, _ in seen:
        try:
            preds.append(f(x))
        except Exception as e:  # the model's code is data: its failure is reported back to it
            preds.append(None)
            crashed.append(f"f({x!r}) raised {type(e).__name__}: {e}")
    if crashed:
        return (f"Your f raises on {len(crashed)} of the {len(seen)} inputs queried so far, e.g. " + "; ".join(crashed[:3]) +
                ". Fix it and give the final answer again.")
    bad = _disagreements(handle.category, seen, preds)
    if not bad:
        return None
    rows = "\n".join(f"  f({x!r}) = {y!r}, your f gives {p!r}" for x, y, p in bad[:SHOWN])
    return (f"Your f disagrees with the black box on inputs you already queried ({len(bad)} shown worst first):\n{rows}\n"
            "Revise your answer (you may query more), or give the same final answer again if the differences are noise.")


def _disagreements(category: str, seen: list[tuple], preds: list) -> list[tuple]:
    """``(x, y, pred)`` rows that count as disagreements, worst first; ``[]`` when the fit is good enough."""
    if category == "string":
        return [(x, y, p) for (x, y), p in zip(seen, preds) if not same_output(p, y)]
    try:
        y = np.array([float(v) for _, v in seen])
        p = np.array([float(v) for v in preds])
    except (TypeError, ValueError):
        return [(x, v, q) for (x, v), q in zip(seen, preds) if not isinstance(q, (int, float))]
    finite = np.isfinite(y)
    err = np.where(finite, np.abs(p - y), 0.0)
    err = np.where(np.isfinite(err), err, np.inf)
    order = [int(i) for i in np.argsort(-err) if err[i] > 0]
    rows = [(seen[i][0], seen[i][1], preds[i]) for i in order]
    if not np.isfinite(err).all():
        return rows
    yf, pf = y[finite], p[finite]
    if category == "numeric":
        nmse = float(np.mean((pf - yf) ** 2) / max(float(np.var(yf)), 1e-12))
        return rows if nmse > CHECK_NMSE else []
    ok = yf.std() > 0 and pf.std() > 0 and float(np.corrcoef(yf, pf)[0, 1]) >= CHECK_CORR
    return [] if ok or (yf.std() == 0 and np.allclose(pf, yf)) else rows


class LLMAgentInterpreter:
    """Interprets a function by chatting with a model (see the module docstring)."""

    name = "llm"

    def __init__(self, config: LLMConfig | None = None, client: ChatClient | None = None, max_turns: int = 12,
                 max_batch: int = 100, transcript_dir: str | Path | None = None, warm_start: dict | bool = True,
                 check_rounds: int = 2):
        self.client = client or ChatClient(config or LLMConfig.from_env())
        self.max_turns, self.max_batch = max_turns, max_batch
        self.transcript_dir = Path(transcript_dir) if transcript_dir else None
        self.warm_start = dict(WARM_START) if warm_start is True else dict(warm_start or {})
        self.check_rounds = int(check_rounds)

    def _prompt(self, handle: BlackBoxHandle) -> str:
        what, extra = WHAT[handle.category]
        lo, hi = handle.domain if handle.category == "numeric" else (None, None)
        return SYSTEM.format(what=what.format(lo=lo, hi=hi), max_batch=self.max_batch, budget=handle.remaining, extra=extra)

    def _opening(self, handle: BlackBoxHandle) -> str:
        xs = warm_start_inputs(handle, min(self.warm_start.get(handle.category, 0), handle.budget // 4))
        if not xs:
            return "Begin. Query f, then give your final answer."
        return ("Begin. To start you off, f on a spread of inputs:\n" + self._answer(handle, [xs]) +
                "\nQuery f further, then give your final answer.")

    def _answer(self, handle: BlackBoxHandle, queries: list[list]) -> str:
        parts = []
        for q in queries:
            q = q[: self.max_batch]
            try:
                outs = handle.query(q)
                parts.append("RESULTS: " + json.dumps([[x, y] for x, y in zip(q, outs)]))
            except QueryBudgetError as e:
                parts.append(f"ERROR: {e}")
            except (TypeError, ValueError) as e:
                parts.append(f"ERROR: bad inputs {q[:5]!r}...: {e}")
        parts.append(f"(budget left: {handle.remaining} inputs)")
        return "\n".join(parts)

    def interpret(self, handle: BlackBoxHandle) -> Interpretation:
        messages = [{"role": "system", "content": self._prompt(handle)}, {"role": "user", "content": self._opening(handle)}]
        final, t0, checks, check_notes = None, time.time(), 0, []
        for turn in range(self.max_turns + 1):
            if turn == self.max_turns:
                messages.append({"role": "user", "content": "No more queries. Give your final answer now (DESCRIPTION, CODE)."})
            reply = self.client.chat(messages)
            messages.append({"role": "assistant", "content": reply})
            answer, queries = parse_final(reply), parse_queries(reply)
            final = answer or final
            if turn == self.max_turns:
                break
            if answer is not None and not queries:
                problem = self_check(answer.code, handle) if checks < self.check_rounds else None
                if problem is None:
                    break
                checks += 1
                check_notes.append(problem.splitlines()[0])
                messages.append({"role": "user", "content": problem})
                continue
            if not queries:
                messages.append({"role": "user", "content": "I found no QUERY line and no complete final answer. "
                                 "Write QUERY: [...] lines, or DESCRIPTION: and CODE: with a ```python block."})
                continue
            messages.append({"role": "user", "content": self._answer(handle, queries)})
        if final is None:
            final = Interpretation("(the model gave no final answer)", "", None)
        final.meta.update({"turns": sum(m["role"] == "assistant" for m in messages), "seconds": time.time() - t0,
                           "model": self.client.config.model, "self_checks": check_notes})
        if self.transcript_dir is not None:
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", handle.label or f"fn-{int(t0 * 1000)}")
            path = self.transcript_dir / f"{name}.json"
            write_json(path, {"label": handle.label, "category": handle.category, "domain": handle.domain,
                              "config": self.client.config.public(), "queries_used": handle.used,
                              "messages": messages, "final": final.to_dict()})
            final.meta["transcript"] = str(path)
        return final
