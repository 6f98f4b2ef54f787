"""The frozen network: runs a function under :class:`~mechscope.linear.freeze.mode.FreezeMode`.

:class:`FrozenNetwork` records the tape on ``x0`` (input ``[*in_shape]``, output
``[*out_shape]``), then replays it: ``affine(v) = A v + c`` and ``linear(v) = A v`` for one input
``v`` of shape ``in_shape``. It installs the module hooks (names for messages, ``freeze`` points
whose outputs become constants) and ``_ActPatch`` replacements of callable attributes
(TransformerLens ``act_fn``), and checks that the output is linear in the input.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
import torch.nn as nn

from mechscope.errors import ConfigError
from mechscope.linear.errors import ReplayError, UnsupportedLayerError
from mechscope.linear.freeze.calls import Tape, _clone
from mechscope.linear.freeze.mode import FreezeMode
from mechscope.linear.freeze.ops_activations import _secant_gain
from mechscope.linear.freeze.taints import _C, _L, _P, _X, LINEAR, _poison


class _ActPatch:
    """Replaces a callable attribute (a TransformerLens MLP's ``act_fn``) during the passes."""

    def __init__(self, net: "FrozenNetwork", key: str, fn: Callable, kind: str):
        self.net, self.key, self.fn, self.kind = net, key, fn, kind

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        m = self.net._mode
        k = m.act_counts.get(self.key, 0)
        m.act_counts[self.key] = k + 1
        key = (self.key, k)
        tx = m.taint(x)
        with m.quiet():
            if tx.kind == _C:
                return self.fn(x)
            if tx.kind != _L:
                y = self.fn(x) if m.phase == "record" else torch.zeros_like(x)
                m.set_taint(y, _poison(f"activation '{self.key}' of a non-linear input"))
                return y
            if m.phase == "record":
                y = self.fn(x.detach())
                if self.kind == "gate":
                    self.net.tape.acts[key] = ("gate", y.detach().clone())
                    return y.detach().clone()  # constant: the gate is frozen
                if self.kind == "softmax_gain":  # SoLU: x * softmax(x)
                    g, b = torch.softmax(x.detach(), dim=-1), None
                else:
                    g, b = _secant_gain(self.fn, x)
                self.net.tape.acts[key] = ("gain", g, b)
                m.set_taint(y, LINEAR)
                return y
            rec = self.net.tape.acts.get(key)
            if rec is None:
                raise ReplayError(f"activation {self.key!r} call {k} was not recorded on x0")
            if rec[0] == "gate":
                return rec[1].clone()
            _, g, b = rec
            y = x * g
            if b is not None and m.phase == "affine":
                y = y + b
            m.set_taint(y, LINEAR)
            return y


class FrozenNetwork:
    """``fn`` with every decision frozen at ``x0``.

    Args:
        fn: the function to linearize, ``x [*in_shape] -> y [*out_shape]`` (a model, or a model
            followed by a readout). Must return one floating tensor.
        x0: the input at which decisions are frozen, any shape (the model's own input shape).
        root: the ``nn.Module`` whose submodule names are used in messages and by ``freeze``;
            defaults to ``fn`` when it is a module.
        freeze: names of submodules whose *outputs* are frozen to their value on ``x0`` (become
            constants), e.g. TransformerLens ``blocks.0.ln1.hook_scale``; a name may end in
            ``*`` to match a suffix pattern ``*.hook_scale``.
        act_patches: ``(module, attribute, kind)``: replace ``module.attribute`` (a callable) by a
            frozen version; ``kind`` is ``gain`` (elementwise, secant gain), ``gate`` (frozen
            constant) or ``softmax_gain`` (SoLU).
        norm_center: ``"linear"`` (default: only the norm scale is frozen) or ``"frozen"``.
    """

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor], x0: torch.Tensor, *,
                 root: nn.Module | None = None, freeze: Sequence[str] = (),
                 act_patches: Sequence[tuple[nn.Module, str, str]] = (), norm_center: str = "linear"):
        if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
            raise ConfigError(f"x0 must be a floating-point tensor; found {type(x0).__name__}"
                              + (f" of dtype {x0.dtype}" if isinstance(x0, torch.Tensor) else ""))
        if norm_center not in ("linear", "frozen"):
            raise ConfigError(f"norm_center must be 'linear' or 'frozen'; found {norm_center!r}")
        self.fn = fn
        self.root = root if root is not None else (fn if isinstance(fn, nn.Module) else None)
        self.norm_center = norm_center
        self.modules_by_name: dict[str, nn.Module] = dict(self.root.named_modules()) if self.root is not None else {}
        self.tape = Tape()
        self._mode: FreezeMode | None = None
        self._state_ids: dict[int, str] = {}
        if self.root is not None:
            for n, t in (*self.root.named_parameters(), *self.root.named_buffers()):
                self._state_ids[id(t)] = n
        self.freeze = self._resolve_freeze(freeze)
        self.act_patches = list(act_patches)
        self.in_shape = tuple(x0.shape)
        self.dtype = x0.dtype
        self.device = x0.device
        self.x0 = x0.detach().clone()
        with torch.no_grad():
            if self.root is not None and not any(m.training for m in self.root.modules()):
                # one plain pass first: a model that builds a cache on its first call (ALiBi
                # tables, rotary sin/cos) then makes the same calls when recording and replaying
                fn(self.x0)
            self.y0 = self._run(self.x0, "record").detach()
        self.out_shape = tuple(self.y0.shape)

    def _resolve_freeze(self, names: Sequence[str]) -> list[str]:
        out = []
        for n in names:
            if n.startswith("*"):
                hits = [k for k in self.modules_by_name if k.endswith(n[1:])]
                out.extend(hits)
                continue
            if n not in self.modules_by_name:
                from mechscope.errors import UnknownHookError

                raise UnknownHookError(n, [k for k in self.modules_by_name if k])
            out.append(n)
        return out

    def check_not_state(self, t: torch.Tensor, m: FreezeMode) -> None:
        for cand in (t, t._base):
            if cand is not None and id(cand) in self._state_ids:
                raise UnsupportedLayerError(
                    f"an in-place write of input-dependent data into the model's parameter/buffer "
                    f"'{self._state_ids[id(cand)]}' {m.where()}; a stateful model cannot be frozen")

    @contextlib.contextmanager
    def _instrument(self, mode: FreezeMode):
        handles = []
        saved_attrs = []
        try:
            if self.root is not None:
                for name, mod in self.modules_by_name.items():
                    handles.append(mod.register_forward_pre_hook(
                        lambda _m, _a, name=name: mode.module_stack.append(name)))
                    handles.append(mod.register_forward_hook(
                        lambda _m, _a, _o: (mode.module_stack.pop() if mode.module_stack else None, None)[1]))
                for name in self.freeze:
                    handles.append(self.modules_by_name[name].register_forward_hook(self._freeze_hook(name)))
            for mod, attr, kind in self.act_patches:
                orig = getattr(mod, attr)
                key = f"{self._name_of(mod)}.{attr}"
                saved_attrs.append((mod, attr, mod.__dict__.get(attr, None), attr in mod.__dict__))
                object.__setattr__(mod, attr, _ActPatch(self, key, orig, kind))
            yield
        finally:
            for h in handles:
                h.remove()
            for mod, attr, old, had in reversed(saved_attrs):
                if had:
                    object.__setattr__(mod, attr, old)
                else:
                    object.__delattr__(mod, attr)

    def _name_of(self, mod: nn.Module) -> str:
        for n, m in self.modules_by_name.items():
            if m is mod:
                return n
        return type(mod).__name__

    def _freeze_hook(self, name: str):
        def hook(_mod, _args, output):
            m = self._mode
            k = m.hook_counts.get(name, 0)
            m.hook_counts[name] = k + 1
            with m.quiet():
                if m.phase == "record":
                    self.tape.hooks[(name, k)] = _clone(output)
                    return _clone(output)
                if (name, k) not in self.tape.hooks:
                    raise ReplayError(f"frozen module {name!r} was called more often than on x0")
                return _clone(self.tape.hooks[(name, k)])

        return hook

    def _run(self, v: torch.Tensor, phase: str) -> torch.Tensor:
        """One pass. ``v`` has shape ``in_shape``; returns ``out_shape``."""
        mode = FreezeMode(self, phase)
        prev, self._mode = self._mode, mode
        try:
            with self._instrument(mode):
                x = v.clone()
                mode.set_taint(x, LINEAR)
                with mode:
                    out = self.fn(x)
            if not isinstance(out, torch.Tensor) or not out.is_floating_point():
                raise ConfigError(f"the linearized function must return one floating tensor; found "
                                  f"{type(out).__name__}; pass a readout that selects it")
            t = mode.taint(out)
            if t.kind == _X:
                raise UnsupportedLayerError(f"the output depends non-linearly on the input through {t.reason}")
            if t.kind == _P:
                raise UnsupportedLayerError(f"the output is a softmax of the input: {t.reason}")
            if phase == "record":
                self.tape.n_calls = mode.n
                self.tape.output_const = t.kind == _C
            elif mode.n != self.tape.n_calls:
                raise ReplayError(f"the replay made {mode.n} torch calls, the pass on x0 {self.tape.n_calls}; "
                                  "control flow diverged")
            if t.kind == _C and phase == "linear":
                out = torch.zeros_like(out)
            return out
        finally:
            self._mode = prev

    def affine(self, v: torch.Tensor) -> torch.Tensor:
        """``A v + c`` for one input ``v`` of shape ``in_shape``."""
        return self._run(v, "affine")

    def linear(self, v: torch.Tensor) -> torch.Tensor:
        """``A v`` for one input ``v`` of shape ``in_shape``."""
        return self._run(v, "linear")
