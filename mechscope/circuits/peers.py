"""Run a peer library's circuit finders on a mechscope model and task, and return mechscope
:class:`~mechscope.circuits.circuit.Circuit` objects scored by mechscope's own scorer.

Peer: the ``auto-circuit`` package (Miller, Chughtai & Saunders 2024, "Transformer Circuit
Faithfulness Metrics are not Robust", arXiv:2407.08734) — its ACDC
(``auto_circuit.prune_algos.ACDC.acdc_prune_scores``) and its EAP (mask gradient at mask value 0,
``auto_circuit.prune_algos.mask_gradient.mask_gradient_prune_scores``; equal to its
``edge_attribution_patching_prune_scores``).

    from mechscope.circuits import load_task_and_truth, score_circuit, Graph
    from mechscope.circuits.peers import auto_circuit_find
    model, task, truth = load_task_and_truth("zoo:greater-than-2l", n=32)
    circuit = auto_circuit_find(model, task, "eap")
    print(score_circuit(circuit, truth, Graph.of(model)))

**Compatibility shim.** auto-circuit 1.0.1 targets TransformerLens 2.x. Under TransformerLens 3
two names it imports are gone: the module ``transformer_lens.past_key_value_caching`` (imported by
``auto_circuit.data``) and the top-level ``transformer_lens.HookedTransformerKeyValueCache``
(imported by ``auto_circuit.utils.graph_utils``). :func:`install_tl_shim` registers a module of
that name in ``sys.modules`` and sets the attribute, both pointing at TransformerLens 3's
``transformer_lens.cache.key_value_cache.TransformerLensKeyValueCache``. auto-circuit only uses
the class in type annotations and optional KV-cache arguments (unused here), so nothing else
changes. The shim adds names only; it never replaces one TransformerLens has.

**Same inputs.** Both peers get mechscope's task as is: ``task.clean`` / ``task.corrupted``
tokens, one batch of all prompts (auto-circuit's ACDC reads only the first batch), patching at
all positions (``seq_len=None``), the output read at the last position (``slice_output="last_seq"``,
which requires every prompt's ``answer_pos`` to be its last token; checked). The model is a deep
copy of mechscope's ``HookedTransformer`` with ``use_attn_result``, ``use_split_qkv_input`` and
``use_hook_mlp_in`` switched on (auto-circuit wraps modules in place).

**Same metric.** EAP takes the gradient of auto-circuit's ``avg_diff`` = mean over a prompt's
answers - mean over its wrong answers, of logits (``grad_function="logit"``, for mechscope's
``logit_diff``) or probabilities (``"prob"``, for ``prob_diff``); the default is the task's own
metric, the one mechscope's ``eap`` uses. Answers: for set tasks (greater-than) the candidate ids
marked correct / incorrect for the prompt — exactly mechscope's ``logit_diff`` (mean correct - mean
incorrect); for ``prob_diff`` mechscope sums the probabilities where auto-circuit averages them,
so the two estimates weight a prompt's correct and incorrect candidates differently (the one
metric auto-circuit cannot express exactly). For single-answer tasks, mechscope's metric is
answer - max over the wrong ids, so the wrong answer passed is the wrong id with the largest
*clean* logit (= largest probability) per prompt; EAP differentiates at the clean run, where the
gradient of the max is that of its argmax, so the estimate is the same.
ACDC: auto-circuit offers only ``kl_div`` and ``mse`` faithfulness targets; it runs with
``kl_div``, the same distance mechscope's ``acdc`` uses by default (KL of the next-token
distribution at the answer position, mean over prompts), and its own threshold grid
(``tao_bases`` x 10^``tao_exps``, absolute; default 20 values 1e-5 .. 9e-2; mechscope's is 20
values relative to the fully corrupted model's distance).

**Scores -> Circuit.** auto-circuit's prune scores are one tensor per destination module; each
edge's score is ``edge.prune_score(scores)``. Names map ``Resid Start`` -> ``embed``, ``A1.2`` ->
``1.2``, ``MLP 0`` -> ``mlp0`` (sources); ``A1.2.Q`` -> ``1.2.q``, ``MLP 0`` -> ``mlp0``,
``Resid End`` -> ``logits`` (receivers) — the graphs are the same (checked: every auto-circuit
edge is a mechscope edge and vice versa). Edge score = ``|score|`` (auto-circuit's own notion of
importance). ACDC's score of a pruned edge is the smallest tau at which it was pruned and ``inf``
for an edge never pruned; ``inf`` becomes ``2 x`` the largest tau of the grid (finite, above every
pruned edge, so the order is unchanged). Node score of a head / MLP = max |score| over its
outgoing edges.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import time
import types
from functools import partial

import torch

from mechscope.circuits.circuit import Circuit, edge_key
from mechscope.circuits.errors import CircuitError
from mechscope.circuits.graph import Graph

PEER_METHODS = ("acdc", "eap")
CITATION = "Miller, Chughtai & Saunders (2024), arXiv:2407.08734; auto-circuit 1.0.1"


def install_tl_shim() -> None:
    """Make auto-circuit 1.0.1 importable under TransformerLens 3 (see the module docstring)."""
    import transformer_lens

    try:
        from transformer_lens.cache.key_value_cache import TransformerLensKeyValueCache
    except ImportError:  # TransformerLens 2.x: the old names exist, nothing to do
        return
    name = "transformer_lens.past_key_value_caching"
    if name not in sys.modules:
        try:
            __import__(name)
        except ImportError:
            shim = types.ModuleType(name)
            shim.__doc__ = ("mechscope shim: TransformerLens 2.x's module, for auto-circuit 1.0.1; "
                            "HookedTransformerKeyValueCache = transformer_lens.cache.key_value_cache.TransformerLensKeyValueCache")
            shim.HookedTransformerKeyValueCache = TransformerLensKeyValueCache
            sys.modules[name] = shim
    if not hasattr(transformer_lens, "HookedTransformerKeyValueCache"):
        transformer_lens.HookedTransformerKeyValueCache = TransformerLensKeyValueCache


def auto_circuit_version() -> str:
    from importlib.metadata import version

    return version("auto-circuit")


def _src_name(name: str) -> str:
    if name == "Resid Start":
        return "embed"
    if name.startswith("MLP "):
        return f"mlp{int(name[4:])}"
    if name.startswith("A"):
        return name[1:]
    raise CircuitError(f"unknown auto-circuit source node {name!r}")


def _dest_name(name: str) -> str:
    if name == "Resid End":
        return "logits"
    if name.startswith("MLP "):
        return f"mlp{int(name[4:])}"
    if name.startswith("A") and name.count(".") == 2:
        layer_head, ch = name[1:].rsplit(".", 1)
        return f"{layer_head}.{ch.lower()}"
    raise CircuitError(f"unknown auto-circuit destination node {name!r}")


def _answers(module, task) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-prompt answer / wrong-answer token ids for auto-circuit's ``avg_diff`` (see the module docstring)."""
    n = len(task)
    if task.is_set_task:
        cand = task.candidate_ids
        return [cand[task.correct[i]] for i in range(n)], [cand[~task.correct[i]] for i in range(n)]
    answers = [task.answer_ids[i : i + 1] for i in range(n)]
    if task.wrong_ids.shape[1] == 1:
        return answers, [task.wrong_ids[i] for i in range(n)]
    with torch.no_grad():
        logits = task.logits_at_answer(module(task.clean))
    picked = logits.gather(1, task.wrong_ids.to(logits.device)).argmax(1)  # the same wrong id has the largest prob
    return answers, [task.wrong_ids[i, picked[i]].reshape(1) for i in range(n)]


