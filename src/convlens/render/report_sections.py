"""The sections of the HTML report, in page order.

Each section is a function `(ctx) -> Section | Skipped` registered with :func:`section`, with the title
and the one or two sentences that lead it on the page. Sections only orchestrate: numbers come from
`convlens.anatomy` and `convlens.inspect`, pictures from matplotlib via `convlens.render`. Anything a
section needs and cannot get raises :class:`~convlens.render.report.Unavailable` (shown as "Not shown:
<reason>"), so one missing piece never stops the report. Sections about conv layers ask for their
layer first, so a network without one says that rather than anything else.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from matplotlib.ticker import MaxNLocator

from convlens.render.common import overlay_heatmap, subplots, to_hwc
from convlens.render.report import (
    ReportContext,
    Section,
    SectionSpec,
    Skipped,
    Unavailable,
    esc,
    fmt_int,
    img,
    para,
    table,
)

SectionFn = Callable[[ReportContext], Section | Skipped]
SECTIONS: list[SectionSpec] = []


def section(id: str, title: str, intro: str) -> Callable[[SectionFn], SectionFn]:
    """Register a section builder under `id` (unique), in page order."""

    def register(fn: SectionFn) -> SectionFn:
        if any(s.id == id for s in SECTIONS):
            raise ValueError(f"duplicate report section {id!r}")
        SECTIONS.append(SectionSpec(id, title, intro, fn))
        return fn

    return register


# --------------------------------------------------------------------------------------------------
# 1. Anatomy
# --------------------------------------------------------------------------------------------------

MAX_SUMMARY_ROWS = 80


@section(
    "summary",
    "Model summary",
    "One row per layer, in forward order: the shape of its output, how many neurons (output values) it "
    "has, its parameters with weight sharing (as trained) and without (a locally-connected layer of the "
    "same shape), its multiply-accumulates, and the receptive field: how many input pixels one of its "
    "units can see (size) and how far apart neighbouring units look (jump).",
)
def summary_section(ctx: ReportContext) -> Section | Skipped:
    from convlens.anatomy import summary

    s = summary(ctx.model, ctx.input_shape, name=ctx.raw["model"]["name"], warn=False)
    rows = list(s.layers)
    headers = [
        "layer",
        "type",
        "output",
        "neurons",
        "params",
        "params unshared",
        "MACs",
        "RF",
        "jump",
    ]
    numeric = [False, False, False, True, True, True, True, True, True]

    def pair(v: tuple[int, int] | None) -> str:
        if v is None:
            return ""
        if not any(v):  # a jump of 0: a flat layer, no grid of units to step over
            return "-"
        return f"{v[0]}" if v[0] == v[1] else f"{v[0]}x{v[1]}"

    body_rows = [
        [
            r.label,
            r.type,
            "x".join(str(d) for d in r.output_shape),
            fmt_int(r.neurons),
            fmt_int(r.params),
            fmt_int(r.params_unshared),
            fmt_int(r.macs),
            pair(r.rf.size if r.rf else None),
            pair(r.rf.jump if r.rf else None),
        ]
        for r in rows[:MAX_SUMMARY_ROWS]
    ]
    t = s.totals
    total_row = [
        "total",
        "",
        "x".join(str(d) for d in s.output_shape),
        fmt_int(t["neurons"]),
        fmt_int(t["params"]),
        fmt_int(t["params_unshared"]),
        fmt_int(t["macs"]),
        "",
        "",
    ]
    parts = [table(headers, body_rows, numeric=numeric, total=total_row)]
    if len(rows) > MAX_SUMMARY_ROWS:
        parts.append(
            para(
                f"... and {len(rows) - MAX_SUMMARY_ROWS} more layers; `convlens summary` lists them all.",
                "note",
            )
        )
    params, unshared = t["params"], t["params_unshared"]
    if params and unshared > params:
        parts.append(
            para(
                f"Weight sharing: {fmt_int(params)} parameters instead of {fmt_int(unshared)} if every "
                f"unit had weights of its own, {unshared / params:,.0f} times fewer. A filter is useful "
                "at every position, so the network learns it once and slides it over the image."
            )
        )
    for w in s.warnings:
        parts.append(para(f"Note: {w}", "note"))
    return Section("".join(parts))


# --------------------------------------------------------------------------------------------------
# 2. Training
# --------------------------------------------------------------------------------------------------


@section(
    "training",
    "Training curves",
    "Loss and accuracy after each epoch, on the training and the test split, and the learning rate. "
    "Training loss far below test loss means over-fitting; both still falling means more epochs would help.",
)
def training_section(ctx: ReportContext) -> Section | Skipped:
    h = ctx.history
    if not h:
        return Skipped(
            "the run has no metrics.jsonl (no epoch finished), so there are no curves to draw."
        )
    epochs = [
        int(r["epoch"]) + 1 if "epoch" in r else i for i, r in enumerate(h, 1)
    ]  # 0-based in the file
    fig, axes = subplots(1, 3, figsize=(11, 3.1))
    marker = "o" if len(h) < 30 else None
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy (%)")):
        for split, style in (("train", "-"), ("test", "--")):
            ys = [r.get(f"{split}_{key}") for r in h]
            if all(y is None for y in ys):
                continue
            vals = [np.nan if y is None else float(y) * (100 if key == "acc" else 1) for y in ys]
            ax.plot(epochs, vals, style, marker=marker, ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    lrs = [r.get("lr") for r in h]
    if any(v is not None for v in lrs):
        axes[2].plot(epochs, [np.nan if v is None else float(v) for v in lrs], marker=marker, ms=3)
        axes[2].set_xlabel("epoch")
        axes[2].xaxis.set_major_locator(MaxNLocator(integer=True))
        axes[2].set_ylabel("learning rate (end of epoch)")
        axes[2].grid(alpha=0.3)
    else:
        axes[2].set_axis_off()
    fig.tight_layout()
    last = h[-1]
    bits = [f"{len(h)} epochs"]
    if "test_acc" in last:
        bits.append(f"final test accuracy {100 * float(last['test_acc']):.2f} %")
    if "train_acc" in last:
        bits.append(f"training accuracy {100 * float(last['train_acc']):.2f} %")
    ips = [float(r["images_per_s"]) for r in h if r.get("images_per_s")]
    if ips:
        bits.append(f"{np.mean(ips):,.0f} training images per second")
    return Section(
        img(
            fig,
            "training curves: loss, accuracy and learning rate per epoch",
            "; ".join(bits) + ".",
        )
    )


# --------------------------------------------------------------------------------------------------
# 3. Confusion matrix
# --------------------------------------------------------------------------------------------------


@section(
    "confusion",
    "Confusion matrix and per-class accuracy",
    "Row = true class, column = predicted class, on the whole test split; the diagonal holds the correct "
    "answers. Bright cells off the diagonal are the pairs of classes the network confuses.",
)
def confusion_section(ctx: ReportContext) -> Section | Skipped:
    ds = ctx.dataset("test")
    _, pred = ctx.predictions()
    k = max(len(ctx.classes), int(ds.labels.max()) + 1, int(pred.max()) + 1)
    from convlens.train import confusion_matrix

    y = ds.labels.numpy()
    cm = confusion_matrix(ds.labels, pred, k).numpy()  # (K, K): rows true, columns predicted
    names = [ctx.class_name(i) for i in range(k)]
    size = min(8.0, 1.6 + 0.42 * k)  # 5.8 inches for 10 classes: readable beside the table
    fig, ax = subplots(figsize=(size + 1.0, size))
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    im = ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if cm[i, j]:
                    ax.text(
                        j,
                        i,
                        str(cm[i, j]),
                        ha="center",
                        va="center",
                        fontsize=7 if k > 10 else 8,
                        color="white" if rates[i, j] > 0.5 else "black",
                    )
        ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
        ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    fig.tight_layout()
    acc = float(np.trace(cm) / max(cm.sum(), 1))
    rows = []
    for i in range(k):
        n = int(cm[i].sum())
        off = cm[i].copy()
        off[i] = 0
        j = int(off.argmax())
        confused = f"{names[j]} ({off[j]})" if off[j] else "-"
        rows.append([names[i], fmt_int(n), f"{100 * cm[i, i] / n:.1f} %" if n else "-", confused])
    per_class = table(
        ["class", "test images", "accuracy", "most often mistaken for"],
        rows,
        numeric=[False, True, True, False],
    )
    return Section(
        '<div class="row">'
        + img(
            fig,
            "confusion matrix of the test split",
            f"Test accuracy {100 * acc:.2f} % on {fmt_int(len(y))} images.",
        )
        + f"<div>{per_class}</div></div>"
    )


# --------------------------------------------------------------------------------------------------
# 4. Filters
# --------------------------------------------------------------------------------------------------


@section(
    "filters",
    "First-layer filters",
    "The weights of the first convolution, one small image per filter, drawn on one symmetric scale: "
    "in grey input, red is a positive weight and blue a negative one, so a filter with red beside blue "
    "detects an edge at that orientation. Smooth, structured filters are a sign of a well-trained network; "
    "noisy ones of too little training or too high a learning rate.",
)
def filters_section(ctx: ReportContext) -> Section | Skipped:
    layer = ctx.first_conv()
    from convlens.inspect import filters
    from convlens.render.layers import filters_figure

    w = filters(ctx.model, layer)  # (C_out, C_in, kH, kW)
    fig = filters_figure(w, layer=layer, max_filters=64, max_inputs=8)
    c_out, c_in, kh, kw = w.shape
    return Section(
        img(
            fig,
            f"filters of layer {layer}",
            f"Layer {layer}: {c_out} filters of {c_in}x{kh}x{kw} weights.",
        )
    )


# --------------------------------------------------------------------------------------------------
# 5. Activations
# --------------------------------------------------------------------------------------------------


@section(
    "activations",
    "Activations for a few test images",
    "What each stage of the network computes for one image: every small square is one channel's feature "
    "map (bright = strong response), one grid per layer, from the input down. Early layers still look like the "
    "image (edges, strokes); deeper layers are coarser, and more of their channels stay dark.",
)
def activations_section(ctx: ReportContext) -> Section | Skipped:
    ctx.conv_layers()
    from convlens.inspect import activations
    from convlens.render.layers import activations_figure

    ds = ctx.dataset("test")
    figures = []
    for i in range(min(ctx.options.activation_images, len(ds))):
        batch = activations(ctx.model, ctx.normalize(ds.images[i : i + 1]), max_layers=6)
        acts = {
            k: v[0] for k, v in batch.items() if v.shape[-1] > 1 or v.shape[-2] > 1
        }  # (C, H, W) maps, not vectors
        if not acts:
            raise Unavailable("no layer of the model produces a spatial feature map.")
        label = ctx.class_name(int(ds.labels[i]))
        fig = activations_figure(
            ds.images[i],
            acts,
            title=f"(test image {i}, {label})",
            max_channels=ctx.options.max_channels,
        )
        figures.append(
            img(
                fig,
                f"activations of test image {i}",
                f"Test image {i}, a {label}: the first "
                f"{ctx.options.max_channels} channels of each stage, one colour scale per layer.",
            )
        )
    return Section('<div class="row">' + "".join(figures) + "</div>")


# --------------------------------------------------------------------------------------------------
# 6. Neighbours
# --------------------------------------------------------------------------------------------------


@section(
    "neighbors",
    "Nearest neighbours: feature space against pixel space",
    "For each test image on the left, the training images closest to it in the network's penultimate "
    "feature space (middle) and closest in raw pixels (right). Feature-space neighbours share the class "
    "even when they look different; pixel-space neighbours merely overlap in brightness and position.",
)
def neighbors_section(ctx: ReportContext) -> Section | Skipped:
    from convlens.inspect import neighbors
    from convlens.render.layers import neighbors_figure

    test, train = ctx.dataset("test"), ctx.dataset("train")
    o = ctx.options
    pool, pool_labels = train.head(o.neighbor_pool)  # from every class (Dataset.head)
    q, qy = test.head(o.neighbor_queries)
    d = ctx.raw["data"]
    nb = neighbors(
        ctx.model,
        q,
        pool,
        o.neighbors_k,
        metric="cosine",
        mean=tuple(d["mean"]),
        std=tuple(d["std"]),
        batch_size=o.batch_size,
    )

    def titles(indices: torch.Tensor) -> list[list[str]]:
        return [
            [
                ctx.class_name(int(pool_labels[j]))
                + ("" if int(pool_labels[j]) == int(qy[r]) else " (x)")
                for j in row
            ]
            for r, row in enumerate(indices.tolist())
        ]

    fig = neighbors_figure(
        q,
        pool[nb.feature_indices],
        pool[nb.pixel_indices],
        query_titles=[ctx.class_name(int(y)) for y in qy],
        feature_titles=titles(nb.feature_indices),
        pixel_titles=titles(nb.pixel_indices),
        metric=nb.metric,
    )
    same_f = int((pool_labels[nb.feature_indices] == qy[:, None]).sum())
    same_p = int((pool_labels[nb.pixel_indices] == qy[:, None]).sum())
    total = int(nb.feature_indices.numel())
    caption = (
        f"Searched over {fmt_int(len(pool))} training images; (x) marks a neighbour of another class. "
        f"Same class as the query: {same_f} of {total} in feature space, {same_p} of {total} in pixel space."
    )
    return Section(img(fig, "nearest neighbours in feature and pixel space", caption))


# --------------------------------------------------------------------------------------------------
# 7. t-SNE
# --------------------------------------------------------------------------------------------------


@section(
    "tsne",
    "t-SNE map of the features",
    "Each test image's penultimate feature vector, placed in 2-D by t-SNE so that images the network "
    "finds similar land close together. Well separated islands of one colour mean the classes are easy "
    "to tell apart from these features; the image grid shows which images sit where on the map.",
)
def tsne_section(ctx: ReportContext) -> Section | Skipped:
    from convlens.inspect import extract_features, tsne, tsne_grid
    from convlens.render.layers import tsne_image_grid, tsne_scatter

    ds = ctx.dataset("test")
    n = min(ctx.options.tsne_images, len(ds))
    if n < 10:
        raise Unavailable(f"the test split has only {n} images; t-SNE needs more.")
    d = ctx.raw["data"]
    images, labels = ds.head(n)  # from every class, where the split is class-ordered
    feats = extract_features(
        ctx.model,
        images,
        mean=tuple(d["mean"]),
        std=tuple(d["std"]),
        batch_size=ctx.options.batch_size,
    )  # (n, D) penultimate features
    # One thread: openTSNE's threads gain little at this size and lose badly on a busy machine.
    emb = tsne(feats, seed=ctx.options.seed, n_jobs=1)
    scatter = tsne_scatter(
        emb.coords,
        labels,
        ctx.classes or [str(i) for i in range(int(ds.labels.max()) + 1)],
        title=f"t-SNE of {fmt_int(n)} test images' features",
        point_size=5.0,
    )
    cells = 24
    grid = tsne_image_grid(tsne_grid(emb.coords, cells, cells), images)
    return Section(
        '<div class="row">'
        + img(
            scatter,
            "t-SNE scatter of test features, coloured by class",
            f"{fmt_int(n)} test images coloured by true class (perplexity {emb.perplexity:g}, KL divergence {emb.kl_divergence:.2f}).",
        )
        + img(
            grid,
            "t-SNE image grid",
            f"The same map as a {cells}x{cells} grid: each cell shows the image nearest its centre; blank where the map is empty.",
        )
        + "</div>"
    )


# --------------------------------------------------------------------------------------------------
# 8. Top-activating patches
# --------------------------------------------------------------------------------------------------


@section(
    "top-patches",
    "Top-activating patches",
    "For a few channels of the last convolution with a spatial map, the test images that excite that channel most, cropped to "
    "the receptive field of the most excited unit: the part of the image the unit can see. One row per "
    "channel; what the crops in a row share is what that channel detects.",
)
def top_patches_section(ctx: ReportContext) -> Section | Skipped:
    layer = ctx.spatial_conv()
    from convlens.inspect import crop_patches, top_patches
    from convlens.render.layers import top_patches_figure

    ds = ctx.dataset("test")
    o = ctx.options
    d = ctx.raw["data"]
    k = min(o.top_channels, ctx.conv_layers()[layer].out_channels)
    top = top_patches(
        ctx.model,
        layer,
        ds.images,
        k,
        o.top_images,
        mean=tuple(d["mean"]),
        std=tuple(d["std"]),
        batch_size=o.batch_size,
    )
    crops = crop_patches(ds.images, top)  # (K, n, C, h, w) uint8
    fig = top_patches_figure(crops, top.values, top.channels, layer=layer, rf_size=top.rf_size)
    rh, rw = top.rf_size
    return Section(
        img(
            fig,
            f"top-activating patches of layer {layer}",
            f"Layer {layer}: {top.map_size[0]}x{top.map_size[1]} units per channel, each seeing {rh}x{rw} "
            f"input pixels; searched over the {fmt_int(len(ds))} test images, the activation above each crop.",
        )
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
    from convlens.inspect import activation_maximization

    o = ctx.options
    n = min(o.actmax_channels, ctx.conv_layers()[layer].out_channels)
    d = ctx.raw["data"]
    c, h, w = ctx.input_shape
    if h != w:
        raise Unavailable(
            f"activation maximisation synthesises square images; this model takes {h}x{w}."
        )
    res = activation_maximization(
        ctx.model,
        layer,
        list(range(n)),
        size=h,
        steps=o.actmax_steps,
        mean=tuple(d["mean"]),
        std=tuple(d["std"]),
        in_channels=c,
        seed=o.seed,
    )
    from convlens.render.actmax import actmax_figure

    fig = actmax_figure(res.images, labels=[f"ch {ch}" for ch in res.channels], values=res.values)
    return Section(
        img(
            fig,
            f"activation maximisation for layer {layer}",
            f"Layer {layer}, channels 0-{n - 1}: {o.actmax_steps} gradient-ascent steps from noise (Fourier "
            "parameterisation, small random shifts), all channels in one batch; each title gives the "
            "channel's mean activation on the final image. A flat grey image is a channel that no input "
            "the ascent found excites.",
        )
    )


# --------------------------------------------------------------------------------------------------
# 10. Attribution
# --------------------------------------------------------------------------------------------------


@section(
    "attribution",
    "Occlusion, Grad-CAM and saliency: where the network looks",
    'Three answers to "which pixels made the network say this class?", for test images it got right and '
    "for images it got wrong. Occlusion: how much the predicted class's score drops when a patch of the "
    "mean colour hides each place (red = the network needs it). Grad-CAM: which regions of the last "
    "spatial convolution's maps support the class. Saliency: how strongly each pixel moves the class score.",
)
def attribution_section(ctx: ReportContext) -> Section | Skipped:
    layer = ctx.spatial_conv()
    from convlens.inspect import grad_cam, saliency
    from convlens.inspect.occlusion import occlusion

    ds = ctx.dataset("test")
    probs, pred = ctx.predictions()
    right, wrong = ctx.example_indices()
    c, h, w = ctx.input_shape
    window = max(2, min(h, w) // 7)  # 4 pixels on 28x28: about a stroke's width
    stride = max(1, window // 2)
    parts = []
    for title, idx in (("Correctly classified", right), ("Misclassified", wrong)):
        if not idx:
            parts.append(para(f"{title}: none in the test split."))
            continue
        sel = torch.tensor(idx)
        images = ds.images[sel]  # (n, C, H, W) uint8
        x = ctx.normalize(images)
        target = pred[sel].to(x.device)  # explain the predicted class, right or wrong
        # Baseline 0 in normalised units = the data set's mean colour.
        occ = (
            occlusion(ctx.model, x, target, window=window, stride=stride)
            .attribution[:, 0]
            .cpu()
            .numpy()
        )
        cam = grad_cam(ctx.model, x, target, layer).detach().cpu().numpy()  # (n, H, W)
        sal = saliency(ctx.model, x, target).detach().cpu().numpy()  # (n, H, W)
        fig, axes = subplots(len(idx), 4, figsize=(7.2, 1.9 * len(idx) + 0.3), squeeze=False)
        for r, i in enumerate(idx):
            truth, guess = ctx.class_name(int(ds.labels[i])), ctx.class_name(int(pred[i]))
            axes[r, 0].imshow(to_hwc(images[r]), cmap="gray" if c == 1 else None, vmin=0, vmax=1)
            axes[r, 0].set_axis_off()
            axes[r, 0].set_title(
                f"true: {truth}\npredicted: {guess} ({100 * float(probs[i, pred[i]]):.0f} %)",
                fontsize=7,
            )
            overlay_heatmap(axes[r, 1], images[r], occ[r], alpha=0.6, symmetric=True)
            overlay_heatmap(axes[r, 2], images[r], cam[r], alpha=0.5)
            overlay_heatmap(axes[r, 3], images[r], sal[r], alpha=0.6, cmap="hot")
        for col, name in enumerate(("image", "occlusion", f"Grad-CAM ({layer})", "saliency")):
            axes[0, col].set_title(axes[0, col].get_title() if col == 0 else name, fontsize=8)
        fig.tight_layout()
        parts.append(f"<h3>{esc(title)}</h3>")
        parts.append(
            img(
                fig,
                f"{title.lower()} test images with occlusion, Grad-CAM and saliency maps",
                f"Every map explains the predicted class. Occlusion: {window}x{window} patches of the mean colour at "
                f"stride {stride}, mean drop of the class score per pixel (red: hiding it lowers the score; blue: "
                f"raises it). Grad-CAM at layer {layer}, upsampled. Saliency: |gradient|, max over channels.",
            )
        )
    return Section("".join(parts))


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
    from convlens.anatomy import effective_receptive_field
    from convlens.render.layers import erf_figure

    erf = effective_receptive_field(
        ctx.model, layer, ctx.input_shape, n=ctx.options.erf_samples, seed=ctx.options.seed
    )
    rf = erf.theoretical
    fig = erf_figure(erf.map, rf.box(*erf.unit), layer=layer, rf_size=rf.size)
    caption = (
        f"Centre unit {erf.unit} of layer {layer}, {erf.samples} random inputs: "
        f"{100 * erf.mass:.0f} % of the influence lies within {erf.radius:.1f} pixels of the centre, "
        f"while the theoretical field is {rf.size[0]}x{rf.size[1]} pixels."
    )
    return Section(img(fig, f"effective receptive field of layer {layer}", caption))
