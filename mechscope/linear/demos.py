"""Small image models trained in-project on data every machine has (scikit-learn's bundled
``load_digits`` and ``load_sample_images``), for the linear interpreter's demos and benchmark.

* ``digits``   — a CNN classifier of 8x8 digits: Conv-BN-ReLU-MaxPool x2, Linear. In ``[1, 1, 8, 8]``, out ``[1, 10]``.
* ``superres`` — x2 super-resolution of grey 16x16 patches: Conv-LeakyReLU-Conv-GELU-Conv-PixelShuffle
  plus a bilinear ``Upsample`` skip (residual add). In ``[1, 1, 16, 16]``, out ``[1, 1, 32, 32]``.
* ``denoise``  — a tiny U-Net denoiser of grey 32x32 patches (Gaussian noise, sigma 0.1): strided
  Conv, InstanceNorm, SiLU, ConvTranspose, concatenation skip, residual (predicts the noise).
  In ``[1, 1, 32, 32]``, out ``[1, 1, 32, 32]``.

Each trains in a few seconds on 2 CPU cores (seeded, deterministic on one thread) and is cached
as a saved artifact (``cfg.json`` + ``weights.safetensors``) under ``cache_dir`` —
``$MECHSCOPE_CACHE/linear`` or ``~/.cache/mechscope/linear`` by default.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from mechscope.errors import ConfigError, StoreError
from mechscope.files import load_artifact, save_artifact

DEMOS = ("digits", "superres", "denoise")
FORMAT = "mechscope.linear.demo_model"
VERSION = 1
DEFAULT_STEPS = {"digits": 400, "superres": 400, "denoise": 400}
NOISE_SIGMA = 0.1


class DigitsCNN(nn.Module):
    """[N, 1, 8, 8] -> [N, 10] logits."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(32 * 2 * 2, 10)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class SuperResCNN(nn.Module):
    """[N, 1, 16, 16] -> [N, 1, 32, 32]: a learned residual on top of bilinear upsampling."""

    def __init__(self, width: int = 32):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, width, 5, padding=2), nn.LeakyReLU(0.1),
            nn.Conv2d(width, width, 3, padding=1), nn.GELU(),
            nn.Conv2d(width, 4, 3, padding=1), nn.PixelShuffle(2))
        self.up = nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)

    def forward(self, x):
        return self.up(x) + self.body(x)


class DenoiseUNet(nn.Module):
    """[N, 1, 32, 32] -> [N, 1, 32, 32]: ``x - noise_estimate(x)``."""

    def __init__(self, width: int = 12):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
                                  nn.InstanceNorm2d(2 * width, affine=True), nn.SiLU())
        self.dec = nn.Sequential(nn.ConvTranspose2d(2 * width, width, 2, stride=2), nn.ReLU())
        self.out = nn.Sequential(nn.Conv2d(2 * width, width, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(width, 1, 3, padding=1))

    def forward(self, x):
        e1 = self.enc1(x)
        d = self.dec(self.enc2(e1))
        return x - self.out(torch.cat([d, e1], dim=1))


def build(name: str) -> nn.Module:
    if name == "digits":
        return DigitsCNN()
    if name == "superres":
        return SuperResCNN()
    if name == "denoise":
        return DenoiseUNet()
    raise ConfigError(f"unknown demo model {name!r}; expected one of {', '.join(DEMOS)}")


# ---------------------------------------------------------------------------------------------
# data


def _sklearn_file(*parts: str) -> Path | None:
    """A file shipped inside the scikit-learn package, found without importing sklearn (whose
    import costs seconds); None when the layout differs (the sklearn API is used then)."""
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent.joinpath(*parts)
    return path if path.exists() else None


def _load_digits_arrays() -> tuple[torch.Tensor, torch.Tensor]:
    path = _sklearn_file("datasets", "data", "digits.csv.gz")
    if path is not None:
        import gzip

        with gzip.open(path, "rt") as f:
            rows = [[int(v) for v in line.split(",")] for line in f if line.strip()]
        data = torch.tensor(rows, dtype=torch.float32)
        return data[:, :64].reshape(-1, 8, 8), data[:, 64].long()
    from sklearn.datasets import load_digits

    d = load_digits()
    return torch.tensor(d.images, dtype=torch.float32), torch.tensor(d.target, dtype=torch.long)


def digits_data(seed: int = 0) -> dict[str, torch.Tensor]:
    """scikit-learn digits scaled to [0, 1]: x ``[n, 1, 8, 8]``, y ``[n]``; a seeded 80/20 split."""
    images, y = _load_digits_arrays()
    x = images[:, None] / 16.0
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.8 * len(y))
    tr, te = perm[:n_train], perm[n_train:]
    return {"x_train": x[tr], "y_train": y[tr], "x_test": x[te], "y_test": y[te]}


