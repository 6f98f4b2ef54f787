"""The demo's own PNG figures (the rooms draw theirs): training curves from a dictionary run's
``metrics.jsonl`` and a features x heads share heatmap. Presentation only; numbers come in."""

from __future__ import annotations

import json
from pathlib import Path

from mechscope.files import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> str:
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png")
    _plt().close(fig)
    return str(path)


def training_curves(metrics_jsonl: str | Path, names: dict[str, str], path: str | Path) -> str:
    """FVU of the training batch against training tokens for each dictionary ``names`` maps
    (run name -> label)."""
    records = [json.loads(line) for line in Path(metrics_jsonl).read_text().splitlines() if line.strip()]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.2), dpi=100)
    for name, label in names.items():
        rows = [r for r in records if name in r]
        ax.plot([r["tokens"] for r in rows], [r[name]["fvu"] for r in rows], label=label)
    ax.set_ylabel("FVU (training batch)")
    ax.set_yscale("log")
    ax.set_xlabel("training tokens")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(path))


def head_share_heatmap(shares, head_names: list[str], path: str | Path, title: str) -> str:
    """``shares [n_features, n_heads]`` (rows sum to 1) as an image, features sorted by dominant head."""
    import torch

    order = torch.argsort(shares.argmax(1) * 10 - shares.max(1).values, stable=True)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.5), dpi=100)
    im = ax.imshow(shares[order].T.numpy(), aspect="auto", interpolation="nearest", cmap="viridis", vmin=0, vmax=1)
    ax.set_yticks(range(len(head_names)), head_names)
    ax.set_xlabel("features (sorted by dominant head)")
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, label="decoder-norm share")
    fig.tight_layout()
    return _save(fig, Path(path))
