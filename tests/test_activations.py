"""Activation store: real forwards, real files, a killed-and-resumed run, corrupt shards."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mechscope.activations import ActivationStore, cache_activations
from mechscope.errors import DiskQuotaError, NonFiniteError, StoreError
from mechscope.models import run_with_cache, save_model

HOOKS = ["blocks.0.attn.hook_z", "blocks.1.hook_mlp_out"]


def _cache(model, stream, path, **kw):
    kw = {"n_contexts": 48, "contexts_per_shard": 8, "batch_size": 4, "progress": False, **kw}
    return cache_activations(model, stream, HOOKS, path, **kw)


def test_store_holds_exact_activations(tl_model, heldout_stream, tmp_path):
    store = _cache(tl_model, heldout_stream, tmp_path / "s")
    m = store.manifest
    assert m.complete and len(m.shards) == 6 and m.positions_per_context == 31
    assert store.act_shape("blocks.0.attn.hook_z") == [4, 8] and store.d("blocks.0.attn.hook_z") == 32
    assert m.corpus_hash == heldout_stream.corpus.content_hash and m.model == tl_model.name
    ref = run_with_cache(tl_model, heldout_stream.batch(0, 48), HOOKS)
    for h in HOOKS:
        expect = ref[h][:, 1:].reshape(48 * 31, -1)
        torch.testing.assert_close(store.load_all(h), expect, rtol=0, atol=0)
    store.verify()


@pytest.mark.parametrize("dtype,torch_dtype", [("float16", torch.float16), ("bfloat16", torch.bfloat16)])
def test_half_precision_stores(tl_model, heldout_stream, tmp_path, dtype, torch_dtype):
    store = _cache(tl_model, heldout_stream, tmp_path / dtype, dtype=dtype, n_contexts=16)
    ref = run_with_cache(tl_model, heldout_stream.batch(0, 16), HOOKS[1])[HOOKS[1]][:, 1:].reshape(16 * 31, -1)
    assert store.shard(HOOKS[1], 0).dtype == torch_dtype
    torch.testing.assert_close(store.load_all(HOOKS[1]), ref.to(torch_dtype).float(), rtol=0, atol=0)
    # shuffled batches read the same half-precision rows (as float32 by default)
    every = {tuple(r.tolist()) for r in store.load_all(HOOKS[1])}
    batch = next(store.batches(HOOKS[1], 64))
    assert batch.dtype == torch.float32 and all(tuple(r.tolist()) in every for r in batch)


def test_shuffled_batches_seeded_rank_split_and_row_aligned(tl_model, heldout_stream, tmp_path):
    store = _cache(tl_model, heldout_stream, tmp_path / "s")
    every = store.load_all(HOOKS[1])
    run = lambda **kw: [b for b in store.batches(HOOKS, 64, drop_last=False, **kw)]
    a, b = run(seed=3), run(seed=3)
    assert all(torch.equal(x[0], y[0]) for x, y in zip(a, b))
    assert not torch.equal(torch.cat([x[0] for x in run(seed=4)]), torch.cat([x[0] for x in a]))  # another order
    # row-aligned pairs: the z row and the mlp_out row come from the same token
    z_all = store.load_all(HOOKS[0])
    key = {tuple(r.tolist()): i for i, r in enumerate(every)}
    for z, mlp in a[:3]:
        idx = [key[tuple(r.tolist())] for r in mlp]
        torch.testing.assert_close(z, z_all[idx])
    # ranks: disjoint and together every row exactly once
    r0 = torch.cat([x[1] for x in run(seed=1, rank=0, world_size=2)])
    r1 = torch.cat([x[1] for x in run(seed=1, rank=1, world_size=2)])
    assert r0.shape[0] + r1.shape[0] == every.shape[0]
    from collections import Counter

    rows = lambda t: Counter(tuple(r.tolist()) for r in t)
    assert rows(r0) + rows(r1) == rows(every)
    # blocks of consecutive rows are the unit of shuffling; single rows shuffle finer, same rows
    single = torch.cat([x[1] for x in run(seed=1, block_rows=1)])
    assert rows(single) == rows(every) and not torch.equal(single, r0)
    blocks = run(seed=2, block_rows=8)[0][1]  # [64, d]: eight blocks of eight consecutive rows
    def consecutive(chunk):  # some run every[i : i + 8] equals the chunk (rows may repeat, so try each match)
        return any(torch.equal(every[i : i + 8], chunk) for i in (every == chunk[0]).all(1).nonzero().flatten().tolist())

    assert all(consecutive(chunk) for chunk in blocks.split(8))
    with pytest.raises(StoreError, match="block_rows"):
        next(store.batches(HOOKS, 64, block_rows=0))


def test_reading_threads_and_reused_batch_memory(tl_model, heldout_stream, tmp_path):
    """Any number of reading threads gives the same batches; a batch the caller keeps is never
    overwritten, while the memory of dropped batches is reused."""
    store = _cache(tl_model, heldout_stream, tmp_path / "s")
    kept = list(store.batches(HOOKS[1], 32, seed=5, block_rows=4, read_threads=1))
    for threads in (2, 3):
        again = list(store.batches(HOOKS[1], 32, seed=5, block_rows=4, read_threads=threads))
        assert len(again) == len(kept) and all(torch.equal(a, b) for a, b in zip(again, kept))
    assert len({b.data_ptr() for b in kept}) == len(kept) > 4  # kept batches own their memory
    rows = torch.cat(kept)
    seen, at = set(), 0
    for b in store.batches(HOOKS[1], 32, seed=5, block_rows=4):
        assert torch.equal(b, rows[at : at + 32])
        seen.add(b.data_ptr())
        at += 32
        del b  # dropped: its memory may come back
    assert len(seen) <= 3, len(seen)
    with pytest.raises(StoreError, match="read_threads"):
        next(store.batches(HOOKS, 64, read_threads=0))


def test_a_shard_cut_short_while_reading_is_named(tl_model, heldout_stream, tmp_path):
    store = _cache(tl_model, heldout_stream, tmp_path / "s")
    path = store.manifest.shard_path(store.root, HOOKS[0], 1)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # after the store was opened
    with pytest.raises(StoreError, match=r"shard 1 of hook 'blocks.0.attn.hook_z' ended early"):
        list(store.batches(HOOKS, 64, drop_last=False))


def test_corrupt_and_truncated_shards_are_named(tl_model, heldout_stream, tmp_path):
    store = _cache(tl_model, heldout_stream, tmp_path / "s")
    path = store.manifest.shard_path(store.root, HOOKS[1], 2)
    data = bytearray(path.read_bytes())
    data[100] ^= 0x55
    path.write_bytes(bytes(data))
    ActivationStore(store.root)  # sizes still right: opening passes
    with pytest.raises(StoreError, match="shard 2 of hook 'blocks.1.hook_mlp_out' is corrupt"):
        ActivationStore(store.root).verify()
    path.write_bytes(bytes(data[:-8]))
    with pytest.raises(StoreError, match="shard 2 .* truncated"):
        ActivationStore(store.root)


def test_manifest_that_does_not_match_shards(tl_model, heldout_stream, tmp_path):
    store = _cache(tl_model, heldout_stream, tmp_path / "s")
    manifest = json.loads((store.root / "manifest.json").read_text())
    manifest["shards"][0]["n_rows"] += 31
    (store.root / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(StoreError, match="shard 0"):
        ActivationStore(store.root)
    with pytest.raises(StoreError, match="not an activation store"):
        ActivationStore(tmp_path)


def test_resume_with_other_settings_is_refused(tl_model, heldout_stream, tmp_path):
    _cache(tl_model, heldout_stream, tmp_path / "s")
    with pytest.raises(StoreError, match="dtype: store has 'float32', this run has 'float16'"):
        _cache(tl_model, heldout_stream, tmp_path / "s", dtype="float16")
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file").write_text("x")
    with pytest.raises(StoreError, match="not empty"):
        _cache(tl_model, heldout_stream, tmp_path / "junk")


def test_size_cap_stops_cleanly_and_resumes(tl_model, heldout_stream, tmp_path):
    shard_bytes = 8 * 31 * (32 + 32) * 4
    with pytest.raises(DiskQuotaError, match="over its cap"):
        _cache(tl_model, heldout_stream, tmp_path / "s", max_bytes=int(shard_bytes * 2.5))
    with pytest.raises(StoreError, match="not finished"):
        ActivationStore(tmp_path / "s")
    partial = ActivationStore(tmp_path / "s", allow_incomplete=True)
    assert len(partial.manifest.shards) == 2
    assert not list((tmp_path / "s").rglob("*.tmp"))  # nothing half-written
    full = _cache(tl_model, heldout_stream, tmp_path / "s")
    ref = _cache(tl_model, heldout_stream, tmp_path / "ref")
    for h in HOOKS:
        assert torch.equal(full.load_all(h), ref.load_all(h))


def test_nan_activations_are_flagged_with_hook_and_position(tl_model, heldout_stream, tmp_path):
    def poison(module, args, out):
        out = out.clone()
        if out.shape[0] > 1:  # not the one-context probe pass
            out[1, 5, 3] = float("nan")
        return out

    handle = tl_model.module.blocks[1].hook_mlp_out.register_forward_hook(poison)
    try:
        with pytest.raises(NonFiniteError, match=r"'blocks.1.hook_mlp_out', context 1, position 5"):
            _cache(tl_model, heldout_stream, tmp_path / "s")
    finally:
        handle.remove()


JOB = """
import sys, time, warnings
warnings.simplefilter("ignore")
from mechscope.models import load_model
from mechscope.data import TokenStream, stdlib_corpus, default_tokenizer
from mechscope.activations import cache_activations
model = load_model(sys.argv[1], device="cpu")
slow = sys.argv[3] == "slow"
if slow:  # a slow forward so the parent can kill us mid-run
    model.module.blocks[0].register_forward_hook(lambda *a: time.sleep(0.15))
