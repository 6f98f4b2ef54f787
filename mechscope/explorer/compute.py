"""What the explorer shows, computed as plain data (lists, dicts, floats) — no web types here.

* :func:`run_prompt` — one forward pass: logits and the activations every loaded dictionary reads.
* :func:`analyze_prompt` — tokens, the model's top predictions after each token, and the top
  active features of each dictionary at each token.
* :func:`feature_activations` — one feature's activation across the prompt.
* :func:`attention_breakdown` — for an SAE on ``blocks.L.attn.hook_z``: the feature's
  pre-activation at one query position split by head, and its direct feature attribution (DFA)
  over source positions and heads (computed by :mod:`mechscope.attention`).
* :func:`feature_output_directions` / :func:`logit_effects` — what a feature's decoder direction
  does to the logits (``W_dec @ W_U``, through ``W_O`` for ``hook_z`` dictionaries).
* :func:`circuit_view` — a :class:`~mechscope.circuits.Circuit` as a layered graph, with its
  score against a ground truth when there is one.

Shapes: ``pos`` = prompt length (BOS included), ``M`` = number of latents, ``H`` = heads.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from mechscope.explorer.errors import IncompatibleError, InputError, NotFoundError

_HOOK_Z = re.compile(r"^blocks\.(\d+)\.attn\.hook_z$")
_RESID = re.compile(r"^(blocks\.\d+\.(hook_resid_pre|hook_resid_mid|hook_resid_post|hook_mlp_out|hook_attn_out)|hook_embed|hook_pos_embed)$")
_MLP_POST = re.compile(r"^blocks\.(\d+)\.mlp\.hook_post$")


def _r(x: float, nd: int = 5) -> float:
    """Round for JSON (keeps payloads small; NaN/Inf are errors upstream)."""
    return float(round(float(x), nd))


# -- tokens ---------------------------------------------------------------------------------
def token_texts(tokenizer, ids: Sequence[int]) -> list[str]:
    """The text of each token on its own (byte-level pieces may show as replacement chars)."""
    return [tokenizer.decode([int(i)]) for i in ids]


def tokenize_prompt(model, prompt: str, max_tokens: int) -> torch.Tensor:
    """``[pos]`` token ids of ``prompt`` with BOS first; :class:`InputError` when it has more
    than ``max_tokens`` tokens."""
    if model.tokenizer is None:
        raise InputError(f"model {model.name!r} has no tokenizer, so it cannot read a prompt")
    tokens = model.to_tokens(prompt)[0].cpu()
    if tokens.numel() > max_tokens:
        raise InputError(f"the prompt has {tokens.numel()} tokens (BOS included); this server accepts at most {max_tokens}")
    return tokens


# -- dictionaries on a model ----------------------------------------------------------------
def is_attention_sae(dictionary) -> bool:
    """An SAE on ``blocks.L.attn.hook_z`` (the concatenated per-head ``z``, before ``W_O``)."""
    cfg = dictionary.cfg
    return cfg.kind == "sae" and bool(cfg.hook_in) and bool(_HOOK_Z.match(cfg.hook_in))


def attention_shape(model, dictionary) -> tuple[int, int]:
    """``(n_heads, d_head)`` of an attention-output SAE: its ``act_shape`` or the model's config."""
    shape = dictionary.cfg.act_shape
    if shape and len(shape) == 2:
        return int(shape[0]), int(shape[1])
    cfg = getattr(model.module, "cfg", None)
    if cfg is None:
        raise IncompatibleError(f"dictionary on {dictionary.cfg.hook_in} has no act_shape and the model has no TransformerLens config to infer [n_heads, d_head]")
    return int(cfg.n_heads), int(cfg.d_head)


def hooks_needed(dictionaries: Sequence) -> list[str]:
    """Hook names one forward pass must capture: each dictionary's input."""
    return list(dict.fromkeys(d.cfg.hook_in for d in dictionaries))


