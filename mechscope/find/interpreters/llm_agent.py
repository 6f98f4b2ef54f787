"""An LLM agent interpreter over any OpenAI-compatible chat endpoint (FIND's agent protocol).

The model sees the task, then talks to the black box in a parseable format:

- ``QUERY: [x1, x2, ...]`` (a JSON list; several lines allowed) → we answer ``RESULTS: ...``;
- the final answer: ``DESCRIPTION: ...``, ``CODE:`` with a fenced Python block defining ``f``,
  and for numeric functions ``CORRUPTED: [lo, hi]`` or ``CORRUPTED: none``.

Queries go through the handle, so they are counted and budgeted; a budget error is reported
back to the model. Every conversation is saved as JSON in ``transcript_dir`` when given.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from mechscope.files import write_json
from mechscope.find.llm import ChatClient, LLMConfig
from mechscope.find.protocol import BlackBoxHandle, Interpretation, QueryBudgetError

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

_QUERY = re.compile(r"^\s*QUERY:\s*(\[.*\])\s*$", re.M)
_DESC = re.compile(r"DESCRIPTION:\s*(.+?)(?=\n\s*(?:CODE:|CORRUPTED:)|\Z)", re.S)
_CODE = re.compile(r"CODE:\s*```(?:python)?\s*\n(.*?)```", re.S)
_CORR = re.compile(r"CORRUPTED:\s*(none|\[\s*[-0-9.eE+]+\s*,\s*[-0-9.eE+]+\s*\])", re.I)


def parse_queries(reply: str) -> list[list]:
    """Every ``QUERY: [...]`` line of a reply, parsed as JSON lists (malformed lines are skipped)."""
    out = []
    for m in _QUERY.finditer(reply):
        try:
            v = json.loads(m.group(1))
        except json.JSONDecodeError:
            continue
        if isinstance(v, list):
            out.append(v)
    return out


def parse_final(reply: str) -> Interpretation | None:
    """The final answer in a reply (description and code are required), else ``None``."""
    d, c = _DESC.search(reply), _CODE.search(reply)
    if not d or not c:
        return None
    interval = None
    m = _CORR.search(reply)
    if m and m.group(1).lower() != "none":
        a, b = json.loads(m.group(1))
        interval = (float(min(a, b)), float(max(a, b)))
    return Interpretation(d.group(1).strip(), c.group(1), interval)


class LLMAgentInterpreter:
    """Interprets a function by chatting with a model (see the module docstring)."""

    name = "llm"

    def __init__(self, config: LLMConfig | None = None, client: ChatClient | None = None, max_turns: int = 12,
                 max_batch: int = 100, transcript_dir: str | Path | None = None):
        self.client = client or ChatClient(config or LLMConfig.from_env())
        self.max_turns, self.max_batch = max_turns, max_batch
        self.transcript_dir = Path(transcript_dir) if transcript_dir else None

    def _prompt(self, handle: BlackBoxHandle) -> str:
        what, extra = WHAT[handle.category]
        lo, hi = handle.domain if handle.category == "numeric" else (None, None)
        return SYSTEM.format(what=what.format(lo=lo, hi=hi), max_batch=self.max_batch, budget=handle.remaining, extra=extra)

    def interpret(self, handle: BlackBoxHandle) -> Interpretation:
        messages = [{"role": "system", "content": self._prompt(handle)},
                    {"role": "user", "content": "Begin. Query f, then give your final answer."}]
        final, t0 = None, time.time()
        for turn in range(self.max_turns + 1):
            if turn == self.max_turns:
                messages.append({"role": "user", "content": "No more queries. Give your final answer now (DESCRIPTION, CODE)."})
            reply = self.client.chat(messages)
            messages.append({"role": "assistant", "content": reply})
            final = parse_final(reply)
            queries = parse_queries(reply)
            if final is not None and not queries or turn == self.max_turns:
                break
            if not queries:
                messages.append({"role": "user", "content": "I found no QUERY line and no complete final answer. "
                                 "Write QUERY: [...] lines, or DESCRIPTION: and CODE: with a ```python block."})
                continue
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
            messages.append({"role": "user", "content": "\n".join(parts)})
        if final is None:
            final = Interpretation("(the model gave no final answer)", "", None)
        final.meta.update({"turns": sum(m["role"] == "assistant" for m in messages), "seconds": time.time() - t0,
                           "model": self.client.config.model})
        if self.transcript_dir is not None:
            name = re.sub(r"[^A-Za-z0-9_.-]", "_", handle.label or f"fn-{int(t0 * 1000)}")
            path = self.transcript_dir / f"{name}.json"
            write_json(path, {"label": handle.label, "category": handle.category, "domain": handle.domain,
                              "config": self.client.config.public(), "queries_used": handle.used,
                              "messages": messages, "final": final.to_dict()})
            final.meta["transcript"] = str(path)
        return final
