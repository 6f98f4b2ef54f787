"""The trainer on synthetic data: planted-dictionary recovery for every activation and kind,
bit-identical resume, checkpoints, and clear errors on bad input."""

import json

import pytest
import torch

from mechscope.dictionaries import DictionaryConfig, TensorSource, TrainConfig, load_dictionary, reconstruction_metrics, train
from mechscope.errors import ConfigError, NonFiniteError, StoreError


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def planted(n=16384, d=32, m=64, active=3, seed=0, d_out=None):
    """Rows that are positive sums of ``active`` of ``m`` random unit features (and, for
    transcoders, the same sparse code read out through a second set of features)."""
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(m, d, generator=g)
    feats /= feats.norm(dim=1, keepdim=True)
    idx = torch.rand(n, m, generator=g).argsort(1)[:, :active]
    z = torch.zeros(n, m).scatter_(1, idx, torch.rand(n, active, generator=g) + 0.5)
    if d_out is None:
        return z @ feats, feats
    out = torch.randn(m, d_out, generator=g)
    out /= out.norm(dim=1, keepdim=True)
    return (z @ feats, z @ out), out


def mean_max_cos(decoder: torch.Tensor, truth: torch.Tensor) -> float:
    w = decoder.detach() / decoder.detach().norm(dim=1, keepdim=True)
    return float((truth @ w.T).max(1).values.mean())


RECOVERY = {  # activation -> (config overrides, steps, lr)
    "relu": (dict(l1_coeff=0.3), 500, 5e-3),
    "topk": (dict(k=3), 400, 3e-3),
    "batchtopk": (dict(k=3), 400, 3e-3),
    "jumprelu": (dict(l0_coeff=0.01), 500, 1e-2),
}


@pytest.mark.parametrize("activation", list(RECOVERY))
def test_sae_recovers_planted_dictionary(activation):
    x, truth = planted()
    over, steps, lr = RECOVERY[activation]
    cfg = DictionaryConfig(d_in=32, n_latents=128, activation=activation, hook_in="x", **over)
    [d] = train([cfg], TensorSource({"x": x}), TrainConfig(steps=steps, batch_size=256, lr=lr, warmup_steps=20, log_every=0,
                                                           dead_tokens=20_000), progress=False)
    assert mean_max_cos(d.W_dec, truth) >= 0.9
    m = reconstruction_metrics(d, [{"x": x[:4096]}])
    assert m["fvu"] < 0.2 and m["l0"] < 8, m


def planted_transcoder(n=16384, d=32, m=48, active=3, d_out=24, skip=False, seed=1):
    """Input: signed sparse codes through input features; output: the codes' magnitudes through
    output features (uncorrelated with the input, so no linear map can stand in for the sparse
    part), plus for skip-transcoders a dense linear map of the input."""
    g = torch.Generator().manual_seed(seed)
    f_in, f_out = torch.randn(m, d, generator=g), torch.randn(m, d_out, generator=g)
    f_in, f_out = f_in / f_in.norm(dim=1, keepdim=True), f_out / f_out.norm(dim=1, keepdim=True)
    idx = torch.rand(n, m, generator=g).argsort(1)[:, :active]
    sign = torch.randint(0, 2, (n, active), generator=g) * 2 - 1
    z = torch.zeros(n, m).scatter_(1, idx, (torch.rand(n, active, generator=g) + 0.5) * sign)
    x = z @ f_in
    y = z.abs() @ f_out + (x @ (0.3 * torch.randn(d, d_out, generator=g)) if skip else 0)
    return x, y, f_out


@pytest.mark.parametrize("kind", ["transcoder", "skip_transcoder"])
def test_transcoder_recovers_planted_output_features(kind):
    x, y, truth = planted_transcoder(skip=kind == "skip_transcoder")
    cfg = DictionaryConfig(d_in=32, d_out=24, n_latents=128, kind=kind, activation="topk", k=3, hook_in="a", hook_out="b")
    [d] = train([cfg], TensorSource({"a": x, "b": y}), TrainConfig(steps=400, batch_size=256, lr=1e-2, warmup_steps=20, log_every=0,
                                                                   dead_tokens=20_000), progress=False)
    assert mean_max_cos(d.W_dec, truth) >= 0.9
    assert reconstruction_metrics(d, [{"a": x[:4096], "b": y[:4096]}])["fvu"] < 0.2


def _weights(ds):
    return [{k: v.clone() for k, v in d.state_dict().items()} for d in ds]


