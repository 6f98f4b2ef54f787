"""Frozen multipliers: ``x * gate(x)`` and ``x / sigma(x)`` become linear in ``x``.

A product of two input-dependent tensors is not linear in the input. LinearScope freezes every
decision of the network at ``x0``; when one factor of an elementwise product is a *multiplier*,
that factor is such a decision: it is frozen to its value on ``x0`` (as an attention pattern or a
norm's ``1/sigma`` is) and the product is linear in the other factor. The replay at ``x0``
reproduces ``f(x0)`` exactly; ``A`` does not contain the derivative through the frozen factor
(true of every frozen decision). This covers squeeze-excitation ``x * sigmoid(fc(pool(x)))``,
CBAM, LSTM/GRU gates, hand-written swish ``x * sigmoid(x)`` / hard-swish ``x * relu6(x + 3) / 6``
(frozen exactly as ``F.silu`` / ``F.hardswish`` are: ``x`` times the gate at ``x0``), and
hand-written norms ``(x - mu) / sqrt(var + eps)``, ``x * rsqrt(mean(x**2) + eps)``, local response
norm and ConvNeXt-V2's global response norm.

Which factor is frozen is decided by :attr:`Taint.rank <mechscope.linear.freeze.Taint>`:

* 3 — a known non-linear function of the input (``POISON`` from :data:`KNOWN_NONLINEAR_OPS`, from a
  product or quotient of input-dependent tensors, and sums, views and reductions of those);
* 2 — a gate: the output of ``sigmoid`` / ``hardsigmoid`` (range ``[0, 1]``, made to multiply);
* 1 — the output of any other elementwise activation (ReLU6, SiLU, tanh...);
* 0 — anything else: ``LINEAR`` data, and the ``POISON`` of an unknown op.

Ranks survive views, reductions, adding or multiplying by a constant (``1 - gate``,
``relu6(x + 3) / 6``); a sum of two input-dependent terms is plain ``LINEAR`` again. In
``a * b`` the factor of strictly higher rank is frozen when the other is ``LINEAR``; in ``n / d``
only the denominator can be. On a tie (``x * x``, ``relu(a) * relu(b)``) nothing is frozen: the
product is a known non-linear function (rank 3), which a later product may freeze in turn and
which names itself if it reaches the output. An unknown op's result (rank 0) and a softmax
output (``PATTERN``, frozen where it is made) are never frozen here: nothing unknown is treated
as linear, and nothing unknown silently becomes a constant.
"""

from __future__ import annotations

from mechscope.linear.freeze.calls import _arg, _call, _Call, _register, _tensors, _with_arg
from mechscope.linear.freeze.ops_products import _h_div, _h_product
from mechscope.linear.freeze.taints import _L, _P, _X, KNOWN_NONLINEAR, _worst_poison

# elementwise / reduction functions with no frozen linear form of their own, whose value at x0
# may be frozen where it multiplies or divides an input-dependent tensor
KNOWN_NONLINEAR_OPS = [
    "pow", "rpow", "float_power", "sqrt", "rsqrt", "reciprocal", "square", "exp", "exp2", "expm1", "log",
    "log2", "log10", "log1p", "var", "std", "var_mean", "std_mean", "norm", "linalg_vector_norm",
    "frobenius_norm", "logsumexp", "erf", "erfc", "sin", "cos", "atan", "prod",
]

_SLOTS = ((0, "input"), (1, "other"))  # (position, keyword) of the two factors of mul / div


def _h_known_nonlinear(m, c):
    """Result of a known non-linear function: ``POISON`` of rank 3 (an unknown op's poison or a
    softmax output among its arguments is passed on as a rank-0 poison)."""
    taints = [m.taint(t) for t in _tensors(c.args, c.kwargs)]
    worst = _worst_poison(taints)
    if worst is not None and worst.rank == 0:
        return _call(c), worst
    if any(t.kind == _P for t in taints):
        return _call(c), m.poison(f"{c.name} of a frozen softmax output")
    return _call(c), m.poison(f"{c.name} (a non-linear function of the input, frozen only where it multiplies "
                              "or divides an input-dependent tensor)", KNOWN_NONLINEAR)


def _frozen_slot(m, c: _Call, divide: bool) -> int | None:
    """Which factor of ``a * b`` (``a / b``: only ``b``) to freeze on the pass on x0, or None."""
    ta, tb = (m.taint(_arg(c, i, kw)) for i, kw in _SLOTS)
    candidates = [(1, tb, ta)] if divide else [(0, ta, tb), (1, tb, ta)]
    for slot, frozen, kept in candidates:
        if kept.kind == _L and frozen.kind in (_L, _X) and frozen.rank > kept.rank:
            return slot
    return None


def _frozen_value(m, c: _Call, divide: bool):
    """(slot, value on x0) of the factor frozen at this call: decided and saved on the pass on
    x0, loaded on the replays; None when nothing is frozen here."""
    if m.phase == "record":
        slot = _frozen_slot(m, c, divide)
        if slot is None:
            return None
        value = _arg(c, *_SLOTS[slot]).detach().clone()
        m.save(c, "multiplier", (slot, value))
        return slot, value
    rec = m.tape.records.get(c.idx)
    return rec[1] if rec is not None and rec[0] == "multiplier" else None


def _with_frozen_factor(base):
    """Handler for ``mul`` / ``div``: ``base`` with the multiplier, if any, replaced by its value
    on x0 (a constant for ``base``, so the linear phase drops biases as usual)."""
    divide = base is _h_div

    def handler(m, c):
        frozen = _frozen_value(m, c, divide)
        if frozen is None:
            return base(m, c)
        slot, value = frozen
        args, kwargs = _with_arg(c, *_SLOTS[slot], value.clone())
        return base(m, _Call(c.idx, c.name, c.func, args, kwargs, c.inplace))

    return handler


_register(KNOWN_NONLINEAR_OPS, _h_known_nonlinear)
_register(["mul", "multiply"], _with_frozen_factor(_h_product))
_register(["div", "divide", "true_divide"], _with_frozen_factor(_h_div))
