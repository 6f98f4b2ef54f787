"""Reading an LLM agent's replies: query lines and the final answer, as real chat models write them.

Models wrap the protocol's keywords in markdown (``**QUERY:**``, ``- QUERY:``, a fenced block of
query lines), spread a list over several lines, write Python literals (``'ab'``, ``True``), label
the code fence ``py`` or not at all, and reasoning models think aloud inside ``<think>...</think>``
first. Only what the model *says* counts: the reasoning block is dropped before parsing, so a
query it merely considered is not run.
"""

from __future__ import annotations

import ast
import json
import re

from mechscope.find.llm import visible
from mechscope.find.protocol import Interpretation

_DECOR = r"[ \t>*_`#-]*"  # markdown around a keyword: bullets, bold, quotes, headings, inline code
_KEY = r"{decor}\**{key}\**[ \t]*:[ \t]*\**[ \t]*"
_QUERY = re.compile(r"^" + _KEY.format(decor=_DECOR, key="QUERY"), re.M | re.I)
_DESC = re.compile(r"^" + _KEY.format(decor=_DECOR, key="DESCRIPTION") + r"(.+?)(?=^" + _DECOR + r"\**(?:CODE|CORRUPTED)\**[ \t]*:|^```|\Z)",
                   re.S | re.M | re.I)
_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[ \t]*\n(.*?)```", re.S)
_CODE_LABEL = re.compile(r"^" + _KEY.format(decor=_DECOR, key="CODE"), re.M | re.I)
_CORR = re.compile(_KEY.format(decor=_DECOR, key="CORRUPTED") + r"(none|no|null|n/?a|[\[(]\s*[-0-9.eE+]+\s*,\s*[-0-9.eE+]+\s*[\])])",
                   re.I)


def _balanced_list(text: str, start: int) -> str | None:
    """The bracket-balanced ``[...]`` starting at the first ``[`` at or after ``start`` (quotes respected)."""
    i = text.find("[", start)
    if i < 0 or text[start:i].strip(" \t\n`*"):
        return None
    depth, quote, escape = 0, None, False
    for j in range(i, len(text)):
        ch = text[j]
        if quote:
            escape = not escape and ch == "\\"
            if ch == quote and not escape:
                quote = None
            continue
        if ch in "\"'":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth == 0:
                return text[i:j + 1]
    return None


def _literal_list(src: str) -> list | None:
    """A JSON list, or a Python list literal (single quotes, ``True``, ``None``); ``None`` if neither."""
    try:
        v = json.loads(src)
    except json.JSONDecodeError:
        try:
            v = ast.literal_eval(src)
        except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
            return None
    return v if isinstance(v, list) else None


def parse_queries(reply: str) -> list[list]:
    """Every ``QUERY: [...]`` of a reply (lists may span lines), parsed as JSON or Python lists;
    malformed ones are skipped."""
    text = visible(reply)
    out = []
    for m in _QUERY.finditer(text):
        src = _balanced_list(text, m.end())
        v = _literal_list(src) if src else None
        if v is not None:
            out.append(v)
    return out


def _code(text: str) -> str | None:
    """The code of the final answer: the first fenced block after a ``CODE:`` label, else the last
    fenced block that defines ``f``."""
    label = _CODE_LABEL.search(text)
    blocks = list(_FENCE.finditer(text))
    if label is not None:
        after = [b for b in blocks if b.start() >= label.end()]
        if after and "def " in after[0].group(2):
            return after[0].group(2)
    defining = [b.group(2) for b in blocks if re.search(r"^\s*def\s+f\s*\(", b.group(2), re.M)]
    return defining[-1] if defining else None


def parse_final(reply: str) -> Interpretation | None:
    """The final answer in a reply (description and code are required), else ``None``."""
    text = visible(reply)
    d, code = _DESC.search(text), _code(text)
    if not d or code is None:
        return None
    description = d.group(1).strip().strip("*").strip()
    interval = None
    m = _CORR.search(text)
    if m and m.group(1)[0] in "[(":
        a, b = (float(v) for v in m.group(1)[1:-1].split(","))
        interval = (min(a, b), max(a, b))
    return Interpretation(description, code, interval)
