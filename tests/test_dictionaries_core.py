"""Dictionary architectures: configs, forward outputs, sparse gradients, shapes, native files, errors."""

import json

import pytest
import torch

from mechscope.dictionaries import Dictionary, DictionaryConfig, ForwardOutput, load_dictionary, save_saelens
from mechscope.dictionaries.config import TrainConfig
from mechscope.errors import ConfigError, FormatError, StoreError


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def test_unknown_activation_and_kind_are_named():
    with pytest.raises(ConfigError, match=r"activation must be one of relu, topk, batchtopk, jumprelu; found 'gelu'"):
        DictionaryConfig(d_in=8, n_latents=16, activation="gelu")
    with pytest.raises(ConfigError, match=r"kind must be one of sae, transcoder, skip_transcoder; found 'crosscoder'"):
        DictionaryConfig(d_in=8, n_latents=16, kind="crosscoder")
    with pytest.raises(ConfigError, match=r"k must be an integer in \[1, n_latents=16\]; found 17"):
        DictionaryConfig(d_in=8, n_latents=16, k=17)
    with pytest.raises(ConfigError, match="expected d_out == d_in"):
        DictionaryConfig(d_in=8, n_latents=16, d_out=4)
    with pytest.raises(ConfigError, match=r"act_shape \[3, 4\] has 12 elements; expected d_in=8"):
        DictionaryConfig(d_in=8, n_latents=16, act_shape=[3, 4])
    with pytest.raises(ConfigError, match="unknown DictionaryConfig field"):
        DictionaryConfig.from_dict({"d_in": 8, "n_latents": 16, "architecture": "topk"})
    with pytest.raises(ConfigError, match="lr must be > 0"):
        TrainConfig(lr=0)


def test_lr_and_sparsity_schedules():
    cfg = TrainConfig(steps=100, lr=1.0, warmup_steps=10, decay_fraction=0.2, sparsity_warmup_steps=50)
    assert cfg.lr_at(0) == pytest.approx(0.1)
    assert cfg.lr_at(9) == pytest.approx(1.0) and cfg.lr_at(50) == pytest.approx(1.0)
    assert cfg.lr_at(90) == pytest.approx(0.5) and cfg.lr_at(99) == pytest.approx(0.05)
    assert cfg.sparsity_scale_at(24) == pytest.approx(0.5) and cfg.sparsity_scale_at(80) == 1.0


@pytest.mark.parametrize("activation", ["relu", "topk", "batchtopk", "jumprelu"])
@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder"])
def test_forward_names_every_loss_term(kind, activation):
    d_out = 10 if kind == "sae" else 6
    d = Dictionary(DictionaryConfig(d_in=10, d_out=d_out, n_latents=40, kind=kind, activation=activation, k=4), seed=0)
    x, y = torch.randn(64, 10), torch.randn(64, d_out)
    d.init_from_data(x, y)
    dead = torch.zeros(40, dtype=torch.bool)
    dead[:20] = True
    out = d(x, y, dead_mask=dead, auxk_coeff=0.5)
    assert isinstance(out, ForwardOutput)
    assert out.recon.shape == (64, d_out)
    target = x if kind == "sae" else y
    sq = (target - out.recon).pow(2).sum()
    assert out.fvu.item() == pytest.approx((sq / (target - target.mean(0)).pow(2).sum()).item(), rel=1e-5)
    assert out.mse.item() == pytest.approx((sq / 64).item(), rel=1e-5)
    assert out.total.item() == pytest.approx((out.fvu + out.sparsity_loss + 0.5 * out.auxk_loss).item(), rel=1e-5)
    if activation in ("topk", "batchtopk"):
        assert out.latent_indices is not None and out.auxk_loss.item() > 0 and out.sparsity_loss.item() == 0
        if activation == "topk":
            assert out.l0.item() <= 4
        else:
            assert out.l0.item() == pytest.approx(4, abs=0.05)  # k per row on average over the batch
    else:
        assert out.latent_indices is None and out.latent_acts.shape == (64, 40) and out.sparsity_loss.item() > 0
    out.total.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in d.parameters())