@pytest.mark.parametrize("activation", ["topk", "jumprelu", "batchtopk"])
def test_resumed_run_ends_with_identical_weights(tmp_path, activation):
    x, _ = planted(n=4096)
    src = TensorSource({"x": x, "y": x[:, :16] * 2})
    cfgs = [DictionaryConfig(d_in=32, n_latents=64, activation=activation, k=3, hook_in="x"),
            DictionaryConfig(d_in=32, d_out=16, n_latents=48, kind="skip_transcoder", activation="topk", k=4, hook_in="x", hook_out="y")]
    tc = TrainConfig(steps=24, batch_size=128, lr=3e-3, warmup_steps=4, sparsity_warmup_steps=6, dead_tokens=256, log_every=1,
                     checkpoint_every=5, seed=3)
    full = _weights(train(cfgs, src, tc, out_dir=tmp_path / "full", progress=False))
    train(cfgs, src, tc, out_dir=tmp_path / "cut", until=11, progress=False)  # "killed" at step 11
    pointer = json.loads((tmp_path / "cut" / "checkpoints" / "latest.json").read_text())
    assert pointer["step"] == 11
    resumed = _weights(train(cfgs, src, tc, out_dir=tmp_path / "cut", progress=False))  # a fresh trainer
    for a, b in zip(full, resumed):
        for name in a:
            assert torch.equal(a[name], b[name]), name
    log = [json.loads(line) for line in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 25))  # each step logged once
    full_log = [json.loads(line) for line in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    assert [r["x"]["data_checksum"] for r in log] == [r["x"]["data_checksum"] for r in full_log]
    assert log[-1]["x"]["weights_sha1"] == full_log[-1]["x"]["weights_sha1"]
    # the final dictionaries are saved natively and load back identically
    d = load_dictionary(tmp_path / "cut" / "x")
    assert torch.equal(d.W_dec, full[0]["W_dec"])
    assert sorted(p.name for p in (tmp_path / "cut" / "checkpoints").glob("step_*")) == ["step_00000020", "step_00000024"]


def test_resume_refuses_other_settings(tmp_path):
    x, _ = planted(n=2048)
    cfg = DictionaryConfig(d_in=32, n_latents=64, k=3, hook_in="x")
    train([cfg], TensorSource({"x": x}), TrainConfig(steps=6, batch_size=128), out_dir=tmp_path, until=3, progress=False)
    with pytest.raises(ConfigError, match=r"cannot resume .*lr: checkpoint 0.0004, now 0.001"):
        train([cfg], TensorSource({"x": x}), TrainConfig(steps=6, batch_size=128, lr=1e-3), out_dir=tmp_path, progress=False)
    [d] = train([cfg], TensorSource({"x": x}), TrainConfig(steps=6, batch_size=128, lr=1e-3), out_dir=tmp_path, overwrite=True, progress=False)
    assert d.W_dec.shape == (64, 32)


class _PoisonedSource(TensorSource):
    """Yields a NaN in batch ``bad_step`` (0-based)."""

    def __init__(self, rows, bad_step):
        super().__init__(rows)
        self.bad_step = bad_step

    def iterate(self, batch_size, *, seed, rank=0, world_size=1, skip=0, device="cpu"):
        for i, b in enumerate(super().iterate(batch_size, seed=seed, rank=rank, world_size=world_size, skip=skip, device=device), start=skip):
            if i == self.bad_step:
                b = {h: t.clone() for h, t in b.items()}
                b["resid"][7, 3] = float("nan")
            yield b


def test_nan_batch_stops_naming_step_and_hook_and_keeps_last_checkpoint(tmp_path):
    x, _ = planted(n=4096)
    cfg = DictionaryConfig(d_in=32, n_latents=64, k=3, hook_in="resid")
    tc = TrainConfig(steps=20, batch_size=128, checkpoint_every=4)
    with pytest.raises(NonFiniteError, match=r"at step 10, hook 'resid' \(batch row 7\).*last good checkpoint: .*step_00000008"):
        train([cfg], _PoisonedSource({"resid": x}, bad_step=9), tc, out_dir=tmp_path, progress=False)
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["step"] == 8
    # the good checkpoint still resumes (with clean data) to the end
    [d] = train([cfg], TensorSource({"resid": x}), tc, out_dir=tmp_path, progress=False)
    assert torch.isfinite(d.W_dec).all()


def test_dimensions_that_disagree_are_named():
    src = TensorSource({"x": torch.randn(512, 32), "y": torch.randn(512, 8)})
    with pytest.raises(ConfigError, match=r"expects d_in=64 for hook 'x', but in-memory rows 'tensors' has rows of width 32"):
        train([DictionaryConfig(d_in=64, n_latents=128, hook_in="x")], src, TrainConfig(steps=2, batch_size=64), progress=False)
    with pytest.raises(ConfigError, match=r"expects d_out=16 for hook 'y'.*width 8"):
        train([DictionaryConfig(d_in=32, d_out=16, n_latents=64, kind="transcoder", hook_in="x", hook_out="y")], src,
              TrainConfig(steps=2, batch_size=64), progress=False)
    with pytest.raises(ConfigError, match=r"reads hook 'z', but the source provides only \['x', 'y'\]"):
        train([DictionaryConfig(d_in=32, n_latents=64, hook_in="z")], src, TrainConfig(steps=2, batch_size=64), progress=False)


def test_corrupt_checkpoint_is_a_clear_error(tmp_path):
    x, _ = planted(n=2048)
    cfg = DictionaryConfig(d_in=32, n_latents=64, k=3, hook_in="x")
    tc = TrainConfig(steps=10, batch_size=128, checkpoint_every=2, keep_checkpoints=2)
    train([cfg], TensorSource({"x": x}), tc, out_dir=tmp_path, until=6, progress=False)
    f = tmp_path / "checkpoints" / "step_00000006" / "optim0.safetensors"
    blob = bytearray(f.read_bytes())
    blob[-5] ^= 0x55
    f.write_bytes(bytes(blob))
    with pytest.raises(StoreError, match=r"checkpoint .*step_00000006 is corrupt.*sha256 mismatch.*other checkpoints here: step_00000004"):
        train([cfg], TensorSource({"x": x}), tc, out_dir=tmp_path, progress=False)


def test_several_dictionaries_train_in_one_pass_as_if_alone(tmp_path):
    """Dictionaries share the batches but not their updates: each ends as if trained alone."""
    x, _ = planted(n=2048)
    src = TensorSource({"a": x, "b": x[:, :16]})
    ca = DictionaryConfig(d_in=32, n_latents=64, k=3, hook_in="a")
    cb = DictionaryConfig(d_in=16, n_latents=32, activation="relu", hook_in="b")
    tc = TrainConfig(steps=8, batch_size=128, seed=1)
    both = train([ca, cb], src, tc, progress=False)
    alone = train([ca], src, tc, progress=False)
    assert torch.equal(both[0].W_enc, alone[0].W_enc)
