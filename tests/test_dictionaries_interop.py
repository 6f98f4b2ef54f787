"""Interoperability with the real sae-lens and eai-sparsify packages (the ``interop`` extra,
installed by ``make test``): files they save load in mechscope with the same outputs, and
SAELens loads what mechscope writes with the same outputs. These tests fail, not skip, when
the packages are missing."""

import importlib
import warnings

import pytest
import torch

from mechscope.dictionaries import Dictionary, DictionaryConfig, detect_format, load_dictionary, save_saelens

pytestmark = [pytest.mark.interop, pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.filterwarnings("ignore::DeprecationWarning")]

TOL = dict(rtol=1e-5, atol=1e-5)


def need(module: str, pip: str):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"{module} is not importable ({e}); the interop tests need the 'interop' extra: "
                    f"pip install {pip} (make test installs it)")


@pytest.fixture(autouse=True)
def one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _perturb(module, seed=0, names=("b_enc", "b_dec", "threshold", "W_skip", "encoder.bias", "W_dec")):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name in names:
                p.add_(0.2 * torch.randn(p.shape, generator=g, dtype=p.dtype))
                if name == "threshold":
                    p.abs_()


def _saelens_cases(sl):
    d, m = 24, 96
    meta = lambda hook: sl.saes.sae.SAEMetadata(hook_name=hook, model_name="toy")  # noqa: E731
    return {
        "standard": sl.StandardSAE(sl.StandardSAEConfig(d_in=d, d_sae=m, metadata=meta("blocks.0.hook_resid_post"))),
        "standard_no_bdec_in": sl.StandardSAE(sl.StandardSAEConfig(d_in=d, d_sae=m, apply_b_dec_to_input=False)),
        "topk": sl.TopKSAE(sl.TopKSAEConfig(d_in=d, d_sae=m, k=6, metadata=meta("blocks.0.hook_resid_post"))),
        "topk_rescaled": sl.TopKSAE(sl.TopKSAEConfig(d_in=d, d_sae=m, k=6, rescale_acts_by_decoder_norm=True)),
        "jumprelu": sl.JumpReLUSAE(sl.JumpReLUSAEConfig(d_in=d, d_sae=m)),
        "hook_z_topk": sl.TopKSAE(sl.TopKSAEConfig(d_in=d, d_sae=m, k=6, reshape_activations="hook_z", metadata=meta("blocks.0.attn.hook_z"))),
        "transcoder": sl.Transcoder(sl.TranscoderConfig(d_in=d, d_out=16, d_sae=m, apply_b_dec_to_input=False)),
        "skip_transcoder": sl.SkipTranscoder(sl.SkipTranscoderConfig(d_in=d, d_out=16, d_sae=m, apply_b_dec_to_input=False)),
        "jumprelu_transcoder": sl.JumpReLUTranscoder(sl.JumpReLUTranscoderConfig(d_in=d, d_out=16, d_sae=m, apply_b_dec_to_input=False)),
    }


@pytest.mark.parametrize("case", ["standard", "standard_no_bdec_in", "topk", "topk_rescaled", "jumprelu", "hook_z_topk", "transcoder",
                                  "skip_transcoder", "jumprelu_transcoder"])
def test_saelens_saved_sae_loads_with_identical_outputs(tmp_path, case):
    sl = need("sae_lens", "sae-lens")
    sae = _saelens_cases(sl)[case]
    _perturb(sae)
    if case == "topk_rescaled":
        with torch.no_grad():
            sae.W_dec.mul_(torch.rand(sae.W_dec.shape[0], 1) + 0.5)  # non-unit decoder rows
    sae.eval().save_model(tmp_path)  # SAELens's own save API
    assert detect_format(tmp_path) == "saelens"
    d = load_dictionary(tmp_path).eval()
    x = torch.randn(40, 6, 4) if case == "hook_z_topk" else torch.randn(40, 24)
    with torch.no_grad():
        torch.testing.assert_close(d.encode(x), sae.encode(x), **TOL)
        torch.testing.assert_close(d.reconstruct(x), sae(x), **TOL)
    assert d.cfg.kind == {"transcoder": "transcoder", "jumprelu_transcoder": "transcoder", "skip_transcoder": "skip_transcoder"}.get(case, "sae")


