"""Errors of the circuits room; each message says what was expected and what was found."""

from __future__ import annotations

import difflib

from mechscope.errors import ConfigError, MechscopeError


class CircuitError(MechscopeError, ValueError):
    """A circuit computation that cannot be done as asked."""


class TaskModelMismatchError(CircuitError):
    """A task built for another model (token ids beyond the vocabulary, prompts longer than the
    context, a different tokenizer)."""


class GroundTruthMismatchError(CircuitError):
    """A ground truth that names nodes or edges the model does not have."""


class UnknownMethodError(ConfigError):
    """A circuit method name that does not exist; the message names the valid ones."""

    def __init__(self, name: str, valid: list[str]):
        close = difflib.get_close_matches(name, valid, n=3, cutoff=0.4)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        super().__init__(f"unknown circuit method {name!r}{hint} Expected one of: {', '.join(valid)}")
