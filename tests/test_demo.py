"""``mechscope demo``: the quick run for real (a subprocess, as CI runs it), then checks on the
report, ``summary.json`` and the files the stages wrote; plus the failure path (a failing stage
is recorded and makes the command exit non-zero) and the missing-organism message."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

SECTIONS = ["overview", "corpus", "dictionaries", "attention", "circuits", "linear", "find", "explorer"]
STAGES = SECTIONS[1:]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = subprocess.run([sys.executable, "-m", "mechscope", "demo", "--quick", "--out", str(out)],
                          capture_output=True, text=True, timeout=900, env=os.environ.copy())
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else None
    return SimpleNamespace(proc=proc, out=out, summary=summary)


def _facts(run, stage: str) -> dict:
    s = run.summary["stages"][stage]
    assert s["ok"], f"stage {stage} failed: {s.get('error')}\n{s.get('traceback')}"
    return s["facts"]


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def test_exit_code_and_printed_summary(quick_run):
    p = quick_run.proc
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-5000:]}"
    for stage in STAGES:
        assert stage in p.stdout
    assert "mechscope serve" in p.stdout and "report.html" in p.stdout


def test_summary_has_every_stage(quick_run):
    s = quick_run.summary
    assert s is not None and s["ok"] and s["failed"] == [] and s["quick"] is True
    assert list(s["stages"]) == STAGES
    for stage in STAGES:
        assert _facts(quick_run, stage)
        assert _finite(s["stages"][stage]["seconds"])


def test_report_has_every_section(quick_run):
    html = (quick_run.out / "report.html").read_text()
    for key in SECTIONS:
        assert f'<section id="{key}">' in html
    assert "This stage failed" not in html
    assert html.count("data:image/png;base64,") >= 5  # training curves, densities, head shares, linear figures


def test_dictionaries_are_trained_and_scored(quick_run):
    from mechscope.dictionaries import load_dictionary

    f = _facts(quick_run, "dictionaries")
    assert set(f["dictionaries"]) == {"attention_sae", "transcoder"}
    for role, d in f["dictionaries"].items():
        e = d["eval"]
        assert _finite(e["fvu"]) and 0 <= e["fvu"] < 1, (role, e["fvu"])
        assert 0 < e["l0"] <= d["k"]
        assert 0 <= e["dead_frac"] <= 1 and 0 <= e["dense_frac"] <= 1
        assert _finite(e["ce_score"]) and e["ce_score"] > 0, (role, e["ce_score"])  # better than zero-ablating
        assert _finite(e["kl_score"]) and e["ce_zero"] > e["ce_clean"]
        loaded = load_dictionary(d["path"])
        assert (loaded.cfg.kind, loaded.cfg.hook_in, loaded.n_latents) == (d["kind"], d["hook_in"], d["n_latents"])
        assert Path(d["histogram"]).is_file()
    sae, tc = f["dictionaries"]["attention_sae"], f["dictionaries"]["transcoder"]
    assert sae["hook_in"].endswith("attn.hook_z") and sae["kind"] == "sae"
    assert tc["hook_in"].endswith("ln2.hook_normalized") and tc["hook_out"].endswith("hook_mlp_out") and tc["kind"] == "transcoder"
    assert f["store"]["rows"] > 0 and Path(f["store"]["path"]).is_dir()


def test_attention_analysis(quick_run):
    f = _facts(quick_run, "attention")
    share = f["task_dfa"]["head_share"]
    assert len(share) == len(f["heads"]) and abs(sum(share) - 1) < 1e-3 and all(x >= 0 for x in share)
    assert f["task_dfa"]["dfa_max_error"] < 1e-4
    assert 0 < f["live_features"] <= f["n_latents"]
    assert sum(h["live features it dominates"] for h in f["heads"]) == f["live_features"]


def test_circuits_scored_against_the_card(quick_run):
    from mechscope.circuits import METHODS, Circuit

    f = _facts(quick_run, "circuits")
    assert [r["method"] for r in f["rows"]] == list(METHODS)
    for r in f["rows"]:
        assert 0 <= r["node_auc"] <= 1, r
        for k in ("node_precision_at_gt", "node_recall_at_gt"):
            assert 0 <= r[k] <= 1
        assert _finite(r["seconds"]) and r["seconds"] >= 0
        circuit = Circuit.load(f["files"][r["method"]])
        assert circuit.method == r["method"]
        if circuit.edge_scores:  # methods that score edges get an edge AUC
            assert 0 <= r["edge_auc"] <= 1 and 0 <= r["edge_precision_at_gt"] <= 1
        else:
            assert r["edge_auc"] is None
    assert any(r["edge_auc"] is not None for r in f["rows"])
    assert f["ground_truth"]["nodes"] == _facts(quick_run, "corpus")["verified_circuit"]["nodes"]


def test_linear_maps_are_exact(quick_run):
    f = _facts(quick_run, "linear")
    t = f["transformer"]
    assert t["exactness"] < 1e-4 and _finite(t["logit_diff"])
    assert abs(t["linear_part"] + t["bias"] - t["logit_diff"]) <= 1e-3 * max(1.0, abs(t["logit_diff"]))
    assert len(t["token_contribution"]) == len(t["tokens"])
    assert f["digits"]["exactness"] < 1e-4
    assert Path(f["digits"]["map_dir"]).is_dir()


def test_find_benchmark(quick_run):
    f = _facts(quick_run, "find")
    assert f["n_functions"] >= 8 and set(f["leaderboard"]) == {"numeric", "string"}
    for r in f["records"]:
        assert 0 <= r["score"] <= 1 and r["queries"] > 0
    assert 0 <= f["mean_score"] <= 1
    assert Path(f["files"]["results"]).is_file()


def test_explorer_command_names_the_outputs(quick_run):
    f = _facts(quick_run, "explorer")
    d, c = _facts(quick_run, "dictionaries"), _facts(quick_run, "circuits")
    assert "mechscope serve --model zoo:greater-than-2l" in f["command"]
    for path in [x["path"] for x in d["dictionaries"].values()] + list(c["files"].values()):
        assert path in f["command"]
    assert len(f["circuits"]) == len(c["files"]) and all(x["scored"] for x in f["circuits"])
    assert f["linear"]["available"]


# -- failure paths (in-process, fake stages: no training) ----------------------------------------------------------


def _stage(key: str, run):
    from mechscope.report import Section

    return SimpleNamespace(KEY=key, TITLE=key.title(), run=run, headline=lambda f: "fine",
                           section=lambda f: Section(key, key.title(), text="fine"))


def test_a_failing_stage_is_reported_and_exits_nonzero(tmp_path, monkeypatch, capsys):
    from mechscope import cli
    from mechscope.demo import stages

    def boom(ctx):
        raise RuntimeError("the broken stage broke")

    def needs_model(ctx):
        return {"model": str(ctx.need("model", "broken"))}

    monkeypatch.setattr(stages, "STAGES", [_stage("broken", boom), _stage("fine", lambda ctx: {"x": 1.0}), _stage("after", needs_model)])
    assert cli.main(["demo", "--quick", "--out", str(tmp_path), "--json"]) == 1
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ok"] is False and summary["failed"] == ["broken", "after"]
    assert summary["stages"]["broken"]["error"] == "RuntimeError: the broken stage broke"
    assert "StageDependencyError" in summary["stages"]["after"]["error"] and "'broken'" in summary["stages"]["after"]["error"]
    assert summary["stages"]["fine"]["ok"] and summary["stages"]["fine"]["facts"] == {"x": 1.0}
    html = (tmp_path / "report.html").read_text()
    assert html.count("This stage failed") == 3 and "the broken stage broke" in html  # the overview and the two failed stages
    assert "2 stage(s) failed: broken, after" in capsys.readouterr().err


def test_missing_organism_names_the_command(tmp_path, monkeypatch):
    from mechscope.demo.context import require_organism
    from mechscope.errors import ModelSpecError
    from mechscope.zoo import registry

    monkeypatch.setattr(registry, "SHIPPED", tmp_path / "nothing-shipped")
    monkeypatch.setenv("MECHSCOPE_ZOO_PATH", str(tmp_path))
    with pytest.raises(ModelSpecError, match="mechscope zoo train greater-than-2l"):
        require_organism("greater-than-2l")
