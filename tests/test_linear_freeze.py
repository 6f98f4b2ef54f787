"""Freezing: exactness (A x0 + c == f(x0)), adjointness, agreement with jacrev of the frozen
network, and clear errors for operations that have no frozen linear form."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mechscope.errors import UnknownHookError
from mechscope.linear import FrozenNetwork, LinearizationError, UnsupportedLayerError, linearize


pytestmark = pytest.mark.usefixtures("one_thread")


def rel_err(amap, y_true):
    y = amap.apply(amap.x0) + amap.bias
    return float((y - y_true).norm() / y_true.norm())


def jacrev_frozen(amap):
    J = torch.func.jacrev(amap.frozen.affine)(amap.x0)
    return J.detach().reshape(amap.out_numel, amap.in_numel)


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.l1, self.l2, self.l3, self.l4 = nn.Linear(12, 32), nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(32, 5)
        self.ln = nn.LayerNorm(32)
        self.rms = nn.RMSNorm(32)

    def forward(self, x):
        h = F.relu(self.l1(x))
        h = self.ln(F.gelu(self.l2(h))) + torch.tanh(h)
        h = torch.sigmoid(self.l3(h)) * 2 - 1 + F.silu(h) + F.leaky_relu(h, 0.2)
        h = self.rms(F.softplus(h) + F.elu(h) + F.hardtanh(h) + torch.abs(h))
        return self.l4(h)


class ConvZoo(nn.Module):
    """Conv2d/1d, BatchNorm, MaxPool, LeakyReLU, GELU, ConvTranspose, Upsample, PixelShuffle,
    GroupNorm, InstanceNorm, AvgPool, residual adds and concatenation."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=1, padding_mode="reflect")
        self.up = nn.ConvTranspose2d(8, 8, 2, stride=2)
        self.gn = nn.GroupNorm(2, 8)
        self.inorm = nn.InstanceNorm2d(8, affine=True)
        self.ps = nn.Sequential(nn.Conv2d(16, 4, 3, padding=1), nn.PixelShuffle(2))
        self.upsample = nn.Upsample(scale_factor=0.5, mode="bilinear")
        self.c1d = nn.Conv1d(1, 2, 5, padding=2)

    def forward(self, x):
        h = F.leaky_relu(self.bn(self.c1(x)), 0.1)
        skip = F.avg_pool2d(h, 2)
        h = F.max_pool2d(h, 2)
        h = h + F.gelu(self.c2(h))                              # residual add
        h = self.inorm(self.gn(h)) + skip
        h = F.relu6(self.up(h))                                 # ConvTranspose
        h = torch.cat([h, F.interpolate(h, scale_factor=1.0, mode="nearest")], dim=1)
        h = self.ps(h)                                          # PixelShuffle: [1, 1, 32, 32]
        h = self.upsample(h)                                    # [1, 1, 16, 16]
        h = h + F.adaptive_avg_pool2d(x, 8).repeat_interleave(2, -1).repeat_interleave(2, -2)[:, :1]
        v = self.c1d(h.flatten(2))                               # [1, 2, 256]
        return v.amax(dim=1) + v.max(dim=1).values - v.min()


def test_mlp_exact_adjoint_and_jacrev():
    torch.manual_seed(0)
    model = MLP().eval()
    x0 = torch.randn(1, 12)
    amap = linearize(model, x0)
    with torch.no_grad():
        y = model(x0)
    assert amap.in_shape == (1, 12) and amap.out_shape == (1, 5)
    assert rel_err(amap, y) < 1e-5
    assert amap.adjoint_error() < 1e-5
    D = amap.dense()
    J = jacrev_frozen(amap)
    assert torch.allclose(D, J, atol=1e-5 * J.abs().max().item())
    # the frozen map is not the Jacobian of the original network (the gains are secants)
    Jtrue = torch.func.jacrev(model)(x0).reshape(5, 12)
    assert (Jtrue - D).abs().max() > 1e-3
    # rows and columns agree with the dense matrix
    assert torch.allclose(amap.row(3).reshape(-1), D[3], atol=1e-6)
    assert torch.allclose(amap.column((0, 7)).reshape(-1), D[:, 7], atol=1e-6)


