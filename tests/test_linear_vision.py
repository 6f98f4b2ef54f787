"""Vision constructs outside plain conv/ReLU stacks, hand-written (no torchvision): frozen
multipliers (squeeze-excitation, CBAM-style gates, hand-written swish / hard-swish and norms,
LSTM gates), hardsigmoid as a piecewise-linear op, grid_sample on a fixed grid. Each map is
checked against the real forward at x0, and against jacrev where the network is piecewise
linear or against an equivalent network whose frozen form is known."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mechscope.linear import UnsupportedLayerError, linearize

pytestmark = pytest.mark.usefixtures("one_thread")


def exact(amap, model, x0, tol=1e-5):
    with torch.no_grad():
        y = model(x0)
        return float((amap.apply(x0) + amap.bias - y).norm() / y.norm()) < tol


def jacobian(model, x0, amap):
    return torch.func.jacrev(model)(x0).detach().reshape(amap.out_numel, amap.in_numel)


class SqueezeExcite(nn.Module):
    """Hu et al.'s SE: pool -> fc -> ReLU -> fc -> sigmoid, view + expand_as, ``x * gate``; the
    input is an activation's output (SiLU), as in EfficientNet."""

    def __init__(self, c=6, gate=nn.Sigmoid):
        super().__init__()
        self.conv = nn.Conv2d(3, c, 3, padding=1)
        self.gate = nn.Sequential(nn.Linear(c, 3), nn.ReLU(), nn.Linear(3, c), gate())

    def forward(self, x):
        x = F.silu(self.conv(x))
        b, c = x.shape[:2]
        g = self.gate(x.mean((2, 3))).view(b, c, 1, 1)
        return (x * g.expand_as(x)).mean((2, 3))


@pytest.mark.parametrize("gate", [nn.Sigmoid, nn.Hardsigmoid])
def test_squeeze_excitation_freezes_the_gate(gate):
    torch.manual_seed(0)
    model = SqueezeExcite(gate=gate).eval()
    x0 = torch.randn(1, 3, 6, 6)
    amap = linearize(model, x0)
    assert exact(amap, model, x0)
    assert amap.meta["frozen"]["multiplier"] == 1
    # the frozen multiplier is the gate module's output frozen at x0
    ref = linearize(model, x0, freeze=["gate"])
    assert torch.allclose(amap.dense(), ref.dense(), atol=1e-6)


class ChannelSpatialAttention(nn.Module):
    """CBAM: a channel gate from avg- and max-pooled features, then a spatial gate."""

    def __init__(self, c=4):
        super().__init__()
        self.conv = nn.Conv2d(2, c, 3, padding=1)
        self.mlp = nn.Sequential(nn.Conv2d(c, 2, 1), nn.ReLU(), nn.Conv2d(2, c, 1))
        self.spatial = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x):
        x = self.conv(x)
        x = x * torch.sigmoid(self.mlp(F.adaptive_avg_pool2d(x, 1)) + self.mlp(F.adaptive_max_pool2d(x, 1)))
        s = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
        return (x * self.spatial(s).sigmoid()).flatten(1)


def test_cbam_gates_are_frozen_multipliers():
    torch.manual_seed(0)
    model = ChannelSpatialAttention().eval()
    x0 = torch.randn(1, 2, 5, 5)
    amap = linearize(model, x0)
    assert exact(amap, model, x0)
    assert amap.meta["frozen"]["multiplier"] == 2


def test_hand_written_swish_and_hard_swish_match_the_builtins():
    torch.manual_seed(0)
    x0 = torch.randn(1, 16) * 3
    pairs = [(lambda x: x * torch.sigmoid(x), F.silu),
             (lambda x: x * F.relu6(x + 3.0) / 6.0, F.hardswish),
             (lambda x: x * F.hardsigmoid(x), F.hardswish)]
    for by_hand, builtin in pairs:
        amap = linearize(by_hand, x0)
        assert exact(amap, by_hand, x0)
        assert torch.allclose(amap.dense(), linearize(builtin, x0).dense(), atol=1e-6)


