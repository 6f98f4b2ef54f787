"""Greedy (beam) search for computational paths through transcoders, from a target direction
back to the embeddings (Dunefsky et al. 2024, §4: "greedy computational-path search").

A **path** ``target <- n1 <- n2 <- ... <- leaf`` follows contributions upstream: ``n1`` is a
contributor to the target (:func:`~mechscope.transcoders.attribution.attribute`), ``n2`` a
contributor to ``n1``'s child target, and so on. Because every step is linear once patterns,
LayerNorm scales and feature activations are frozen, the contribution of the deepest node *along
the path* is the path's contribution: the product of the per-step coefficients times the leaf's
activation. Leaves are the token / position embeddings, and (optionally) reconstruction errors,
opaque MLPs (layers without a transcoder) and biases.

Search: a beam of partial paths. At each step every partial path expands its current node's
``top_k`` contributors (by absolute contribution); extensions that end at a leaf are finished,
the rest are ranked (``rank="value"``: absolute path contribution; ``rank="min"``: the smallest
absolute contribution along the path, a bottleneck score) and the best ``beam`` kept. The search
stops when the beam is empty or at ``max_depth`` nodes. The top ``n_paths`` finished paths are
returned.

Over a task (:func:`task_paths`), the search runs from the logit-difference direction of each
prompt at its answer position; :func:`paths_to_circuit` unions the paths into a
:class:`~mechscope.circuits.Circuit`: a component's score (heads ``"L.H"``, MLPs ``"mlpL"`` — a
transcoder feature, its skip path or its error count for its MLP layer) is the sum of the absolute
contributions of the paths through it, averaged over prompts; edges are scored the same way
(``child -> parent``: into a head through its value input ``"L.H.v"``, into an MLP ``"mlpL"``,
into ``"logits"``), and feature-level scores (``"mlpL.fJ"``) are kept in the circuit's metadata.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from mechscope.circuits import Circuit, edge_key
from mechscope.errors import ConfigError
from mechscope.transcoders.attribution import (Node, Target, attribute, child_target, logit_target, task_direction)
from mechscope.transcoders.replacement import ReplacementRun, TranscoderSet

RANKS = ("value", "min")


@dataclass
class Path:
    """``root <- nodes[0] <- nodes[1] <- ...``; ``values[i]`` is ``nodes[i]``'s contribution along the path."""

    root: Node
    root_value: float
    nodes: list[Node]
    values: list[float]
    batch: int = 0

    @property
    def value(self) -> float:
        """The path's contribution to the root (the last node's contribution along the path)."""
        return self.values[-1] if self.values else self.root_value

    @property
    def leaf(self) -> Node:
        return self.nodes[-1]

    @property
    def complete(self) -> bool:
        """Ends at a leaf (embedding, error, opaque MLP or bias) rather than at the depth limit."""
        return bool(self.nodes) and not self.leaf.expandable

    @property
    def reaches_embedding(self) -> bool:
        return bool(self.nodes) and self.leaf.kind in ("embed", "pos")

    def bottleneck(self) -> float:
        return min(abs(v) for v in self.values) if self.values else abs(self.root_value)

    def components(self) -> list[str]:
        return [c for c in (n.component for n in self.nodes) if c is not None]

    def __str__(self) -> str:
        parts = [f"{self.root.name} ({self.root_value:+.4g})"] + [f"{n.name} ({v:+.4g})" for n, v in zip(self.nodes, self.values)]
        return " <- ".join(parts)

    def to_dict(self) -> dict:
        return {"batch": self.batch, "value": self.value, "root": self.root.name, "root_value": self.root_value,
                "nodes": [{**n.to_dict(), "contribution": v} for n, v in zip(self.nodes, self.values)],
                "complete": self.complete, "text": str(self)}


