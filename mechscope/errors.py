"""Specific exceptions. Each message says what was expected and what was found."""

from __future__ import annotations

import difflib
from typing import Iterable


class MechscopeError(Exception):
    """Base class of every error mechscope raises on purpose."""


class UnknownHookError(MechscopeError, KeyError):
    """A hook name that the model does not have; the message names the closest valid ones."""

    def __init__(self, name: str, valid: Iterable[str]):
        valid = list(valid)
        close = difflib.get_close_matches(name, valid, n=5, cutoff=0.4)
        msg = f"unknown hook point {name!r}"
        if close:
            msg += f"; did you mean one of: {', '.join(close)}"
        msg += f" ({len(valid)} hook points exist; list them with mechscope.models.list_hooks(model))"
        self.name, self.close = name, close
        super().__init__(msg)

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.args[0]


class ModelSpecError(MechscopeError, ValueError):
    """A model spec that names no loadable model."""


class CorpusError(MechscopeError, ValueError):
    """An empty or unreadable corpus / data source."""


class StoreError(MechscopeError):
    """An activation store or saved artifact that is corrupt, truncated or inconsistent."""


class NonFiniteError(MechscopeError, ValueError):
    """NaN or Inf values where finite numbers were expected (names hook and position)."""


class DiskQuotaError(MechscopeError, OSError):
    """A write would exceed the configured size cap (or the disk is full)."""


class PathError(MechscopeError, OSError):
    """A path that cannot be used as asked: a file where a directory is expected (or the reverse),
    or a directory that cannot be created or written."""


class FormatError(MechscopeError, ValueError):
    """A file or directory whose format does not match what the reader expects."""


class ConfigError(MechscopeError, ValueError):
    """A configuration value that is out of range, unknown, or inconsistent with another."""
