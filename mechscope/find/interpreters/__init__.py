"""Interpreters: anything with ``interpret(handle) -> Interpretation``.

Built in: ``offline`` (the default: dispatches on the handle's category to ``symbolic``,
``string`` or ``neuron``), each of those three alone, and ``llm`` (an agent over an
OpenAI-compatible chat endpoint). :func:`get_interpreter` also accepts ``module:attribute``
naming any importable class or factory.
"""

from __future__ import annotations

import importlib

from mechscope.errors import ConfigError
from mechscope.find.protocol import BlackBoxHandle, Interpretation


class OfflineInterpreter:
    """The default: symbolic search for numeric functions, program search for strings,
    concept probing for neurons. No network, no LLM."""

    name = "offline"

    def __init__(self, seed: int = 0):
        from mechscope.find.interpreters.neuron import NeuronInterpreter
        from mechscope.find.interpreters.string_search import StringSearchInterpreter
        from mechscope.find.interpreters.symbolic import SymbolicInterpreter

        self.by_category = {"numeric": SymbolicInterpreter(seed=seed), "string": StringSearchInterpreter(seed=seed),
                            "neuron": NeuronInterpreter(seed=seed)}

    def interpret(self, handle: BlackBoxHandle) -> Interpretation:
        return self.by_category[handle.category].interpret(handle)


BUILTIN = ("offline", "symbolic", "string", "neuron", "llm")


def get_interpreter(name: str, **kwargs):
    """An interpreter by name (see :data:`BUILTIN`) or ``package.module:Attribute``."""
    if name == "offline":
        return OfflineInterpreter(**kwargs)
    if name == "symbolic":
        from mechscope.find.interpreters.symbolic import SymbolicInterpreter

        return SymbolicInterpreter(**kwargs)
    if name == "string":
        from mechscope.find.interpreters.string_search import StringSearchInterpreter

        return StringSearchInterpreter(**kwargs)
    if name == "neuron":
        from mechscope.find.interpreters.neuron import NeuronInterpreter

        return NeuronInterpreter(**kwargs)
    if name == "llm":
        from mechscope.find.interpreters.llm_agent import LLMAgentInterpreter

        return LLMAgentInterpreter(**kwargs)
    if ":" in name:
        mod, _, attr = name.partition(":")
        try:
            obj = getattr(importlib.import_module(mod), attr)
        except (ImportError, AttributeError) as e:
            raise ConfigError(f"interpreter {name!r}: could not import {attr!r} from {mod!r} ({e})") from e
        inst = obj(**kwargs) if callable(obj) and not hasattr(obj, "interpret") or isinstance(obj, type) else obj
        if not hasattr(inst, "interpret"):
            raise ConfigError(f"interpreter {name!r}: expected an object with interpret(handle), found {type(inst).__name__}")
        return inst
    raise ConfigError(f"unknown interpreter {name!r}; expected one of {BUILTIN} or 'module:Attribute'")


__all__ = ["OfflineInterpreter", "get_interpreter", "BUILTIN", "Interpretation"]