def test_hand_written_norms_match_the_builtins():
    torch.manual_seed(0)
    x0 = torch.randn(1, 5, 4, 4)

    def ln_channels_first(x):  # the official ConvNeXt LayerNorm, data_format="channels_first"
        u = x.mean(1, keepdim=True)
        return (x - u) / torch.sqrt((x - u).pow(2).mean(1, keepdim=True) + 1e-6)

    def ln_builtin(x):  # timm's LayerNorm2d: permute, F.layer_norm, permute back
        return F.layer_norm(x.permute(0, 2, 3, 1), (5,), eps=1e-6).permute(0, 3, 1, 2)

    def rms(x):  # LLaMA / T5 RMSNorm over channels
        return x * torch.rsqrt(x.pow(2).mean(1, keepdim=True) + 1e-6)

    def rms_builtin(x):
        return F.rms_norm(x.permute(0, 2, 3, 1), (5,), eps=1e-6).permute(0, 3, 1, 2)

    for by_hand, builtin in [(ln_channels_first, ln_builtin), (rms, rms_builtin)]:
        amap = linearize(by_hand, x0)
        assert exact(amap, by_hand, x0)
        assert torch.allclose(amap.dense(), linearize(builtin, x0).dense(), atol=1e-5)
    normalize = lambda x: x / x.norm(dim=1, keepdim=True)  # noqa: E731
    assert torch.allclose(linearize(normalize, x0).dense(), linearize(F.normalize, x0).dense(), atol=1e-6)


def test_response_norms_are_exact():
    torch.manual_seed(0)
    x0 = torch.randn(1, 6, 4, 4)
    lrn = nn.LocalResponseNorm(3)  # AlexNet / GoogLeNet: x / (k + alpha * avg(x^2))^beta

    def grn(x):  # ConvNeXt-V2 global response normalisation (channels last)
        x = x.permute(0, 2, 3, 1)
        gx = torch.norm(x, p=2, dim=(1, 2), keepdim=True)
        return x * (gx / (gx.mean(dim=-1, keepdim=True) + 1e-6)) + x

    for fn in (lrn, grn):
        amap = linearize(fn, x0)
        assert exact(amap, fn, x0) and amap.meta["frozen"]["multiplier"] == 1


def test_lstm_cell_gates_are_frozen():
    torch.manual_seed(0)
    ih, hh = nn.Linear(3, 16), nn.Linear(4, 16)

    def lstm(x):  # x: [T, 3]
        h = c = torch.zeros(4)
        for t in range(x.shape[0]):
            i, f, g, o = (ih(x[t]) + hh(h)).chunk(4)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            h = torch.sigmoid(o) * torch.tanh(c)
        return h

    x0 = torch.randn(3, 3)
    amap = linearize(lstm, x0)
    assert exact(amap, lstm, x0)
    assert amap.meta["frozen"]["multiplier"] == 2 + 3 + 3  # f * c is constant at t = 0


def test_products_without_a_multiplier_still_raise():
    x0 = torch.randn(6)
    with pytest.raises(UnsupportedLayerError, match="mul: product of two input-dependent"):
        linearize(lambda x: F.relu(x[:3]) * F.relu(x[3:]), x0)  # a tie: which one is the gate?
    with pytest.raises(UnsupportedLayerError, match="mul: product of two input-dependent"):
        linearize(lambda x: torch.sigmoid(x) * torch.sigmoid(2 * x), x0)
    with pytest.raises(UnsupportedLayerError, match="unsupported operation.*i0"):
        linearize(lambda x: x * torch.special.i0(x), x0)  # an unknown op is never frozen


def test_hardsigmoid_is_piecewise_linear():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.Hardsigmoid(), nn.Flatten(), nn.Linear(64, 3)).eval()
    x0 = torch.randn(1, 2, 4, 4) * 4  # both saturated and linear pieces
    amap = linearize(model, x0)
    assert exact(amap, model, x0)
    assert torch.allclose(amap.dense(), jacobian(model, x0, amap), atol=1e-6)


def test_grid_sample_on_a_fixed_grid_is_linear():
    torch.manual_seed(0)
    theta = torch.tensor([[[0.9, 0.2, 0.1], [-0.2, 0.8, 0.0]]])
    grid = F.affine_grid(theta, (1, 2, 5, 5), align_corners=False)
    conv = nn.Conv2d(2, 2, 3, padding=1)
    model = lambda x: F.grid_sample(F.relu(conv(x)), grid, align_corners=False, padding_mode="border")  # noqa: E731
    x0 = torch.randn(1, 2, 5, 5)
    amap = linearize(model, x0)
    assert exact(amap, model, x0)
    assert torch.allclose(amap.dense(), jacobian(model, x0, amap), atol=1e-6)
