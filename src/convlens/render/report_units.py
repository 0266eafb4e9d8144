"""The report's sections on what units look for and where the network looks.

Top-activating patches, activation maximisation, occlusion / Grad-CAM / saliency, and the effective
receptive field: each `(ctx) -> Section | Skipped`, registered in page order after the sections of
:mod:`convlens.render.report_sections` (which lists them all in ``SECTIONS``). The numbers and every
default (layer, steps, window) come from :mod:`convlens.views`; figures are
:class:`~matplotlib.figure.Figure` objects (no pyplot state).
"""

from __future__ import annotations

import functools
from typing import Any

import torch
from matplotlib.figure import Figure

from convlens.render import report_base
from convlens.render.common import overlay_heatmap, to_hwc
from convlens.render.report_base import (
    Section,
    SectionSpec,
    Skipped,
    Unavailable,
    esc,
    fmt_int,
    img,
    para,
)
from convlens.render.report_context import ReportContext

SECTIONS: list[SectionSpec] = []
section = functools.partial(report_base.section, SECTIONS)


# --------------------------------------------------------------------------------------------------
# 8. Top-activating patches
# --------------------------------------------------------------------------------------------------


@section(
    "top-patches",
    "Top-activating patches",
    "For a few channels of the last convolution with a spatial map, the images that excite that channel most, cropped to "
    "the receptive field of the most excited unit: the part of the image the unit can see. One row per "
    "channel; what the crops in a row share is what that channel detects.",
)
def top_patches_section(ctx: ReportContext) -> Section | Skipped:
    layer = ctx.spatial_conv()
    from convlens.render.layers import top_patches_figure
    from convlens.views import layer_view

    ds = ctx.images()
    o = ctx.options
    k = min(o.top_channels, ctx.conv_layers()[layer].out_channels)
    v = layer_view(
        ctx.subject, layer, channels=k, patches=min(o.top_images, len(ds)), parts=("patches",),
        batch_size=o.batch_size, index=ctx.index,
    )  # fmt: skip
    assert v.crops is not None and v.rf_size is not None and v.map_size is not None
    fig = top_patches_figure(v.crops, v.values, v.channels, layer=layer, rf_size=v.rf_size)
    rh, rw = v.rf_size
    return Section(
        img(
            fig,
            f"top-activating patches of layer {layer}",
            f"Layer {layer}: {v.map_size[0]}x{v.map_size[1]} units per channel, each seeing {rh}x{rw} "
            f"input pixels; searched over {fmt_int(v.limit or 0)} of the {fmt_int(len(ds))} "
            f"{'test ' if ctx.is_run else ''}images"
            f"{' (the index)' if v.source == 'index' else ' (spread evenly)'}, the activation above "
            "each crop.",
        ),
        views={"layer": v},
    )


# --------------------------------------------------------------------------------------------------
# 9. Activation maximisation
# --------------------------------------------------------------------------------------------------


@section(
    "actmax",
    "Activation maximisation: what a filter wants to see",
    "Images synthesised by gradient ascent, starting from noise, to excite one channel of the last "
    "spatial convolution as much as possible. They show the pattern the channel responds to, free of any "
    "particular test image; repeated motifs mean the channel fires wherever its pattern appears.",
)
def actmax_section(ctx: ReportContext) -> Section | Skipped:
    layer = ctx.spatial_conv()
    from convlens.render.actmax import actmax_figure
    from convlens.views import layer_view

    o = ctx.options
    _, h, w = ctx.input_shape
    if h != w:
        raise Unavailable(
            f"activation maximisation synthesises square images; this model takes {h}x{w}."
        )
    channels = (
        None
        if o.actmax_channels is None
        else min(o.actmax_channels, ctx.conv_layers()[layer].out_channels)
    )
    v = layer_view(
        ctx.subject, layer, channels=channels, steps=o.actmax_steps, parts=("actmax",), seed=o.seed
    )
    assert v.actmax is not None
    fig = actmax_figure(v.actmax, labels=[f"ch {ch}" for ch in v.channels], values=v.actmax_values)
    return Section(
        img(
            fig,
            f"activation maximisation for layer {layer}",
            f"Layer {layer}, channels {v.channels[0]}-{v.channels[-1]}: {v.steps} gradient-ascent "
            "steps from noise (Fourier parameterisation, small random shifts), all channels in one "
            "batch; each title gives the channel's mean activation on the final image. A flat grey "
            "image is a channel that no input the ascent found excites.",
        ),
        views={"layer": v},
    )


# --------------------------------------------------------------------------------------------------
# 10. Attribution
# --------------------------------------------------------------------------------------------------


