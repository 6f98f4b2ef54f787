"""A small PNG writer (stdlib only: zlib + struct) and the two colour maps the explorer uses:
a zero-centred blue-white-red map for signed arrays and grey for images."""

from __future__ import annotations

import base64
import struct
import zlib

import numpy as np


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(rgb: np.ndarray) -> bytes:
    """``[H, W, 3]`` uint8 -> PNG bytes."""
    rgb = np.ascontiguousarray(rgb, dtype=np.uint8)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] uint8 array, found shape {list(rgb.shape)}")
    h, w, _ = rgb.shape
    raw = b"".join(b"\x00" + rgb[r].tobytes() for r in range(h))  # filter type 0 per row
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


def diverging(a: np.ndarray, vmax: float | None = None) -> np.ndarray:
    """Signed ``[H, W]`` -> RGB: negative blue, zero white, positive red, symmetric range ±vmax."""
    a = np.asarray(a, dtype=np.float64)
    v = float(np.abs(a).max()) if vmax is None else float(vmax)
    t = np.clip(a / v, -1, 1) if v > 0 else np.zeros_like(a)
    pos, neg = np.clip(t, 0, 1), np.clip(-t, 0, 1)
    r = 255 * (1 - neg * 0.85)
    g = 255 * (1 - 0.85 * (pos + neg))
    b = 255 * (1 - pos * 0.85)
    return np.stack([r, g, b], -1).round().astype(np.uint8)


def grey(a: np.ndarray) -> np.ndarray:
    """``[H, W]`` -> RGB grey, min-max scaled."""
    a = np.asarray(a, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    t = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
    g = (255 * t).round().astype(np.uint8)
    return np.stack([g, g, g], -1)


def image_payload(a: np.ndarray, signed: bool = True, title: str = "") -> dict:
    """A JSON-ready image: ``{"png": base64 data URL, "height", "width", "min", "max", "title"}``."""
    a = np.asarray(a, dtype=np.float64)
    png = encode_png(diverging(a) if signed else grey(a))
    return {"png": "data:image/png;base64," + base64.b64encode(png).decode(), "height": int(a.shape[0]),
            "width": int(a.shape[1]), "min": float(a.min()), "max": float(a.max()), "signed": signed, "title": title}
