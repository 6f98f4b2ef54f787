"""The circuit methods by name, behind one call: ``find_circuit(model, task, method, **params)``."""

from __future__ import annotations

from typing import Callable

from mechscope.circuits.circuit import Circuit
from mechscope.circuits.errors import UnknownMethodError
from mechscope.errors import ConfigError


def _registry() -> dict[str, tuple[Callable[..., Circuit], dict]]:
    from mechscope.circuits.ablation import find_ablation
    from mechscope.circuits.acdc import find_acdc
    from mechscope.circuits.discrete_codes import find_discrete_codes
    from mechscope.circuits.eap import find_eap
    from mechscope.circuits.eap_ig import find_eap_ig
    from mechscope.circuits.patching import find_patching

    return {
        "discrete_codes": (find_discrete_codes, {}),
        "ablation_zero": (find_ablation, {"ablation": "zero"}),
        "ablation_mean": (find_ablation, {"ablation": "mean"}),
        "ablation_resample": (find_ablation, {"ablation": "resample"}),
        "patching": (find_patching, {}),
        "eap": (find_eap, {}),
        "eap_ig": (find_eap_ig, {}),
        "acdc": (find_acdc, {}),
    }


METHODS = ("discrete_codes", "ablation_zero", "ablation_mean", "ablation_resample", "patching", "eap", "eap_ig", "acdc")


def method_params(method: str) -> list[str]:
    """The parameter names circuit method ``method`` accepts (beyond model and task)."""
    import dataclasses
    import inspect

    reg = _registry()
    if method not in reg:
        raise UnknownMethodError(method, list(METHODS))
    fn, fixed = reg[method]
    ps = list(inspect.signature(fn).parameters.values())[2:]
    names = [p.name for p in ps if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in fixed]
    if any(p.kind is p.VAR_KEYWORD for p in ps):  # discrete_codes: overrides of its CodeConfig
        from mechscope.circuits.discrete_codes import CodeConfig

        names += [f.name for f in dataclasses.fields(CodeConfig)]
    return names


def check_params(method: str, params: dict) -> None:
    """A :class:`~mechscope.errors.ConfigError` naming the valid parameters when ``params`` has
    a name that ``method`` does not take."""
    valid = method_params(method)
    unknown = [k for k in params if k not in valid]
    if unknown:
        raise ConfigError(f"circuit method {method!r} has no parameter {', '.join(map(repr, unknown))}; expected one of: "
                          f"{', '.join(valid)}")


def find_circuit(model, task, method: str, **params) -> Circuit:
    """Run circuit method ``method`` (one of :data:`METHODS`) on ``model`` and ``task``.

    ``params`` go to the method (e.g. ``n_latents=64`` for ``discrete_codes``, ``steps=10`` for
    ``eap_ig``, ``n_thresholds=12`` for ``acdc``); an unknown name raises
    :class:`~mechscope.circuits.errors.UnknownMethodError` naming the valid ones.
    """
    reg = _registry()
    if method not in reg:
        raise UnknownMethodError(method, list(METHODS))
    fn, fixed = reg[method]
    check_params(method, params)
    circuit = fn(model, task, **fixed, **params)
    from mechscope.circuits.graph import Graph

    g = Graph.of(model, for_edges=False)  # recorded for scoring: names only
    circuit.metadata.setdefault("graph", g.to_dict())
    return circuit
