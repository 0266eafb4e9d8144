"""Arrays to what a browser draws: PNG bytes and ``data:`` URLs, heat maps, channel atlases."""

from __future__ import annotations

import base64
import io
import math
from typing import Any

import numpy as np
import torch
from matplotlib import colormaps
from PIL import Image


def png(pixels: np.ndarray) -> bytes:
    """uint8 ``(H, W)``, ``(H, W, 3)`` or ``(H, W, 4)`` -> PNG bytes (fast, lightly compressed)."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def data_url(png_bytes: bytes) -> str:
    """PNG bytes as a ``data:image/png;base64,...`` URL (one JSON reply carries its pictures)."""
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


def image_png(image: torch.Tensor) -> bytes:
    """uint8 ``(C, H, W)`` (C = 1 or 3) -> PNG."""
    arr = image.detach().cpu().numpy()
    return png(arr[0] if arr.shape[0] == 1 else arr.transpose(1, 2, 0))


def unit_png(x: torch.Tensor | np.ndarray) -> bytes:
    """Float ``(C, H, W)`` in [0, 1] (clipped) -> PNG."""
    arr = np.asarray(x, dtype=np.float32).clip(0, 1)
    return image_png(torch.from_numpy((arr * 255).round().astype(np.uint8)))


def scaled_png(x: torch.Tensor) -> bytes:
    """Float ``(C, H, W)`` of any range -> PNG, min-max scaled to [0, 255] (filters, gradients)."""
    x = x.detach().float().cpu()
    lo, hi = float(x.min()), float(x.max())
    return unit_png(((x - lo) / (hi - lo if hi > lo else 1.0)).numpy())


def heat_png(heat: torch.Tensor | np.ndarray, cmap: str = "inferno") -> bytes:
    """A ``(H, W)`` map -> RGBA PNG coloured by `cmap`, alpha rising with the value (an overlay)."""
    h = np.asarray(heat, dtype=np.float64)
    lo, hi = float(h.min()), float(h.max())
    u = (h - lo) / (hi - lo) if hi > lo else np.zeros_like(h)
    rgba = colormaps[cmap](u)  # (H, W, 4) floats
    rgba[..., 3] = 0.15 + 0.7 * u
    return png((rgba * 255).round().astype(np.uint8))


def atlas(maps: torch.Tensor) -> dict[str, Any]:
    """One layer's ``(C, H, W)`` activations tiled in a near-square grid, scaled together.

    Returns:
        ``{"png": data URL, "cols", "rows", "tile": [H, W], "min", "max"}``; channel `k` is the tile
        at row ``k // cols``, column ``k % cols``.
    """
    c, h, w = maps.shape
    cols = math.ceil(math.sqrt(c))
    rows = math.ceil(c / cols)
    lo, hi = float(maps.min()), float(maps.max())
    u = ((maps - lo) / (hi - lo if hi > lo else 1.0) * 255).round().to(torch.uint8)
    grid = torch.zeros(rows * cols, h, w, dtype=torch.uint8)
    grid[:c] = u
    grid = grid.reshape(rows, cols, h, w).permute(0, 2, 1, 3).reshape(rows * h, cols * w)
    return {
        "png": data_url(png(grid.numpy())),
        "cols": cols,
        "rows": rows,
        "tile": [h, w],
        "min": lo,
        "max": hi,
    }
