"""Freezing a network's decisions at an input ``x0`` so that it becomes an exact affine map.

How it works
------------
Every torch call made while the network runs is intercepted with a
:class:`torch.overrides.TorchFunctionMode`. Each tensor carries a *taint*:

* ``CONST``   — does not depend on the input (parameters, buffers, frozen decisions);
* ``LINEAR``  — an affine function of the input (in the ``linear`` phase: its linear part);
* ``PATTERN`` — a frozen softmax (attention weights); legal only as a multiplier of a
  ``LINEAR`` tensor (``pattern @ v``);
* ``POISON``  — a non-linear function of the input that has no frozen form. It carries the
  reason (the operation and the module). If it reaches the output, an
  :class:`~mechscope.linear.errors.UnsupportedLayerError` names it; if it is discarded (the
  attention scores ``q·k`` once the pattern is frozen, the ``pow``/``sqrt`` inside a norm whose
  scale is frozen) it is harmless.

Frozen multipliers (:mod:`mechscope.linear.freeze.ops_multipliers`): in an elementwise product of two
input-dependent tensors (or a quotient), a factor that is a gate (``sigmoid`` / ``hardsigmoid``
output: squeeze-excitation, CBAM, LSTM), another activation's output, or a *known* non-linear
function (``POISON`` from ``sqrt``, ``pow``, ``rsqrt``, a product...: a hand-written norm's
``1/sigma``) is a decision: its value on ``x0`` is recorded and replayed, so ``x * gate(x)``
becomes ``x * gate(x0)`` — exact at ``x0``, like a frozen attention pattern. ``Taint.rank``
decides which factor; a tie is not frozen, and an unknown op's ``POISON`` never is.

Three passes share one *tape*:

* ``record`` runs on ``x0``: every non-linear call stores its decision in call order — ReLU /
  LeakyReLU / ReLU6 / hardtanh / hardsigmoid masks (their local linear piece), the secant gain
  ``(f(x0) - f(0)) / x0`` of GELU, SiLU, hardswish, sigmoid, tanh and friends (the derivative at
  ``x0 == 0``), max-pool / max / top-k indices, the ``1/sigma`` of
  batch, instance, group, layer and RMS norms, attention patterns, frozen multipliers,
  comparisons and any other integer-valued result (a *decision*).
* ``affine`` replays the same calls on another input ``v`` with the decisions fixed:
  ``F_frozen(v) = A v + c``; ``F_frozen(x0) = f(x0)``.
* ``linear`` replays them with every additive constant dropped (biases, norm shifts, ``+ 1``,
  padding values): ``A v``. ``c = F_frozen(0)`` comes from the ``affine`` phase.

Ops are classified by name (``torch.add``, ``Tensor.__add__`` and ``Tensor.add_`` are one op);
unknown Python-level torch functions (``F.multi_head_attention_forward``…) are entered so that
their inner calls are classified; unknown built-in ops make ``POISON``. Nothing unknown is ever
treated as linear.

Norm centring: by default only the scale ``1/sigma(x0)`` of a norm is frozen; subtracting the
mean is linear in the input and kept (``norm_center="linear"``). ``norm_center="frozen"``
freezes the mean too (it then moves into the bias ``c``).

Where things are
----------------
* :mod:`~mechscope.linear.freeze.taints` — :class:`Taint` and how taints combine;
* :mod:`~mechscope.linear.freeze.calls` — the :class:`Tape`, one intercepted call (``_Call``)
  and its argument helpers, the handler registry ``_HANDLERS`` / ``_register``;
* :mod:`~mechscope.linear.freeze.mode` — :class:`FreezeMode` (dispatch of every torch call),
  op-name resolution, the fallbacks for ops without a handler (enter / ``POISON``);
* handlers, by kind of op: :mod:`~mechscope.linear.freeze.ops_linear` (structural, linear,
  decisions, sums and selections, padding), :mod:`~mechscope.linear.freeze.ops_products`
  (products, quotients, ``addmm`` & co.), :mod:`~mechscope.linear.freeze.ops_activations`
  (gains, piecewise, ``glu``, max / min / top-k / max-pool, dropout, softmax),
  :mod:`~mechscope.linear.freeze.ops_norms`, :mod:`~mechscope.linear.freeze.ops_attention`
  (``scaled_dot_product_attention``), :mod:`~mechscope.linear.freeze.ops_multipliers` (frozen multipliers);
* :mod:`~mechscope.linear.freeze.network` — :class:`FrozenNetwork`, which runs the passes.

Handlers are registered at import time, and a later registration of an op name replaces an
earlier one: the handler submodules are imported below in a fixed order, and
:mod:`mechscope.linear.freeze.ops_multipliers` (which re-registers ``mul`` / ``div``) last.
"""

from __future__ import annotations

# imported in this order so that handlers are registered in the order the rules were written
from mechscope.linear.freeze import taints, calls, mode  # noqa: F401  (no handlers)
from mechscope.linear.freeze import ops_linear, ops_products, ops_activations  # noqa: F401
from mechscope.linear.freeze import ops_norms, ops_attention, network  # noqa: F401
from mechscope.linear.freeze.calls import Tape
from mechscope.linear.freeze.mode import FreezeMode
from mechscope.linear.freeze.network import FrozenNetwork
from mechscope.linear.freeze.taints import ACTIVATION, CONST, GATE, KNOWN_NONLINEAR, LINEAR, Taint

__all__ = ["FrozenNetwork", "FreezeMode", "Tape", "Taint", "CONST", "LINEAR", "ACTIVATION", "GATE",
           "KNOWN_NONLINEAR"]


# products and quotients with a frozen multiplier, known non-linear functions (registered on import)
from mechscope.linear.freeze import ops_multipliers  # noqa: E402,F401
