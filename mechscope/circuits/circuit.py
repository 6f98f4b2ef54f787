"""The ``Circuit`` type: what a circuit finder returns.

A circuit names its candidate components and how much each matters:

* **nodes**: attention heads ``"L.H"``, MLPs ``"mlpL"``, and the two ends of the residual
  stream, ``"embed"`` and ``"logits"`` (dictionary features later);
* **edges**: ``[src, dst]`` pairs, where ``src`` is ``embed`` / a head / an MLP and ``dst`` is a
  head's query, key or value input (``"1.3.q"``, ``"1.3.k"``, ``"1.3.v"``), an MLP's input
  (``"mlp1"``) or ``"logits"`` (see :mod:`mechscope.circuits.graph`);
* **node_scores** / **edge_scores**: one number per candidate, higher = more in the circuit
  (edges keyed ``"src->dst"``);
* **nodes** / **edges** (selected): the finder's own choice of circuit (its default cut);
  :meth:`Circuit.top_k` and :meth:`Circuit.threshold` make other cuts;
* the **method** with its **params**, the **model** and **task**, and the **runtime** in seconds.

``circuit.save(path)`` writes JSON atomically; ``Circuit.load(path)`` reads it back and checks it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

from mechscope.errors import FormatError
from mechscope.circuits.errors import CircuitError

CIRCUIT_FORMAT = "mechscope.circuit"
CIRCUIT_VERSION = 1
EDGE_SEP = "->"


def edge_key(src: str, dst: str) -> str:
    """``("0.1", "1.2.q")`` -> ``"0.1->1.2.q"``."""
    return f"{src}{EDGE_SEP}{dst}"


def split_edge(key: str) -> tuple[str, str]:
    """``"0.1->1.2.q"`` -> ``("0.1", "1.2.q")``."""
    parts = key.split(EDGE_SEP)
    if len(parts) != 2 or not all(parts):
        raise FormatError(f"bad edge key {key!r}: expected 'src{EDGE_SEP}dst', e.g. '0.1{EDGE_SEP}1.2.q'")
    return parts[0], parts[1]


def receiver_node(dst: str) -> str:
    """The node an edge enters: ``"1.2.q"`` -> ``"1.2"``; ``"mlp1"`` / ``"logits"`` unchanged."""
    parts = dst.split(".")
    return ".".join(parts[:2]) if len(parts) == 3 else dst


@dataclass
class Circuit:
    """A scored circuit (see the module docstring)."""

    model: str
    task: str
    method: str
    node_scores: dict[str, float]
    edge_scores: dict[str, float] = field(default_factory=dict)
    nodes: list[str] = field(default_factory=list)
    edges: list[list[str]] = field(default_factory=list)
    params: dict = field(default_factory=dict)
    runtime_s: float = 0.0
    metadata: dict = field(default_factory=dict)

    def __post_init__(self):
        self.node_scores = {str(k): _finite(v, f"node score of {k}") for k, v in self.node_scores.items()}
        self.edge_scores = {str(k): _finite(v, f"edge score of {k}") for k, v in self.edge_scores.items()}
        for k in self.edge_scores:
            split_edge(k)
        self.edges = [list(e) for e in self.edges]
        for e in self.edges:
            if len(e) != 2:
                raise FormatError(f"bad edge {e!r}: expected [src, dst]")

    # ---- cuts ---------------------------------------------------------------------------
    @property
    def has_edges(self) -> bool:
        return bool(self.edge_scores)

    def ranked_nodes(self) -> list[str]:
        """Node names, highest score first (ties keep the insertion order, i.e. forward order)."""
        return sorted(self.node_scores, key=lambda n: -self.node_scores[n])

    def ranked_edges(self) -> list[tuple[str, str]]:
        return [split_edge(k) for k in sorted(self.edge_scores, key=lambda k: -self.edge_scores[k])]

    def top_k(self, k: int, edges: int | None = None) -> "Circuit":
        """A copy whose selected nodes are the ``k`` highest-scoring ones (and ``edges`` highest edges)."""
        if k < 0 or (edges is not None and edges < 0):
            raise CircuitError(f"top_k needs k >= 0 (and edges >= 0); found k={k}, edges={edges}")
        nodes = self.ranked_nodes()[:k]
        chosen = [list(e) for e in self.ranked_edges()[: edges]] if edges is not None else [list(e) for e in self.edges]
        return dataclasses.replace(self, nodes=nodes, edges=chosen, params={**self.params, "cut": {"top_k": k, "top_k_edges": edges}})

    def threshold(self, node_threshold: float, edge_threshold: float | None = None) -> "Circuit":
        """A copy whose selected nodes (edges) are those scoring >= the threshold."""
        nodes = [n for n in self.ranked_nodes() if self.node_scores[n] >= node_threshold]
        if edge_threshold is None:
            chosen = [list(e) for e in self.edges]
        else:
            chosen = [list(e) for e in self.ranked_edges() if self.edge_scores[edge_key(*e)] >= edge_threshold]
        return dataclasses.replace(self, nodes=nodes, edges=chosen,
                                   params={**self.params, "cut": {"node_threshold": node_threshold, "edge_threshold": edge_threshold}})

    # ---- files --------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {"format": CIRCUIT_FORMAT, "version": CIRCUIT_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "Circuit":
        if d.get("format") != CIRCUIT_FORMAT:
            raise FormatError(f"expected a circuit (format {CIRCUIT_FORMAT!r}), found format {d.get('format')!r}")
        if int(d.get("version", -1)) > CIRCUIT_VERSION:
            raise FormatError(f"circuit format version {d.get('version')} is newer than this mechscope reads ({CIRCUIT_VERSION})")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = {"model", "task", "method", "node_scores"} - set(d)
        if missing:
            raise FormatError(f"circuit JSON is missing {sorted(missing)}; found keys {sorted(d)}")
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (temp file + rename)."""
        from mechscope.files import write_json

        write_json(path, self.to_dict())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> "Circuit":
        from mechscope.files import read_json

        return cls.from_dict(read_json(path))

    def __repr__(self) -> str:
        return (f"Circuit(method={self.method!r}, model={self.model!r}, task={self.task!r}, {len(self.node_scores)} node scores, "
                f"{len(self.edge_scores)} edge scores, {len(self.nodes)} nodes selected, runtime {self.runtime_s:.2f}s)")


def _finite(v, what: str) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError) as e:
        raise FormatError(f"{what} must be a number, found {v!r}") from e
    if not math.isfinite(x):
        from mechscope.errors import NonFiniteError

        raise NonFiniteError(f"{what} is {x}; expected a finite number")
    return x


def select_relative(scores: dict[str, float], fraction: float = 0.1) -> list[str]:
    """Names scoring >= ``fraction`` x the largest score (nothing when every score is <= 0)."""
    top = max(scores.values(), default=0.0)
    if top <= 0:
        return []
    return [n for n, s in sorted(scores.items(), key=lambda kv: -kv[1]) if s >= fraction * top]


def nodes_of_edges(edges: Iterable[Iterable[str]]) -> list[str]:
    """The nodes touched by ``edges`` (receiver channels folded into their head), in first-seen order."""
    out: dict[str, None] = {}
    for src, dst in edges:
        out[src] = None
        out[receiver_node(dst)] = None
    return list(out)
