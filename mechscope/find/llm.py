"""A minimal client for OpenAI-compatible chat endpoints, and an LLM judge for descriptions.

Configuration comes from :class:`LLMConfig`: explicitly, from a JSON file, or from the
environment (``MECHSCOPE_LLM_BASE_URL``, ``MECHSCOPE_LLM_MODEL``, ``MECHSCOPE_LLM_API_KEY``;
the key falls back to ``OPENAI_API_KEY``). Requests are plain ``POST {base_url}/chat/completions``
with the standard library, so any compatible server (vLLM, llama.cpp, Ollama, a hosted API)
works. Nothing here runs unless an LLM is configured.
"""

from __future__ import annotations

import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass

from mechscope.errors import ConfigError, FormatError, MechscopeError


class LLMError(MechscopeError, RuntimeError):
    """The chat endpoint could not be reached or answered with an error."""


@dataclass
class LLMConfig:
    """Where and how to call a chat model."""

    base_url: str
    model: str
    api_key: str | None = None
    temperature: float = 0.0
    max_tokens: int = 1024
    timeout: float = 120.0

    @classmethod
    def from_env(cls, **overrides) -> "LLMConfig":
        """Read ``MECHSCOPE_LLM_*`` variables; ``overrides`` (non-``None``) win. Raises :class:`ConfigError`
        naming the missing variable when no base URL or model is set."""
        vals = {"base_url": os.environ.get("MECHSCOPE_LLM_BASE_URL"), "model": os.environ.get("MECHSCOPE_LLM_MODEL"),
                "api_key": os.environ.get("MECHSCOPE_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY")}
        vals.update({k: v for k, v in overrides.items() if v is not None})
        for key, env in (("base_url", "MECHSCOPE_LLM_BASE_URL"), ("model", "MECHSCOPE_LLM_MODEL")):
            if not vals.get(key):
                raise ConfigError(f"LLM {key} is not configured: set {env} or pass {key}= (found nothing)")
        return cls(**vals)

    @classmethod
    def from_file(cls, path: str) -> "LLMConfig":
        """Read a JSON object with the fields of this class; env variables fill what is missing."""
        from mechscope.files import read_json

        d = read_json(path)
        if not isinstance(d, dict):
            raise FormatError(f"{path}: expected a JSON object with base_url and model, found {type(d).__name__}")
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConfigError(f"{path}: unknown LLM config keys {sorted(unknown)}; expected {sorted(cls.__dataclass_fields__)}")
        return cls.from_env(**d)

    @staticmethod
    def configured() -> bool:
        """Whether the environment names an endpoint and a model."""
        return bool(os.environ.get("MECHSCOPE_LLM_BASE_URL") and os.environ.get("MECHSCOPE_LLM_MODEL"))

    def public(self) -> dict:
        """The config without the key (for transcripts and results)."""
        d = asdict(self)
        d["api_key"] = "***" if self.api_key else None
        return d


class ChatClient:
    """``chat(messages) -> str`` against ``{base_url}/chat/completions``."""

    def __init__(self, config: LLMConfig):
        self.config = config
        self.calls = 0

    def chat(self, messages: list[dict]) -> str:
        c = self.config
        url = c.base_url.rstrip("/") + "/chat/completions"
        body = json.dumps({"model": c.model, "messages": messages, "temperature": c.temperature,
                           "max_tokens": c.max_tokens}).encode()
        headers = {"Content-Type": "application/json"}
        if c.api_key:
            headers["Authorization"] = f"Bearer {c.api_key}"
        req = urllib.request.Request(url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(req, timeout=c.timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            detail = e.read()[:300].decode(errors="replace")
            raise LLMError(f"POST {url}: HTTP {e.code} ({detail})") from e
        except (urllib.error.URLError, OSError) as e:
            raise LLMError(f"POST {url}: could not connect ({getattr(e, 'reason', e)})") from e
        self.calls += 1
        try:
            return json.loads(raw)["choices"][0]["message"]["content"] or ""
        except (json.JSONDecodeError, KeyError, IndexError, TypeError) as e:
            raise FormatError(f"POST {url}: expected an OpenAI chat completion with choices[0].message.content, "
                              f"found {raw[:200]!r}") from e


_THINK = re.compile(r"<think>.*?</think>", re.S | re.I)


def visible(reply: str) -> str:
    """A reply without its reasoning blocks (``<think>...</think>``, as reasoning models write them)."""
    return _THINK.sub("", reply)


class LLMJudge:
    """Scores a candidate description against the reference with a chat model (0..1)."""

    PROMPT = ("You grade explanations of a black-box function. Reference description (ground truth):\n{ref}\n\n"
              "Candidate description:\n{cand}\n\nHow well does the candidate describe the same function "
              "(same behaviour, same key parameters)? Answer with one line 'SCORE: x' where x is between 0 and 1.")

    def __init__(self, config: LLMConfig | None = None, client: ChatClient | None = None):
        self.client = client or ChatClient(config or LLMConfig.from_env())

    def score(self, reference: str, candidate: str) -> float:
        reply = self.client.chat([{"role": "user", "content": self.PROMPT.format(ref=reference, cand=candidate)}])
        return parse_score(reply)


_SCORE = re.compile(r"SCORE\**[ \t]*[:=][ \t]*\**[ \t]*([0-9]*\.?[0-9]+)(?:[ \t]*/[ \t]*(10|100)\b)?", re.I)


def parse_score(reply: str) -> float:
    """The judge's score in [0, 1] from its last ``SCORE: x`` line (markdown, ``x/10`` or ``x/100``
    and reasoning blocks allowed); a :class:`FormatError` when there is none."""
    found = _SCORE.findall(visible(reply))
    if not found:
        raise FormatError(f"LLM judge: expected a line 'SCORE: x', found {reply[:200]!r}")
    value, scale = found[-1]
    return min(1.0, max(0.0, float(value) / (float(scale) if scale else 1.0)))
