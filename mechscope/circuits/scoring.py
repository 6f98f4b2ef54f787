"""Scoring a circuit against a ground truth.

* **ROC AUC** over all thresholds: the probability that a random ground-truth member scores
  above a random non-member, ties counting one half — the Mann-Whitney U statistic with
  mid-ranks, ``(sum of positive ranks - P(P+1)/2) / (P N)``. Equal to
  ``sklearn.metrics.roc_auc_score`` (a test checks it).
* **Precision / recall / F1** at a threshold (score >= t), or at a circuit size k (the k
  highest scores). At size k, ties straddling the cut are broken uniformly at random and the
  *expected* counts are reported, so a method that gives many candidates the same score is
  neither rewarded nor punished by the order the candidates happen to be listed in.

The universe is every candidate the model has: all heads and MLPs for nodes, every edge of
:class:`~mechscope.circuits.graph.Graph` for edges. A candidate a circuit gives no score
scores 0. Edges are scored only when the ground truth lists edges.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from mechscope.circuits.circuit import Circuit, edge_key, split_edge
from mechscope.circuits.errors import CircuitError, GroundTruthMismatchError


def roc_auc(scores: Sequence[float], labels: Sequence[bool]) -> float:
    """ROC AUC of ``scores`` for binary ``labels``; ties count 1/2. Raises when a class is empty."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if s.shape != y.shape or s.ndim != 1:
        raise CircuitError(f"scores and labels must be 1-D of one length; found {s.shape} and {y.shape}")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        raise CircuitError(f"ROC AUC needs both members and non-members; found {n_pos} members and {n_neg} non-members")
    return float((_midranks(s)[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _midranks(s: np.ndarray) -> np.ndarray:
    """1-based ranks with tied values sharing the mean of their ranks."""
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    ranks = np.empty(len(s), dtype=np.float64)
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _prf(tp: float, n_selected: float, n_pos: int) -> dict:
    precision = tp / n_selected if n_selected > 0 else 0.0
    recall = tp / n_pos if n_pos > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "selected": n_selected}


def prf_at_threshold(scores: Sequence[float], labels: Sequence[bool], threshold: float) -> dict:
    """Precision, recall and F1 of selecting every candidate with score >= ``threshold``."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    sel = s >= threshold
    return _prf(float((sel & y).sum()), float(sel.sum()), int(y.sum()))


def prf_at_k(scores: Sequence[float], labels: Sequence[bool], k: int) -> dict:
    """Precision, recall and F1 of the ``k`` highest scores, ties at the cut broken uniformly at
    random (expected values; ``tp`` may be fractional)."""
    s, y = np.asarray(scores, dtype=np.float64), np.asarray(labels, dtype=bool)
    if not 0 <= k <= len(s):
        raise CircuitError(f"k must be in [0, {len(s)}] (the number of candidates); found {k}")
    if k == 0:
        return _prf(0.0, 0.0, int(y.sum()))
    cut = np.sort(s)[::-1][k - 1]
    above = s > cut
    tie = s == cut
    slots = k - int(above.sum())
    tp = float((above & y).sum()) + slots * float((tie & y).sum()) / float(tie.sum())
    return _prf(tp, float(k), int(y.sum()))


def _vectors(scores: dict[str, float], universe: list[str], truth: set[str], what: str) -> tuple[np.ndarray, np.ndarray]:
    extra = sorted(set(truth) - set(universe))
    if extra:
        raise GroundTruthMismatchError(f"the ground truth has {what} that this model does not: {extra[:8]} "
                                       f"(the model's {what} include {universe[:6]} …); is the ground truth for another model?")
    unknown = sorted(set(scores) - set(universe))
    if unknown:
        raise GroundTruthMismatchError(f"the circuit scores {what} that this model does not have: {unknown[:8]}")
    s = np.array([scores.get(u, 0.0) for u in universe], dtype=np.float64)
    y = np.array([u in truth for u in universe], dtype=bool)
    return s, y


def score_circuit(circuit: Circuit, ground_truth, graph, k: int | None = None, threshold: float | None = None,
                  edge_k: int | None = None) -> dict:
    """Score ``circuit`` against ``ground_truth`` (a :class:`~mechscope.tasks.GroundTruth`) over the
    candidates of ``graph`` (:class:`~mechscope.circuits.graph.Graph`).

    Returns ``{"nodes": {...}, "edges": {...} | None}`` with ``auc``, ``at_gt_size`` (precision /
    recall / F1 at k = the ground truth's size), ``at_k`` (at ``k`` when given), ``at_threshold``
    (when given), and counts. ``edges`` is ``None`` when the ground truth has no edges or the
    method scores none; ``edges["by_component"]`` scores the same edges with each head's q / k / v
    inputs merged into one receiver (see :func:`_by_component`).
    """
    truth_nodes = set(ground_truth.nodes)
    s, y = _vectors(circuit.node_scores, list(graph.nodes), truth_nodes, "nodes")
    nodes = {"auc": roc_auc(s, y) if 0 < y.sum() < len(y) else None, "n_candidates": len(y), "n_truth": int(y.sum()),
             "at_gt_size": prf_at_k(s, y, int(y.sum()))}
    if k is not None:
        nodes["at_k"] = {"k": k, **prf_at_k(s, y, min(k, len(y)))}
    if threshold is not None:
        nodes["at_threshold"] = {"threshold": threshold, **prf_at_threshold(s, y, threshold)}
    edges = None
    if ground_truth.edges and circuit.edge_scores:
        truth_edges = {edge_key(a, b) for a, b in ground_truth.edges}
        es, ey = _vectors(circuit.edge_scores, graph.edge_keys, truth_edges, "edges")
        edges = {"auc": roc_auc(es, ey) if 0 < ey.sum() < len(ey) else None, "n_candidates": len(ey), "n_truth": int(ey.sum()),
                 "at_gt_size": prf_at_k(es, ey, int(ey.sum()))}
        if edge_k is not None:
            edges["at_k"] = {"k": edge_k, **prf_at_k(es, ey, min(edge_k, len(ey)))}
        cs, cy = _by_component(circuit.edge_scores, graph.edge_keys, truth_edges)
        edges["by_component"] = {"auc": roc_auc(cs, cy) if 0 < cy.sum() < len(cy) else None, "n_candidates": len(cy),
                                 "n_truth": int(cy.sum()), "at_gt_size": prf_at_k(cs, cy, int(cy.sum()))}
    return {"nodes": nodes, "edges": edges}


def component_edge(key: str) -> str:
    """``"0.1->1.2.q"`` -> ``"0.1->1.2"``: the edge between components, whatever input channel."""
    src, dst = split_edge(key)
    parts = dst.split(".")
    return edge_key(src, ".".join(parts[:2]) if len(parts) == 3 and parts[2] in ("q", "k", "v") else dst)


def _by_component(scores: dict[str, float], universe: list[str], truth: set[str]) -> tuple[np.ndarray, np.ndarray]:
    """Edge scores and labels with a head's q / k / v inputs merged: one candidate per (sender,
    receiving component), scored by the max over its channels, true when any channel is. Methods
    that cannot tell the channels apart (the discrete-code method) are compared here on what they
    can express."""
    merged: dict[str, float] = {}
    for key in universe:
        c = component_edge(key)
        merged[c] = max(merged.get(c, -np.inf), float(scores.get(key, 0.0)))
    true = {component_edge(k) for k in truth}
    keys = list(merged)
    return np.array([merged[k] for k in keys], dtype=np.float64), np.array([k in true for k in keys], dtype=bool)
