"""``GroundTruth``: a published (or measured) circuit as data — the nodes, optional edges, and
where the claim comes from.

Node names: attention heads ``"L.H"`` (``"9.9"``), MLP layers ``"mlpL"`` (``"mlp8"``).
Edge endpoints: node names, ``"embed"`` (the residual stream at the start) and ``"logits"``
(the end); a receiving head may carry its input channel: ``"3.0.q"``, ``"3.0.k"``, ``"3.0.v"``.

Shipped ground truths live in ``mechscope/tasks/ground_truth/*.json``:
``load_ground_truth("ioi-gpt2-small")``; zoo organisms carry theirs in their model cards
(``mechscope.zoo.organism_ground_truth(name)``).
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mechscope.errors import ConfigError, FormatError

GROUND_TRUTH_DIR = Path(__file__).parent / "ground_truth"
_HEAD = re.compile(r"^(\d+)\.(\d+)$")
_MLP = re.compile(r"^mlp(\d+)$")
_ENDPOINT = re.compile(r"^(embed|logits|mlp\d+|\d+\.\d+(\.[qkv])?)$")


def parse_node(node: str) -> tuple[str, int, int | None]:
    """``"9.9"`` -> ``("head", 9, 9)``; ``"mlp8"`` -> ``("mlp", 8, None)``; anything else raises."""
    if m := _HEAD.match(node):
        return "head", int(m.group(1)), int(m.group(2))
    if m := _MLP.match(node):
        return "mlp", int(m.group(1)), None
    raise ConfigError(f"bad node name {node!r}: expected a head 'L.H' (e.g. '9.9') or an MLP 'mlpL' (e.g. 'mlp8')")


def node_sort_key(node: str) -> tuple:
    kind, layer, head = parse_node(node)
    return (layer, 1 if kind == "mlp" else 0, head or 0)


@dataclass
class GroundTruth:
    """A circuit claim. ``roles`` groups nodes by function (e.g. "name mover"); ``edges`` are
    ``[src, dst]`` pairs (see the module docstring); ``metrics`` holds measured numbers when the
    ground truth was measured (zoo organisms)."""

    model: str
    task: str
    nodes: list[str]
    edges: list[list[str]] | None = None
    citation: str = ""
    source: str = ""
    roles: dict[str, list[str]] = field(default_factory=dict)
    notes: str = ""
    metrics: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.nodes:
            raise ConfigError(f"ground truth for {self.model}/{self.task} has no nodes")
        for n in self.nodes:
            parse_node(n)
        if len(set(self.nodes)) != len(self.nodes):
            raise ConfigError(f"ground truth for {self.model}/{self.task} lists a node twice")
        for e in self.edges or []:
            if len(e) != 2 or not all(isinstance(x, str) and _ENDPOINT.match(x) for x in e):
                raise ConfigError(f"bad edge {e!r}: expected [src, dst] with endpoints 'embed', 'logits', 'L.H', 'L.H.q|k|v' or 'mlpL'")

    @property
    def heads(self) -> list[tuple[int, int]]:
        return [(l, h) for kind, l, h in map(parse_node, self.nodes) if kind == "head"]

    @property
    def mlps(self) -> list[int]:
        return [l for kind, l, _ in map(parse_node, self.nodes) if kind == "mlp"]

    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> "GroundTruth":
        known = {"model", "task", "nodes", "edges", "citation", "source", "roles", "notes", "metrics"}
        missing = {"model", "task", "nodes"} - set(d)
        if missing:
            raise FormatError(f"ground truth is missing {sorted(missing)}; found keys {sorted(d)}")
        return cls(**{k: v for k, v in d.items() if k in known})

    @classmethod
    def from_json(cls, text: str) -> "GroundTruth":
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise FormatError(f"ground truth is not valid JSON: {e}") from e

    def save(self, path: str | Path) -> None:
        from mechscope.files import write_json

        write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "GroundTruth":
        from mechscope.files import read_json

        return cls.from_dict(read_json(path))


def list_ground_truths() -> list[str]:
    """Names of the shipped published ground truths (``ioi-gpt2-small``, ...)."""
    return sorted(p.stem for p in GROUND_TRUTH_DIR.glob("*.json"))


def load_ground_truth(name: str) -> GroundTruth:
    """A shipped published ground truth by name, or a zoo organism's measured one (``zoo:NAME``)."""
    if name.startswith("zoo:"):
        from mechscope.zoo.cards import organism_ground_truth

        return organism_ground_truth(name[4:])
    path = GROUND_TRUTH_DIR / f"{name}.json"
    if not path.exists():
        raise ConfigError(f"no ground truth named {name!r}; shipped: {', '.join(list_ground_truths())} (or zoo:NAME for an organism)")
    return GroundTruth.load(path)