@pytest.mark.parametrize("kind", ["sae", "transcoder", "skip_transcoder"])
def test_sparse_topk_backward_equals_dense_autograd(kind):
    """The custom sparse kernels (gather pre-activations, embedding-bag decode, SDDMM,
    latent-major weight gradients, sparse AuxK) give the dense reference's gradients."""
    d_out = 16 if kind == "sae" else 12
    d = Dictionary(DictionaryConfig(d_in=16, d_out=d_out, n_latents=64, kind=kind, activation="topk", k=5, dtype="float64"), seed=1)
    with torch.no_grad():
        d.b_enc.normal_()
        d.b_dec.normal_()
        if kind == "skip_transcoder":
            d.W_skip.normal_()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(50, 16, generator=g, dtype=torch.float64), torch.randn(50, d_out, generator=g, dtype=torch.float64)
    dead = torch.zeros(64, dtype=torch.bool)
    dead[::3] = True
    out = d(x, y, dead_mask=dead, auxk_coeff=0.5)
    out.total.backward()
    sparse = {n: p.grad.clone() for n, p in d.named_parameters()}
    d.zero_grad()

    xe = x - d.b_dec if kind == "sae" else x
    pre = xe @ d.W_enc.T + d.b_enc
    v, i = pre.topk(5, dim=-1)
    recon = torch.zeros_like(pre).scatter(-1, i, v.relu()) @ d.W_dec + d.b_dec
    if kind == "skip_transcoder":
        recon = recon + x @ d.W_skip.T
    target = x if kind == "sae" else y
    err = target - recon
    tv = (target - target.mean(0)).pow(2).sum()
    k_aux, n_dead = d_out // 2, int(dead.sum())
    av, ai = torch.where(dead[None], pre, -torch.inf).topk(k_aux, dim=-1)
    e_hat = torch.zeros_like(pre).scatter(-1, ai, av.relu()) @ d.W_dec
    auxk = min(n_dead / k_aux, 1.0) * (e_hat - err.detach()).pow(2).sum() / tv
    (err.pow(2).sum() / tv + 0.5 * auxk).backward()
    assert out.auxk_loss.item() == pytest.approx(auxk.item(), rel=1e-10)
    for name, p in d.named_parameters():
        torch.testing.assert_close(sparse[name], p.grad, rtol=1e-9, atol=1e-12, msg=name)


def test_bf16_candidates_keep_exact_values_and_almost_always_the_same_latents(monkeypatch):
    """bf16 candidate selection (forced on, whatever the CPU) returns exact fp32 pre-activations,
    the same latent sets as the exact path on (nearly) every row, and leaves encode() exact."""
    from mechscope.dictionaries import sparse as S

    monkeypatch.setattr(S, "BF16_CANDIDATES", True)
    g = torch.Generator().manual_seed(0)
    codes = torch.rand(2048, 512, generator=g).lt(0.02) * torch.rand(2048, 512, generator=g)
    x = codes @ torch.randn(512, 64, generator=g)
    d = Dictionary(DictionaryConfig(d_in=64, n_latents=1024, activation="topk", k=16), seed=0)
    W, b = d.W_enc.detach(), d.b_enc.detach().normal_(0, 0.1)
    ref_v, ref_i = S.select_topk(x, W, b, 16, candidates="exact")
    v, i = S.select_topk(x, W, b, 16, candidates="auto")
    assert torch.equal(i, i.sort(1).values)
    torch.testing.assert_close(v, (x @ W.T + b).gather(1, i), rtol=1e-5, atol=1e-5)  # values are fp32, not bf16
    same = (i == ref_i).all(1).float().mean().item()
    assert same >= 0.995, same
    assert (v.min(1).values >= ref_v.min(1).values - 1e-3).all()  # a swap only among near-equal latents
    pre = x @ W.T + b
    top_v, top_i = pre.topk(16, dim=1)
    dense = torch.zeros_like(pre).scatter(1, top_i, top_v.relu())
    torch.testing.assert_close(d.encode(x), dense)  # inference is exact
    with pytest.raises(ConfigError, match="candidates must be 'exact' or 'auto'; found 'fast'"):
        S.select_topk(x, W, b, 16, candidates="fast")


