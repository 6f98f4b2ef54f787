"""Taints: what a tensor is as a function of the input.

:class:`Taint` (kind ``_C`` const, ``_L`` linear, ``_P`` pattern or ``_X`` poison, a reason, a
rank) and its values ``CONST`` / ``LINEAR`` / ``ACTIVATION`` / ``GATE``, the handler results
``_DECIDE`` / ``_MARKED``, and the rules that combine taints: ``_poison``, ``_pattern``,
``_worst_poison`` and ``_join_add`` (the taint of a sum, concatenation or selection). No torch
calls here; every other submodule of :mod:`mechscope.linear.freeze` builds on these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable


_C, _L, _P, _X = 0, 1, 2, 3  # const, linear, pattern, poison


@dataclass(frozen=True)
class Taint:
    """What a tensor is as a function of the input. ``rank`` orders tensors as candidates for a
    frozen multiplier (see :mod:`mechscope.linear.freeze.ops_multipliers`): 0 never (plain ``LINEAR`` data, an
    unknown op's ``POISON``), 1 an activation's output, 2 a gate (sigmoid / hardsigmoid output),
    3 a known non-linear function (``POISON`` from ``sqrt``, ``pow``, a product of two
    input-dependent tensors...)."""

    kind: int
    reason: str | None = None
    rank: int = 0

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return ["CONST", "LINEAR", "PATTERN", "POISON"][self.kind] + (f"({self.reason})" if self.reason else "")


CONST = Taint(_C)
LINEAR = Taint(_L)
ACTIVATION = Taint(_L, rank=1)  # output of an elementwise activation (frozen gain)
GATE = Taint(_L, rank=2)  # output of a gating function (sigmoid, hardsigmoid)
KNOWN_NONLINEAR = 3  # rank of a POISON that is a known non-linear function of the input
_DECIDE = Taint(-1)  # handler result: "record the output as a frozen decision"
_MARKED = Taint(-2)  # handler result: "outputs already carry their taints" (entered functions)


def _poison(reason: str, rank: int = 0) -> Taint:
    return Taint(_X, reason, rank)


def _pattern(reason: str) -> Taint:
    return Taint(_P, reason)


def _worst_poison(ts: Iterable[Taint]) -> Taint | None:
    """The poison among ``ts`` that is passed on: an unknown op's (rank 0) before a known one's."""
    return min((t for t in ts if t.kind == _X), key=lambda t: t.rank, default=None)


def _join_add(ts: Iterable[Taint], what: str) -> Taint:
    """Taint of a sum / concatenation / selection of data arguments. One input-dependent term
    keeps its own taint (``1 - gate`` is still a gate); among poisons, an unknown op's wins."""
    ts = [t for t in ts if t.kind != _C]
    if not ts:
        return CONST
    if len(ts) == 1:
        return ts[0]
    poison = _worst_poison(ts)
    if poison is not None:
        return poison
    kinds = {t.kind for t in ts}
    if kinds == {_L}:
        return LINEAR
    if kinds == {_P}:
        return ts[0]
    return _poison(f"{what}: a frozen softmax output (attention weights) is combined additively with "
                   "an input-dependent tensor; a softmax is frozen only when it weights values")