def prepare(model, task):
    """``(patchable model, dataloader)`` for auto-circuit from a mechscope model and task."""
    install_tl_shim()
    from auto_circuit.data import PromptDataLoader, PromptDataset
    from auto_circuit.utils.graph_utils import patchable_model

    module = getattr(model, "module", model)
    last = task.seq_len - 1
    if not bool((task.answer_pos == last).all()):
        raise CircuitError(f"auto-circuit reads the output at the last position (slice_output='last_seq'); task {task.name!r} "
                           f"has answer positions {sorted(set(task.answer_pos.tolist()))[:6]} != {last} (padded prompts)")
    answers, wrong = _answers(module, task)
    dataset = PromptDataset(task.clean, task.corrupted, answers, wrong)
    loader = PromptDataLoader(dataset, seq_len=None, diverge_idx=0, batch_size=len(task), shuffle=False)
    ac_model = copy.deepcopy(module).eval()
    ac_model.set_use_attn_result(True)
    ac_model.set_use_split_qkv_input(True)
    if not ac_model.cfg.attn_only:
        ac_model.set_use_hook_mlp_in(True)
    for p in ac_model.parameters():
        p.requires_grad_(False)
    pm = patchable_model(ac_model, factorized=True, slice_output="last_seq", seq_len=None, separate_qkv=True,
                         device=next(module.parameters()).device)
    return pm, loader


