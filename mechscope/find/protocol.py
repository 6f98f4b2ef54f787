"""The query protocol: a black-box handle an interpreter may query, and what it returns.

An interpreter receives a :class:`BlackBoxHandle` and returns an :class:`Interpretation`.
The handle counts every input it evaluates against a budget, logs each batch, and raises
:class:`QueryBudgetError` (before evaluating anything) when a batch would exceed the budget.
Any object with ``interpret(handle) -> Interpretation`` is an interpreter.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Protocol

from mechscope.errors import ConfigError, MechscopeError

DEFAULT_BUDGETS = {"numeric": 1000, "string": 400, "neuron": 400}


class QueryBudgetError(MechscopeError, RuntimeError):
    """A query batch would take the handle past its query budget."""


@dataclass
class Interpretation:
    """What an interpreter concludes about a function.

    ``code`` is Python source defining ``f`` (same signature as the function);
    ``corrupted_interval`` is ``(lo, hi)`` for a numeric function whose output is replaced on
    an interval, else ``None``. ``meta`` holds interpreter-specific notes (model chosen, ...).
    """

    description: str
    code: str
    corrupted_interval: tuple[float, float] | None = None
    meta: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["corrupted_interval"] = list(self.corrupted_interval) if self.corrupted_interval else None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Interpretation":
        ci = d.get("corrupted_interval")
        return cls(d.get("description", ""), d.get("code", ""), tuple(ci) if ci else None, dict(d.get("meta", {})))


class Interpreter(Protocol):
    """Anything with ``interpret(handle)``; ``name`` is optional."""

    def interpret(self, handle: "BlackBoxHandle") -> Interpretation: ...


class BlackBoxHandle:
    """Query access to a function without its code.

    ``query(inputs)`` evaluates a batch and returns the outputs in order. Each input counts
    once against ``budget``. A call that raises inside the function yields ``None`` for that
    input. Numeric outputs get additive Gaussian noise of std ``noise`` (fresh per query,
    seeded, so runs are reproducible).

    Attributes an interpreter may read: ``label`` (a name for logs), ``category``, ``domain`` (``(lo, hi)`` for numeric
    functions, an input-distribution name otherwise), ``budget``, ``used``, ``remaining``,
    ``log`` (list of ``{"inputs", "outputs", "t"}``).
    """

    def __init__(self, fn: Callable, category: str = "numeric", domain: Any = None, budget: int | None = None,
                 noise: float = 0.0, seed: int = 0, label: str = ""):
        if category not in DEFAULT_BUDGETS:
            raise ConfigError(f"category must be one of {sorted(DEFAULT_BUDGETS)}, found {category!r}")
        if budget is None:
            budget = DEFAULT_BUDGETS[category]
        if int(budget) < 1:
            raise ConfigError(f"query budget must be >= 1, found {budget!r}")
        if category == "numeric" and domain is None:
            domain = (-10.0, 10.0)
        self._fn = fn
        self.label = label
        self.category = category
        self.domain = tuple(domain) if category == "numeric" else domain
        self.budget = int(budget)
        self.noise = float(noise)
        self.used = 0
        self.log: list[dict] = []
        self.errors = 0
        import numpy as np

        self._rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7919])

    @property
    def remaining(self) -> int:
        return self.budget - self.used

    def query(self, inputs: list) -> list:
        """Evaluate the function on every element of ``inputs``; returns a list of outputs."""
        if isinstance(inputs, (str, bytes)) or not hasattr(inputs, "__iter__"):
            raise ConfigError(f"query expects a list of inputs, found {type(inputs).__name__}")
        inputs = list(inputs)
        if self.used + len(inputs) > self.budget:
            raise QueryBudgetError(
                f"query of {len(inputs)} input(s) exceeds the budget: {self.used} of {self.budget} used, "
                f"{self.remaining} remaining")
        self.used += len(inputs)
        outputs = []
        for x in inputs:
            if self.category == "numeric":
                x = float(x)
            try:
                y = self._fn(x)
            except Exception:  # the function is a black box: an input it rejects has no output
                y = None
                self.errors += 1
            if self.category == "numeric" and y is not None:
                try:
                    y = float(y)
                except (TypeError, ValueError):
                    y = float("nan")
                if self.noise > 0 and math.isfinite(y):
                    y += float(self._rng.normal(0.0, self.noise))
            outputs.append(y)
        self.log.append({"inputs": inputs, "outputs": outputs, "t": time.time()})
        return outputs

    def queried_inputs(self) -> list:
        """Every input queried so far, in order."""
        return [x for entry in self.log for x in entry["inputs"]]