def encode(dictionary, act: torch.Tensor) -> torch.Tensor:
    """Codes ``[pos, M]`` for activations ``[pos, ...]`` (flattened per position)."""
    flat = act.reshape(act.shape[0], -1)
    if flat.shape[-1] != dictionary.cfg.d_in:
        raise IncompatibleError(f"dictionary on {dictionary.cfg.hook_in} expects {dictionary.cfg.d_in} numbers per position; "
                                f"the model's {dictionary.cfg.hook_in} has {flat.shape[-1]} (shape {list(act.shape[1:])})")
    with torch.no_grad():
        return dictionary.encode(flat.to(dictionary.device)).float().cpu()


# -- one prompt ------------------------------------------------------------------------------
@dataclass
class PromptRun:
    """One forward pass on a prompt. tokens ``[pos]``; logits ``[pos, vocab]``; acts: hook ->
    ``[pos, ...]``; codes: dictionary index -> ``[pos, M]``."""

    prompt: str
    tokens: torch.Tensor
    logits: torch.Tensor
    acts: dict[str, torch.Tensor]
    codes: dict[int, torch.Tensor]


def _logits_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    raise IncompatibleError(f"the model returned {type(output).__name__}; expected logits [batch, pos, vocab]")


def run_prompt(model, prompt: str, dictionaries: Sequence, max_tokens: int) -> PromptRun:
    """Tokenise, run the model once, capture the hooks the dictionaries need and encode them."""
    from mechscope.models import run_with_cache

    tokens = tokenize_prompt(model, prompt, max_tokens)
    names = hooks_needed(dictionaries)
    batch = tokens[None].to(model.device)
    if names:
        out, cache = run_with_cache(model, batch, names, return_output=True, cache_device="cpu")
    else:
        with torch.no_grad():
            out = model.module(batch)
        cache = {}
    logits = _logits_of(out)
    if logits.dim() != 3 or logits.shape[1] != tokens.numel():
        raise IncompatibleError(f"expected logits [1, {tokens.numel()}, vocab] from the model, found {list(logits.shape)}")
    acts = {k: v[0].float() for k, v in cache.items()}
    codes = {i: encode(d, acts[d.cfg.hook_in]) for i, d in enumerate(dictionaries)}
    return PromptRun(prompt=prompt, tokens=tokens, logits=logits[0].float().cpu(), acts=acts, codes=codes)


def top_predictions(logits: torch.Tensor, tokenizer, k: int) -> list[list[dict]]:
    """Per position, the ``k`` most likely next tokens: ``{"id", "text", "prob", "logit"}``."""
    probs = logits.float().softmax(-1)
    vals, idx = probs.topk(min(k, probs.shape[-1]), dim=-1)
    out = []
    for p in range(logits.shape[0]):
        ids = idx[p].tolist()
        texts = token_texts(tokenizer, ids)
        out.append([{"id": int(i), "text": t, "prob": _r(v), "logit": _r(logits[p, i])} for i, t, v in zip(ids, texts, vals[p].tolist())])
    return out


def top_features(codes: torch.Tensor, k: int) -> list[list[dict]]:
    """Per position, the ``k`` most active features (active = activation > 0)."""
    vals, idx = codes.topk(min(k, codes.shape[-1]), dim=-1)
    return [[{"feature": int(f), "act": _r(v)} for f, v in zip(idx[p].tolist(), vals[p].tolist()) if v > 0] for p in range(codes.shape[0])]


def analyze_prompt(run: PromptRun, tokenizer, dictionaries: Sequence, top_k_predictions: int = 5, top_k_features: int = 5) -> dict:
    """Tokens, top predictions after each token, and each dictionary's top features at each token."""
    ids = run.tokens.tolist()
    return {
        "prompt": run.prompt,
        "tokens": [{"index": i, "id": int(t), "text": s} for i, (t, s) in enumerate(zip(ids, token_texts(tokenizer, ids)))],
        "predictions": top_predictions(run.logits, tokenizer, top_k_predictions),
        "features": [{"dictionary": i, "top": top_features(run.codes[i], top_k_features),
                      "active_per_token": (run.codes[i] > 0).sum(-1).tolist()} for i in range(len(dictionaries))],
    }