stream = TokenStream(stdlib_corpus("heldout"), model.tokenizer, context_len=32)
cache_activations(model, stream, {hooks!r}, sys.argv[2], n_contexts=64, contexts_per_shard=4, batch_size=4, progress=False)
"""


def test_resume_after_kill_is_byte_identical(tl_model, tmp_path):
    save_model(tl_model, tmp_path / "model")
    script = tmp_path / "job.py"
    script.write_text(JOB.format(hooks=HOOKS))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "model"), str(tmp_path / "killed"), "slow"], env=env)
    manifest = tmp_path / "killed" / "manifest.json"
    deadline = time.time() + 120
    while time.time() < deadline:
        if manifest.exists() and len(json.loads(manifest.read_text())["shards"]) >= 3:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(json.loads(manifest.read_text())["shards"])
    assert 3 <= done_before < 16, "the run should have been killed mid-way"
    subprocess.run([sys.executable, str(script), str(tmp_path / "model"), str(tmp_path / "killed"), "fast"], env=env, check=True)
    subprocess.run([sys.executable, str(script), str(tmp_path / "model"), str(tmp_path / "clean"), "fast"], env=env, check=True)
    a, b = ActivationStore(tmp_path / "killed"), ActivationStore(tmp_path / "clean")
    a.verify()
    files_a = sorted(p.relative_to(a.root) for p in a.root.rglob("*.bin"))
    assert files_a == sorted(p.relative_to(b.root) for p in b.root.rglob("*.bin")) and len(files_a) == 32
    for rel in files_a:
        assert (a.root / rel).read_bytes() == (b.root / rel).read_bytes(), rel
    assert [s.sha256 for s in a.manifest.shards] == [s.sha256 for s in b.manifest.shards]


def test_cache_cli(tl_model, tmp_path):
    save_model(tl_model, tmp_path / "model")
    out = subprocess.run([sys.executable, "-m", "mechscope", "cache", "--model", str(tmp_path / "model"), "--hooks", "blocks.*.hook_resid_post",
                          "--out", str(tmp_path / "store"), "--split", "heldout", "--context-len", "32", "--n-contexts", "16",
                          "--contexts-per-shard", "8", "--json"], capture_output=True, text=True, check=True)
    info = json.loads(out.stdout)
    assert info["rows"] == 16 * 31 and set(info["hooks"]) == {"blocks.0.hook_resid_post", "blocks.1.hook_resid_post"}
    verify = subprocess.run([sys.executable, "-m", "mechscope", "store", "verify", str(tmp_path / "store"), "--json"], capture_output=True, text=True)
    assert verify.returncode == 0 and json.loads(verify.stdout)["verified"] is True
    # no --context-len: 128 capped at the model's n_ctx (64); it used to crash on every 64-token model
    short = subprocess.run([sys.executable, "-m", "mechscope", "cache", "--model", str(tmp_path / "model"), "--hooks", "blocks.0.hook_resid_post",
                            "--out", str(tmp_path / "store3"), "--n-contexts", "2", "--json"], capture_output=True, text=True, check=True)
    assert json.loads(short.stdout)["context_len"] == 64
    bad = subprocess.run([sys.executable, "-m", "mechscope", "cache", "--model", str(tmp_path / "model"), "--hooks", "blocks.0.hook_resid_psot",
                          "--out", str(tmp_path / "store2")], capture_output=True, text=True)
    assert bad.returncode == 2 and "blocks.0.hook_resid_post" in bad.stderr
