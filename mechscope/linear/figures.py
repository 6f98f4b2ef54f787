"""PNG figures of an affine map (matplotlib, Agg backend): pixel votes (rows x input), basis
images (columns), filters (rows), singular vectors, bias share and token attributions.

Images: a tensor of an image-like shape (``[..., H, W]``) is shown as ``[H, W]`` after dropping
leading singleton dims; several channels are summed. Signed maps use a symmetric red-blue
colormap centred at zero, its range (±max) written under each panel's title.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import torch

from mechscope.files import atomic_write


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def to_image(t: torch.Tensor) -> torch.Tensor:
    """``[..., H, W]`` -> ``[H, W]`` (leading singleton dims dropped, channels summed); a vector
    becomes a ``[1, n]`` strip."""
    t = t.detach().float().cpu()
    while t.dim() > 2 and t.shape[0] == 1:
        t = t[0]
    if t.dim() == 3:
        t = t.sum(0)
    if t.dim() == 1:
        t = t[None]
    if t.dim() != 2:
        t = t.reshape(-1, t.shape[-1])
    return t


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(path, "wb") as f:
        fig.savefig(f, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return path


def image_grid(images: Sequence[torch.Tensor], titles: Sequence[str], path: str | Path, *, suptitle: str = "",
               signed: Sequence[bool] | bool = True, ncols: int | None = None) -> Path:
    """A grid of images; ``signed`` images use a zero-centred diverging colormap."""
    plt = _plt()
    n = len(images)
    ncols = ncols or min(n, 6)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.2 * ncols, 2.3 * nrows), squeeze=False)
    signed = [signed] * n if isinstance(signed, bool) else list(signed)
    for ax in axes.flat:
        ax.axis("off")
    for ax, im, title, sg in zip(axes.flat, images, titles, signed):
        img = to_image(im)
        if sg:
            v = float(img.abs().max()) or 1.0
            ax.imshow(img, cmap="RdBu_r", vmin=-v, vmax=v)
            title = f"{title}\n(±{v:.2g})"
        else:
            ax.imshow(img, cmap="gray")
        ax.set_title(title, fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10, y=1.0 + 0.06 / nrows)
    return _save(fig, path)


def plot_pixel_votes(votes, x0: torch.Tensor, path: str | Path, labels: Sequence[str] | None = None) -> Path:
    """The input and, per output ``k``, its pixel votes ``A_k ⊙ x0`` (titled with ``y_k`` and ``c_k``)."""
    labels = labels or [str(k) for k in votes.outputs]
    images = [x0] + list(votes.votes)
    titles = ["input x0"] + [f"{lab}: y={float(y):.2f}\nbias={float(b):.2f}"
                             for lab, y, b in zip(labels, votes.output, votes.bias)]
    return image_grid(images, titles, path, signed=[False] + [True] * len(votes.outputs),
                      suptitle="pixel votes A_k * x0 (sum + bias = output k)")


def crop_peak(t: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """A ``size x size`` window of the image of ``t`` centred on its largest magnitude
    (``(window, (row, col) of its top-left corner)``); the whole image if it is small."""
    img = to_image(t)
    H, W = img.shape
    if H <= size and W <= size:
        return img, (0, 0)
    r, c = divmod(int(img.abs().argmax()), W)
    r0 = min(max(r - size // 2, 0), max(H - size, 0))
    c0 = min(max(c - size // 2, 0), max(W - size, 0))
    return img[r0:r0 + size, c0:c0 + size], (r0, c0)


def _cropped(items: torch.Tensor, crop: int | None):
    out, where = [], []
    for t in items:
        if crop:
            w, corner = crop_peak(t, crop)
        else:
            w, corner = to_image(t), (0, 0)
        out.append(w)
        where.append(corner)
    return out, where


def plot_columns(positions: list, columns: torch.Tensor, x0: torch.Tensor | None, path: str | Path,
                 crop: int | None = 12) -> Path:
    """Basis images: the output's response to an impulse at each input position (cropped to a
    ``crop x crop`` window around its peak; the window's corner is in the title)."""
    windows, corners = _cropped(columns, crop)
    images = ([x0] if x0 is not None else []) + windows
    titles = (["input x0"] if x0 is not None else []) + [
        f"column at {tuple(p[-2:])}" + (f"\nwindow @{c}" if c != (0, 0) else "") for p, c in zip(positions, corners)]
    signed = ([False] if x0 is not None else []) + [True] * len(positions)
    return image_grid(images, titles, path, signed=signed, suptitle="columns of A (basis images: impulse responses)")


