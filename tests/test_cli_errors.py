"""Mistyped command lines end in one clear line on stderr (exit code 2), never a traceback and
never a silently wrong result: each case names what was expected and what was found. The checks
run the real CLI in process, on the shipped zoo organisms and tiny hand-built dictionaries; most
stop before any model computation."""

from __future__ import annotations

import pytest
import torch

from mechscope.cli import main


def _err(capsys, *argv: str) -> str:
    """Run the CLI; assert exit code 2 and nothing on stdout; return stderr."""
    capsys.readouterr()
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rc = main(list(argv))
    finally:
        torch.set_num_threads(n)
    out, err = capsys.readouterr()
    assert rc == 2, (rc, out, err)
    assert "Traceback" not in err and out == "", (out, err)
    assert err.startswith(f"mechscope {argv[0]}: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def small_corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text("def f(x):\n    return x + 1\n" * 40)
    return str(p)


@pytest.fixture
def a_file(tmp_path):
    p = tmp_path / "afile.txt"
    p.write_text("hello\n")
    return p


def _dictionary(path, model: str, hook: str, **cfg):
    from mechscope.dictionaries import Dictionary, DictionaryConfig

    Dictionary(DictionaryConfig(d_in=64, n_latents=32, k=4, hook_in=hook, meta={"model": model}, **cfg)).save(path)
    return str(path)


# -- output paths: a directory where a file goes, a file where a directory goes -----------------------------------
def test_output_file_path_that_is_a_directory(capsys, tmp_path, small_corpus):
    err = _err(capsys, "data", "tokenizer", "--corpus", small_corpus, "--vocab-size", "300", "--out", str(tmp_path))
    assert f"expected a file path to write at {tmp_path}, found a directory" in err


def test_output_under_a_file(capsys, tmp_path, a_file, small_corpus):
    err = _err(capsys, "data", "tokenizer", "--corpus", small_corpus, "--vocab-size", "300", "--out", str(a_file / "tok.json"))
    assert f"expected a directory (or nothing) at {a_file}" in err and "found a file" in err
    assert a_file.read_text() == "hello\n"


def test_output_directory_that_is_a_file(capsys, a_file):
    err = _err(capsys, "circuit", "find", "--model", "zoo:ioi-2l", "--method", "eap", "--n", "2", "--out", str(a_file / "c.json"))
    assert "found a file" in err
    err = _err(capsys, "attention", "induction", "--model", "zoo:ioi-2l", "--n", "2", "--out", str(a_file))
    assert f"expected a directory (or nothing) at {a_file}, found a file" in err


def test_store_out_that_is_a_file(capsys, a_file, small_corpus):
    err = _err(capsys, "cache", "--model", "zoo:ioi-2l", "--hooks", "blocks.0.hook_resid_post", "--corpus", small_corpus,
               "--split", "all", "--n-contexts", "1", "--out", str(a_file))
    assert "expected a directory (or nothing) for the activation store" in err and "found a file" in err


def test_reading_a_directory_as_json(capsys, tmp_path):
    err = _err(capsys, "circuit", "score", str(tmp_path), "--ground-truth", "zoo:ioi-2l")
    assert f"expected a JSON file at {tmp_path}, found a directory" in err


# -- numbers out of range -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flag,value,msg", [("--n-contexts", "-3", "n_contexts must be a positive integer"),
                                            ("--max-bytes", "-1", "max_bytes must be a positive size cap")])
def test_cache_counts(capsys, tmp_path, small_corpus, flag, value, msg):
    err = _err(capsys, "cache", "--model", "zoo:ioi-2l", "--hooks", "blocks.0.hook_resid_post", "--corpus", small_corpus,
               "--split", "all", "--out", str(tmp_path / "s"), flag, value)
    assert msg in err and f"found {value}" in err


def test_zoo_steps_and_tolerance(capsys, tmp_path):
    assert "--steps must be a positive integer" in _err(capsys, "zoo", "train", "ioi-2l", "--steps", "0", "--out", str(tmp_path))
    assert "--tolerance must be >= 0" in _err(capsys, "zoo", "verify", "ioi-2l", "--tolerance", "-1")


def test_threads(capsys):
    assert "--threads must be a positive integer; found 0" in _err(capsys, "circuit", "find", "--model", "zoo:ioi-2l",
                                                                    "--method", "eap", "--threads", "0")
    assert "--threads must be a positive integer; found 0" in _err(capsys, "demo", "--threads", "0")


def test_circuit_unknown_param_names_the_valid_ones(capsys):
    err = _err(capsys, "circuit", "find", "--model", "zoo:ioi-2l", "--method", "eap", "--n", "2", "--param", "foo=1")
    assert "circuit method 'eap' has no parameter 'foo'; expected one of: metric, batch_size" in err
    err = _err(capsys, "circuit", "compare", "--models", "zoo:ioi-2l", "--methods", "eap", "--param", "discrete_codes.foo=1")
    assert "circuit method 'discrete_codes' has no parameter 'foo'" in err and "n_latents" in err