def find_paths(run: ReplacementRun, target: Target, *, beam: int = 12, top_k: int = 6, n_paths: int = 10,
               max_depth: int | None = None, rank: str = "value", include_error: bool = True, include_bias: bool = False,
               min_abs: float = 0.0) -> list[Path]:
    """Beam search from ``target`` back to the embeddings (module docstring).

    Args:
        beam: partial paths kept per step. top_k: contributors expanded per node.
        n_paths: finished paths returned (highest absolute contribution first; ``rank="min"``
            orders by the bottleneck instead).
        max_depth: most nodes on a path (default ``2 n_layers + 2``: enough for
            feature / head hops through every layer); paths cut here are returned unfinished
            only when no finished path is left to fill ``n_paths``.
        include_error / include_bias: let reconstruction errors / biases end a path.
        min_abs: contributions smaller than this (absolute) are not followed.
    """
    if rank not in RANKS:
        raise ConfigError(f"rank must be one of {RANKS}; found {rank!r}")
    if beam < 1 or top_k < 1 or n_paths < 1:
        raise ConfigError(f"beam, top_k and n_paths must be >= 1; found {beam}, {top_k}, {n_paths}")
    max_depth = max_depth or 2 * run.n_layers + 2
    kinds = ("embed", "pos", "feature", "head", "skip", "mlp") + (("error",) if include_error else ())
    root_value = target.value(run)
    key = (lambda p: abs(p.value)) if rank == "value" else (lambda p: p.bottleneck())
    frontier: list[tuple[Path, Target]] = [(Path(target.node, root_value, [], [], target.batch), target)]
    finished: list[Path] = []
    cut: list[Path] = []
    for depth in range(max_depth):
        grown: list[tuple[Path, Target]] = []
        for path, tgt in frontier:
            att = attribute(run, tgt)
            chosen = att.top(top_k, include_bias=include_bias, kinds=kinds + (("bias",) if include_bias else ()))
            for node, v in chosen:
                if abs(v) <= min_abs:
                    continue
                new = Path(path.root, root_value, path.nodes + [node], path.values + [v], target.batch)
                if not node.expandable:
                    finished.append(new)
                elif depth + 1 == max_depth:
                    cut.append(new)
                else:
                    grown.append((new, tgt))
        grown.sort(key=lambda pt: -key(pt[0]))
        frontier = [(p, child_target(run, parent, p.leaf)) for p, parent in grown[:beam]]
        if not frontier:
            break
    finished.sort(key=lambda p: -key(p))
    if len(finished) < n_paths:
        cut.sort(key=lambda p: -key(p))
        finished += cut[: n_paths - len(finished)]
    return finished[:n_paths]


@dataclass
class PathSearchResult:
    """Paths for every prompt of a task, plus what is needed to score and reproduce them."""

    paths: list[list[Path]]
    root_values: list[float]
    params: dict = field(default_factory=dict)
    runtime_s: float = 0.0

    def all_paths(self) -> list[Path]:
        return [p for ps in self.paths for p in ps]

    def feature_scores(self) -> dict[str, float]:
        """``{"mlpL.fJ": mean over prompts of the summed |contribution| of paths through it}``."""
        out: dict[str, float] = {}
        n = max(1, len(self.paths))
        for p in self.all_paths():
            for key in dict.fromkeys(x.feature_key for x in p.nodes if x.feature_key):
                out[key] = out.get(key, 0.0) + abs(p.value) / n
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))

    def ranked_features(self) -> list[tuple[int, int]]:
        """``(layer, feature)`` pairs on the paths, highest score first."""
        out = []
        for key in self.feature_scores():
            layer, feat = key[3:].split(".f")
            out.append((int(layer), int(feat)))
        return out


