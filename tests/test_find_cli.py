"""`mechscope find …` end to end: `find run` as a user runs it (subprocess), the other subverbs
through the same entry point in-process."""

import json
import subprocess
import sys

from mechscope.cli import main
from mechscope.find import load_suite


def _cli(capsys, *args):
    rc = main(["find", *args])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_generate_run_score_list(tmp_path, capsys):
    suite, out = tmp_path / "tiny.jsonl", tmp_path / "results.json"
    rc, stdout, _ = _cli(capsys, "generate", "--seed", "4", "--n-per-family", "1", "--families", "numeric:poly,step",
                         "--families", "string:cipher,word", "--families", "neuron:concept", "--out", str(suite), "--json")
    assert rc == 0 and json.loads(stdout)["categories"] == {"numeric": 2, "string": 2, "neuron": 1}
    assert len(load_suite(suite)) == 5

    r = subprocess.run([sys.executable, "-m", "mechscope", "find", "run", "--suite", str(suite), "--interpreter", "offline",
                        "--out", str(out), "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    board = json.loads(r.stdout)["leaderboard"]
    assert set(board) == {"numeric", "string", "neuron"} and board["numeric"]["n"] == 2
    assert board["numeric"]["score"] > 0.9 and board["string"]["score"] > 0.9
    saved = json.loads(out.read_text())
    assert saved["format"] == "mechscope.find.results" and len(saved["records"]) == 5
    assert all(rec["interpretation"]["code"] for rec in saved["records"])

    # resuming skips the functions already done (same records, no new work); the table names the categories
    rc, stdout, _ = _cli(capsys, "run", "--suite", str(suite), "--interpreter", "offline", "--out", str(out))
    assert rc == 0 and "find leaderboard" in stdout and "numeric" in stdout
    assert json.loads(out.read_text())["records"] == saved["records"]

    rc, stdout, _ = _cli(capsys, "score", "--results", str(out), "--json")
    assert rc == 0 and json.loads(stdout)["leaderboard"]["string"]["n"] == 2
    rc, stdout, _ = _cli(capsys, "list", "--suite", str(suite), "--json")
    assert [f["id"] for f in json.loads(stdout)["functions"]][0] == "num-poly-000"
    rc, stdout, _ = _cli(capsys, "list", "--json")
    fams = json.loads(stdout)
    assert "corrupted" in fams["families"]["numeric"] and "offline" in fams["interpreters"]


def test_cli_errors_are_clean(tmp_path, capsys):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "category": "numeric", "code": "def f(x): return x"}\n{broken\n')
    rc, _, err = _cli(capsys, "run", "--suite", str(bad))
    assert rc == 2 and "bad.jsonl:2: not valid JSON" in err
    rc, _, err = _cli(capsys, "run", "--suite", "gen:0", "--interpreter", "nope")
    assert rc == 2 and "unknown interpreter 'nope'" in err
    rc, _, err = _cli(capsys, "run", "--suite", "gen:x")
    assert rc == 2 and "gen:SEED[:N] expects integers" in err
    rc, _, err = _cli(capsys, "score", "--results", str(bad))
    assert rc == 2 and "not valid JSON" in err


def test_run_help_has_examples(capsys):
    try:
        main(["find", "run", "--help"])
    except SystemExit as e:
        assert e.code == 0
    out = capsys.readouterr().out
    assert "examples:" in out and "--json" in out and "gen:SEED" in out