def check_feature(dictionary, feature: int, dictionary_id: int = 0) -> None:
    if not 0 <= feature < dictionary.cfg.n_latents:
        raise NotFoundError(f"dictionary {dictionary_id} has features 0..{dictionary.cfg.n_latents - 1}; found feature {feature}")


def feature_activations(run: PromptRun, dictionary_id: int, dictionary, feature: int) -> dict:
    """Feature ``feature``'s activation at each token of the prompt, and where it peaks."""
    check_feature(dictionary, feature, dictionary_id)
    acts = run.codes[dictionary_id][:, feature]
    return {"dictionary": dictionary_id, "feature": feature, "acts": [_r(a) for a in acts.tolist()],
            "max": _r(acts.max()), "argmax": int(acts.argmax())}


# -- attention-output SAEs ---------------------------------------------------------------------
def attention_breakdown(run: PromptRun, model, dictionary_id: int, dictionary, feature: int, position: int) -> dict:
    """Head split and DFA of feature ``feature`` of an SAE on ``blocks.L.attn.hook_z`` at query
    ``position``, from :mod:`mechscope.attention` (Kissane et al. 2024).

    The pre-activation splits exactly (see :mod:`mechscope.attention.dfa`) into
    ``dfa[h, k] = pattern[h, q, k] * (v[k, h] - b_V[h]) . W_enc[f, h]`` (source tokens),
    ``value_bias[h]`` (the value bias that head h passes on) and ``bias = b_enc[f] - b_dec .
    W_enc[f]``, so ``by_head[h] = sum_k dfa[h, k] + value_bias[h]`` and ``pre_activation =
    sum_h by_head[h] + bias``; ``check`` is the largest gap to the SAE's own pre-activation.
    ``decoder_share[h] = ||W_dec[f, h]|| / sum_h' ||W_dec[f, h']||`` says which heads the feature
    writes back through.

    Integration point with the attention room: ``attention_inputs``, ``dfa_rows`` and
    ``head_attribution`` from :mod:`mechscope.attention`; the caller holds the model lock (this
    runs one forward pass for the layer's pattern and values).
    """
    from mechscope.attention import attention_inputs, dfa_rows, head_attribution, zsae_info

    check_feature(dictionary, feature, dictionary_id)
    if not is_attention_sae(dictionary):
        raise InputError(f"head split and DFA are defined for SAEs on blocks.L.attn.hook_z; this dictionary reads {dictionary.cfg.hook_in}")
    n = run.tokens.numel()
    if not 0 <= position < n:
        raise InputError(f"position must be in [0, {n}); found {position}")
    info = zsae_info(dictionary, model)
    inputs = attention_inputs(model, run.tokens[None].to(model.device), info.layer)
    dfa = dfa_rows(dictionary, inputs, [[0, position, feature]], info=info)
    sources = dfa.sources[0, :, : position + 1].float().cpu()  # [H, k <= q]; later keys have pattern 0
    share = head_attribution(dictionary, model).fractions[feature]
    return {
        "layer": info.layer, "position": position, "n_heads": info.n_heads,
        "activation": _r(dfa.act[0]), "pre_activation": _r(dfa.pre[0]),
        "bias": _r(dfa.encoder_bias[0] + dfa.centering[0]),
        "by_head": [_r(x) for x in dfa.by_head()[0].tolist()],
        "value_bias": [_r(x) for x in dfa.value_bias[0].tolist()],
        "decoder_share": [_r(x) for x in share.tolist()],
        "dfa": [[_r(x) for x in row] for row in sources.tolist()],  # [H][k]
        "dfa_by_source": [_r(x) for x in sources.sum(0).tolist()],  # [k]
        "check": float(dfa.error()),
    }


