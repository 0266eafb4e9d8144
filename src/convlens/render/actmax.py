"""Pictures of activation maximisation: one synthesised image per channel, in a grid.

Readable-mode images are drawn as they are (pixels in [0, 1]). Simple-mode images (the Keras
example) barely leave grey in 20 small steps, so they are drawn as the Keras example draws them:
each image standardised, scaled to a standard deviation of 0.1 around 0.5 and clipped
(`deprocess_image`), which :func:`keras_deprocess` reproduces.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from convlens.render.common import image_grid


def keras_deprocess(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """The Keras example's display stretch of one `(C, H, W)` image: mean 0.5, std 0.1, clipped to [0, 1]."""
    a = image.detach().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    a = a.astype(np.float64)
    a = (a - a.mean()) / (a.std() + 1e-5) * 0.1 + 0.5
    return np.clip(a, 0.0, 1.0).astype(np.float32)


def actmax_figure(
    images: torch.Tensor | np.ndarray,
    *,
    labels: Sequence[object],
    values: Sequence[float] | torch.Tensor | None = None,
    stretch: bool = False,
    title: str | None = None,
    ncols: int | None = None,
) -> Figure:
    """A grid of synthesised images, one per channel, titled with the channel and its objective.

    Args:
        images: `(K, C, S, S)` pixels in [0, 1].
        labels: the channel index (or class name) of each image, for the titles.
        values: the objective reached by each image, shown under the index.
        stretch: draw each image with the Keras example's contrast stretch (for simple mode).
        title: figure title (e.g. "resnet20 layer3: channel mean, 256 steps").
        ncols: images per row (default 8).
    """
    shown = [keras_deprocess(im) if stretch else im for im in images]
    vals = [float(v) for v in values] if values is not None else None
    titles = [f"{c}" if vals is None else f"{c}: {vals[i]:.2f}" for i, c in enumerate(labels)]
    n = len(shown)
    return image_grid(shown, ncols=ncols or min(n, 8), titles=titles, suptitle=title)
