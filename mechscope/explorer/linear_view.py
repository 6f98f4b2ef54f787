"""The linear-interpreter view: an :class:`~mechscope.linear.AffineMap` ``y = A x + c`` of an
image model shown as images — the input ``x0``, the output ``f(x0)``, the bias ``c``, columns
``A e_j`` (the output's response to an impulse at input pixel ``j``), rows ``A^T e_i`` (the
filter over the input that computes output ``i``) and the top singular vectors.

Images are PNGs built on the server (:mod:`mechscope.explorer.png`); a tensor of an image-like
shape ``[..., H, W]`` is drawn as ``[H, W]`` (leading singleton dims dropped, channels summed,
as in :func:`mechscope.linear.figures.to_image`); a vector is drawn as a ``[1, n]`` strip.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from mechscope.explorer.errors import InputError
from mechscope.explorer.png import image_payload
from mechscope.linear.figures import to_image


def load_linear(spec: Any, steps: int | None = None) -> tuple[Any, str]:
    """``(AffineMap, description)`` for ``"demo:NAME"`` (an in-project image model, trained once
    and cached by :mod:`mechscope.linear.demos`, linearized at a held-out input), a saved map
    directory, or an ``AffineMap``.

    Integration point with the linear room: ``mechscope.linear.demos.load_or_train``,
    ``mechscope.linear.linearize`` and ``AffineMap.load``.
    """
    from mechscope.linear import AffineMap, linearize

    if isinstance(spec, AffineMap):
        return spec, f"{type(spec).__name__} {list(spec.in_shape)} -> {list(spec.out_shape)}"
    if isinstance(spec, str) and spec.startswith("demo:"):
        from mechscope.linear.demos import load_or_train

        demo = load_or_train(spec[5:], steps=steps)
        amap = linearize(demo.model, demo.x0)
        return amap, f"demo {demo.name} ({', '.join(f'{k}={v:.3g}' for k, v in demo.metrics.items() if isinstance(v, float))})"
    path = Path(spec)
    return AffineMap.load(path), f"saved map {path.name}"


def is_image_shape(shape: tuple[int, ...]) -> bool:
    dims = [s for s in shape if s != 1]
    return len(dims) >= 2 and shape[-1] > 1 and shape[-2] > 1


def position(shape: tuple[int, ...], y: int | None, x: int | None, index: int | None) -> tuple[int, ...]:
    """A multi-index into ``shape`` from a pixel ``(y, x)`` (image-like shapes; channel 0) or a
    flat ``index`` (any shape). Raises :class:`InputError` when out of range."""
    n = math.prod(shape)
    if index is not None:
        if not 0 <= index < n:
            raise InputError(f"index must be in [0, {n}); found {index}")
        out = []
        for s in reversed(shape):
            out.append(index % s)
            index //= s
        return tuple(reversed(out))
    if y is None or x is None:
        raise InputError("give either a flat index or a pixel (y and x)")
    if not is_image_shape(shape):
        raise InputError(f"shape {list(shape)} is not an image; give a flat index in [0, {n})")
    H, W = shape[-2], shape[-1]
    if not (0 <= y < H and 0 <= x < W):
        raise InputError(f"pixel (y={y}, x={x}) is outside the {H} x {W} image")
    return (0,) * (len(shape) - 2) + (y, x)


def _grid(shape: tuple[int, ...], grid: int) -> list[tuple[int, ...]]:
    H, W = shape[-2], shape[-1]
    rows = sorted({round((i + 0.5) * H / grid - 0.5) for i in range(grid)})
    cols = sorted({round((j + 0.5) * W / grid - 0.5) for j in range(grid)})
    return [(0,) * (len(shape) - 2) + (r, c) for r in rows for c in cols]


def _img(t: torch.Tensor, title: str, signed: bool = True) -> dict:
    return image_payload(to_image(t).numpy(), signed=signed, title=title)


def _label(pos: tuple[int, ...], shape: tuple[int, ...]) -> str:
    if is_image_shape(shape):
        return f"(y={pos[-2]}, x={pos[-1]})"
    flat = 0
    for k, s in zip(pos, shape):
        flat = flat * s + k
    return f"#{flat}"


def linear_overview(amap, description: str = "", k: int = 6, grid: int = 3, max_rows: int = 16) -> dict:
    """Everything the view shows at first: input, output, bias, a grid of columns and rows (or
    every row when the output is a short vector), and the top-``k`` singular triplets."""
    in_shape, out_shape = tuple(amap.in_shape), tuple(amap.out_shape)
    out: dict[str, Any] = {"description": description, "in_shape": list(in_shape), "out_shape": list(out_shape),
                           "exact": bool(amap.exact), "input_is_image": is_image_shape(in_shape),
                           "output_is_image": is_image_shape(out_shape)}
    if amap.x0 is not None:
        out["input"] = _img(amap.x0, "input x0", signed=False)
    y0 = amap.y0 if amap.y0 is not None else (amap(amap.x0) if amap.x0 is not None else None)
    if y0 is not None:
        out["output"] = _img(y0, "output f(x0)", signed=not is_image_shape(out_shape))
    out["bias"] = _img(amap.bias, "bias c")
    if is_image_shape(in_shape):
        cols = _grid(in_shape, grid)
    else:
        cols = [position(in_shape, None, None, i) for i in range(min(max_rows, amap.in_numel))]
    C = amap.columns(cols)
    out["columns"] = [{"position": list(p), **_img(C[i], f"column {_label(p, in_shape)}")} for i, p in enumerate(cols)]
    if is_image_shape(out_shape):
        rows = _grid(out_shape, grid)
    else:
        rows = [position(out_shape, None, None, i) for i in range(min(max_rows, amap.out_numel))]
    R = amap.rows(rows)
    out["rows"] = [{"position": list(p), **_img(R[i], f"row {_label(p, out_shape)}")} for i, p in enumerate(rows)]
    k = max(1, min(k, min(amap.in_numel, amap.out_numel)))
    svd = amap.svd(k)
    out["svd"] = {"values": [float(s) for s in svd.S.tolist()],
                  "left": [_img(svd.U[:, i].reshape(out_shape), f"u{i} (output), s={float(svd.S[i]):.3g}") for i in range(k)],
                  "right": [_img(svd.V[:, i].reshape(in_shape), f"v{i} (input), s={float(svd.S[i]):.3g}") for i in range(k)]}
    return out


def linear_column(amap, y: int | None, x: int | None, index: int | None) -> dict:
    """Column ``A e_j`` for input pixel ``(y, x)`` or flat index: an image in the output's shape."""
    p = position(tuple(amap.in_shape), y, x, index)
    return {"position": list(p), **_img(amap.column(p), f"column {_label(p, tuple(amap.in_shape))}")}


def linear_row(amap, y: int | None, x: int | None, index: int | None) -> dict:
    """Row ``A^T e_i`` for output pixel ``(y, x)`` or flat index: an image in the input's shape."""
    p = position(tuple(amap.out_shape), y, x, index)
    return {"position": list(p), **_img(amap.row(p), f"row {_label(p, tuple(amap.out_shape))}")}