def to_circuit(pm, prune_scores: dict, graph: Graph, model_name: str, task_name: str, method: str, inf_value: float | None = None,
               params: dict | None = None, runtime_s: float = 0.0, metadata: dict | None = None) -> Circuit:
    """A mechscope Circuit from auto-circuit prune scores (see the module docstring)."""
    edge_scores: dict[str, float] = {}
    for e in pm.edges:
        v = float(e.prune_score(prune_scores))
        if v == float("inf"):
            if inf_value is None:
                raise CircuitError(f"auto-circuit gave edge {e.name} an infinite score and no finite stand-in was given")
            v = inf_value
        key = edge_key(_src_name(e.src.name), _dest_name(e.dest.name))
        edge_scores[key] = abs(v)
    want = set(graph.edge_keys)
    if set(edge_scores) != want:
        raise CircuitError(f"auto-circuit's graph differs from mechscope's: only auto-circuit {sorted(set(edge_scores) - want)[:6]}, "
                           f"only mechscope {sorted(want - set(edge_scores))[:6]}")
    node_scores = {n: 0.0 for n in graph.nodes}
    for key, v in edge_scores.items():
        src = key.split("->")[0]
        if src in node_scores:
            node_scores[src] = max(node_scores[src], v)
    edge_scores = {k: edge_scores[k] for k in graph.edge_keys}  # mechscope order
    return Circuit(model=model_name, task=task_name, method=f"auto-circuit:{method}", node_scores=node_scores, edge_scores=edge_scores,
                   params=params or {}, runtime_s=runtime_s,
                   metadata={"citation": CITATION, "library": "auto-circuit", **(metadata or {}),
                             "graph": graph.to_dict()})


@contextlib.contextmanager
def _progress(module, show: bool):
    """auto-circuit's algorithms draw tqdm bars (to stderr) through a module-level ``tqdm``; hide them
    unless ``show``."""
    orig = module.tqdm
    if not show:
        module.tqdm = partial(orig, disable=True)
    try:
        yield
    finally:
        module.tqdm = orig


GRAD_FUNCTIONS = {"logit_diff": "logit", "prob_diff": "prob"}  # mechscope metric -> auto-circuit grad_function


def auto_circuit_find(model, task, method: str, metric: str | None = None, tao_exps: list[int] | None = None,
                      tao_bases: list[int] | None = None, progress: bool = False) -> Circuit:
    """Run auto-circuit's ``acdc`` or ``eap`` on ``model`` / ``task``; the runtime counts auto-circuit's
    own call only (not the model copy and wrapping, which :attr:`Circuit.metadata` records as
    ``setup_s``). ``metric`` (EAP only): ``logit_diff`` or ``prob_diff`` (default: the task's, as
    mechscope's ``eap`` uses). ``tao_exps`` / ``tao_bases``: ACDC's threshold grid (auto-circuit's
    defaults: ``range(-5, -1)`` and ``[1, 3, 5, 7, 9]``). ``progress``: show auto-circuit's tqdm bars."""
    if method not in PEER_METHODS:
        raise CircuitError(f"auto-circuit peer method must be one of {PEER_METHODS}; found {method!r}")
    metric = metric or task.default_metric
    if method == "eap" and metric not in GRAD_FUNCTIONS:
        raise CircuitError(f"auto-circuit's EAP differentiates {sorted(GRAD_FUNCTIONS)}; found metric {metric!r}")
    install_tl_shim()
    graph = Graph.of(model)
    name = getattr(model, "name", type(model).__name__)
    t0 = time.perf_counter()
    pm, loader = prepare(model, task)
    setup = time.perf_counter() - t0
    if method == "acdc":
        import auto_circuit.prune_algos.ACDC as algo

        exps = list(range(-5, -1)) if tao_exps is None else list(tao_exps)
        bases = [1, 3, 5, 7, 9] if tao_bases is None else list(tao_bases)
        t1 = time.perf_counter()
        with _progress(algo, progress):
            scores = algo.acdc_prune_scores(pm, loader, official_edges=None, tao_exps=exps, tao_bases=bases, faithfulness_target="kl_div")
        runtime = time.perf_counter() - t1
        taus = sorted(b * 10.0**e for b in bases for e in exps)
        return to_circuit(pm, scores, graph, name, task.name, "acdc", inf_value=2 * max(taus),
                          params={"faithfulness_target": "kl_div", "taus": taus, "n_prompts": len(task)}, runtime_s=runtime,
                          metadata={"setup_s": setup, "never_pruned_score": 2 * max(taus)})
    import auto_circuit.prune_algos.mask_gradient as algo
    from auto_circuit.types import AblationType

    t1 = time.perf_counter()
    with _progress(algo, progress):
        scores = algo.mask_gradient_prune_scores(pm, loader, official_edges=None, grad_function=GRAD_FUNCTIONS[metric], answer_function="avg_diff",
                                                 mask_val=0.0, integrated_grad_samples=None, ablation_type=AblationType.RESAMPLE,
                                                 clean_corrupt="corrupt")
    runtime = time.perf_counter() - t1
    return to_circuit(pm, scores, graph, name, task.name, "eap",
                      params={"metric": metric, "grad_function": GRAD_FUNCTIONS[metric], "answer_function": "avg_diff", "mask_val": 0.0,
                              "n_prompts": len(task)},
                      runtime_s=runtime, metadata={"setup_s": setup})
