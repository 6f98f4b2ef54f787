"""Circuit discovery from discrete SAE codes (O'Neill & Bui 2024, "Sparse Autoencoders Enable
Scalable and Reliable Circuit Identification in Language Models", arXiv:2405.12522).

1. **Positives and negatives.** Positives: the clean prompts on which the model's top-1
   prediction is the answer. Negatives: their corrupted twins (same template; the information
   that determines the answer is gone).
2. **Head vectors.** Each head's write to the residual stream, ``z[:, :, H] @ W_O[L, H]``
   (MLPs: ``hook_mlp_out``, as in the authors' code), averaged over the prompt's positions
   (``averaging="mean"``; also ``"mean_no_bos"`` and ``"last"`` = the answer position):
   one ``d_model`` vector per (prompt, component).
   Not in the paper, off by default: ``normalize="unit"`` / ``"center"`` rescale or centre the
   vectors first (:func:`normalized`).
3. **One SAE shared across components**, trained on the vectors of ``n_train`` prompts (half
   positives, half negatives; default 10 — the paper needs 5-10) with a ReLU + L1 objective.
   It is a :class:`mechscope.dictionaries.Dictionary` fitted with full-batch Adam by
   :func:`mechscope.dictionaries.full_batch.fit_full_batch` (hand-written gradient, no
   autograd: on a few hundred rows a step's cost is overhead, not arithmetic).
4. **Codes.** ``code="argmax"``: the index of the most active latent per (prompt, component)
   (a row with no active latent gets the extra code ``n_latents``); ``code="topk"``: the set of
   the ``k`` most active latents.
5. **Node score** = the number of codes a component shows on positives and never on negatives.
6. **Edge score** for ``src -> dst`` (components, ``src`` upstream of ``dst``) = the number of
   code *pairs* (code of src, code of dst) that co-occur on some positive prompt and on no
   negative one. The method does not see query / key / value channels, so a head's three
   inputs share one score; ``embed`` and ``logits`` carry no code of their own (one constant
   code), so ``embed -> X`` and ``X -> logits`` score X's node score.

Defaults follow the authors' public reference script (SAE width 300, 500 full-batch Adam steps
at lr 1e-3, 10 training prompts, argmax codes, position-mean head outputs); the L1 weight is in
mechscope's scale-free units, so the script's lambda = 0.02 (on raw per-element MSE) is converted
to them for the data at hand (:func:`l1_coefficient`).
:func:`robustness` sweeps averaging, width, training prompts, code definition, L1, seed and
normalisation.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch

from mechscope.circuits.circuit import Circuit, edge_key
from mechscope.circuits.errors import CircuitError
from mechscope.circuits.forward import answer_logits, check_task, source_outputs
from mechscope.circuits.graph import Graph
from mechscope.models import Model
from mechscope.models.model import as_model
from mechscope.tasks import Task

CITATION = ("O'Neill & Bui (2024). Sparse Autoencoders Enable Scalable and Reliable Circuit Identification in Language Models. "
            "arXiv:2405.12522")
AVERAGING = ("mean", "mean_no_bos", "last")
CODES = ("argmax", "topk")
NORMALIZE = ("none", "unit", "center")


@dataclass(frozen=True)
class CodeConfig:
    """Parameters of the discrete-code method (defaults: see the module docstring)."""

    n_latents: int = 300
    n_train: int = 10
    averaging: str = "mean"
    code: str = "argmax"
    k: int = 2  # code="topk" only
    l1_coeff: float | None = None  # None: the reference script's lambda = 0.02, converted (see train_sae)
    steps: int = 500
    lr: float = 1e-3
    seed: int = 0
    max_prompts: int | None = None  # positives (and as many negatives) used for codes; None: all
    normalize: str = "none"  # not in the paper; see :func:`normalized`

    def __post_init__(self):
        if self.averaging not in AVERAGING:
            raise CircuitError(f"averaging must be one of {AVERAGING}; found {self.averaging!r}")
        if self.code not in CODES:
            raise CircuitError(f"code must be one of {CODES}; found {self.code!r}")
        if self.normalize not in NORMALIZE:
            raise CircuitError(f"normalize must be one of {NORMALIZE}; found {self.normalize!r}")
        for name in ("n_latents", "n_train", "k", "steps"):
            if int(getattr(self, name)) < 1:
                raise CircuitError(f"{name} must be >= 1; found {getattr(self, name)!r}")
        if self.n_train < 2:
            raise CircuitError(f"n_train must be >= 2 (at least one positive and one negative prompt); found {self.n_train}")


@dataclass
class HeadVectors:
    """Position-averaged component outputs: ``pos`` / ``neg`` ``[n, n_components, d_model]``."""

    components: list[str]
    pos: torch.Tensor
    neg: torch.Tensor
    n_prompts: int
    n_correct: int


def _average(src: torch.Tensor, task: Task, averaging: str) -> torch.Tensor:
    """``[n, pos, C, d]`` -> ``[n, C, d]`` over each prompt's real positions."""
    n, p = src.shape[:2]
    pos = torch.arange(p, device=src.device)[None, :]
    end = task.answer_pos.to(src.device)[:, None]
    if averaging == "last":
        return src[torch.arange(n, device=src.device), task.answer_pos.to(src.device)]
    start = 1 if averaging == "mean_no_bos" else 0
    w = ((pos >= start) & (pos <= end)).to(src.dtype)
    return (src * w[:, :, None, None]).sum(1) / w.sum(1).clamp(min=1)[:, None, None]


