"""``mechscope transcoder ...``: paths through a subprocess (the smoke test of the installed entry point);
train, attribute, connections and faithfulness in process (each subprocess pays the torch import)
on a tiny saved model with the default tokenizer and the greater-than task."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mechscope.cli import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tokenizer):
    from mechscope.models import save_model
    from mechscope.transcoders.planted import tiny_model

    root = tmp_path_factory.mktemp("tc_cli")
    model = tiny_model(d_vocab=len(tokenizer), dtype=torch.float32, seed=3, tokenizer=tokenizer)
    save_model(model, root / "model")
    return root


def _cli(*args: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-m", "mechscope", "transcoder", *args, "--json"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    return json.loads(p.stdout)


def _inproc(capsys, *args: str) -> dict:
    capsys.readouterr()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["transcoder", *args, "--json"]) == 0
    finally:
        torch.set_num_threads(n)
    return json.loads(capsys.readouterr().out)


def test_transcoder_cli_end_to_end(saved, capsys):
    model, out = str(saved / "model"), str(saved / "tc")
    trained = _inproc(capsys, "train", "--model", model, "--out", out, "--task", "greater_than", "--n-task", "32", "--n-contexts", "16",
                   "--context-len", "16", "--eval-contexts", "4", "--steps", "8", "--batch-size", "64", "--expansion", "2", "--k", "4")
    assert trained["layers"] == [0, 1] and trained["rows"]["task"] == 32 * 16
    assert set(trained["heldout"]["layers"]) == {"0", "1"} and "metric_spliced" in trained["heldout"]
    from mechscope.tasks import GroundTruth

    GroundTruth(model="tiny", task="greater_than", nodes=["0.1", "mlp1"]).save(saved / "gt.json")
    paths = _cli("paths", "--model", model, "--transcoders", out, "--task", "greater_than", "--n", "2", "--beam", "3", "--top-k", "3",
                 "--paths", "3", "--ground-truth", str(saved / "gt.json"), "--out", str(saved / "circuit.json"))
    assert paths["n_prompts"] == 2 and 0.0 <= paths["score"]["nodes"]["auc"] <= 1.0
    assert json.loads((saved / "circuit.json").read_text())["method"] == "transcoder_paths"

    att = _inproc(capsys, "attribute", "--model", model, "--transcoders", out, "--task", "greater_than", "--index", "1")
    assert att["exact"] and abs(att["sum_of_contributions"] - att["value"]) < 1e-4 * max(1.0, abs(att["value"]))
    att = _inproc(capsys, "attribute", "--model", model, "--transcoders", out, "--prompt", "def f(x):", "--target", "feature:1:0")
    assert att["exact"] and att["target"].startswith("mlp1.f0@")
    con = _inproc(capsys, "connections", "--model", model, "--transcoders", out, "--feature", "mlp1.f0", "--top", "3")
    assert len(con["upstream_features"]) == 3 and len(con["tokens"]) == 3 and con["downstream_features"] == []
    faith = _inproc(capsys, "faithfulness", "--model", model, "--transcoders", out, "--task", "greater_than", "--n", "4",
                    "--n-paths", "1", "--beam", "2", "--top-k", "2", "--paths", "2", "--ks", "0", "2", "--plot", str(saved / "f.png"))
    assert {"features_paths", "features_attribution", "neurons_attribution"} == set(faith["curves"])
    assert (saved / "f.png").stat().st_size > 1000


def test_transcoder_cli_errors_are_clear(saved, capsys):
    capsys.readouterr()
    rc = main(["transcoder", "connections", "--model", str(saved / "model"), "--transcoders", str(saved / "nothing"), "--feature", "1:0"])
    assert rc == 2
    assert "expected a transcoder directory" in capsys.readouterr().err
    rc = main(["transcoder", "paths", "--model", str(saved / "model"), "--transcoders", str(saved / "tc"), "--n", "1"])
    assert rc == 2 and "--task auto needs a zoo organism" in capsys.readouterr().err
