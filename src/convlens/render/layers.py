"""Figures for what the layers look for: filters, activations, neighbours, t-SNE maps, top patches, ERF.

Each function takes the arrays that a `convlens.inspect` function returned (plus the pixels to show)
and returns a matplotlib :class:`~matplotlib.figure.Figure`; nothing here runs a model. Save with
:func:`convlens.render.common.save_figure`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from convlens.render.common import new_figure, subplots, to_hwc

Array = np.ndarray | torch.Tensor


def _np(a: Array) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _show(ax: Axes, image: Array) -> None:
    """Draw one uint8 `(C, H, W)` image (grey for one channel) without axes."""
    a = to_hwc(image)
    ax.imshow(a, cmap="gray" if a.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _grid_shape(n: int, ncols: int | None = None) -> tuple[int, int]:
    cols = ncols or max(1, min(n, int(np.ceil(np.sqrt(n)))))
    return max(1, -(-n // cols)), cols


# --- filters -------------------------------------------------------------------------------------


def filters_figure(
    weights: Array, *, layer: str = "", max_filters: int = 64, max_inputs: int = 16
) -> Figure:
    """The filters of a conv layer as images.

    Three-channel filters (a first layer on RGB) are drawn in colour, all with one symmetric scale:
    `0.5 + 0.5 w / max|w|`, so zero is mid-grey, an oriented edge shows as dark beside light and opposing
    colours (red against cyan, ...) show as such. Other filters are drawn one input channel per column
    with a diverging map (blue negative, red positive), also on one symmetric scale.

    Args:
        weights: `(C_out, C_in, kH, kW)`.
        layer: the layer's name, for the title.
        max_filters: the most filters drawn (the first ones).
        max_inputs: the most input channels drawn per filter (non-RGB case).
    """
    w = _np(weights).astype(np.float32)
    c_out, c_in, kh, kw = w.shape
    w = w[:max_filters]
    m = float(np.abs(w).max()) or 1.0
    title = f"{layer}: {c_out} filters, {c_in}x{kh}x{kw}" + (
        f" (first {len(w)} shown)" if c_out > len(w) else ""
    )
    if c_in == 3:
        rows, cols = _grid_shape(len(w))
        fig, axes = subplots(rows, cols, figsize=(cols * 0.9, rows * 0.9 + 0.5), squeeze=False)
        for i, ax in enumerate(axes.flat):
            ax.set_axis_off()
            if i < len(w):
                ax.imshow(0.5 + 0.5 * w[i].transpose(1, 2, 0) / m, interpolation="nearest")
        fig.suptitle(title + f"; colour scale +-{m:.3g}", fontsize=9)
        fig.tight_layout()
        return fig
    if c_in == 1:
        rows, cols = _grid_shape(len(w))
        cells = [(i, 0) for i in range(len(w))]
    else:
        rows, cols = len(w), min(c_in, max_inputs)
        cells = [(i, j) for i in range(rows) for j in range(cols)]
    size = 0.7 if c_in > 1 else 0.9
    fig, axes = subplots(rows, cols, figsize=(cols * size + 1.0, rows * size + 0.5), squeeze=False)
    im = None
    for ax in axes.flat:
        ax.set_axis_off()
    for n, (i, j) in enumerate(cells):
        ax = axes.flat[n] if c_in == 1 else axes[i, j]
        im = ax.imshow(w[i, j], cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
        if c_in > 1 and i == 0:
            ax.set_title(f"in {j}", fontsize=6)
        if c_in > 1 and j == 0:
            ax.text(-0.6, 0.5, f"{i}", transform=ax.transAxes, fontsize=6, va="center", ha="right")
    if c_in > cols:
        title += f"; first {cols} of {c_in} input channels"
    fig.suptitle(title, fontsize=9)
    fig.tight_layout(rect=(0, 0, 0.92, 1))
    if im is not None:
        fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.6, fraction=0.04)
    return fig


# --- activations ---------------------------------------------------------------------------------


def activations_figure(
    image: Array,
    acts: Mapping[str, Array],
    *,
    title: str = "",
    max_channels: int = 32,
    cmap: str = "viridis",
) -> Figure:
    """One image and, below it, every channel of each layer as a grid (one scale per layer).

    A channel that is uniformly low on the layer's scale is a channel this image does not excite (or a
    dead one); the layer name and output shape `C x H x W` head each grid.

    Args:
        image: the input, uint8 `(C, H, W)`.
        acts: `{layer: (C, H, W)}` from :func:`convlens.inspect.activations`.
        title: a caption (e.g. the image's class).
        max_channels: the most channels drawn per layer (the first ones).
        cmap: colour map of the activations.
    """
    cols = 8
    layers = list(acts.items())
    # A layer with 1x1 maps (after global pooling, LeNet's C5) is one strip of all its channels.
    heights = [1.6] + [
        1.1
        if _np(a).shape[1:] == (1, 1)
        else _grid_shape(min(len(_np(a)), max_channels), cols)[0] + 0.35
        for _, a in layers
    ]
    fig = new_figure(figsize=(cols * 1.0, sum(heights)))
    subs = list(
        np.ravel(np.asarray(fig.subfigures(len(heights), 1, height_ratios=heights), dtype=object))
    )
    ax = subs[0].subplots(1, 1)
    _show(ax, image)
    ax.set_title(f"input {title}".strip(), fontsize=9)
    for sub, (name, a) in zip(subs[1:], layers, strict=True):
        arr = _np(a).astype(np.float32)
        c, h, w = arr.shape
        if (h, w) == (1, 1):
            lo, hi = float(arr.min()), float(arr.max())
            axs = sub.subplots(1, 1)
            axs.imshow(
                arr.reshape(1, c),
                cmap=cmap,
                vmin=lo,
                vmax=hi if hi > lo else lo + 1,
                aspect="auto",
                interpolation="nearest",
            )
            axs.set_yticks([])
            axs.set_xlabel("channel", fontsize=7)
            axs.tick_params(labelsize=6)
            sub.subplots_adjust(left=0.02, right=0.98, top=0.72, bottom=0.32)
            sub.suptitle(f"{name}  {c}x{h}x{w}  [{lo:.2g}, {hi:.2g}]", fontsize=9)
            continue
        shown = arr[:max_channels]
        lo, hi = float(shown.min()), float(shown.max())
        rows, _ = _grid_shape(len(shown), cols)
        axes = sub.subplots(rows, cols, squeeze=False)
        for i, axi in enumerate(axes.flat):
            axi.set_axis_off()
            if i < len(shown):
                axi.imshow(
                    shown[i],
                    cmap=cmap,
                    vmin=lo,
                    vmax=hi if hi > lo else lo + 1,
                    interpolation="nearest",
                )
                axi.set_title(str(i), fontsize=6, pad=1)
        more = f", first {len(shown)} channels" if c > len(shown) else ""
        sub.suptitle(f"{name}  {c}x{h}x{w}{more}  [{lo:.2g}, {hi:.2g}]", fontsize=9)
    return fig


# --- neighbours ----------------------------------------------------------------------------------


def neighbors_figure(
    queries: Array,
    feature_images: Array,
    pixel_images: Array,
    *,
    query_titles: Sequence[str],
    feature_titles: Sequence[Sequence[str]],
    pixel_titles: Sequence[Sequence[str]],
    metric: str = "cosine",
    subtitle: str = "",
) -> Figure:
    """Each query beside its k nearest images in feature space and, to the right, in pixel space.

    Args:
        queries: uint8 `(Q, C, H, W)`.
        feature_images: uint8 `(Q, k, C, H, W)`, nearest first.
        pixel_images: uint8 `(Q, k, C, H, W)`, nearest first.
        query_titles: one caption per query.
        feature_titles: `(Q, k)` captions (e.g. class and distance).
        pixel_titles: `(Q, k)` captions.
        metric: the feature-space metric, for the heading.
        subtitle: a second heading line (which images were searched), or "".
    """
    q = _np(queries)
    fi, pi = _np(feature_images), _np(pixel_images)
    nq, k = fi.shape[:2]
    cols = 1 + k + 1 + k  # query | feature neighbours | gap | pixel neighbours
    fig, axes = subplots(nq, cols, figsize=(cols * 1.05, nq * 1.2 + 0.6), squeeze=False)
    for r in range(nq):
        for ax in axes[r]:
            ax.set_axis_off()
        _show(axes[r, 0], q[r])
        axes[r, 0].set_title(query_titles[r], fontsize=7, color="tab:blue")
        for j in range(k):
            _show(axes[r, 1 + j], fi[r, j])
            axes[r, 1 + j].set_title(feature_titles[r][j], fontsize=6)
            _show(axes[r, 2 + k + j], pi[r, j])
            axes[r, 2 + k + j].set_title(pixel_titles[r][j], fontsize=6)
    fig.suptitle(
        f"query  |  {k} nearest in feature space ({metric}, penultimate layer)  |  "
        f"{k} nearest in pixel space (L2)" + (f"\n{subtitle}" if subtitle else ""),
        fontsize=9,
    )
    fig.tight_layout()
    return fig


# --- t-SNE ---------------------------------------------------------------------------------------


def tsne_scatter(
    coords: Array,
    labels: Array,
    classes: Sequence[str],
    *,
    title: str = "",
    point_size: float = 3.0,
) -> Figure:
    """The t-SNE map as a scatter plot, one colour per class.

    Args:
        coords: `(N, 2)` map coordinates.
        labels: `(N,)` class indices.
        classes: class names, index = label.
        title: heading.
        point_size: marker area in points^2.
    """
    c, y = _np(coords), _np(labels).astype(int)
    cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
    fig, ax = subplots(figsize=(7.5, 6.5))
    for k, name in enumerate(classes):
        sel = y == k
        if sel.any():
            ax.scatter(
                c[sel, 0], c[sel, 1], s=point_size, color=cmap(k % cmap.N), label=name, linewidths=0
            )
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(
        markerscale=4, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False
    )
    ax.set_title(title or f"t-SNE of {len(c)} feature vectors", fontsize=10)
    fig.tight_layout()
    return fig


def tsne_image_grid(
    grid: Array, images: Array, *, title: str = "", background: float = 1.0
) -> Figure:
    """The image-grid form of a t-SNE map: each cell shows the image nearest that point of the map.

    Args:
        grid: int `(R, C)` image indices from :func:`convlens.inspect.tsne_grid`, -1 for an empty cell.
        images: uint8 `(N, C, H, W)` the indices point into.
        title: heading.
        background: grey level (0..1) of empty cells.
    """
    g = _np(grid).astype(int)
    rows, cols = g.shape
    first = to_hwc(images[0])
    h, w = first.shape[:2]
    canvas = np.full((rows * h, cols * w, *first.shape[2:]), background, dtype=np.float32)
    for r in range(rows):
        for c in range(cols):
            if g[r, c] >= 0:
                canvas[r * h : (r + 1) * h, c * w : (c + 1) * w] = to_hwc(images[int(g[r, c])])
    side = 9.0
    fig, ax = subplots(figsize=(side, side * rows / cols + 0.4))
    ax.imshow(
        canvas, cmap="gray" if canvas.ndim == 2 else None, vmin=0, vmax=1, interpolation="nearest"
    )
    ax.set_axis_off()
    ax.set_title(title or f"t-SNE map as a {rows}x{cols} image grid", fontsize=10)
    fig.tight_layout()
    return fig


# --- top patches ---------------------------------------------------------------------------------


def top_patches_figure(
    crops: Array,
    values: Array,
    channels: Sequence[int],
    *,
    layer: str,
    rf_size: tuple[int, int],
) -> Figure:
    """One row per channel: the receptive-field crops of its top images, highest activation first.

    Args:
        crops: uint8 `(K, n, C, h, w)` from :func:`convlens.inspect.crop_patches`.
        values: `(K, n)` the activations, shown under each crop.
        channels: the K channel numbers.
        layer: the layer's name.
        rf_size: `(h, w)` of the receptive field.
    """
    p, v = _np(crops), _np(values)
    k, n = p.shape[:2]
    fig, axes = subplots(k, n + 1, figsize=((n + 1) * 0.95, k * 1.0 + 0.5), squeeze=False)
    for r in range(k):
        for ax in axes[r]:
            ax.set_axis_off()
        axes[r, 0].text(0.5, 0.5, f"ch {channels[r]}", ha="center", va="center", fontsize=8)
        for j in range(n):
            _show(axes[r, j + 1], p[r, j])
            axes[r, j + 1].set_title(f"{v[r, j]:.2f}", fontsize=6, pad=1)
    fig.suptitle(
        f"{layer}: top {n} patches per channel (receptive field {rf_size[0]}x{rf_size[1]}; grey = outside the image)",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def top_images_figure(
    images: Array,
    boxes: Array,
    values: Array,
    channels: Sequence[int],
    *,
    layer: str,
) -> Figure:
    """One row per channel: its top images whole, the arg-max unit's receptive field outlined.

    Args:
        images: uint8 `(K, n, C, H, W)` the top images.
        boxes: `(K, n, 4)` `(top, left, bottom, right)`, bottom/right exclusive (may reach outside).
        values: `(K, n)` activations.
        channels: the K channel numbers.
        layer: the layer's name.
    """
    im, b, v = _np(images), _np(boxes), _np(values)
    k, n = im.shape[:2]
    fig, axes = subplots(k, n + 1, figsize=((n + 1) * 0.95, k * 1.0 + 0.5), squeeze=False)
    for r in range(k):
        for ax in axes[r]:
            ax.set_axis_off()
        axes[r, 0].text(0.5, 0.5, f"ch {channels[r]}", ha="center", va="center", fontsize=8)
        for j in range(n):
            ax = axes[r, j + 1]
            _show(ax, im[r, j])
            t, left, btm, right = (float(x) for x in b[r, j])
            ax.add_patch(
                Rectangle(
                    (left - 0.5, t - 0.5),
                    right - left,
                    btm - t,
                    fill=False,
                    edgecolor="red",
                    linewidth=1,
                )
            )
            ax.set_xlim(-0.5, im.shape[-1] - 0.5)
            ax.set_ylim(im.shape[-2] - 0.5, -0.5)
            ax.set_title(f"{v[r, j]:.2f}", fontsize=6, pad=1)
    fig.suptitle(
        f"{layer}: top {n} images per channel, arg-max unit's receptive field in red", fontsize=9
    )
    fig.tight_layout()
    return fig


# --- effective receptive field -------------------------------------------------------------------


def erf_figure(
    erf: Array,
    rf_box: tuple[int, int, int, int],
    *,
    layer: str,
    rf_size: tuple[int, int],
    center: tuple[float, float] | None = None,
    radius: float | None = None,
    mass: float = 0.95,
) -> Figure:
    """The effective receptive field beside the theoretical one, on the same input canvas.

    Left: the ERF (gradient magnitude of a central unit with respect to the input, normalised to a
    maximum of 1) with the theoretical receptive field outlined. Right: the theoretical field as a
    uniform square. Luo et al. (2016): the effective field is Gaussian-like and fills only part of the
    theoretical one.

    Args:
        erf: `(H, W)` map over the input.
        rf_box: `(top, left, bottom, right)` of the central unit's theoretical field, bottom/right
            exclusive (may reach outside the input).
        layer: the layer's name.
        rf_size: `(h, w)` of the theoretical field.
        center: `(row, col)` of the unit's centre; with `radius`, a circle holding `mass` of the map.
        radius: radius in pixels of that circle.
        mass: the fraction of the map inside the circle, for the legend.
    """
    from matplotlib.patches import Circle

    e = _np(erf).astype(np.float64)
    e = e / (e.max() or 1.0)
    h, w = e.shape
    t, left, btm, right = rf_box
    theory = np.zeros_like(e)
    theory[max(t, 0) : max(min(btm, h), 0), max(left, 0) : max(min(right, w), 0)] = 1.0
    fig, axes = subplots(1, 2, figsize=(8.5, 4.3))
    im0 = axes[0].imshow(e, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    axes[1].imshow(theory, cmap="magma", vmin=0, vmax=1, interpolation="nearest")
    for ax in axes:
        ax.add_patch(
            Rectangle(
                (left - 0.5, t - 0.5),
                right - left,
                btm - t,
                fill=False,
                edgecolor="cyan",
                linewidth=1.2,
            )
        )
        ax.set_xlim(-0.5, w - 0.5)
        ax.set_ylim(h - 0.5, -0.5)
        ax.set_xticks([])
        ax.set_yticks([])
    if center is not None and radius is not None:
        axes[0].add_patch(
            Circle(
                (center[1], center[0]),
                radius,
                fill=False,
                edgecolor="white",
                linestyle="--",
                linewidth=1,
            )
        )
        axes[0].set_title(
            f"effective receptive field ({100 * mass:.0f} % within r = {radius:.1f} px)", fontsize=9
        )
    else:
        axes[0].set_title("effective receptive field", fontsize=9)
    axes[1].set_title(f"theoretical receptive field {rf_size[0]}x{rf_size[1]}", fontsize=9)
    fig.colorbar(im0, ax=axes[0], fraction=0.046, pad=0.04)
    fig.suptitle(f"{layer}: centre unit, input {h}x{w}", fontsize=10)
    fig.tight_layout()
    return fig
