"""Shared drawing helpers: image grids, heat-map overlays, saving figures atomically.

Everything here takes NumPy arrays or CPU tensors and returns matplotlib figures; nothing computes
model outputs. Figures are plain :class:`~matplotlib.figure.Figure` objects drawn by the Agg canvas
(:func:`new_figure`, :func:`subplots`), never pyplot's global figure manager: importing or calling
convlens changes no matplotlib backend, and works without a display.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from convlens.fileio import atomic_write_bytes


def to_hwc(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """`(C, H, W)` uint8 or float in [0, 1] -> float `(H, W)` (one channel) or `(H, W, 3)` in [0, 1]."""
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    a = np.clip(a, 0.0, 1.0)
    if a.ndim == 3:
        a = a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)
    return a


def new_figure(**kwargs: Any) -> Figure:
    """A figure on its own Agg canvas (`Figure`'s keyword arguments, e.g. `figsize`)."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def subplots(
    nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float], **kwargs: Any
) -> tuple[Figure, Any]:
    """`pyplot.subplots` without pyplot: a :func:`new_figure` and its axes (`Figure.subplots`)."""
    fig = new_figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def image_grid(
    images: Sequence[torch.Tensor | np.ndarray] | torch.Tensor,
    *,
    ncols: int | None = None,
    titles: Sequence[str] | None = None,
    suptitle: str | None = None,
    cell_inches: float = 1.2,
    cmap: str = "gray",
) -> Figure:
    """Draw `(C, H, W)` images (uint8, or float in [0, 1]) in a grid, one optional title per cell."""
    n = len(images)
    ncols = ncols or min(n, 8) or 1
    nrows = max(1, -(-n // ncols))
    fig, axes = subplots(
        nrows, ncols, figsize=(ncols * cell_inches, nrows * cell_inches + (0.4 if suptitle else 0)),
        squeeze=False,
    )  # fmt: skip
    for i, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if i >= n:
            continue
        a = to_hwc(images[i])
        ax.imshow(a, cmap=cmap if a.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
        if titles is not None:
            ax.set_title(titles[i], fontsize=7)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    fig.tight_layout()
    return fig


def overlay_heatmap(
    ax: Axes,
    image: torch.Tensor | np.ndarray,
    heat: np.ndarray,
    *,
    alpha: float = 0.5,
    cmap: str = "jet",
    symmetric: bool = False,
) -> None:
    """Draw `image` (C, H, W) with `heat` (H, W) on top; `symmetric` centres a diverging map on 0."""
    a = to_hwc(image)
    ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1)
    if symmetric:
        m = float(np.abs(heat).max()) or 1.0
        ax.imshow(heat, cmap="RdBu_r", vmin=-m, vmax=m, alpha=alpha)
    else:
        ax.imshow(heat, cmap=cmap, alpha=alpha)
    ax.set_axis_off()


def figure_png(fig: Figure, dpi: int = 110) -> bytes:
    """Render `fig` to PNG bytes (a figure outside pyplot needs no closing: it is freed with its
    last reference)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def save_figure(fig: Figure, path: str | Path, dpi: int = 110) -> Path:
    """Write `fig` as a PNG atomically and return the path."""
    path = Path(path)
    atomic_write_bytes(path, figure_png(fig, dpi=dpi))
    return path