def test_jumprelu_straight_through_estimator():
    d = Dictionary(DictionaryConfig(d_in=8, n_latents=32, activation="jumprelu", jumprelu_threshold=0.3, jumprelu_bandwidth=0.5), seed=0)
    x = torch.randn(256, 8)
    out = d(x)
    pre = (x - d.b_dec) @ d.W_enc.T + d.b_enc
    assert torch.equal(out.latent_acts > 0, pre > d.threshold)
    out.sparsity_loss.backward()  # L0 reaches the threshold only through the STE kernel
    assert d.threshold.grad is not None and (d.threshold.grad < 0).any()
    near = ((pre - d.threshold).abs() < 0.25).any(0)
    assert torch.equal(d.threshold.grad != 0, near)
    assert d.W_enc.grad is None or d.W_enc.grad.abs().sum() == 0


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_full_batch_gradient_is_autograds(apply_b_dec):
    """The hand-written ReLU-L1 gradient of fit_full_batch equals autograd's on Dictionary.forward
    (W_dec's after removing its parallel component), on sparse planted data with live latents."""
    from mechscope.dictionaries.full_batch import relu_sae_grads

    gen = torch.Generator().manual_seed(0)
    codes = torch.rand(96, 48, generator=gen).lt(0.1) * torch.rand(96, 48, generator=gen)
    x = (codes @ torch.randn(48, 16, generator=gen) + 0.5).double()
    cfg = DictionaryConfig(d_in=16, n_latents=64, activation="relu", l1_coeff=0.3, dtype="float64", apply_b_dec_to_input=apply_b_dec)
    d = Dictionary(cfg, seed=1)
    with torch.no_grad():
        d.init_from_data(x)
        d.b_dec.add_(0.1)  # b_dec away from the mean, so its gradient is not ~0
        d.normalize_decoder_()
    out = d(x)
    out.total.backward()
    d.remove_parallel_grad_()
    assert 0 < out.l0 < 64
    grads, loss = relu_sae_grads(d, x)
    torch.testing.assert_close(loss, out.total.detach(), rtol=1e-12, atol=1e-12)
    for name, g in zip(("W_enc", "b_enc", "W_dec", "b_dec"), grads):
        torch.testing.assert_close(g, getattr(d, name).grad, rtol=1e-9, atol=1e-12, msg=name)


def test_full_batch_fit_lowers_the_loss_and_keeps_unit_decoder():
    from mechscope.dictionaries.full_batch import fit_full_batch, relu_sae_grads

    gen = torch.Generator().manual_seed(0)
    x = (torch.rand(90, 40, generator=gen).lt(0.08) * torch.rand(90, 40, generator=gen)) @ torch.randn(40, 24, generator=gen)
    cfg = DictionaryConfig(d_in=24, n_latents=80, activation="relu", l1_coeff=0.1)
    before = relu_sae_grads(fit_full_batch(cfg, x, 1, 1e-3), x)[1]
    d = fit_full_batch(cfg, x, 300, 1e-2)
    after = relu_sae_grads(d, x)[1]
    assert after < 0.5 * before, (before, after)
    torch.testing.assert_close(d.W_dec.norm(dim=1), torch.ones(80))
    with pytest.raises(ConfigError, match="fit_full_batch fits ReLU-L1 SAEs"):
        fit_full_batch(DictionaryConfig(d_in=24, n_latents=80, activation="topk", k=4), x, 1, 1e-3)


def test_full_batch_fit_steps_are_torch_adam():
    """fit_full_batch's fused loop = torch.optim.Adam on relu_sae_grads, then unit decoder rows."""
    from mechscope.dictionaries.full_batch import fit_full_batch, relu_sae_grads

    gen = torch.Generator().manual_seed(3)
    x = ((torch.rand(60, 30, generator=gen).lt(0.1) * torch.rand(60, 30, generator=gen)) @ torch.randn(30, 12, generator=gen)).double()
    cfg = DictionaryConfig(d_in=12, n_latents=40, activation="relu", l1_coeff=0.2, dtype="float64")
    ref = Dictionary(cfg, seed=5)
    params = [ref.W_enc, ref.b_enc, ref.W_dec, ref.b_dec]
    opt = torch.optim.Adam(params, lr=1e-2, foreach=False)
    with torch.no_grad():
        ref.init_from_data(x)
        ref.normalize_decoder_()
    for _ in range(7):
        for p, g in zip(params, relu_sae_grads(ref, x)[0]):
            p.grad = g
        opt.step()
        with torch.no_grad():
            ref.normalize_decoder_()
    fit = fit_full_batch(cfg, x, 7, 1e-2, seed=5)
    for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
        torch.testing.assert_close(getattr(fit, name), getattr(ref, name), rtol=1e-10, atol=1e-12, msg=name)


def test_batchtopk_uses_learned_threshold_at_inference():
    d = Dictionary(DictionaryConfig(d_in=8, n_latents=32, activation="batchtopk", k=3), seed=0)
    x = torch.randn(128, 8)
    d.train()
    z_train = d.encode(x)
    assert (z_train > 0).sum().item() == pytest.approx(128 * 3, abs=3)
    d.threshold.fill_(0.5)
    d.eval()
    z = d.encode(x)
    pre = (x - d.b_dec) @ d.W_enc.T + d.b_enc
    torch.testing.assert_close(z, pre * (pre > 0.5))


