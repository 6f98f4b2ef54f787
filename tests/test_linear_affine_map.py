"""The AffineMap type: apply/apply_T/rows/columns/dense, the matrix-free SVD against a dense SVD,
and saving/loading through mechscope.files."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from mechscope.errors import ConfigError, FormatError, StoreError
from mechscope.linear import AffineMap, DenseAffineMap, LowRankAffineMap, dense_svd, krylov_svd, linearize


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def conv_map():
    """An image-to-image map [1, 1, 12, 12] -> [1, 2, 12, 12]."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.GELU(), nn.Conv2d(6, 6, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(6, 2, 3, padding=1)).eval()
    x0 = torch.randn(1, 1, 12, 12)
    return linearize(model, x0)


def test_shapes_batches_and_indexing(conv_map):
    a = conv_map
    assert a.shape == (288, 144) and a.in_shape == (1, 1, 12, 12) and a.out_shape == (1, 2, 12, 12)
    V = torch.randn(5, *a.in_shape)
    AV = a.apply(V)
    assert AV.shape == (5, *a.out_shape)
    for i in range(5):
        assert torch.allclose(AV[i], a.apply(V[i]), atol=1e-5)
    U = torch.randn(3, *a.out_shape)
    assert a.apply_T(U).shape == (3, *a.in_shape)
    D = a.dense()
    assert torch.allclose(a.column((0, 0, 4, 5)).reshape(-1), D[:, 4 * 12 + 5], atol=1e-6)
    assert torch.allclose(a.row((0, 1, 3, 3)).reshape(-1), D[144 + 3 * 12 + 3], atol=1e-6)
    assert torch.allclose(a.row(-1).reshape(-1), D[-1], atol=1e-6)
    assert torch.allclose(a(V), AV + a.bias)
    with pytest.raises(ConfigError, match=r"expected shape \[1, 1, 12, 12\]"):
        a.apply(torch.randn(1, 12, 12))
    with pytest.raises(ConfigError, match="outside"):
        a.column((0, 0, 12, 0))
    with pytest.raises(ConfigError, match="max_elements"):
        a.dense(max_elements=100)


def test_adjoint_and_dense_sides_agree(conv_map):
    assert conv_map.adjoint_error(n=4) < 1e-5
    Dc, Dr = conv_map.dense(side="columns"), conv_map.dense(side="rows", chunk_size=50)
    assert torch.allclose(Dc, Dr, atol=1e-5)


def test_matrix_free_svd_matches_dense_svd(conv_map):
    D = conv_map.dense()
    ref = dense_svd(D, 6)
    mf = conv_map.svd(6)
    assert mf.U.shape == (288, 6) and mf.V.shape == (144, 6) and mf.S.shape == (6,)
    assert torch.allclose(mf.S, ref.S, rtol=1e-4)
    # singular vectors agree up to sign (the top values are well separated here)
    gaps = (ref.S[:-1] - ref.S[1:]) / ref.S[0]
    for i in range(5):
        if gaps[i] > 1e-3 and (i == 0 or gaps[i - 1] > 1e-3):
            assert abs(float(mf.U[:, i] @ ref.U[:, i])) > 0.999
            assert abs(float(mf.V[:, i] @ ref.V[:, i])) > 0.999
    # A V = U S
    assert torch.allclose(D @ mf.V, mf.U * mf.S, atol=1e-4 * float(ref.S[0]))
    assert mf.iterations >= 1


def test_krylov_svd_on_a_flat_spectrum_is_exact_when_the_basis_fills_the_space():
    g = torch.Generator().manual_seed(0)
    Q1, _ = torch.linalg.qr(torch.randn(40, 40, generator=g))
    Q2, _ = torch.linalg.qr(torch.randn(30, 30, generator=g))
    S = 1.0 + 1e-4 * torch.arange(30, 0, -1).float()  # nearly equal singular values
    A = Q1[:, :30] @ torch.diag(S) @ Q2.T
    r = krylov_svd(lambda V: V @ A.T, lambda U: U @ A, (40, 30), 5, max_iter=100)
    assert torch.allclose(r.S, S[:5], rtol=1e-5)
    with pytest.raises(ConfigError, match="k must be in"):
        krylov_svd(lambda V: V @ A.T, lambda U: U @ A, (40, 30), 31)


def test_save_load_dense_and_lowrank(conv_map, tmp_path):
    d = conv_map.save(tmp_path / "m")
    cfg = json.loads((d / "cfg.json").read_text())
    assert cfg["format"] == "mechscope.affine_map" and cfg["kind"] == "dense" and cfg["in_shape"] == [1, 1, 12, 12]
    loaded = AffineMap.load(d)
    assert isinstance(loaded, DenseAffineMap) and loaded.exact
    assert torch.allclose(loaded.dense(), conv_map.dense(), atol=1e-6)
    assert torch.equal(loaded.bias, conv_map.bias) and torch.equal(loaded.x0, conv_map.x0)
    assert loaded.exactness()["rel_error"] < 1e-5
    assert loaded.adjoint_error() < 1e-6
    assert torch.allclose(loaded.svd(3).S, conv_map.svd(3).S, rtol=1e-4)

    lr = AffineMap.load(conv_map.save(tmp_path / "lr", rank=4))
    assert isinstance(lr, LowRankAffineMap) and not lr.exact
    assert torch.allclose(lr.svd(4).S, conv_map.svd(4).S, rtol=1e-4)
    with pytest.raises(ConfigError, match="rank=k"):
        conv_map.save(tmp_path / "big", max_elements=10)


def test_load_reports_corruption_and_wrong_format(conv_map, tmp_path):
    d = conv_map.save(tmp_path / "m")
    data = bytearray((d / "map.safetensors").read_bytes())
    data[-5] ^= 0xFF
    (d / "map.safetensors").write_bytes(bytes(data))
    with pytest.raises(StoreError, match="sha256 mismatch"):
        AffineMap.load(d)
    cfg = json.loads((d / "cfg.json").read_text())
    cfg["format"] = "something.else"
    (d / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(FormatError, match="expected format 'mechscope.affine_map'"):
        AffineMap.load(d)


def test_dense_map_validates_its_matrix():
    with pytest.raises(ConfigError, match=r"A must have shape \[3, 4\]"):
        DenseAffineMap(torch.zeros(4, 3), torch.zeros(3), (4,), (3,))
    A = torch.randn(3, 4)
    m = DenseAffineMap(A, torch.ones(3), (4,), (3,))
    v = torch.randn(4)
    assert torch.allclose(m(v), A @ v + 1)
    assert torch.allclose(m.apply_T(torch.ones(3)), A.sum(0))