def plot_rows(positions: list, rows: torch.Tensor, path: str | Path, crop: int | None = 12) -> Path:
    """Filters: the input weights of selected output positions (cropped around their peak)."""
    windows, corners = _cropped(rows, crop)
    titles = [f"row at {tuple(p[-2:])}" + (f"\nwindow @{c}" if c != (0, 0) else "") for p, c in zip(positions, corners)]
    return image_grid(windows, titles, path, suptitle="rows of A (filters computing output pixels)")


def plot_singular_vectors(svd, in_shape: tuple, out_shape: tuple, path: str | Path, k: int | None = None) -> Path:
    """Top singular vectors: right (input space) on the first row, left (output space) below."""
    k = min(k or svd.S.shape[0], svd.S.shape[0], 8)
    ins = [svd.V[:, i].reshape(in_shape) for i in range(k)]
    outs = [svd.U[:, i].reshape(out_shape) for i in range(k)]
    titles = [f"v{i} (input) s={float(svd.S[i]):.3g}" for i in range(k)] + [f"u{i} (output)" for i in range(k)]
    return image_grid(ins + outs, titles, path, ncols=k, suptitle="top singular vectors of A")


def plot_bias_share(share, path: str | Path, out_is_image: bool) -> Path:
    """Image outputs: the per-pixel bias share |c|/(|Ax0|+|c|); vector outputs: bars of A x0 and c."""
    if out_is_image:
        return image_grid([share.linear, share.bias, share.share],
                          ["A x0 (linear part)", "c (bias part)", "bias share |c|/(|Ax0|+|c|)"], path,
                          signed=[True, True, False],
                          suptitle=f"bias share of the output: total {share.total:.2f}")
    plt = _plt()
    lin, c = share.linear.reshape(-1).cpu(), share.bias.reshape(-1).cpu()
    n = lin.shape[0]
    fig, ax = plt.subplots(figsize=(max(4, 0.5 * n), 3))
    xs = torch.arange(n).float()
    ax.bar(xs - 0.2, lin, width=0.4, label="A x0")
    ax.bar(xs + 0.2, c, width=0.4, label="bias c")
    ax.axhline(0, color="k", lw=0.5)
    ax.set_xticks(xs.tolist())
    ax.set_xlabel("output")
    ax.legend(fontsize=8)
    ax.set_title(f"linear part vs bias per output (total bias share {share.total:.2f})", fontsize=9)
    return _save(fig, path)


def plot_token_attribution(attr: dict, tokens: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Per-position contributions to a scalar readout, and the row ``A`` as a [pos, d_model] map."""
    plt = _plt()
    contrib = attr["contribution"].cpu()
    row = attr["row"].cpu()
    fig, axes = plt.subplots(2, 1, figsize=(max(5, 0.6 * len(tokens)), 5), gridspec_kw={"height_ratios": [1, 1.4]})
    xs = list(range(len(contrib)))
    axes[0].bar(xs, contrib, color=["tab:red" if v < 0 else "tab:blue" for v in contrib.tolist()])
    axes[0].axhline(0, color="k", lw=0.5)
    axes[0].set_xticks(xs)
    axes[0].set_xticklabels(tokens, rotation=45, ha="right", fontsize=7)
    axes[0].set_title(title or (f"token contributions (A*x0 summed over d_model); linear {attr['linear_part']:.2f}"
                                f" + bias {attr['bias']:.2f} = {attr['output']:.2f}"), fontsize=9)
    v = float(row.abs().max()) or 1.0
    h = axes[1].imshow(row.T, aspect="auto", cmap="RdBu_r", vmin=-v, vmax=v)
    axes[1].set_xlabel("position")
    axes[1].set_ylabel("d_model")
    axes[1].set_title("row of A: d readout / d embedding (frozen)", fontsize=9)
    fig.colorbar(h, ax=axes[1], fraction=0.03)
    fig.tight_layout()
    return _save(fig, path)