# -- a dictionary used with another model, and its feature / token ranges --------------------------------------------
def test_eval_refuses_a_dictionary_of_another_organism(capsys, tmp_path):
    sae = _dictionary(tmp_path / "sae", "zoo:greater-than-2l", "blocks.0.hook_resid_post")
    err = _err(capsys, "eval", sae, "--model", "zoo:ioi-2l", "--n-tokens", "64")
    assert "was trained on zoo:greater-than-2l" in err and "found model zoo:ioi-2l" in err
    err = _err(capsys, "eval", sae, "--model", "zoo:greater-than-2l", "--n-tokens", "0")
    assert "n_tokens must be >= 1; found 0" in err


def test_eval_n_tokens_below_batch_size(tmp_path):
    """--n-tokens 64 evaluates 64 rows, not a whole default batch of 4096."""
    from mechscope.dictionaries import Dictionary, DictionaryConfig, TensorSource, evaluate

    d = Dictionary(DictionaryConfig(d_in=8, n_latents=16, k=2, hook_in="h"))
    assert evaluate(d, TensorSource({"h": torch.randn(256, 8)}), n_tokens=64)["tokens"] == 64


def test_attention_dfa_checks(capsys, tmp_path):
    sae = _dictionary(tmp_path / "sae", "zoo:ioi-2l", "blocks.1.attn.hook_z", act_shape=[4, 16])
    base = ["attention", "dfa", "--model", "zoo:ioi-2l", "--sae", sae]
    assert "--feature must be in [0, 32) for this SAE of 32 latents; found 99" in _err(capsys, *base, "--text", "x", "--feature", "99")
    err = _err(capsys, *base, "--tokens", "1", "-1", "99999", "--feature", "1")
    assert "--tokens must be token ids in [0, 4096)" in err and "found [-1, 99999]" in err
    err = _err(capsys, "attention", "dfa", "--model", "zoo:greater-than-2l", "--sae", sae, "--text", "x", "--feature", "1")
    assert "was trained on zoo:ioi-2l" in err


def test_attention_induction_checks(capsys):
    base = ["attention", "induction", "--model", "zoo:ioi-2l"]
    assert "expected heads L.H with L in [0, 2) and H in [0, 4); found 1.9" in _err(capsys, *base, "--heads", "1.9", "--n", "2")
    assert "--n must be a positive integer; found 0" in _err(capsys, *base, "--n", "0")
    assert "--induction-offsets must be a positive integer; found 0" in _err(capsys, *base, "--induction-offsets", "0")


def test_transcoder_checks(capsys, tmp_path):
    tcs = [_dictionary(tmp_path / f"tc{l}", "zoo:greater-than-2l", f"blocks.{l}.ln2.hook_normalized", kind="transcoder",
                       hook_out=f"blocks.{l}.hook_mlp_out") for l in (0, 1)]
    base = ["transcoder", "attribute", "--model", "zoo:greater-than-2l", "--transcoders", *tcs]
    assert "--index must be >= 0; found -1" in _err(capsys, *base, "--index", "-1")
    assert "expects token ids, e.g. token:17-42" in _err(capsys, *base, "--target", "token:a")
    assert "all in [0, 4096); found 'token:99999'" in _err(capsys, *base, "--target", "token:99999")
    assert "expects feature:LAYER:INDEX" in _err(capsys, *base, "--target", "feature:1")
    assert "--top must be >= 1; found -1" in _err(capsys, "transcoder", "connections", "--model", "zoo:greater-than-2l",
                                                  "--transcoders", *tcs, "--feature", "1:1", "--top", "-1")
    assert "--n-task must be >= 0; found -1" in _err(capsys, "transcoder", "train", "--model", "zoo:greater-than-2l",
                                                     "--out", str(tmp_path / "t"), "--n-task", "-1")


def test_atomic_writes_leave_no_temp_file_and_respect_the_umask(tmp_path):
    """Finished files get the user's umask (mkstemp's 0600 made every saved dictionary and JSON
    private); a failed write leaves neither the target nor a temp file."""
    import os

    from mechscope.files import atomic_write, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        with pytest.raises(RuntimeError, match="boom"):
            with atomic_write(tmp_path / "b.bin") as f:
                f.write(b"half")
                raise RuntimeError("boom")
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_hub_corpus_that_cannot_be_reached_is_one_line():
    """Offline, `--corpus hf:NAME` was a ConnectionError traceback from `datasets`."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "mechscope", "data", "info", "--corpus", "hf:nobody/no-such-dataset"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    assert "could not load hub dataset 'nobody/no-such-dataset'" in r.stderr and "save_to_disk directory" in r.stderr