# -- decoder directions -> logits ---------------------------------------------------------------
def feature_output_directions(model, dictionary) -> torch.Tensor | None:
    """``[M, d_model]``: each feature's decoder direction as a write to the residual stream, or
    None when the dictionary's output is not something the explorer can map there.

    SAEs and transcoders whose target is a residual-stream hook (``hook_resid_*``,
    ``hook_mlp_out``, ``hook_attn_out``) write ``W_dec`` directly; ``attn.hook_z`` SAEs write
    ``sum_h W_dec[:, h] @ W_O[L, h]``; ``mlp.hook_post`` dictionaries write ``W_dec @ W_out[L]``.
    """
    module = model.module
    cfg = getattr(module, "cfg", None)
    if cfg is None or not hasattr(module, "W_U"):
        return None
    hook = dictionary.cfg.target_hook or ""
    W_dec = dictionary.W_dec.detach().float().cpu()
    if m := _HOOK_Z.match(hook):
        H, dh = attention_shape(model, dictionary)
        W_O = module.blocks[int(m.group(1))].attn.W_O.detach().float().cpu()  # [H, dh, d_model]
        return torch.einsum("mhd,hde->me", W_dec.view(-1, H, dh), W_O)
    if _MLP_POST.match(hook):
        return W_dec @ module.blocks[int(_MLP_POST.match(hook).group(1))].mlp.W_out.detach().float().cpu()
    if _RESID.match(hook) and W_dec.shape[1] == cfg.d_model:
        return W_dec
    return None


def logit_effects(model, dictionary, n: int = 10, chunk: int = 1024) -> tuple[torch.Tensor, ...] | None:
    """For every feature, the ``n`` tokens whose logits its decoder direction raises most and
    lowers most (through ``W_U``, without the final LayerNorm): ``(top_ids, top_vals, bottom_ids,
    bottom_vals)``, each ``[M, n]``. None when :func:`feature_output_directions` is None."""
    dirs = feature_output_directions(model, dictionary)
    if dirs is None:
        return None
    W_U = model.module.W_U.detach().float().cpu()
    n = min(n, W_U.shape[1])
    parts = []
    for s in range(0, dirs.shape[0], chunk):
        eff = dirs[s : s + chunk] @ W_U
        tv, ti = eff.topk(n, dim=-1)
        bv, bi = eff.topk(n, dim=-1, largest=False)
        parts.append((ti, tv, bi, bv))
    return tuple(torch.cat([p[j] for p in parts]) for j in range(4))


# -- circuits -----------------------------------------------------------------------------------
def _node_layer(node: str) -> float | None:
    """Column of a node in forward order: embed -1, head L -> L, MLP L -> L + 0.5; None for
    logits and for node kinds the explorer does not know (drawn after the last layer)."""
    if node == "embed":
        return -1.0
    if node.startswith("mlp") and node[3:].isdigit():
        return int(node[3:]) + 0.5
    head = node.split(".")
    if len(head) >= 2 and head[0].isdigit():
        return float(head[0])
    return None


def circuit_graph_info(circuit, model=None):
    """The :class:`~mechscope.circuits.Graph` a circuit was found on: recorded in its metadata,
    else the served model's graph when the circuit names that model, else None."""
    from mechscope.circuits import Graph
    from mechscope.circuits.errors import CircuitError

    try:
        return Graph.of_circuit(circuit)
    except CircuitError:
        pass  # no graph recorded: fall back to the served model when it is the circuit's model
    if model is not None and circuit.model in (model.name, model.meta.get("spec")):
        try:
            return Graph.of(model, for_edges=False)  # names and layout only
        except CircuitError:
            return None
    return None


