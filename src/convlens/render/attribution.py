"""Pictures of attributions: heat maps over the images they explain.

One row per image. Heat maps (saliency, Grad-CAM, occlusion) are drawn over the image with
:func:`~convlens.render.common.overlay_heatmap`; signed input-space gradients (guided backprop,
guided Grad-CAM) are drawn as images, centred on grey. The occlusion figure adds Zeiler & Fergus's
grid: the drop of the target's probability for each window position.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from matplotlib.figure import Figure

from convlens.render.common import overlay_heatmap, subplots, to_hwc


def _np(t: torch.Tensor | np.ndarray) -> np.ndarray:
    return t.detach().float().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)


def gradient_image(grad: torch.Tensor | np.ndarray) -> np.ndarray:
    """A signed `(C, H, W)` input gradient as a displayable `(C, H, W)` image in [0, 1].

    Centred on 0.5 and scaled so 3 standard deviations reach the ends (the usual way guided
    backprop pictures are shown).
    """
    g = _np(grad).astype(np.float64)
    g = g - g.mean()
    s = g.std() or 1.0
    return np.clip(0.5 + g / (6 * s), 0.0, 1.0).astype(np.float32)


def attribution_figure(
    images: torch.Tensor | np.ndarray,
    maps: torch.Tensor | np.ndarray,
    *,
    method: str,
    titles: Sequence[str] | None = None,
    signed_image: bool = False,
    cell_inches: float = 2.2,
) -> Figure:
    """Each image beside its attribution.

    Args:
        images: `(N, C, H, W)` uint8 (or float in [0, 1]) images as the model saw them.
        maps: `(N, H, W)` heat maps, or `(N, C, H, W)` signed gradients with `signed_image`.
        method: name shown in the title.
        titles: one line per image (e.g. "cat -> dog 0.93").
        signed_image: draw `maps` as gradient images instead of heat overlays.
    """
    imgs, m = _np(images), _np(maps)
    n = len(imgs)
    fig, axes = subplots(n, 2, figsize=(2 * cell_inches, n * cell_inches + 0.4), squeeze=False)
    for i in range(n):
        a0, a1 = axes[i]
        a = to_hwc(images[i])
        a0.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1)
        a0.set_axis_off()
        if titles is not None:
            a0.set_title(titles[i], fontsize=8)
        if signed_image:
            g = to_hwc(gradient_image(m[i]))
            a1.imshow(g, cmap="gray" if g.ndim == 2 else None, vmin=0, vmax=1)
            a1.set_axis_off()
        else:
            overlay_heatmap(a1, images[i], m[i], alpha=0.55)  # uint8 stays uint8: to_hwc scales it
        a1.set_title(method, fontsize=8)
    fig.tight_layout()
    return fig


def occlusion_figure(
    images: torch.Tensor | np.ndarray,
    attribution: torch.Tensor | np.ndarray,
    prob_drop: torch.Tensor | np.ndarray,
    rows: np.ndarray,
    cols: np.ndarray,
    *,
    titles: Sequence[str] | None = None,
    cell_inches: float = 2.2,
) -> Figure:
    """Image, per-pixel occlusion attribution over it, and the probability-drop grid.

    Args:
        images: `(N, C, H, W)` images.
        attribution: `(N, H, W)` (or `(N, C, H, W)`, channel 0 is used) mean logit drop per pixel.
        prob_drop: `(N, gh, gw)` drop of the target's probability per window position.
        rows, cols: `(gh, 2)`, `(gw, 2)` window ranges, to place the grid's cells on the image.
        titles: one line per image.
    """
    imgs, att, drop = _np(images), _np(attribution), _np(prob_drop)
    if att.ndim == 4:
        att = att[:, 0]
    n = len(imgs)
    H, W = imgs.shape[2:]
    fig, axes = subplots(n, 3, figsize=(3 * cell_inches, n * cell_inches + 0.4), squeeze=False)
    for i in range(n):
        a0, a1, a2 = axes[i]
        a = to_hwc(images[i])
        a0.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1)
        a0.set_axis_off()
        if titles is not None:
            a0.set_title(titles[i], fontsize=8)
        overlay_heatmap(a1, images[i], att[i], alpha=0.6, symmetric=True)
        a1.set_title("logit drop per pixel", fontsize=8)
        m = float(np.abs(drop[i]).max()) or 1.0
        # Cell (i, j) drawn at its window's centre: the grid spans the first to the last centre.
        cy = (rows[:, 0] + rows[:, 1] - 1) / 2
        cx = (cols[:, 0] + cols[:, 1] - 1) / 2
        dy = (cy[1] - cy[0]) / 2 if len(cy) > 1 else H / 2
        dx = (cx[1] - cx[0]) / 2 if len(cx) > 1 else W / 2
        im = a2.imshow(
            drop[i], cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest",
            extent=(cx[0] - dx, cx[-1] + dx, cy[-1] + dy, cy[0] - dy),
        )  # fmt: skip
        a2.set_xlim(-0.5, W - 0.5)
        a2.set_ylim(H - 0.5, -0.5)
        a2.set_title("probability drop per window", fontsize=8)
        a2.set_axis_off()
        fig.colorbar(im, ax=a2, fraction=0.046, pad=0.04)
    fig.tight_layout()
    return fig
