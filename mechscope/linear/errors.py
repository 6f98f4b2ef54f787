"""Errors of the linear interpreter. Each says what was expected and what was found."""

from __future__ import annotations

from mechscope.errors import MechscopeError


class LinearizationError(MechscopeError, ValueError):
    """The network could not be turned into an exact affine map at this input."""


class UnsupportedLayerError(LinearizationError):
    """The output depends on the input through an operation that has no frozen linear form
    (for example ``x * x``, ``exp``, division by an input-dependent tensor, a softmax whose
    output is not used as attention weights). The message names the operation and the module."""


class ReplayError(LinearizationError):
    """Replaying the frozen network did not follow the same sequence of operations as the
    pass on ``x0`` (input-dependent control flow that was not frozen, or a stateful model)."""