def test_relu_mlp_matches_hand_computed_map():
    torch.manual_seed(1)
    l1, l2 = nn.Linear(6, 10), nn.Linear(10, 3)
    model = nn.Sequential(l1, nn.ReLU(), l2).eval()
    x0 = torch.randn(1, 6)
    amap = linearize(model, x0)
    mask = (l1(x0) > 0).float()[0]
    A = l2.weight @ torch.diag(mask) @ l1.weight
    c = l2.weight @ (mask * l1.bias) + l2.bias
    assert torch.allclose(amap.dense(), A.detach(), atol=1e-6)
    assert torch.allclose(amap.bias.reshape(-1), c.detach(), atol=1e-6)
    v = torch.randn(1, 6)  # a second input is pushed through the *frozen* masks
    assert torch.allclose(amap.apply(v), (v @ A.T).detach(), atol=1e-6)


def test_cnn_zoo_exact_eval_and_train_mode():
    torch.manual_seed(0)
    model = ConvZoo().eval()
    x0 = torch.randn(1, 2, 16, 16)
    amap = linearize(model, x0)
    with torch.no_grad():
        y = model(x0)
    assert rel_err(amap, y) < 1e-5
    assert amap.adjoint_error() < 1e-5
    J = jacrev_frozen(amap)
    assert torch.allclose(amap.dense(side="columns"), J, atol=1e-5 * J.abs().max().item())
    assert torch.allclose(amap.dense(side="rows"), J, atol=1e-5 * J.abs().max().item())
    frozen = amap.meta["frozen"]
    assert frozen["index"] >= 3 and frozen["norm"] >= 2 and frozen["gain"] >= 3

    # BatchNorm in train mode: batch statistics are frozen; linearizing leaves the model's
    # running statistics (and num_batches_tracked) untouched
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    xb = torch.randn(2, 2, 16, 16)
    amap_t = linearize(model, xb)
    for k, v in before.items():
        assert torch.equal(v, model.state_dict()[k]), f"linearize changed {k}"
    assert amap_t.adjoint_error() < 1e-5
    with torch.no_grad():
        yb = model(xb)  # uses the same batch statistics (and, as training does, updates running stats)
    assert rel_err(amap_t, yb) < 1e-5
    assert not torch.equal(before["bn.running_mean"], model.state_dict()["bn.running_mean"])


def test_attention_patterns_are_frozen():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(d_model=16, nhead=2, dim_feedforward=32, dropout=0.0, batch_first=True).eval()
    x0 = torch.randn(1, 5, 16)
    amap = linearize(layer, x0)
    with torch.no_grad():
        y = layer(x0)
    assert rel_err(amap, y) < 1e-5
    assert amap.adjoint_error() < 1e-5

    q = nn.Linear(8, 8)

    def causal(x):  # scaled_dot_product_attention with q, k, v all input-dependent
        qq = q(x).view(1, 6, 2, 4).transpose(1, 2)
        return F.scaled_dot_product_attention(qq, qq, qq, is_causal=True).sum(1)

    x1 = torch.randn(1, 6, 8)
    amap2 = linearize(causal, x1)
    assert rel_err(amap2, causal(x1).detach()) < 1e-5
    assert amap2.meta["frozen"].get("attention") == 1


def test_decisions_by_comparison_and_control_flow_are_frozen():
    w = torch.randn(8, 8, generator=torch.Generator().manual_seed(0))

    def fn(x):
        h = x @ w
        h = h * (h > 0) + 0.1 * h * (h <= 0)      # a hand-written leaky ReLU
        if h.sum() > 0:                            # input-dependent control flow: frozen
            h = h + 1.0
        else:
            h = h - 1.0
        return torch.where(h > 0.5, h, torch.zeros_like(h))

    x0 = torch.randn(1, 8)
    amap = linearize(fn, x0)
    assert rel_err(amap, fn(x0)) < 1e-6
    assert amap.meta["frozen"]["const"] >= 3


def test_gain_at_zero_is_the_derivative():
    x0 = torch.tensor([[0.0, 1.0, -2.0, 0.0]])
    for act, d0 in [(F.gelu, 0.5), (F.silu, 0.5), (torch.tanh, 1.0), (torch.sigmoid, 0.25)]:
        amap = linearize(lambda x, act=act: act(x), x0)
        D = amap.dense()
        assert D[0, 0].item() == pytest.approx(d0, abs=1e-6)
        assert D[3, 3].item() == pytest.approx(d0, abs=1e-6)
        assert rel_err(amap, act(x0)) < 1e-6
    amap = linearize(torch.sigmoid, x0)
    assert torch.allclose(amap.bias, torch.full((1, 4), 0.5))  # sigmoid(0) is the bias


