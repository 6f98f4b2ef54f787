"""The computational graph of a TransformerLens model as circuit methods see it.

**Sources** (things that write to the residual stream), in forward order::

    embed, 0.0, 0.1, ..., mlp0, 1.0, ..., mlp1, ...

``embed`` is token + position embedding (``blocks.0.hook_resid_pre``); head ``L.H`` writes
``z[:, :, H] @ W_O[L, H]`` (``blocks.L.attn.hook_z``); MLP ``L`` writes ``blocks.L.hook_mlp_out``.

**Receivers** (things that read it), in forward order::

    0.0.q .. 0.{H-1}.q, 0.0.k .., 0.0.v .., mlp0, 1.0.q, ..., logits

a head's query / key / value input (``blocks.L.hook_{q,k,v}_input[:, :, H]``, before LayerNorm),
an MLP's input (``blocks.L.hook_mlp_in``, before LayerNorm) and the final residual stream
(``blocks.{n-1}.hook_resid_post``, before ``ln_final``).

**Edges**: every (source, receiver) pair where the source runs before the receiver: a source in
an earlier layer, or a head feeding the MLP of its own layer; ``embed`` feeds everything.
In parallel blocks (GPT-J, GPT-NeoX / Pythia: ``cfg.parallel_attn_mlp``) attention and MLP both
read the block's input, so a head does not feed the MLP of its own layer.

Grouped-query attention (``cfg.n_key_value_heads < n_heads``): every query head has its own key
and value receivers; the hooks run the model with TransformerLens's
``ungroup_grouped_query_attention`` on (numerically the same forward), so that a head's key /
value input can be patched without touching the other heads of its group.

Models whose heads' writes do not add up to the residual stream — a norm applied to the summed
attention output (Gemma 2's ``use_normalization_before_and_after``, OLMo 2's post-norm) — have no
edges in this sense: edge methods refuse them, node methods use ``Graph.of(model, for_edges=False)``.

**Nodes** scored against a ground truth: the heads and MLPs (``embed`` and ``logits`` are always
in a circuit).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch

from mechscope.circuits.circuit import edge_key
from mechscope.circuits.errors import CircuitError
from mechscope.models.model import sublayer_norms

CHANNELS = ("q", "k", "v")


@dataclass(frozen=True)
class Graph:
    """Sources, receivers and edges of a transformer with ``n_layers`` x ``n_heads`` heads."""

    n_layers: int
    n_heads: int
    has_mlp: bool
    parallel_attn_mlp: bool = False

    @classmethod
    def of(cls, model, for_edges: bool = True) -> "Graph":
        """The graph of a mechscope ``Model`` (or bare ``HookedTransformer``).

        ``for_edges=False``: only the names of nodes and edges are needed — node methods (ablation,
        activation patching, discrete codes), scoring, circuits found by exact attribution — so
        models whose heads' writes do not add up to the residual (a norm after attention) are
        accepted; edge methods (EAP, EAP-IG, ACDC) need ``for_edges=True``."""
        module = getattr(model, "module", model)
        cfg = getattr(module, "cfg", None)
        if cfg is None or not hasattr(cfg, "n_heads"):
            raise CircuitError(f"circuit methods need a TransformerLens HookedTransformer; found {type(module).__name__}")
        if type(module).__name__ == "TransformerBridge":
            from mechscope.models.model import require_hooked_transformer

            require_hooked_transformer(model, "the circuit graph", CircuitError)
        norms = sublayer_norms(cfg)
        if for_edges and (norms.attn_out or norms.mlp_out):
            raise CircuitError(f"this model normalises each attention and MLP output before adding it to the residual stream "
                               f"({norms.attn_out} / {norms.mlp_out}, as in Gemma 2 and OLMo 2): a head's write is not z @ W_O, so edges "
                               "between components are not defined; the node methods (ablation_zero, ablation_mean, ablation_resample, "
                               "patching, discrete_codes) run on it")
        attn_only = bool(cfg.attn_only)
        return cls(int(cfg.n_layers), int(cfg.n_heads), not attn_only, bool(getattr(cfg, "parallel_attn_mlp", False)) and not attn_only)

    @classmethod
    def of_circuit(cls, circuit) -> "Graph":
        """The graph recorded in a circuit's metadata (``find_circuit`` records it)."""
        g = circuit.metadata.get("graph")
        if not g:
            raise CircuitError(f"circuit {circuit.method!r} on {circuit.model!r} records no graph (metadata.graph); "
                               "load the model and use Graph.of(model)")
        return cls.from_dict(g)

    def to_dict(self) -> dict:
        """What a circuit records as ``metadata["graph"]``."""
        out = {"n_layers": self.n_layers, "n_heads": self.n_heads, "has_mlp": self.has_mlp}
        if self.parallel_attn_mlp:
            out["parallel_attn_mlp"] = True
        return out

    @classmethod
    def from_dict(cls, g: dict) -> "Graph":
        return cls(int(g["n_layers"]), int(g["n_heads"]), bool(g["has_mlp"]), bool(g.get("parallel_attn_mlp", False)))

    # ---- names --------------------------------------------------------------------------
    @cached_property
    def sources(self) -> list[str]:
        out = ["embed"]
        for layer in range(self.n_layers):
            out += [f"{layer}.{h}" for h in range(self.n_heads)]
            if self.has_mlp:
                out.append(f"mlp{layer}")
        return out

    @cached_property
    def receivers(self) -> list[str]:
        out = []
        for layer in range(self.n_layers):
            for ch in CHANNELS:
                out += [f"{layer}.{h}.{ch}" for h in range(self.n_heads)]
            if self.has_mlp:
                out.append(f"mlp{layer}")
        return out + ["logits"]

    @cached_property
    def nodes(self) -> list[str]:
        """Scored nodes: heads and MLPs, in forward order."""
        return self.sources[1:]

    @cached_property
    def source_index(self) -> dict[str, int]:
        return {s: i for i, s in enumerate(self.sources)}

    @cached_property
    def receiver_index(self) -> dict[str, int]:
        return {r: i for i, r in enumerate(self.receivers)}

    def source_layer(self, src: str) -> float:
        """Position of a source in forward order as a layer number: embed -1, head L, MLP L + 0.5."""
        if src == "embed":
            return -1
        if src.startswith("mlp"):
            return int(src[3:]) + 0.5
        return int(src.split(".")[0])

    def receiver_layer(self, dst: str) -> float:
        """Position of a receiver in forward order; a parallel block's MLP reads where its heads read."""
        if dst == "logits":
            return self.n_layers
        if dst.startswith("mlp"):
            return int(dst[3:]) + (0 if self.parallel_attn_mlp else 0.5)
        return int(dst.split(".")[0])

    # ---- edges --------------------------------------------------------------------------
    @cached_property
    def edge_mask(self) -> torch.Tensor:
        """``[n_sources, n_receivers]`` bool: which pairs are edges."""
        s = torch.tensor([self.source_layer(x) for x in self.sources], dtype=torch.float32)
        r = torch.tensor([self.receiver_layer(x) for x in self.receivers], dtype=torch.float32)
        return s[:, None] < r[None, :]

    @cached_property
    def edges(self) -> list[tuple[str, str]]:
        """All edges, grouped by receiver in forward order, sources in forward order."""
        m = self.edge_mask
        return [(self.sources[i], self.receivers[j]) for j in range(len(self.receivers)) for i in range(len(self.sources)) if m[i, j]]

    @cached_property
    def edge_keys(self) -> list[str]:
        return [edge_key(s, d) for s, d in self.edges]

    def edge_scores_from_matrix(self, matrix: torch.Tensor) -> dict[str, float]:
        """``[n_sources, n_receivers]`` scores -> ``{"src->dst": score}`` over the valid edges."""
        if tuple(matrix.shape) != (len(self.sources), len(self.receivers)):
            raise CircuitError(f"edge matrix must be [{len(self.sources)}, {len(self.receivers)}], found {tuple(matrix.shape)}")
        m = matrix.detach().double().cpu()
        si, ri = self.source_index, self.receiver_index
        return {edge_key(s, d): float(m[si[s], ri[d]]) for s, d in self.edges}

    def matrix_from_edge_set(self, edges) -> torch.Tensor:
        """``[n_sources, n_receivers]`` bool mask of ``edges`` (``(src, dst)`` pairs)."""
        out = torch.zeros(len(self.sources), len(self.receivers), dtype=torch.bool)
        for s, d in edges:
            if s not in self.source_index or d not in self.receiver_index or not self.edge_mask[self.source_index[s], self.receiver_index[d]]:
                raise CircuitError(f"({s!r}, {d!r}) is not an edge of this {self.n_layers}-layer, {self.n_heads}-head graph")
            out[self.source_index[s], self.receiver_index[d]] = True
        return out

    def layer_receivers(self, layer: int) -> dict[str, list[int]]:
        """Receiver indices of ``layer`` by kind: ``{"q": [...], "k": [...], "v": [...], "mlp": [...]}``."""
        ri = self.receiver_index
        out = {ch: [ri[f"{layer}.{h}.{ch}"] for h in range(self.n_heads)] for ch in CHANNELS}
        out["mlp"] = [ri[f"mlp{layer}"]] if self.has_mlp else []
        return out

    def sources_before(self, layer: float) -> int:
        """How many sources (a prefix of ``sources``) run before a receiver at ``layer``."""
        return sum(1 for s in self.sources if self.source_layer(s) < layer)

    def __repr__(self) -> str:
        mlps = (" + parallel MLPs" if self.parallel_attn_mlp else " + MLPs") if self.has_mlp else ""
        return (f"Graph({self.n_layers} layers x {self.n_heads} heads{mlps}: "
                f"{len(self.nodes)} nodes, {len(self.edges)} edges)")
