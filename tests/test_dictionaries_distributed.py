"""Scale-out under torchrun with the gloo backend, 2 processes on CPU: data parallel (DDP)
keeps the ranks' weights identical while they read disjoint shards; per-rank mode trains one
dictionary per rank exactly as a single process would."""

import json
import os
import subprocess
import sys

import pytest
import torch

from mechscope.dictionaries import StoreSource, load_dictionary

pytestmark = pytest.mark.filterwarnings("ignore:HookedTransformer is deprecated:DeprecationWarning")

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
ARGS = ["--n-latents", "128", "--k", "8", "--steps", "6", "--batch-size", "128", "--warmup-steps", "2", "--log-every", "1",
        "--dead-tokens", "512", "--json"]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    from mechscope.activations import cache_activations
    from mechscope.data import TokenStream, default_tokenizer, stdlib_corpus
    from mechscope.models.model import Model

    tok = default_tokenizer()
    cfg = HookedTransformerConfig(n_layers=2, d_model=64, n_heads=4, d_head=16, d_mlp=128, d_vocab=len(tok), n_ctx=32,
                                  act_fn="gelu", seed=1)
    model = Model(HookedTransformer(cfg).eval(), "tiny", kind="transformer_lens", tokenizer=tok)
    return cache_activations(model, TokenStream(stdlib_corpus("heldout"), tok, 32), HOOKS, tmp_path_factory.mktemp("acts"),
                             n_contexts=128, contexts_per_shard=8, progress=False)


def torchrun(args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mechscope", "train", *args]
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"torchrun failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


def test_ddp_ranks_stay_identical_on_disjoint_shards(store, tmp_path):
    out = tmp_path / "ddp"
    torchrun(["--store", str(store.root), "--hooks", HOOKS[0], "--out", str(out), "--distributed", "ddp", *ARGS], tmp_path)
    logs = [[json.loads(line)[HOOKS[0]] for line in (out / name).read_text().splitlines()] for name in ("metrics.jsonl", "metrics.rank1.jsonl")]
    assert len(logs[0]) == len(logs[1]) == 6
    # identical weights on both ranks after every step ...
    assert [r["weights_sha1"] for r in logs[0]] == [r["weights_sha1"] for r in logs[1]]
    assert len({r["weights_sha1"] for r in logs[0]}) == 6  # ... and they did change every step
    # ... while each rank consumed exactly its own share of the store
    src = StoreSource(store, [HOOKS[0]])
    rows = []
    for rank in (0, 1):
        batches = [b[HOOKS[0]] for _, b in zip(range(6), src.iterate(128, seed=0, rank=rank, world_size=2))]
        assert [float(b.double().sum()) for b in batches] == [r["data_checksum"] for r in logs[rank]]
        rows.append({bytes(row.numpy().tobytes()) for b in batches for row in b})
    # a row both ranks saw must be one the store holds more than once (repeated tokens give
    # repeated activations); rows the store holds once went to one rank only
    from collections import Counter

    count = Counter(bytes(row.numpy().tobytes()) for row in store.load_all(HOOKS[0]))
    assert all(count[r] > 1 for r in rows[0] & rows[1])
    assert sum(count[r] == 1 for r in rows[0]) > 500 and sum(count[r] == 1 for r in rows[1]) > 500
    # the dictionary rank 0 saved is the one both ranks ended with
    d = load_dictionary(out / HOOKS[0])
    import hashlib

    h = hashlib.sha1()
    for t in d.state_dict().values():
        h.update(t.reshape(-1).contiguous().view(torch.uint8).numpy().tobytes())
    assert h.hexdigest()[:16] == logs[0][-1]["weights_sha1"]
    assert json.loads((out / "checkpoints" / "latest.json").read_text())["step"] == 6


def test_one_dictionary_per_rank_matches_single_process(store, tmp_path):
    from mechscope.cli import main

    common = ["--store", str(store.root), "--hooks", *HOOKS, *ARGS]
    torchrun([*common, "--out", str(tmp_path / "per_rank"), "--distributed", "per_rank"], tmp_path)
    assert (tmp_path / "per_rank" / "checkpoints" / "rank0" / "latest.json").exists()
    assert (tmp_path / "per_rank" / "checkpoints" / "rank1" / "latest.json").exists()
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(["train", *common, "--out", str(tmp_path / "single")]) == 0
    finally:
        torch.set_num_threads(old)
    for hook in HOOKS:
        a, b = load_dictionary(tmp_path / "per_rank" / hook), load_dictionary(tmp_path / "single" / hook)
        for name, t in a.state_dict().items():
            assert torch.equal(t, b.state_dict()[name]), (hook, name)