def test_saelens_batchtopk_training_sae_saved_for_inference_loads(tmp_path):
    sl = need("sae_lens", "sae-lens")
    sae = sl.BatchTopKTrainingSAE(sl.BatchTopKTrainingSAEConfig(d_in=24, d_sae=96, k=6))
    _perturb(sae)
    sae.topk_threshold = torch.tensor(0.15, dtype=torch.double)
    sae.save_inference_model(tmp_path)  # written as JumpReLU with the learned threshold
    inference = sl.SAE.load_from_disk(tmp_path)
    d = load_dictionary(tmp_path).eval()
    x = torch.randn(40, 24)
    with torch.no_grad():
        torch.testing.assert_close(d.encode(x), inference.encode(x), **TOL)
        torch.testing.assert_close(d.reconstruct(x), inference(x), **TOL)


MECHSCOPE_CASES = {
    "relu": dict(activation="relu"),
    "topk": dict(activation="topk", k=6),
    "jumprelu": dict(activation="jumprelu"),
    "batchtopk": dict(activation="batchtopk", k=6),
    "hook_z": dict(activation="topk", k=6, hook_in="blocks.0.attn.hook_z", act_shape=[6, 4]),
    "skip_transcoder": dict(kind="skip_transcoder", d_out=16, activation="relu", hook_out="blocks.0.hook_mlp_out"),
    "jumprelu_transcoder": dict(kind="transcoder", d_out=16, activation="jumprelu", hook_out="blocks.0.hook_mlp_out"),
}


@pytest.mark.parametrize("case", list(MECHSCOPE_CASES))
def test_mechscope_saelens_export_loads_in_saelens_with_identical_outputs(tmp_path, case):
    sl = need("sae_lens", "sae-lens")
    kw = {"hook_in": "blocks.0.ln2.hook_normalized", **MECHSCOPE_CASES[case]}
    d = Dictionary(DictionaryConfig(d_in=24, n_latents=96, **kw), seed=0)
    _perturb(d, seed=1)
    if case == "batchtopk":
        d.threshold.fill_(0.1)
    d.eval()
    save_saelens(d, tmp_path, model_name="toy")
    sae = sl.SAE.load_from_disk(tmp_path)  # SAELens's own loader
    x = torch.randn(40, 6, 4) if case == "hook_z" else torch.randn(40, 24)
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), d.encode(x), **TOL)
        torch.testing.assert_close(sae(x), d.reconstruct(x), **TOL)
    assert sae.cfg.metadata.hook_name == kw["hook_in"]
    back = load_dictionary(tmp_path)  # and it round-trips to the same mechscope dictionary
    assert back.cfg.kind == d.cfg.kind and back.cfg.activation == d.cfg.activation and back.cfg.act_shape == d.cfg.act_shape
    torch.testing.assert_close(back.eval().reconstruct(x), d.reconstruct(x), **TOL)


@pytest.mark.parametrize("case", ["sae", "transcoder", "skip_transcoder"])
def test_sparsify_saved_coder_loads_with_identical_outputs(tmp_path, case):
    sp = need("sparsify", "eai-sparsify")
    cfg = sp.SparseCoderConfig(num_latents=96, k=6, transcode=case != "sae", skip_connection=case == "skip_transcoder")
    coder = sp.SparseCoder(24, cfg)
    _perturb(coder)
    coder.save_to_disk(tmp_path)  # sparsify's own save API
    assert detect_format(tmp_path) == "sparsify"
    d = load_dictionary(tmp_path).eval()
    assert d.cfg.kind == case and d.cfg.k == 6
    x = torch.randn(40, 24)
    with torch.no_grad():
        enc = coder.encode(x)
        dense = torch.zeros(40, 96).scatter_(1, enc.top_indices, enc.top_acts)
        torch.testing.assert_close(d.encode(x), dense, **TOL)
        torch.testing.assert_close(d.reconstruct(x), coder(x).sae_out, **TOL)
