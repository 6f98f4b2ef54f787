"""Model cards: measure an organism on its task and write ``card.json`` + ``card.md`` next to
its weights; read them back; verify a shipped organism against its card.

Evaluation protocol (fixed, so every number is reproducible): metrics on ``N_METRICS`` held-out
prompts drawn with ``EVAL_SEED``; mean-ablation means over ``N_REFERENCE`` *other* held-out
prompts (seed ``EVAL_SEED + 1``); the exhaustive circuit search on the first ``N_SEARCH``
evaluation prompts; patching on the first ``N_PATCH``. ``mechscope zoo verify NAME`` recomputes
all of it and compares with the card.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from mechscope.errors import FormatError
from mechscope.files import read_json, write_json

CARD_FORMAT = "mechscope.model_card"
CARD_VERSION = 1
EVAL_SEED = 1000
N_METRICS = 512
N_REFERENCE = 256
N_SEARCH = 128
N_PATCH = 256
THRESHOLD = 0.9
NECESSITY = 0.2
METRIC_NAMES = ("logit_diff", "prob_diff", "accuracy", "binary_accuracy")


def _r(x: float, d: int = 4) -> float:
    return round(float(x), d)


def task_for(spec, tokenizer, n: int, seed: int, split: str):
    from mechscope.tasks import make_task

    return make_task(spec.task, tokenizer, n=n, seed=seed, split=split, variant=spec.variant, **spec.task_kwargs)


@torch.no_grad()
def task_metrics(model, task, corrupted: bool = False) -> dict:
    """Every metric of ``model`` on ``task`` (clean prompts, or corrupted ones)."""
    from mechscope.zoo.analysis import answer_logits

    logits = answer_logits(model, task.corrupted if corrupted else task.clean, task.answer_pos)
    return {m: _r(task.metric(logits, m)) for m in METRIC_NAMES}


def measure(model, spec, progress: Callable[[str], None] | None = None) -> dict:
    """Every measured number of a card (metrics, ablations, patching, circuit, edges)."""
    from mechscope.zoo.analysis import circuit_faithfulness, component_names, exhaustive_search, mean_activations, patching_effects

    say = progress or (lambda msg: None)
    tok = model.tokenizer
    t0 = time.perf_counter()
    heldout = task_for(spec, tok, N_METRICS, EVAL_SEED, "heldout")
    train = task_for(spec, tok, N_METRICS, EVAL_SEED, "train")
    reference = task_for(spec, tok, N_REFERENCE, EVAL_SEED + 1, "heldout")
    say("metrics")
    metrics = {"heldout": task_metrics(model, heldout), "heldout_corrupted": task_metrics(model, heldout, corrupted=True),
               "train": task_metrics(model, train)}
    means = mean_activations(model, reference.clean)
    say(f"exhaustive search over 2^{len(component_names(model))} subsets")
    search = exhaustive_search(model, heldout.subset(slice(0, N_SEARCH)), means, threshold=THRESHOLD, necessity=NECESSITY)
    nodes = search["circuit"]["nodes"]
    say("circuit faithfulness on all evaluation prompts")
    faith = circuit_faithfulness(model, heldout, nodes, means=means)
    say("path patching and edges")
    patch = patching_effects(model, heldout.subset(slice(0, N_PATCH)), nodes=nodes)
    return {
        "task_metric": heldout.default_metric,
        "metrics": metrics,
        "search": search,
        "faithfulness": {k: (_r(v) if isinstance(v, float) else v) for k, v in faith.items()},
        "patching": patch,
        "analysis_seconds": round(time.perf_counter() - t0, 1),
    }


def build_card(model, spec, training: dict, directory: Path, progress: Callable[[str], None] | None = None) -> dict:
    from mechscope.tasks.ground_truth import node_sort_key

    m = measure(model, spec, progress)
    name = spec.name
    verify = f"mechscope zoo verify {name}"
    search, faith, patch = m["search"], m["faithfulness"], m["patching"]
    nodes = sorted(search["circuit"]["nodes"], key=node_sort_key)
    n_params = sum(p.numel() for p in model.module.parameters())
    weights = directory / "model.safetensors"
    from mechscope.tasks import make_task  # noqa: F401  (citation lookup below)

    citation = task_for(spec, model.tokenizer, 1, EVAL_SEED, "heldout").metadata.get("citation", "")
    return {
        "format": CARD_FORMAT,
        "version": CARD_VERSION,
        "name": name,
        "description": spec.description,
        "architecture": {
            "n_layers": spec.n_layers, "n_heads": spec.n_heads, "d_model": spec.d_model, "d_head": spec.d_head,
            "d_mlp": spec.d_mlp, "attn_only": spec.attn_only, "n_ctx": spec.n_ctx, "d_vocab": 4096, "params": n_params,
            "weights_bytes": weights.stat().st_size if weights.exists() else None,
            "tokenizer": "mechscope.data.default_tokenizer() (byte-level BPE, 4096, stdlib train split); shipped as tokenizer.json",
        },
        "training": {**{k: v for k, v in training.items() if k != "loss_log"}, "spec": spec.to_dict(),
                     "data": "task rows from the task's train split + code-corpus contexts (stdlib train split)"},
        "task": {
            "name": spec.task, "variant": spec.variant, "kwargs": spec.task_kwargs, "metric": m["task_metric"], "citation": citation,
            "evaluation": {"split": "heldout", "seed": EVAL_SEED, "n": N_METRICS, "reference_seed": EVAL_SEED + 1,
                           "n_reference": N_REFERENCE, "n_search": N_SEARCH, "n_patch": N_PATCH},
        },
        "metrics": {**m["metrics"], "command": f"{verify} --json   # .metrics"},
        "mean_ablation": {
            "definition": "output replaced by its per-position mean over the reference prompts; faithfulness f(C) = "
                          "(m(C) - m(none)) / (m(all) - m(none)) with only C kept",
            "metric_full": _r(search["metric_full"]), "metric_all_ablated": _r(search["metric_all_ablated"]),
            "faithfulness_when_ablated_alone": search["single_ablation"],
            "faithfulness_when_kept_alone": search["single_kept"],
            "command": f"{verify} --json   # .mean_ablation",
        },
        "path_patching": {
            "definition": "direct effect: the component's corrupted-minus-clean output added only on its path to the logits "
                          "(final LayerNorm scale frozen at clean); total effect: the component's output patched from the corrupted "
                          "run at every position. Both as a fraction of m(corrupted) - m(clean).",
            "metric_clean": _r(patch["metric_clean"]), "metric_corrupted": _r(patch["metric_corrupted"]),
            "direct": patch["direct"], "total": patch["total"],
            "command": f"{verify} --json   # .path_patching",
        },
        "circuit": {
            "nodes": nodes,
            "edges": patch["edges"],
            "faithfulness": faith["faithfulness"],
            "complement_faithfulness": faith["complement_faithfulness"],
            "metric_circuit_only": faith["circuit_only"],
            "metric_circuit_ablated": faith["circuit_ablated"],
            "accuracy_circuit_only": faith["accuracy_circuit_only"],
            "accuracy_circuit_ablated": faith["accuracy_circuit_ablated"],
            "accuracy_all_ablated": faith["accuracy_all_ablated"],
            "n_components": len(search["components"]),
            "definition": f"smallest set with f(C) >= {THRESHOLD} (sufficient) and f(complement) <= {NECESSITY} (necessary), "
                          "everything else mean-ablated",
            "search": {k: search[k] for k in ("method", "n_subsets", "components", "metric", "threshold", "necessity_threshold",
                                              "circuit", "circuit_ties", "other_sufficient_and_necessary_same_size",
                                              "minimal_sufficient", "runner_up_smaller", "runner_up_same_size")},
            "search_note": "exhaustive: the faithfulness of every one of the 2^K subsets was measured (search.table), so the "
                           "minimum is exact for the search prompts",
            "table": search["table"],
            "edges_measured": patch["edges_measured"],
            "edge_definition": f"sender's corrupted-minus-clean output added only to the receiver's q/k/v (or MLP) input; "
                               f"edges kept when |effect| >= {patch['edge_threshold']} of m(corrupted) - m(clean)",
            "command": f"{verify} --json   # .circuit",
        },
        "commands": {
            "train": training.get("command", f"mechscope zoo train {name}"),
            "verify": verify,
            "show": f"mechscope zoo show {name} --json",
        },
        "analysis_seconds": m["analysis_seconds"],
    }


def _distillation_lines(d: dict | None) -> list[str]:
    if not d:
        return []
    last = d["log"][-1]
    return [f"Then circuit distillation (`mechscope.zoo.distill`), {d['steps']} steps at lr {d['lr']}: the task fine-tuned into "
            f"{', '.join(d['chosen']['nodes'])}, the best choice by {d['selection']} (faithfulness {d['chosen']['faithfulness']} "
            f"before); final task loss {last['task_loss']} (full model), {last['task_loss_only_chosen']} (only the chosen set kept). "
            "The circuit below is measured afterwards on held-out prompts, like every organism's.", ""]


def render_markdown(card: dict) -> str:
    a, t, c, mt = card["architecture"], card["training"], card["circuit"], card["metrics"]
    ho = mt["heldout"]
    metric = card["task"]["metric"]
    lines = [
        f"# {card['name']}", "", card["description"], "",
        "## Architecture", "",
        f"{a['n_layers']} layers x {a['n_heads']} heads, d_model {a['d_model']}, d_head {a['d_head']}, "
        f"{'attention-only' if a['attn_only'] else 'MLPs d_mlp ' + str(a['d_mlp'])}, n_ctx {a['n_ctx']}, vocab {a['d_vocab']}; "
        f"{a['params']:,} parameters, {a['weights_bytes'] or 0:,} bytes of weights.", "",
        "## Training", "",
        f"`{t['command']}` — seed {t['seed']}, {t['steps']} steps, {t['train_seconds']} s on CPU"
        f"{', distillation included' if t.get('distillation') else ''} ({t['threads']} threads, torch {t['torch']}); "
        f"final task loss {t['final_task_loss']}, code-corpus loss {t['final_corpus_loss']}. Data: {t['data']}.", "",
        *_distillation_lines(t.get("distillation")),
        "## Task", "",
        f"`{card['task']['name']}` variant `{card['task']['variant']}` {card['task']['kwargs'] or ''} — {card['task']['citation']}", "",
        f"Held-out evaluation: {card['task']['evaluation']}", "",
        "| prompts | logit diff | prob diff | accuracy (top-1) | binary accuracy |", "|---|---|---|---|---|",
    ]
    for k in ("heldout", "heldout_corrupted", "train"):
        r = mt[k]
        lines.append(f"| {k} | {r['logit_diff']} | {r['prob_diff']} | {r['accuracy']} | {r['binary_accuracy']} |")
    lines += ["", f"Reproduce: `{mt['command']}`", "", "## Circuit", "",
              f"**Nodes: {', '.join(c['nodes'])}** ({len(c['nodes'])} of {c['n_components']} components). "
              f"Faithfulness (only the circuit kept, {metric}): **{c['faithfulness']}**; with the circuit ablated: "
              f"**{c['complement_faithfulness']}**. Accuracy: circuit only {c['accuracy_circuit_only']}, circuit ablated "
              f"{c['accuracy_circuit_ablated']}, everything ablated {c['accuracy_all_ablated']} (full model {ho['accuracy']}).", "",
              f"Definition: {c['definition']}. Search: {c['search_note']} ({c['search']['n_subsets']} subsets).", "",
              f"Smallest merely-sufficient sets: {[s['nodes'] for s in c['search']['minimal_sufficient']]}; best smaller set: "
              f"{c['search']['runner_up_smaller']}; runner-up of the same size: {c['search']['runner_up_same_size']}.", "",
              f"Edges (|effect| >= threshold): {', '.join(f'{s}->{d}' for s, d in c['edges']) or 'none'}. {c['edge_definition']}.", "",
              f"Reproduce: `{c['command']}`", "", "## Per-component effects", "",
              f"Mean-ablation: m(all) = {card['mean_ablation']['metric_full']}, m(none) = {card['mean_ablation']['metric_all_ablated']}. "
              f"Path patching: m(clean) = {card['path_patching']['metric_clean']}, m(corrupted) = {card['path_patching']['metric_corrupted']}.", "",
              "| component | f, ablated alone | f, kept alone | direct effect (path patching) | total effect (activation patching) |",
              "|---|---|---|---|---|"]
    for comp in c["search"]["components"]:
        lines.append(f"| {comp} | {card['mean_ablation']['faithfulness_when_ablated_alone'][comp]} | "
                     f"{card['mean_ablation']['faithfulness_when_kept_alone'][comp]} | {card['path_patching']['direct'][comp]} | "
                     f"{card['path_patching']['total'][comp]} |")
    lines += ["", f"Definitions: {card['mean_ablation']['definition']}. {card['path_patching']['definition']}", "",
              f"Reproduce: `{card['path_patching']['command']}`; retrain: `{card['commands']['train']}`.", ""]
    return "\n".join(lines)


def write_card(directory: str | Path, card: dict) -> None:
    directory = Path(directory)
    write_json(directory / "card.json", card)
    from mechscope.files import atomic_write

    with atomic_write(directory / "card.md", "w") as f:
        f.write(render_markdown(card))


def load_card(name_or_dir: str | Path) -> dict:
    from mechscope.zoo.registry import find_organism

    path = Path(name_or_dir)
    directory = path if (path / "card.json").exists() else find_organism(str(name_or_dir))
    card = read_json(directory / "card.json")
    if card.get("format") != CARD_FORMAT:
        raise FormatError(f"{directory}/card.json: expected format {CARD_FORMAT!r}, found {card.get('format')!r}")
    return card


def organism_ground_truth(name: str):
    """The measured circuit of a zoo organism as a :class:`~mechscope.tasks.GroundTruth`."""
    from mechscope.tasks import GroundTruth

    card = load_card(name)
    c = card["circuit"]
    return GroundTruth(
        model=f"zoo:{name}", task=card["task"]["name"], nodes=c["nodes"], edges=c["edges"],
        citation="measured in-project (mechscope zoo); see the organism's card.md",
        source=f"mechscope/zoo/organisms/{name}/card.json", roles={},
        notes=c["definition"] + "; " + c["search_note"],
        metrics={"faithfulness": c["faithfulness"], "complement_faithfulness": c["complement_faithfulness"],
                 "heldout": card["metrics"]["heldout"], "task_metric": card["task"]["metric"], "variant": card["task"]["variant"]},
    )


def verify_organism(name: str, tolerance: float = 0.02, progress: Callable[[str], None] | None = None) -> dict:
    """Re-measure a shipped organism and compare with its card. ``ok`` is False when any metric
    differs by more than ``tolerance`` (absolute, or relative for |x| > 1) or the circuit changed."""
    from mechscope.models import load_model
    from mechscope.zoo.specs import SPECS, OrganismSpec

    card = load_card(name)
    spec = SPECS.get(name) or OrganismSpec(**card["training"]["spec"])
    model = load_model(f"zoo:{name}", device="cpu")
    m = measure(model, spec, progress)
    checks = []

    def check(what: str, old, new):
        if isinstance(old, (int, float)) and isinstance(new, (int, float)):
            ok = abs(old - new) <= tolerance * max(1.0, abs(old))
        else:
            ok = old == new
        checks.append({"what": what, "card": old, "now": new, "ok": bool(ok)})

    for split in ("heldout", "heldout_corrupted", "train"):
        for k in METRIC_NAMES:
            check(f"metrics.{split}.{k}", card["metrics"][split][k], m["metrics"][split][k])
    from mechscope.tasks.ground_truth import node_sort_key

    check("circuit.nodes", card["circuit"]["nodes"], sorted(m["search"]["circuit"]["nodes"], key=node_sort_key))
    check("circuit.faithfulness", card["circuit"]["faithfulness"], m["faithfulness"]["faithfulness"])
    check("circuit.complement_faithfulness", card["circuit"]["complement_faithfulness"], m["faithfulness"]["complement_faithfulness"])
    check("circuit.edges", sorted(map(tuple, card["circuit"]["edges"])), sorted(map(tuple, m["patching"]["edges"])))
    for comp, v in card["mean_ablation"]["faithfulness_when_ablated_alone"].items():
        check(f"mean_ablation.{comp}", v, m["search"]["single_ablation"][comp])
    for comp, v in card["path_patching"]["direct"].items():
        check(f"path_patching.direct.{comp}", v, m["patching"]["direct"][comp])
    return {"name": name, "ok": all(c["ok"] for c in checks), "n_checks": len(checks), "failed": [c for c in checks if not c["ok"]],
            "checks": checks, "analysis_seconds": m["analysis_seconds"]}
