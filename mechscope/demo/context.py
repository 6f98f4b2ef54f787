"""What the stages share: the output directory, the sizes, and the objects one stage makes for
the next (the model, the token streams, the trained dictionaries, the files written)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from mechscope.demo.sizes import ORGANISM, DemoSizes
from mechscope.errors import MechscopeError, ModelSpecError


class StageDependencyError(MechscopeError):
    """A stage needs something an earlier stage should have made, and that stage failed."""


@dataclass
class DemoContext:
    out: Path
    sizes: DemoSizes
    organism: str = ORGANISM
    progress: bool = True
    say: Callable[[str], None] = lambda msg: None
    # made by the stages (None / empty until then)
    model: Any = None  # mechscope.models.Model
    card: dict | None = None  # the organism's model card
    train_stream: Any = None  # TokenStream over the train split (dictionaries train on it)
    eval_stream: Any = None  # TokenStream over the held-out split (dictionaries are scored on it)
    dictionaries: dict[str, Any] = field(default_factory=dict)  # role ("attention_sae", "transcoder") -> Dictionary
    dictionary_dirs: dict[str, str] = field(default_factory=dict)  # role -> saved directory
    circuit_files: dict[str, str] = field(default_factory=dict)  # method -> circuit JSON
    linear_map_dir: str | None = None

    def need(self, attr: str, made_by: str) -> Any:
        """``getattr(self, attr)``, or a :class:`StageDependencyError` naming the stage that should have made it."""
        value = getattr(self, attr)
        if value is None or (isinstance(value, dict) and not value):
            raise StageDependencyError(f"not run: needs {attr!r} from stage {made_by!r}, which failed or did not run")
        return value


def require_organism(name: str) -> Path:
    """The organism's directory; a clear error saying how to make it when it (or its card) is missing."""
    from mechscope.zoo.registry import find_organism

    how = f"train it with `mechscope zoo train {name}` (or set MECHSCOPE_ZOO_PATH to a directory that holds it)"
    try:
        directory = find_organism(name)
    except ModelSpecError as e:
        raise ModelSpecError(f"the demo runs on zoo organism {name!r}, which is not installed: {e}; {how}") from e
    if not (directory / "card.json").exists():
        raise ModelSpecError(f"zoo organism {name!r} at {directory} has weights but no card.json (its verified circuit); {how}")
    return directory
