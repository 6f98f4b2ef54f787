"""Vision constructs outside plain conv/ReLU stacks, hand-written (no torchvision):
hardsigmoid as a piecewise-linear op, grid_sample on a fixed grid. Each map is checked against
the real forward at x0, and against jacrev where the network is piecewise linear."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from mechscope.linear import linearize

pytestmark = pytest.mark.usefixtures("one_thread")


def exact(amap, model, x0, tol=1e-5):
    with torch.no_grad():
        y = model(x0)
        return float((amap.apply(x0) + amap.bias - y).norm() / y.norm()) < tol


def jacobian(model, x0, amap):
    return torch.func.jacrev(model)(x0).detach().reshape(amap.out_numel, amap.in_numel)


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
