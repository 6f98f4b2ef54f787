"""MLP-approximated numeric functions: a tiny tanh MLP (1-16-16-1) trained in-project.

Training is seeded, single-threaded and on CPU (about a second). The trained weights are
written inline into the ground-truth code (rounded to 6 significant digits), so the code
runs offline with numpy only and is the exact ground truth the scorers compare with.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

HIDDEN = 16


def train_mlp(fn: Callable, lo: float, hi: float, seed: int, steps: int = 600) -> dict:
    """Fit ``fn`` on ``[lo, hi]``; returns numpy weights and the input/output normalisation."""
    import torch

    xs = np.linspace(lo, hi, 512)
    with np.errstate(all="ignore"):
        ys = np.array([float(fn(x)) for x in xs])
    xc, xs_ = (lo + hi) / 2, (hi - lo) / 2
    ym, ysd = float(ys.mean()), float(ys.std()) or 1.0
    g = torch.Generator().manual_seed(int(seed) & 0x7FFFFFFF)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        net = torch.nn.Sequential(torch.nn.Linear(1, HIDDEN), torch.nn.Tanh(), torch.nn.Linear(HIDDEN, HIDDEN),
                                  torch.nn.Tanh(), torch.nn.Linear(HIDDEN, 1)).double()
        with torch.no_grad():
            for p in net.parameters():
                p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64) * (1.0 / max(1, p.shape[-1]) ** 0.5 if p.dim() > 1 else 0.1))
            net[0].weight.mul_(3.0)
        X = torch.tensor((xs - xc) / xs_, dtype=torch.float64)[:, None]
        Y = torch.tensor((ys - ym) / ysd, dtype=torch.float64)[:, None]
        opt = torch.optim.Adam(net.parameters(), lr=2e-2)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
        for _ in range(steps):
            opt.zero_grad()
            loss = torch.mean((net(X) - Y) ** 2)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        torch.set_num_threads(threads)
    W = [p.detach().numpy().copy() for p in net.parameters()]
    return {"W1": W[0][:, 0], "b1": W[1], "W2": W[2], "b2": W[3], "W3": W[4][0], "b3": float(W[5][0]),
            "xc": xc, "xs": xs_, "ym": ym, "ysd": ysd}


def _arr(a: np.ndarray) -> str:
    a = np.asarray(a, dtype=float)
    if a.ndim == 1:
        return "[" + ", ".join(f"{v:.6g}" for v in a) + "]"
    return "[" + ",\n       ".join(_arr(r) for r in a) + "]"


def mlp_code(fn: Callable, lo: float, hi: float, seed: int) -> str:
    """Ground-truth source for an MLP trained to approximate ``fn`` on ``[lo, hi]``."""
    w = train_mlp(fn, lo, hi, seed)
    return (
        "import numpy as np\n\n"
        f"_W1 = np.array({_arr(w['W1'])})\n_b1 = np.array({_arr(w['b1'])})\n"
        f"_W2 = np.array({_arr(w['W2'])})\n_b2 = np.array({_arr(w['b2'])})\n"
        f"_W3 = np.array({_arr(w['W3'])})\n_b3 = {w['b3']:.6g}\n\n\n"
        "def f(x):\n"
        f"    u = (x - {w['xc']!r}) / {w['xs']!r}\n"
        "    h = np.tanh(_W1 * u + _b1)\n"
        "    h = np.tanh(_W2 @ h + _b2)\n"
        f"    return float(_W3 @ h + _b3) * {w['ysd']!r} + {w['ym']!r}\n"
    )
