"""Errors of the explorer. The app maps them to JSON responses: :class:`NotFoundError` -> 404,
:class:`InputError` -> 400, any other :class:`~mechscope.errors.MechscopeError` -> 400 (a
request the configured workspace cannot answer), with ``{"error": {"type", "message"}}``."""

from __future__ import annotations

from mechscope.errors import MechscopeError


class ExplorerError(MechscopeError):
    """Something the explorer cannot do as asked (configuration or request)."""


class NotFoundError(ExplorerError, LookupError):
    """A dictionary, feature, circuit or view that is not part of the configured workspace."""


class InputError(ExplorerError, ValueError):
    """A request value that is well-formed but out of range (e.g. a prompt with more tokens than
    the model's context)."""


class IncompatibleError(ExplorerError, ValueError):
    """A configured dictionary that does not fit the model (hook or width mismatch)."""
