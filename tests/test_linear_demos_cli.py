"""Demo models (trained for a few steps), analyses, figures, the benchmark and the
``mechscope linear`` CLI end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from mechscope.linear import analyses, demos, linearize
from mechscope.linear.bench import run_benchmark
from mechscope.linear.report import analyze_map, run_transformer_demo

PNG = b"\x89PNG\r\n\x1a\n"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name", demos.DEMOS)
def test_demo_models_train_cache_and_linearize_exactly(name, tmp_path):
    demo = demos.load_or_train(name, steps=3, cache_dir=tmp_path)
    assert (demo.path / "cfg.json").exists() and demo.metrics["steps"] == 3
    again = demos.load_or_train(name, steps=3, cache_dir=tmp_path)  # from the cache, not retrained
    assert again.metrics == demo.metrics
    for p, q in zip(demo.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(p, q)
    amap = linearize(demo.model, demo.x0)
    with torch.no_grad():
        y = demo.model(demo.x0)
    assert float((amap.apply(amap.x0) + amap.bias - y).norm() / y.norm()) < 1e-5
    assert amap.adjoint_error() < 1e-5
    expected = {"digits": ((1, 1, 8, 8), (1, 10)), "superres": ((1, 1, 16, 16), (1, 1, 32, 32)),
                "denoise": ((1, 1, 32, 32), (1, 1, 32, 32))}[name]
    assert (amap.in_shape, amap.out_shape) == expected


def test_demo_training_learns_and_is_deterministic():
    model, metrics = demos.train("digits", steps=60, seed=0)
    assert metrics["test_accuracy"] > 0.5  # 10 classes: chance is 0.1
    again, _ = demos.train("digits", steps=60, seed=0)
    assert all(torch.equal(p, q) for p, q in zip(model.state_dict().values(), again.state_dict().values()))


def test_analyses_decompose_the_output(tmp_path):
    torch.manual_seed(0)
    model = demos.build("digits").eval()
    x0, _ = demos.example_input("digits", index=3)
    amap = linearize(model, x0)
    votes = analyses.pixel_votes(amap)
    assert votes.votes.shape == (10, 1, 1, 8, 8) and votes.residual() < 1e-4
    share = analyses.bias_share(amap)
    assert torch.allclose(share.linear + share.bias, amap.y0, atol=1e-5)
    assert 0.0 <= share.total <= 1.0 and ((share.share >= 0) & (share.share <= 1)).all()

    torch.manual_seed(0)
    sr = demos.build("superres").eval()
    x1, _ = demos.example_input("superres")
    smap = linearize(sr, x1)
    pos, cols = analyses.basis_images(smap, grid=2)
    assert len(pos) == 4 and cols.shape == (4, 1, 1, 32, 32)
    # an impulse at low-res pixel (r, c) mostly lands on high-res pixels (2r..2r+1, 2c..2c+1)
    r, c = pos[0][-2:]
    assert cols[0, 0, 0, 2 * r:2 * r + 2, 2 * c:2 * c + 2].abs().sum() > 0.3 * cols[0].abs().sum()
    pos, rows = analyses.filter_rows(smap, grid=2)
    assert rows.shape == (4, 1, 1, 16, 16)
    summary = analyze_map(smap, tmp_path / "sr", k=3)
    for f in summary["figures"]:
        assert open(f, "rb").read(8) == PNG
    assert {"columns.png", "rows.png", "singular_vectors.png", "bias_share.png"} <= {os.path.basename(f) for f in summary["figures"]}
    assert json.loads((tmp_path / "sr" / "summary.json").read_text())["svd"]["k"] == 3


def test_transformer_demo_writes_token_attribution(tmp_path):
    s = run_transformer_demo(tmp_path / "tl", seed=0)
    assert s["exact_vs_model"] < 1e-5 and s["exactness"]["rel_error"] < 1e-5
    contrib = s["token_attribution"]["contribution"]
    assert len(contrib) == 12
    assert abs(sum(contrib) + s["token_attribution"]["bias"] - s["logit_diff"]) < 1e-3
    assert open(tmp_path / "tl" / "token_attribution.png", "rb").read(8) == PNG


def test_benchmark_case_reports_agreement_with_jacrev():
    out = run_benchmark(quick=True, repeat=1, k=4, threads=1, cases=["digits"])
    (case,) = out["cases"]
    assert case["case"] == "digits" and case["rel_diff_vs_jacrev"] < 1e-5
    assert case["max_rel_singular_value_diff"] < 1e-4
    assert case["ours_full_map_s"] > 0 and case["jacrev_full_map_s"] > 0


def _cli(*args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, "-m", "mechscope", "linear", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


def test_cli_demo_then_analyze(tmp_path, capsys):
    out, cache = tmp_path / "run", tmp_path / "cache"
    r = _cli("demo", "digits", "--out", str(out), "--steps", "5", "--cache-dir", str(cache), "--k", "3", "--json",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["exactness"]["rel_error"] < 1e-5 and summary["exact_vs_model"] < 1e-5
    assert json.loads((out / "summary.json").read_text())["demo"] == "digits"
    for name in ("pixel_votes.png", "singular_vectors.png", "bias_share.png"):
        assert (out / name).read_bytes()[:8] == PNG
    assert (out / "map" / "cfg.json").exists()

    # the other verbs in-process, through the same entry point
    from mechscope.cli import main

    assert main(["linear", "analyze", str(out / "map"), "--out", str(tmp_path / "again"), "--k", "2", "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["map_type"] == "DenseAffineMap" and again["exactness"]["rel_error"] < 1e-5
    assert (tmp_path / "again" / "pixel_votes.png").read_bytes()[:8] == PNG
    assert main(["linear", "analyze", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert "expected a JSON file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["linear", "demo", "--help"])
    assert e.value.code == 0 and "mechscope linear bench" in capsys.readouterr().out