@torch.no_grad()
def head_vectors(model: Model, task: Task, averaging: str = "mean", max_prompts: int | None = None, graph: Graph | None = None) -> HeadVectors:
    """Positives (clean prompts the model gets right) and their corrupted twins, as
    position-averaged component outputs."""
    graph = graph or Graph.of(model, for_edges=False)
    logits = answer_logits(model, task.clean, task.answer_pos)
    correct = task.metric(logits, "accuracy", per_prompt=True).bool().cpu()
    idx = correct.nonzero().flatten()
    if len(idx) < 2:
        raise CircuitError(f"the discrete-code method needs prompts the model answers correctly (positives); model {model.name!r} "
                           f"gets {int(correct.sum())} of {len(task)} {task.name!r} prompts right")
    if max_prompts is not None:
        idx = idx[:max_prompts]
    sub = task.subset(idx)
    pos = _average(source_outputs(model, sub.clean, graph)[:, :, 1:], sub, averaging)
    neg = _average(source_outputs(model, sub.corrupted, graph)[:, :, 1:], sub, averaging)
    return HeadVectors(list(graph.nodes), pos.float().cpu(), neg.float().cpu(), len(task), int(correct.sum()))


def training_prompts(vectors: HeadVectors, cfg: CodeConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the positive and of the negative prompts the SAE is trained on: ``cfg.n_train``
    in all, half of each (rounded towards positives), drawn with ``cfg.seed``."""
    n = vectors.pos.shape[0]
    n_pos = min(n, (cfg.n_train + 1) // 2)
    n_neg = min(n, cfg.n_train - n_pos)
    gen = torch.Generator().manual_seed(cfg.seed)
    return torch.randperm(n, generator=gen)[:n_pos], torch.randperm(n, generator=gen)[:n_neg]


def normalized(vectors: HeadVectors, cfg: CodeConfig) -> HeadVectors:
    """The vectors the SAE and the codes see (``cfg.normalize``; the paper: ``"none"``).

    One SAE is shared by components whose outputs differ in scale (here MLP outputs are up to 30x
    the norm of head outputs), so its reconstruction and L1 terms — and its latents — are spent on
    the largest. ``"unit"`` divides every (prompt, component) vector by its norm: codes then follow
    directions only. ``"center"`` subtracts each component's mean over the SAE's training prompts
    (positives and negatives): codes then follow how a component's output departs from its usual
    one, not which component wrote it.
    """
    if cfg.normalize == "none":
        return vectors
    if cfg.normalize == "unit":
        def f(x):
            return x / x.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    else:
        pi, ni = training_prompts(vectors, cfg)
        mean = torch.cat([vectors.pos[pi], vectors.neg[ni]]).mean(0)  # [C, d]

        def f(x):
            return x - mean
    return dataclasses.replace(vectors, pos=f(vectors.pos), neg=f(vectors.neg))


def train_sae(vectors: HeadVectors, cfg: CodeConfig):
    """The shared SAE, trained on the vectors of ``cfg.n_train`` prompts (half positive, half negative)."""
    from mechscope.dictionaries import DictionaryConfig
    from mechscope.dictionaries.full_batch import fit_full_batch

    pi, ni = training_prompts(vectors, cfg)
    rows = torch.cat([vectors.pos[pi], vectors.neg[ni]])
    rows = rows.reshape(-1, rows.shape[-1])
    dcfg = DictionaryConfig(d_in=rows.shape[1], n_latents=cfg.n_latents, kind="sae", activation="relu", l1_coeff=l1_coefficient(rows, cfg),
                            hook_in="component_out", meta={"method": "discrete_codes"})
    return fit_full_batch(dcfg, rows, cfg.steps, cfg.lr, seed=cfg.seed), len(pi) + len(ni)


PAPER_L1 = 0.02


def l1_coefficient(rows: torch.Tensor, cfg: CodeConfig) -> float:
    """The L1 weight in :class:`~mechscope.dictionaries.Dictionary` units.

    mechscope's ReLU objective is ``FVU + c * mean(sum_i a_i |W_dec,i|) / rms`` (``rms`` = the
    rows' root-mean-square distance from their mean); the reference script minimises
    ``mean-squared error per element + lambda * mean L1``, lambda = 0.02, with unit-norm decoder
    rows. Multiplying ours by ``rms^2 / d`` gives theirs when ``c = lambda * d / rms``, which is the
    default (``cfg.l1_coeff=None``); a number is used as is.
    """
    if cfg.l1_coeff is not None:
        return float(cfg.l1_coeff)
    rms = float((rows - rows.mean(0)).pow(2).sum(-1).mean().sqrt())
    if not rms > 0:
        raise CircuitError("the component outputs used to train the SAE are all identical; nothing to encode")
    return PAPER_L1 * rows.shape[1] / rms


@torch.no_grad()
def codes(sae, x: torch.Tensor, cfg: CodeConfig) -> torch.Tensor:
    """Discrete codes of ``x [n, C, d]``: ``[n, C, 1]`` (argmax) or ``[n, C, k]`` (top-k, -1 pads).

    Only active latents count; a (prompt, component) with none active gets the code ``n_latents``."""
    acts = sae.encode(x)  # [n, C, M]
    k = 1 if cfg.code == "argmax" else min(cfg.k, acts.shape[-1])
    vals, idx = acts.topk(k, dim=-1)
    idx = torch.where(vals > 0, idx, torch.full_like(idx, -1))
    idx[..., 0] = torch.where(vals[..., 0] > 0, idx[..., 0], torch.full_like(idx[..., 0], sae.n_latents))
    return idx


def _unique_to_positive(pos_keys: torch.Tensor, neg_keys: torch.Tensor) -> torch.Tensor:
    pos_keys = torch.unique(pos_keys)
    return pos_keys[~torch.isin(pos_keys, neg_keys)]


def node_scores_from_codes(pos: torch.Tensor, neg: torch.Tensor, components: list[str], n_codes: int) -> dict[str, float]:
    """``|codes on positives - codes on negatives|`` per component (``pos`` / ``neg`` ``[n, C, k]``)."""
    B = n_codes + 2  # codes -1 (pad) .. n_codes (silent), shifted by one

    def keys(c):
        comp = torch.arange(c.shape[1])[None, :, None].expand_as(c)
        return (comp * B + c + 1)[c >= 0]

    counts = torch.bincount(_unique_to_positive(keys(pos), keys(neg)) // B, minlength=len(components))
    return {comp: float(counts[j]) for j, comp in enumerate(components)}


def pair_scores_from_codes(pos: torch.Tensor, neg: torch.Tensor, n_codes: int) -> torch.Tensor:
    """``[C, C]``: for components a != b, the number of code pairs (code of a, code of b) that
    co-occur on some positive prompt and on no negative prompt."""
    C = pos.shape[1]
    B = n_codes + 2

    def keys(c):
        a = (c + 1)[:, :, :, None, None]
        b = (c + 1)[:, None, None, :, :]
        pair = (torch.arange(C)[:, None] * C + torch.arange(C)[None, :])[None, :, None, :, None]
        key = (pair * B + a) * B + b
        return key[((a > 0) & (b > 0)).expand_as(key)]

    counts = torch.bincount(_unique_to_positive(keys(pos), keys(neg)) // (B * B), minlength=C * C).view(C, C).double()
    return counts * (1 - torch.eye(C, dtype=torch.float64))


def edge_scores_from_codes(graph: Graph, node_scores: dict[str, float], pairs: torch.Tensor) -> dict[str, float]:
    """Map component-pair scores onto the graph's edges (see the module docstring, step 6)."""
    comp = {c: i for i, c in enumerate(graph.nodes)}
    out = {}
    for src, dst in graph.edges:
        rnode = dst if dst in ("logits",) or dst.startswith("mlp") else ".".join(dst.split(".")[:2])
        if src == "embed":
            out[edge_key(src, dst)] = node_scores[rnode] if rnode != "logits" else 0.0
        elif rnode == "logits":
            out[edge_key(src, dst)] = node_scores[src]
        else:
            out[edge_key(src, dst)] = float(pairs[comp[src], comp[rnode]])
    return out


def scores_from_vectors(vectors: HeadVectors, cfg: CodeConfig, graph: Graph) -> tuple[dict, dict, dict]:
    """Train the SAE, compute codes and return ``(node scores, edge scores, facts)``."""
    t0 = time.perf_counter()
    vectors = normalized(vectors, cfg)
    sae, n_rows = train_sae(vectors, cfg)
    t_train = time.perf_counter() - t0
    cp, cn = codes(sae, vectors.pos, cfg), codes(sae, vectors.neg, cfg)
    nodes = node_scores_from_codes(cp, cn, vectors.components, sae.n_latents)
    edges = edge_scores_from_codes(graph, nodes, pair_scores_from_codes(cp, cn, sae.n_latents))
    used = torch.unique(torch.cat([cp.flatten(), cn.flatten()]))
    facts = {"sae_train_s": round(t_train, 4), "n_train_prompts": n_rows, "l1_coeff": sae.cfg.l1_coeff, "distinct_codes": int((used >= 0).sum()),
             "silent_rows": int((cp == sae.n_latents).sum() + (cn == sae.n_latents).sum())}
    return nodes, edges, facts


def find_discrete_codes(model: Model, task: Task, cfg: CodeConfig | None = None, **overrides) -> Circuit:
    """The discrete-code circuit of ``model`` on ``task`` (see the module docstring).

    Keyword overrides set :class:`CodeConfig` fields (``n_latents=64``, ``code="topk"``, ...).
    Selected circuit: the nodes with a positive score, the edges with a positive score.
    """
    cfg = dataclasses.replace(cfg or CodeConfig(), **overrides)
    model = as_model(model)
    check_task(model, task)
    t0 = time.perf_counter()
    graph = Graph.of(model, for_edges=False)
    vectors = head_vectors(model, task, cfg.averaging, cfg.max_prompts, graph)
    nodes, edges, facts = scores_from_vectors(vectors, cfg, graph)
    return Circuit(model=model.name, task=task.name, method="discrete_codes", node_scores=nodes, edge_scores=edges,
                   nodes=[n for n in graph.nodes if nodes[n] > 0],
                   edges=[[s, d] for s, d in graph.edges if edges[edge_key(s, d)] > 0],
                   params=dataclasses.asdict(cfg), runtime_s=time.perf_counter() - t0,
                   metadata={"citation": CITATION, "n_prompts": vectors.n_prompts, "n_positives": vectors.pos.shape[0],
                             "model_accuracy": vectors.n_correct / vectors.n_prompts, **facts,
                             "selection": "score > 0 (codes unique to positives)"})


ROBUSTNESS_GRID = {
    "averaging": list(AVERAGING),
    "n_latents": [16, 64, 300, 1000],
    "n_train": [4, 6, 10, 20],
    "code": [("argmax", 1), ("topk", 2), ("topk", 3)],
    "l1_coeff": [None, 0.1, 0.3, 1.0, 3.0],
    "seed": [0, 1, 2, 3, 4],
    "normalize": list(NORMALIZE),
}


def robustness(model: Model, task: Task, ground_truth, grid: dict | None = None, base: CodeConfig | None = None) -> dict:
    """Vary one parameter at a time from ``base`` (default :class:`CodeConfig`) and report node and
    edge AUC against ``ground_truth`` for each value, with the spread (max - min) per parameter.

    ``grid`` maps a parameter to its values (default :data:`ROBUSTNESS_GRID`; ``"code"`` takes
    ``(code, k)`` pairs).
    """
    from mechscope.circuits.scoring import score_circuit

    model = as_model(model)
    check_task(model, task)
    base = base or CodeConfig()
    grid = grid or ROBUSTNESS_GRID
    graph = Graph.of(model, for_edges=False)
    cache: dict[str, HeadVectors] = {}
    report: dict = {"base": dataclasses.asdict(base), "parameters": {}}
    for param, values in grid.items():
        rows = []
        for value in values:
            if param == "code":
                code, k = value
                cfg = dataclasses.replace(base, code=code, k=k)
                label = code if code == "argmax" else f"top{k}"
            else:
                cfg = dataclasses.replace(base, **{param: value})
                label = value
            if cfg.averaging not in cache:
                cache[cfg.averaging] = head_vectors(model, task, cfg.averaging, cfg.max_prompts, graph)
            t0 = time.perf_counter()
            nodes, edges, facts = scores_from_vectors(cache[cfg.averaging], cfg, graph)
            c = Circuit(model=model.name, task=task.name, method="discrete_codes", node_scores=nodes, edge_scores=edges)
            s = score_circuit(c, ground_truth, graph)
            rows.append({"value": label, "node_auc": s["nodes"]["auc"], "edge_auc": s["edges"]["auc"] if s["edges"] else None,
                         "node_precision_at_gt": s["nodes"]["at_gt_size"]["precision"], "seconds": round(time.perf_counter() - t0, 3),
                         "distinct_codes": facts["distinct_codes"]})
        aucs = [r["node_auc"] for r in rows if r["node_auc"] is not None]
        eaucs = [r["edge_auc"] for r in rows if r["edge_auc"] is not None]
        report["parameters"][param] = {
            "runs": rows,
            "node_auc_spread": (max(aucs) - min(aucs)) if aucs else None,
            "node_auc_min": min(aucs) if aucs else None,
            "edge_auc_spread": (max(eaucs) - min(eaucs)) if eaucs else None,
        }
    return report