@section(
    "attribution",
    "Occlusion, Grad-CAM and saliency: where the network looks",
    'Three answers to "which pixels made the network say this class?", for images it got right and '
    "for images it got wrong (for unlabelled images: the first few, explaining the predicted class). Occlusion: how much the predicted class's score drops when a patch of the "
    "mean colour hides each place (red = the network needs it). Grad-CAM: which regions of the last "
    "spatial convolution's maps support the class. Saliency: how strongly each pixel moves the class score.",
)
def attribution_section(ctx: ReportContext) -> Section | Skipped:
    layer = ctx.spatial_conv()
    from convlens.views import attribution_view

    ds = ctx.images()
    preds = ctx.predictions()
    pred, confidence = preds.predicted, preds.confidence
    right, wrong = ctx.example_indices()
    labelled = ctx.labelled()
    c = ctx.input_shape[0]
    parts = []
    drawn: dict[str, Any] = {"predictions": preds}
    groups = (
        (("Correctly classified", right), ("Misclassified", wrong))
        if labelled
        else (("The first images", right),)
    )
    for title, idx in groups:
        if not idx:
            parts.append(para(f"{title}: none among the images."))
            continue
        sel = torch.tensor(idx)
        images = ds.images[sel]  # (n, C, H, W) uint8
        target = pred[sel]  # explain the predicted class, right or wrong
        # Baseline 0 in normalised units = the data set's mean colour; window and stride: the view's.
        o_view = attribution_view(ctx.subject, images, "occlusion", target=target)
        window, stride = o_view.window, o_view.stride
        occ = o_view.maps.numpy()  # (n, H, W)
        cam = attribution_view(ctx.subject, images, "gradcam", target=target, layer=layer)
        cam_maps = cam.maps.numpy()  # (n, H, W)
        sal_view = attribution_view(ctx.subject, images, "saliency", target=target)
        sal = sal_view.maps.numpy()  # (n, H, W)
        drawn[title] = {"indices": idx, "occlusion": o_view, "gradcam": cam, "saliency": sal_view}
        fig = Figure(figsize=(7.2, 1.9 * len(idx) + 0.3))
        axes = fig.subplots(len(idx), 4, squeeze=False)
        for r, i in enumerate(idx):
            truth = ctx.class_name(int(ds.labels[i])) if labelled else ctx.image_title(ds, i)
            guess = ctx.class_name(int(pred[i]))
            axes[r, 0].imshow(to_hwc(images[r]), cmap="gray" if c == 1 else None, vmin=0, vmax=1)
            axes[r, 0].set_axis_off()
            axes[r, 0].set_title(
                f"{'true: ' if labelled else ''}{truth}\n"
                f"predicted: {guess} ({100 * float(confidence[i]):.0f} %)",
                fontsize=7,
            )
            overlay_heatmap(axes[r, 1], images[r], occ[r], alpha=0.6, symmetric=True)
            overlay_heatmap(axes[r, 2], images[r], cam_maps[r], alpha=0.5)
            overlay_heatmap(axes[r, 3], images[r], sal[r], alpha=0.6, cmap="hot")
        for col, name in enumerate(("image", "occlusion", f"Grad-CAM ({layer})", "saliency")):
            axes[0, col].set_title(axes[0, col].get_title() if col == 0 else name, fontsize=8)
        fig.tight_layout()
        parts.append(f"<h3>{esc(title)}</h3>")
        parts.append(
            img(
                fig,
                f"{title.lower()} images with occlusion, Grad-CAM and saliency maps",
                f"Every map explains the predicted class. Occlusion: {window}x{window} patches of the mean colour at "
                f"stride {stride}, mean drop of the class score per pixel (red: hiding it lowers the score; blue: "
                f"raises it). Grad-CAM at layer {layer}, upsampled. Saliency: |gradient|, max over channels.",
            )
        )
    return Section("".join(parts), views=drawn)


# --------------------------------------------------------------------------------------------------
# 11. Effective receptive field
# --------------------------------------------------------------------------------------------------


@section(
    "erf",
    "Effective receptive field",
    "How much each input pixel influences the centre unit of the last spatial convolution, averaged over random "
    "inputs (Luo et al. 2016), drawn inside the theoretical receptive field (the box). The influence "
    "concentrates near the centre and fades like a Gaussian: a unit effectively sees less than its "
    "theoretical field.",
)
def erf_section(ctx: ReportContext) -> Section | Skipped:
    layer = ctx.spatial_conv()
    from convlens.render.layers import erf_figure
    from convlens.views import unit_fields_view

    u = unit_fields_view(ctx.subject, layer, samples=ctx.options.erf_samples, seed=ctx.options.seed)
    erf = u.erf
    assert erf is not None
    rf = u.rf
    fig = erf_figure(erf.map, u.box, layer=layer, rf_size=rf.size)
    caption = (
        f"Centre unit {u.unit} of layer {layer}, {erf.samples} random inputs: "
        f"{100 * erf.mass:.0f} % of the influence lies within {erf.radius:.1f} pixels of the centre, "
        f"while the theoretical field is {rf.size[0]}x{rf.size[1]} pixels."
    )
    return Section(
        img(fig, f"effective receptive field of layer {layer}", caption), views={"fields": u}
    )