def test_norm_center_frozen_is_also_exact():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 2)).eval()
    x0 = torch.randn(1, 6)
    a_lin = linearize(model, x0)
    a_frz = linearize(model, x0, norm_center="frozen")
    y = model(x0).detach()
    assert rel_err(a_lin, y) < 1e-5 and rel_err(a_frz, y) < 1e-5
    assert not torch.allclose(a_lin.dense(), a_frz.dense())  # different decompositions of y


class Square(nn.Module):
    def forward(self, x):
        return x * x


class Gate(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return torch.sigmoid(self.lin(x)).exp()


def test_unsupported_operations_raise_errors_naming_them():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 4), Square(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedLayerError, match=r"mul.*product of two input-dependent.*'1' \(Square\)"):
        linearize(net, torch.randn(1, 4))
    with pytest.raises(UnsupportedLayerError, match=r"softmax.*'1' \(Softmax\)"):
        linearize(nn.Sequential(nn.Linear(4, 3), nn.Softmax(-1)), torch.randn(1, 4))
    with pytest.raises(UnsupportedLayerError, match=r"exp"):
        linearize(lambda x: torch.exp(x), torch.randn(3))
    with pytest.raises(UnsupportedLayerError, match=r"division by an input-dependent"):
        linearize(lambda x: x / (x.sum() + 10.0), torch.randn(3))
    with pytest.raises(UnsupportedLayerError, match=r"norm \(a non-linear function of the input, frozen only where"):
        linearize(lambda x: x + x.norm(), torch.randn(3))
    with pytest.raises(UnsupportedLayerError, match=r"log_softmax"):
        linearize(lambda x: F.log_softmax(x, -1), torch.randn(3))
    with pytest.raises(UnsupportedLayerError, match=r"dropout.*model.eval"):
        linearize(nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.5)).train(), torch.randn(1, 4))
    # an unsupported op whose result is discarded is harmless
    amap = linearize(lambda x: (x * 2, torch.exp(x))[0], torch.randn(3))
    assert torch.allclose(amap.dense(), 2 * torch.eye(3))


def test_freeze_points_make_a_module_output_constant():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 4), Gate())
    x0 = torch.randn(1, 4)
    with pytest.raises(UnsupportedLayerError, match="exp"):
        linearize(model, x0)
    gated = lambda x: model[0](x) * model(x)  # noqa: E731  (a gate times a linear signal)
    amap = linearize(gated, x0, root=model, freeze=["1"])
    assert rel_err(amap, gated(x0).detach()) < 1e-6
    # without the freeze point the gate is a frozen multiplier: the same map
    assert torch.allclose(linearize(gated, x0, root=model).dense(), amap.dense(), atol=1e-6)
    with pytest.raises(UnknownHookError, match="did you mean"):
        linearize(gated, x0, root=model, freeze=["1.lni"])


def test_self_check_catches_dependence_outside_torch_calls():
    class Leak(torch.autograd.Function):  # hides x*x from the function mode's classification
        @staticmethod
        def forward(ctx, x):
            with torch._C.DisableTorchFunction():
                return x * x

        @staticmethod
        def backward(ctx, g):
            return g

    with pytest.raises(LinearizationError, match="self-check"):
        linearize(lambda x: Leak.apply(x) + x, torch.randn(4) + 2)

    def no_grad_inside(x):  # the forward value is right, but apply_T would miss this branch
        with torch.no_grad():
            y = 3 * x
        return y + x

    with pytest.raises(LinearizationError, match="adjoint"):
        linearize(no_grad_inside, torch.randn(4))
    with pytest.raises(UnsupportedLayerError, match="new_tensor copies input-dependent values"):
        linearize(lambda x: x.new_tensor(x) + x, torch.randn(4))


def test_frozen_network_rejects_integer_inputs():
    with pytest.raises(Exception, match="floating-point"):
        FrozenNetwork(lambda x: x, torch.arange(3))