def sample_images_gray() -> list[torch.Tensor]:
    """scikit-learn's two bundled photographs (china, flower) as grey ``[H, W]`` in [0, 1]."""
    files = [_sklearn_file("datasets", "images", n) for n in ("china.jpg", "flower.jpg")]
    if all(f is not None for f in files):
        import numpy as np
        from PIL import Image

        arrays = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    else:
        from sklearn.datasets import load_sample_images

        arrays = list(load_sample_images().images)
    out = []
    for im in arrays:
        t = torch.tensor(im, dtype=torch.float32) / 255.0
        out.append(t @ torch.tensor([0.299, 0.587, 0.114]))
    return out


def random_patches(images: list[torch.Tensor], n: int, size: int, generator: torch.Generator,
                   region: str = "train") -> torch.Tensor:
    """``n`` random ``size x size`` patches ``[n, 1, size, size]``. ``region`` "train" uses the
    left 3/4 of each image, "test" the right 1/4 (no overlap)."""
    out = torch.empty(n, 1, size, size)
    for i in range(n):
        im = images[int(torch.randint(len(images), (1,), generator=generator))]
        H, W = im.shape
        x_lo, x_hi = (0, int(0.75 * W) - size) if region == "train" else (int(0.75 * W), W - size)
        r = int(torch.randint(0, H - size, (1,), generator=generator))
        c = int(torch.randint(x_lo, x_hi, (1,), generator=generator))
        out[i, 0] = im[r:r + size, c:c + size]
    return out


def make_batch(name: str, n: int, generator: torch.Generator, images=None, region: str = "train"):
    """(input, target) for the image-to-image demos."""
    images = images if images is not None else sample_images_gray()
    if name == "superres":
        hr = random_patches(images, n, 32, generator, region)
        return F.avg_pool2d(hr, 2), hr
    if name == "denoise":
        clean = random_patches(images, n, 32, generator, region)
        noise = torch.randn(clean.shape, generator=generator) * NOISE_SIGMA
        return clean + noise, clean
    raise ConfigError(f"no patch data for demo {name!r}")


def psnr(pred: torch.Tensor, target: torch.Tensor) -> float:
    mse = F.mse_loss(pred, target).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


# ---------------------------------------------------------------------------------------------
# training and caching


@dataclass
class Demo:
    """A trained demo model, one example input ``x0`` (``[1, *input]``) and its metrics."""

    name: str
    model: nn.Module
    x0: torch.Tensor
    metrics: dict = field(default_factory=dict)
    target: torch.Tensor | None = None  # clean / HR patch for x0 (image-to-image), label (digits)
    path: Path | None = None


