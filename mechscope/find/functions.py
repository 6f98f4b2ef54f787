"""The :class:`Function` type: one black-box function of a FIND-style suite.

A function is *data*: ground-truth Python source defining ``f``, a description, the seed
that generated it, a difficulty tag, and for numeric functions the input domain and the
corrupted interval (if any). :meth:`Function.compile` turns the source into a callable.

Categories and the signature ``f`` must have:

- ``numeric``: ``f(x: float) -> float`` on ``domain = (lo, hi)``;
- ``string``:  ``f(s: str) -> str | int``; ``domain`` names an input distribution
  (see :mod:`mechscope.find.inputs`);
- ``neuron``:  ``f(word: str) -> float`` (an activation, about 0..1).

Suite code is trusted: compiling it runs it, exactly like importing a module.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from mechscope.errors import ConfigError, FormatError

CATEGORIES = ("numeric", "string", "neuron")
DIFFICULTIES = ("easy", "medium", "hard", "unknown")


@dataclass
class Function:
    """A black-box function with its ground truth.

    ``noise`` is the standard deviation of zero-mean Gaussian noise the black box adds to
    every numeric output (``code`` is the clean function; scorers compare with it).
    """

    id: str
    category: str
    code: str
    description: str = ""
    seed: int = 0
    difficulty: str = "unknown"
    family: str = ""
    domain: Any = None
    corrupted_interval: tuple[float, float] | None = None
    noise: float = 0.0
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.category not in CATEGORIES:
            raise ConfigError(f"function {self.id!r}: category must be one of {CATEGORIES}, found {self.category!r}")
        if self.difficulty not in DIFFICULTIES:
            raise ConfigError(f"function {self.id!r}: difficulty must be one of {DIFFICULTIES}, found {self.difficulty!r}")
        if self.category == "numeric":
            if self.domain is None:
                self.domain = (-10.0, 10.0)
            lo, hi = _pair(self.domain, f"function {self.id!r}: domain")
            if not lo < hi:
                raise ConfigError(f"function {self.id!r}: domain must have lo < hi, found {self.domain!r}")
            self.domain = (lo, hi)
        elif self.domain is None:
            self.domain = "mixed" if self.category == "string" else "vocab"
        if self.category == "string":
            from mechscope.find.inputs import STRING_DISTRIBUTIONS

            if self.domain not in STRING_DISTRIBUTIONS:
                raise ConfigError(f"function {self.id!r}: a string function's domain names its input distribution, one of "
                                  f"{STRING_DISTRIBUTIONS}; found {self.domain!r}")
        if self.corrupted_interval is not None:
            self.corrupted_interval = _pair(self.corrupted_interval, f"function {self.id!r}: corrupted_interval")
        if not (isinstance(self.noise, (int, float)) and self.noise >= 0 and math.isfinite(self.noise)):
            raise ConfigError(f"function {self.id!r}: noise must be a finite number >= 0, found {self.noise!r}")

    def compile(self) -> Callable:
        """Execute :attr:`code` and return its ``f``."""
        return compile_code(self.code, what=f"function {self.id!r}")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["domain"] = list(self.domain) if isinstance(self.domain, tuple) else self.domain
        d["corrupted_interval"] = list(self.corrupted_interval) if self.corrupted_interval else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Function":
        if not isinstance(d, dict):
            raise FormatError(f"expected a JSON object for a function, found {type(d).__name__}")
        missing = [k for k in ("id", "category", "code") if k not in d]
        if missing:
            raise FormatError(f"function record is missing required key(s) {missing}; found keys {sorted(d)}")
        known = set(cls.__dataclass_fields__)
        extra = {k: v for k, v in d.items() if k not in known}
        kw = {k: v for k, v in d.items() if k in known}
        if extra:
            kw["meta"] = {**kw.get("meta", {}), **extra}
        return cls(**kw)


def _pair(v: Any, what: str) -> tuple[float, float]:
    try:
        a, b = v
        a, b = float(a), float(b)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a pair of numbers [lo, hi], found {v!r}") from None
    if not (math.isfinite(a) and math.isfinite(b)):
        raise ConfigError(f"{what} must be finite, found {v!r}")
    return (a, b)


def compile_code(code: str, what: str = "code", name: str = "f") -> Callable:
    """Run ``code`` in a fresh namespace (with ``math`` and ``np`` available) and return ``name``.

    Raises :class:`FormatError` when the code does not compile or defines no callable ``name``.
    """
    import numpy as np

    ns: dict[str, Any] = {"math": math, "np": np, "__name__": "mechscope_find_code"}
    try:
        exec(compile(code, f"<{what}>", "exec"), ns)
    except Exception as e:  # the code is data: report which function it was
        raise FormatError(f"{what}: code failed to run ({type(e).__name__}: {e})") from e
    fn = ns.get(name)
    if not callable(fn):
        raise FormatError(f"{what}: expected the code to define a callable {name!r}, found {type(fn).__name__}")
    return fn