def circuit_view(circuit, graph=None, ground_truth=None, max_edges: int = 300) -> dict:
    """A circuit as a layered graph: nodes (with layer column, score, selected, in ground truth),
    the ``max_edges`` highest-|score| edges (plus every selected edge), and the score against
    ``ground_truth`` (``score_circuit``) when one is given and a graph is known."""
    from mechscope.circuits.circuit import receiver_node, split_edge

    truth_nodes = set(ground_truth.nodes) if ground_truth is not None else set()
    truth_edges = {(a, b) for a, b in (ground_truth.edges or [])} if ground_truth is not None else set()
    selected = set(circuit.nodes)
    names: list[str] = ["embed"]
    names += list(graph.nodes) if graph is not None else sorted(circuit.node_scores, key=lambda n: (_sort_layer(n), n))
    names += [n for n in circuit.nodes if n not in names]
    names.append("logits")
    names = list(dict.fromkeys(names))
    max_abs = max((abs(v) for v in circuit.node_scores.values()), default=0.0) or 1.0
    nodes = [{"id": n, "layer": _node_layer(n), "kind": _kind(n),
              "score": _r(circuit.node_scores[n]) if n in circuit.node_scores else None,
              "norm_score": _r(circuit.node_scores.get(n, 0.0) / max_abs),
              "selected": n in selected or n in ("embed", "logits"), "in_truth": n in truth_nodes}
             for n in names]
    chosen = {tuple(e) for e in circuit.edges}
    ranked = sorted(circuit.edge_scores.items(), key=lambda kv: -abs(kv[1]))
    keep = dict(ranked[:max_edges])
    for a, b in chosen:
        key = f"{a}->{b}"
        keep.setdefault(key, circuit.edge_scores.get(key, 0.0))
    max_e = max((abs(v) for v in keep.values()), default=0.0) or 1.0
    edges = []
    for key, score in keep.items():
        src, dst = split_edge(key)
        parts = dst.split(".")
        edges.append({"src": src, "dst": receiver_node(dst), "channel": parts[2] if len(parts) == 3 else None,
                      "score": _r(score), "norm_score": _r(score / max_e), "selected": (src, dst) in chosen,
                      "in_truth": (src, dst) in truth_edges})
    known = {n["id"] for n in nodes}
    for e in edges:  # endpoints not in the node list (e.g. features) get their own nodes
        for end in (e["src"], e["dst"]):
            if end not in known:
                nodes.append({"id": end, "layer": _node_layer(end), "kind": _kind(end), "score": None, "norm_score": 0.0,
                              "selected": False, "in_truth": end in truth_nodes})
                known.add(end)
    score, score_error = None, None
    if ground_truth is not None:
        if graph is None:
            score_error = "no graph: the circuit records no metadata.graph and names a model other than the served one"
        else:
            from mechscope.circuits import score_circuit
            from mechscope.errors import MechscopeError

            try:
                score = score_circuit(circuit, ground_truth, graph)
            except MechscopeError as e:  # shown to the user next to the graph, not hidden
                score_error = f"{type(e).__name__}: {e}"
    return {
        "model": circuit.model, "task": circuit.task, "method": circuit.method, "params": circuit.params,
        "runtime_s": circuit.runtime_s, "n_node_scores": len(circuit.node_scores), "n_edge_scores": len(circuit.edge_scores),
        "n_edges_shown": len(edges), "graph": repr(graph) if graph is not None else None,
        "n_layers": graph.n_layers if graph is not None else None,
        "nodes": nodes, "edges": edges,
        "ground_truth": ({"model": ground_truth.model, "task": ground_truth.task, "nodes": ground_truth.nodes,
                          "n_edges": len(ground_truth.edges or []), "citation": ground_truth.citation}
                         if ground_truth is not None else None),
        "score": score, "score_error": score_error,
    }


def _sort_layer(node: str) -> float:
    layer = _node_layer(node)
    return math.inf if layer is None else layer


def _kind(node: str) -> str:
    if node in ("embed", "logits"):
        return node
    if node.startswith("mlp"):
        return "mlp"
    if re.match(r"^\d+\.\d+$", node):
        return "head"
    return "other"