def default_cache_dir() -> Path:
    root = os.environ.get("MECHSCOPE_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "mechscope") / "linear"


def train(name: str, steps: int | None = None, seed: int = 0, batch_size: int = 16, lr: float = 3e-3,
          on_step=None) -> tuple[nn.Module, dict]:
    """Train demo ``name`` from scratch (seeded, on one CPU thread so that the same seed gives the
    same weights; these models are too small to gain from intra-op threads). ``on_step(step,
    steps, loss)`` is called after every step. Returns ``(model.eval(), metrics)``."""
    steps = DEFAULT_STEPS[name] if steps is None else int(steps)
    if steps < 0:
        raise ConfigError(f"steps must be >= 0; found {steps}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train(name, steps, seed, batch_size, lr, on_step)
    finally:
        torch.set_num_threads(threads)


def _train(name: str, steps: int, seed: int, batch_size: int, lr: float, on_step) -> tuple[nn.Module, dict]:
    torch.manual_seed(seed)
    model = build(name)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed + 1)
    t0 = time.perf_counter()
    if name == "digits":
        data = digits_data(seed)
        xtr, ytr = data["x_train"], data["y_train"]
        model.train()
        for step in range(steps):
            idx = torch.randint(len(ytr), (batch_size,), generator=g)
            loss = F.cross_entropy(model(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            if on_step:
                on_step(step, steps, float(loss))
        model.eval()
        with torch.no_grad():
            acc = (model(data["x_test"]).argmax(1) == data["y_test"]).float().mean().item()
        metrics = {"test_accuracy": acc}
    else:
        images = sample_images_gray()
        model.train()
        for step in range(steps):
            x, y = make_batch(name, batch_size, g, images)
            loss = F.mse_loss(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if on_step:
                on_step(step, steps, float(loss))
        model.eval()
        gt = torch.Generator().manual_seed(seed + 2)
        x, y = make_batch(name, 64, gt, images, region="test")
        with torch.no_grad():
            pred = model(x)
        base = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False) if name == "superres" else x
        metrics = {"test_psnr": psnr(pred, y), "baseline_psnr": psnr(base, y),
                   "baseline": "bilinear upsampling" if name == "superres" else "noisy input"}
    metrics.update({"steps": steps, "seed": seed, "train_seconds": round(time.perf_counter() - t0, 2)})
    return model, metrics


def example_input(name: str, index: int = 0, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A held-out example ``(x0 [1, ...], target)`` for demo ``name``."""
    if name == "digits":
        data = digits_data(seed)
        if not 0 <= index < len(data["y_test"]):
            raise ConfigError(f"index must be in [0, {len(data['y_test'])}); found {index}")
        return data["x_test"][index:index + 1], data["y_test"][index]
    g = torch.Generator().manual_seed(1000 + seed + index)
    x, y = make_batch(name, 1, g, region="test")
    return x, y


def load_or_train(name: str, steps: int | None = None, seed: int = 0, cache_dir: str | Path | None = None,
                  index: int = 0, retrain: bool = False, on_step=None) -> Demo:
    """The cached demo model (training it first if needed) and a held-out example input."""
    if name not in DEMOS:
        raise ConfigError(f"unknown demo model {name!r}; expected one of {', '.join(DEMOS)}")
    steps = DEFAULT_STEPS[name] if steps is None else int(steps)
    directory = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    directory = directory / f"{name}-seed{seed}-steps{steps}"
    model = None
    metrics: dict = {}
    if not retrain and (directory / "cfg.json").exists():
        try:
            cfg, tensors = load_artifact(directory, FORMAT, VERSION)
            model = build(name)
            model.load_state_dict(tensors["weights"])
            model.eval()
            metrics = cfg.get("metrics", {})
        except (StoreError, RuntimeError, KeyError):
            model = None  # a corrupt or stale cache entry is retrained below
    if model is None:
        model, metrics = train(name, steps=steps, seed=seed, on_step=on_step)
        save_artifact(directory, FORMAT, VERSION, {"name": name, "metrics": metrics},
                      {"weights": model.state_dict()})
    x0, target = example_input(name, index=index, seed=seed)
    return Demo(name=name, model=model, x0=x0, metrics=metrics, target=target, path=directory)