def test_attention_output_sae_keeps_head_structure():
    cfg = DictionaryConfig(d_in=32, n_latents=48, activation="topk", k=4, hook_in="blocks.0.attn.hook_z", act_shape=[4, 8])
    d = Dictionary(cfg, seed=0)
    z = torch.randn(2, 5, 4, 8)  # [batch, pos, head, d_head]
    codes = d.encode(z)
    assert codes.shape == (2, 5, 48) and ((codes > 0).sum(-1) <= 4).all()
    torch.testing.assert_close(codes, d.encode(z.reshape(2, 5, 32)))
    rec = d.reconstruct(z)
    assert rec.shape == z.shape
    torch.testing.assert_close(rec.reshape(2, 5, 32), d.decode(codes))
    heads = d.heads()
    assert heads.shape == (48, 4, 8)
    torch.testing.assert_close(heads.reshape(48, 32), d.W_dec.detach())
    # the decoder output of one latent, split by head, is exactly its head blocks
    torch.testing.assert_close((torch.eye(48)[5] @ d.W_dec).reshape(4, 8), heads[5])
    with pytest.raises(ConfigError, match="heads\\(\\) needs an SAE on a \\[n_heads, d_head\\] hook"):
        Dictionary(DictionaryConfig(d_in=32, n_latents=48), seed=0).heads()
    with pytest.raises(ConfigError, match=r"expected input of shape \[..., 32\] or \[..., 4, 8\], found \[2, 5, 16\]"):
        d.encode(torch.randn(2, 5, 16))


def test_seed_fixes_initial_weights():
    cfg = DictionaryConfig(d_in=8, n_latents=16)
    a, b, c = Dictionary(cfg, seed=3), Dictionary(cfg, seed=3), Dictionary(cfg, seed=4)
    assert torch.equal(a.W_enc, b.W_enc) and not torch.equal(a.W_enc, c.W_enc)
    torch.testing.assert_close(a.W_dec.norm(dim=1), torch.ones(16))


@pytest.mark.parametrize("kind,activation", [("sae", "topk"), ("sae", "jumprelu"), ("skip_transcoder", "batchtopk"), ("transcoder", "relu")])
def test_native_roundtrip(tmp_path, kind, activation):
    cfg = DictionaryConfig(d_in=12, d_out=12 if kind == "sae" else 7, n_latents=30, kind=kind, activation=activation, k=3,
                           hook_in="blocks.0.ln2.hook_normalized", hook_out=None if kind == "sae" else "blocks.0.hook_mlp_out")
    d = Dictionary(cfg, seed=0)
    with torch.no_grad():
        for p in d.parameters():
            p.add_(0.1 * torch.randn_like(p))
        if activation == "batchtopk":
            d.threshold.fill_(0.2)
    d.save(tmp_path / "d")
    e = load_dictionary(tmp_path / "d")
    assert e.cfg == d.cfg
    for (n, a), (_, b) in zip(d.state_dict().items(), e.state_dict().items()):
        assert torch.equal(a, b), n
    assert not e.training  # loaded for inference: BatchTopK encodes with its threshold, row by row
    x = torch.randn(20, 12)
    torch.testing.assert_close(d.eval().reconstruct(x), e.reconstruct(x), rtol=0, atol=0)
    torch.testing.assert_close(e.encode(x[:1]), e.encode(x)[:1])


def test_corrupt_and_malformed_files_are_named(tmp_path):
    d = Dictionary(DictionaryConfig(d_in=8, n_latents=16, hook_in="h"), seed=0)
    d.save(tmp_path / "d")
    blob = bytearray((tmp_path / "d" / "dictionary.safetensors").read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte inside the weights
    (tmp_path / "d" / "dictionary.safetensors").write_bytes(bytes(blob))
    with pytest.raises(StoreError, match="is corrupt.*sha256 mismatch"):
        load_dictionary(tmp_path / "d")
    d.save(tmp_path / "e")
    cfg = json.loads((tmp_path / "e" / "cfg.json").read_text())
    cfg["dictionary"]["activation"] = "softmax"
    (tmp_path / "e" / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="activation must be one of relu, topk, batchtopk, jumprelu; found 'softmax'"):
        load_dictionary(tmp_path / "e")
    with pytest.raises(FormatError, match="expected a dictionary directory with cfg.json"):
        load_dictionary(tmp_path / "missing")
    (tmp_path / "sl").mkdir()
    (tmp_path / "sl" / "cfg.json").write_text(json.dumps({"architecture": "gated", "d_in": 8, "d_sae": 16}))
    (tmp_path / "sl" / "sae_weights.safetensors").write_bytes(b"")
    with pytest.raises(FormatError, match="SAELens architecture 'gated' is not supported; expected one of"):
        load_dictionary(tmp_path / "sl")
    with pytest.raises(FormatError, match="SAELens has no topk transcoder"):
        save_saelens(Dictionary(DictionaryConfig(d_in=8, n_latents=16, kind="transcoder"), seed=0), tmp_path / "x")
