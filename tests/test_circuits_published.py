"""The paper's setting, for users who have the published models: ``mechscope circuit compare
--models gpt2-small`` and ``circuit find --model gpt2-small`` load GPT-2 small through
TransformerLens from the Hugging Face cache and score against the published circuits (Wang et al.
2022 for IOI, Hanna et al. 2023 for greater-than).

No weights can be downloaded here, so the test writes a hub cache by hand, in the layout
``huggingface_hub`` reads with ``HF_HUB_OFFLINE=1``: a randomly initialised GPT-2 with GPT-2
small's 12 layers x 12 heads (d_model 48 instead of 768; the config keeps the legacy ``n_ctx``
field that TransformerLens reads) and the English BPE of ``conftest.english_tok``. The AUCs of a
random model mean nothing; what is checked is that the same commands run end to end, in a fresh
process, on the published model's graph, tasks and ground truths.

(attn-only-4l cannot be faked this way: TransformerLens lists the repository's files through the
hub API before it reads a cached ``*final.pth``, which needs the network.)
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mechscope.tasks import load_ground_truth


@pytest.fixture(scope="module")
def gpt2_hub(tmp_path_factory, english_tok):
    """Environment variables pointing ``huggingface_hub`` at a cache holding a small "gpt2"."""
    from transformers import GPT2Config, GPT2LMHeadModel

    home = tmp_path_factory.mktemp("hf_home")
    repo = home / "hub" / "models--gpt2"
    revision = "0" * 40
    snapshot = repo / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    special = english_tok.bos_token_id if english_tok.bos_token_id is not None else 0
    cfg = GPT2Config(vocab_size=len(english_tok), n_positions=64, n_ctx=64, n_embd=48, n_layer=12, n_head=12,
                     bos_token_id=special, eos_token_id=special)
    torch.manual_seed(0)
    GPT2LMHeadModel(cfg).save_pretrained(snapshot)
    english_tok.save_pretrained(snapshot)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_"))}
    env.update(HF_HOME=str(home), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore")
    return env


def _mechscope(env: dict, *args: str) -> dict:
    proc = subprocess.run([sys.executable, "-m", "mechscope", *args], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mechscope {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def test_compare_runs_the_published_settings(gpt2_hub):
    out = _mechscope(gpt2_hub, "circuit", "compare", "--models", "gpt2-small", "--methods", "eap", "--n", "8", "--threads", "1", "--json")
    assert [(r["model"], r["task"], r["method"]) for r in out["rows"]] == [("gpt2-small", "ioi", "eap"), ("gpt2-small", "greater_than", "eap")]
    for task, gt_name in (("ioi", "ioi-gpt2-small"), ("greater_than", "greater_than-gpt2-small")):
        setting = out["settings"][f"gpt2-small/{task}"]
        truth = load_ground_truth(gt_name)
        assert setting["ground_truth_nodes"] == truth.nodes and setting["variant"] == "paper" and setting["n_prompts"] == 8
        assert setting["graph"].startswith("Graph(12 layers x 12 heads + MLPs"), setting["graph"]
        row = next(r for r in out["rows"] if r["task"] == task)
        assert 0.0 <= row["node_auc"] <= 1.0 and 0.0 <= row["node_precision_at_gt"] <= 1.0
        assert (row["edge_auc"] is not None) == bool(truth.edges)  # the published IOI circuit lists edges


def test_find_scores_a_published_model_against_its_circuit(gpt2_hub):
    """``find`` on a published model and task scores against the published circuit by default."""
    out = _mechscope(gpt2_hub, "circuit", "find", "--model", "gpt2-small", "--task", "ioi", "--method", "eap", "--n", "8",
                     "--threads", "1", "--json")
    assert out["model"] == "gpt2-small" and out["task"] == "ioi"
    truth = load_ground_truth("ioi-gpt2-small")
    nodes, edges = out["scores"]["nodes"], out["scores"]["edges"]
    assert (nodes["n_truth"], nodes["n_candidates"]) == (len(truth.nodes), 12 * 12 + 12)  # heads and MLPs; every published head is one
    assert edges["n_truth"] == len(truth.edges) and 0.0 <= edges["auc"] <= 1.0
    # a task with no published circuit for this model still runs, unscored
    other = _mechscope(gpt2_hub, "circuit", "find", "--model", "gpt2-small", "--task", "induction", "--method", "eap", "--n", "8",
                       "--threads", "1", "--json")
    assert other["task"] == "induction" and "scores" not in other and other["top_nodes"]