def task_paths(model, transcoders: TranscoderSet, task, *, n: int | None = 16, splice: bool = True, batch_size: int = 64,
               progress=None, **search) -> PathSearchResult:
    """Run :func:`find_paths` from the logit-difference direction of each of the first ``n``
    prompts of ``task`` (at its answer position). ``search`` goes to :func:`find_paths`."""
    t0 = time.perf_counter()
    n = len(task) if n is None else min(n, len(task))
    if n < 1:
        raise ConfigError("task_paths needs at least one prompt")
    task = task.subset(slice(0, n))
    paths: list[list[Path]] = []
    roots: list[float] = []
    for start in range(0, n, batch_size):
        part = task.subset(slice(start, start + batch_size))
        run = ReplacementRun(model, transcoders, part.clean, splice=splice)
        for b in range(len(part)):
            pos = int(part.answer_pos[b])
            tgt = logit_target(run, b, pos, task_direction(run, part, b), label="logit_diff")
            found = find_paths(run, tgt, **search)
            for p in found:
                p.batch = start + b
            paths.append(found)
            roots.append(tgt.value(run))
            if progress:
                progress(start + b + 1, n)
    params = {"n": n, "splice": splice, **search}
    return PathSearchResult(paths, roots, params, time.perf_counter() - t0)


def _receiver(node: Node) -> str | None:
    if node.kind == "logit":
        return "logits"
    if node.kind == "head":
        return f"{node.layer}.{node.index}.v"
    if node.kind in ("feature", "skip", "target"):
        return f"mlp{node.layer}"
    return None


def paths_to_circuit(result: PathSearchResult, model, task_name: str = "", *, select_fraction: float = 0.05) -> Circuit:
    """Union of the paths as a :class:`~mechscope.circuits.Circuit` (module docstring). Selected
    nodes / edges: those scoring at least ``select_fraction`` of the best."""
    from mechscope.circuits.circuit import select_relative
    from mechscope.circuits.graph import Graph
    from mechscope.models.model import as_model

    model = as_model(model)
    graph = Graph.of(model, for_edges=False)  # names only: attribution, not patching, found these paths
    n = max(1, len(result.paths))
    node_scores = {c: 0.0 for c in graph.nodes}
    edge_scores: dict[str, float] = {}
    valid_edges = set(graph.edge_keys)
    for p in result.all_paths():
        w = abs(p.value) / n
        for comp in dict.fromkeys(p.components()):
            if comp in node_scores:
                node_scores[comp] += w
        chain = [p.root] + p.nodes
        seen = set()
        for parent, child in zip(chain, chain[1:]):
            dst, src = _receiver(parent), child.component
            if dst is None or src is None:
                continue
            k = edge_key(src, dst)
            if k in valid_edges and k not in seen:
                seen.add(k)
                edge_scores[k] = edge_scores.get(k, 0.0) + w
    nodes = select_relative({k: v for k, v in node_scores.items()}, select_fraction)
    edges = [list(k.split("->")) for k in select_relative(edge_scores, select_fraction)] if edge_scores else []
    feats = result.feature_scores()
    examples = [str(p) for ps in result.paths[:4] for p in ps[:3]]
    return Circuit(model=model.name, task=task_name, method="transcoder_paths", node_scores=node_scores, edge_scores=edge_scores,
                   nodes=nodes, edges=edges, params={**result.params, "select_fraction": select_fraction}, runtime_s=result.runtime_s,
                   metadata={"graph": graph.to_dict(),
                             "feature_scores": {k: round(v, 6) for k, v in list(feats.items())[:200]},
                             "n_features_on_paths": len(feats), "example_paths": examples,
                             "mean_root_value": float(torch.tensor(result.root_values).mean()) if result.root_values else 0.0,
                             "note": "attention enters paths only through OV (patterns frozen), so q/k edges are never scored"})


def find_transcoder_circuit(model, transcoders: TranscoderSet, task, *, n: int = 16, splice: bool = True, select_fraction: float = 0.05,
                            progress=None, **search) -> tuple[Circuit, PathSearchResult]:
    """:func:`task_paths` then :func:`paths_to_circuit`."""
    result = task_paths(model, transcoders, task, n=n, splice=splice, progress=progress, **search)
    return paths_to_circuit(result, model, task.name, select_fraction=select_fraction), result
