"""The sections of the HTML report, in page order.

Each section is a function `(ctx) -> Section | Skipped` registered with :func:`section`, with the title
and the one or two sentences that lead it on the page. Sections only orchestrate: numbers come from
`convlens.anatomy` and `convlens.inspect`, pictures from matplotlib via `convlens.render`. Anything a
section needs and cannot get raises :class:`~convlens.render.report.Unavailable` (shown as "Not shown:
<reason>"), so one missing piece never stops the report.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from convlens.render.common import image_grid, overlay_heatmap, to_hwc
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


def need(module: str, name: str) -> Any:
    """`module.name`, or :class:`Unavailable` saying this installation lacks it."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise Unavailable(f"this version of convlens has no {module}.{name}.") from None


def _titles(ctx: ReportContext, labels: torch.Tensor) -> list[str]:
    return [ctx.class_name(int(y)) for y in labels]


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
    summary = need("convlens.anatomy", "summary")
    s = summary(ctx.model, ctx.input_shape)
    rows = list(s.rows)
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

    def rf_text(rf: Any, attr: str) -> str:
        if rf is None:
            return ""
        v = rf.get(attr) if isinstance(rf, dict) else getattr(rf, attr, None)
        if v is None:
            return ""
        v = tuple(v) if isinstance(v, list | tuple) else (v, v)
        return f"{v[0]}" if v[0] == v[1] else f"{v[0]}x{v[1]}"

    body_rows = [
        [
            r.name,
            r.type,
            "x".join(str(d) for d in r.output_shape),
            fmt_int(r.neurons),
            fmt_int(r.params),
            fmt_int(r.params_unshared),
            fmt_int(r.macs),
            rf_text(r.rf, "size"),
            rf_text(r.rf, "jump"),
        ]
        for r in rows[:MAX_SUMMARY_ROWS]
    ]
    totals = s.totals if isinstance(s.totals, dict) else vars(s.totals)
    params = totals.get("params", sum(r.params for r in rows))
    unshared = totals.get("params_unshared", sum(r.params_unshared for r in rows))
    total_row = [
        "total",
        "",
        "",
        fmt_int(totals.get("neurons", sum(r.neurons for r in rows))),
        fmt_int(params),
        fmt_int(unshared),
        fmt_int(totals.get("macs", sum(r.macs for r in rows))),
        "",
        "",
    ]
    parts = [table(headers, body_rows, numeric=numeric, total=total_row)]
    if len(rows) > MAX_SUMMARY_ROWS:
        parts.append(
            para(
                f"... and {len(rows) - MAX_SUMMARY_ROWS} more layers (`convlens summary` lists them all).",
                "note",
            )
        )
    if params and unshared and unshared > params:
        parts.append(
            para(
                f"Weight sharing: {fmt_int(params)} parameters instead of {fmt_int(unshared)} if every "
                f"unit had its own weights, {unshared / params:,.0f} times fewer. A filter is useful at "
                "every position, so the network learns it once and slides it over the image."
            )
        )
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
    epochs = [int(r.get("epoch", i)) for i, r in enumerate(h, 1)]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.1))
    marker = "o" if len(h) < 30 else None
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy (%)")):
        for split, style in (("train", "-"), ("test", "--")):
            ys = [r.get(f"{split}_{key}") for r in h]
            if all(y is None for y in ys):
                continue
            vals = [np.nan if y is None else float(y) * (100 if key == "acc" else 1) for y in ys]
            ax.plot(epochs, vals, style, marker=marker, ms=3, label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    lrs = [r.get("lr") for r in h]
    if any(v is not None for v in lrs):
        axes[2].plot(epochs, [np.nan if v is None else float(v) for v in lrs], marker=marker, ms=3)
        axes[2].set_xlabel("epoch")
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
    confusion_matrix = need("convlens.train", "confusion_matrix")
    y = ds.labels.numpy()
    cm = confusion_matrix(ds.labels, pred, k).numpy()  # (K, K): rows true, columns predicted
    names = [ctx.class_name(i) for i in range(k)]
    size = min(9.0, 2.0 + 0.5 * k)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
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
    w = need("convlens.inspect", "filters")(ctx.model, layer)  # (C_out, C_in, kH, kW)
    c_out, c_in, kh, kw = w.shape
    w = w[:64]
    m = float(w.abs().max()) or 1.0
    if c_in == 3:
        tiles = [(f / (2 * m) + 0.5).clamp(0, 1) for f in w]  # (3, kH, kW), 0.5 = zero weight
        fig = image_grid(tiles, ncols=min(len(tiles), 16), cell_inches=0.6)
        caption = "Colour filters: grey is zero; a colour is the direction in RGB that excites the filter."
    else:
        ch = min(c_in, 8)
        ncols = min(len(w), 16) if ch == 1 else ch
        nrows = -(-len(w) // ncols) if ch == 1 else len(w[:16])
        fig, axes = plt.subplots(
            nrows, ncols, figsize=(ncols * 0.6, nrows * 0.6 + 0.3), squeeze=False
        )
        for ax in axes.flat:
            ax.set_axis_off()
        for i, f in enumerate(w[: nrows * ncols if ch == 1 else 16]):
            for j in range(ch):
                ax = axes.flat[i] if ch == 1 else axes[i, j]
                ax.imshow(f[j].numpy(), cmap="RdBu_r", vmin=-m, vmax=m, interpolation="nearest")
        fig.tight_layout()
        caption = f"{min(c_out, 64)} filters of {kh}x{kw} weights" + (
            f"; one row per filter, one column per input channel (first {ch} of {c_in})."
            if ch > 1
            else "."
        )
    return Section(
        para(f"Layer {layer}: {c_out} filters of {c_in}x{kh}x{kw} weights.")
        + img(fig, f"filters of layer {layer}", caption, dpi=90)
    )


# --------------------------------------------------------------------------------------------------
# 5. Activations
# --------------------------------------------------------------------------------------------------


@section(
    "activations",
    "Activations for a few test images",
    "What each stage of the network computes for one image: every small square is one channel's feature "
    "map (bright = strong response), one row per layer, from the input up. Early layers still look like the "
    "image (edges, strokes); deeper layers are coarser, and more of their channels stay dark.",
)
def activations_section(ctx: ReportContext) -> Section | Skipped:
    activations = need("convlens.inspect", "activations")
    ctx.conv_layers()
    ds = ctx.dataset("test")
    parts = []
    for i in range(min(ctx.options.activation_images, len(ds))):
        acts = activations(ctx.model, ctx.normalize(ds.images[i : i + 1])[0], max_layers=6)
        acts = {
            k: v for k, v in acts.items() if v.shape[-1] > 1 or v.shape[-2] > 1
        }  # maps, not vectors
        if not acts:
            raise Unavailable("no layer of the model produces a spatial feature map.")
        ncols = ctx.options.max_channels
        fig, axes = plt.subplots(
            len(acts),
            ncols + 1,
            figsize=((ncols + 1) * 0.62, len(acts) * 0.75 + 0.2),
            squeeze=False,
        )
        for ax in axes.flat:
            ax.set_axis_off()
        for r, (name, a) in enumerate(acts.items()):
            a = a[:ncols]  # (C, H, W)
            axes[r, 0].text(
                0.98,
                0.5,
                f"{name}\n{'x'.join(str(d) for d in tuple(a.shape) if d)}",
                ha="right",
                va="center",
                fontsize=6,
                transform=axes[r, 0].transAxes,
            )
            for c in range(a.shape[0]):
                axes[r, c + 1].imshow(a[c].numpy(), cmap="viridis", interpolation="nearest")
        fig.tight_layout(pad=0.2)
        label = ctx.class_name(int(ds.labels[i]))
        thumb = image_grid([ds.images[i]], titles=[label], cell_inches=1.1)
        parts.append(
            '<div class="row">'
            + img(thumb, f"test image {i} ({label})", f"Test image {i}, a {label}.")
            + img(
                fig,
                f"activations of test image {i}",
                f"First {ncols} channels of each stage (shown: the layer's output shape, channels x height x width).",
                dpi=110,
            )
            + "</div>"
        )
    return Section("".join(parts))


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
    neighbors = need("convlens.inspect", "neighbors")
    test, train = ctx.dataset("test"), ctx.dataset("train")
    o = ctx.options
    pool = train.images[: o.neighbor_pool]
    q = test.images[: o.neighbor_queries]
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
    k = o.neighbors_k
    tiles, titles = [], []
    feat_hits = pix_hits = 0
    for i in range(len(q)):
        y = int(test.labels[i])
        tiles.append(q[i])
        titles.append(f"query: {ctx.class_name(y)}")
        for idx_row, tag in ((nb.feature_indices[i], "F"), (nb.pixel_indices[i], "P")):
            for j in idx_row.tolist():
                tiles.append(pool[j])
                same = int(train.labels[j]) == y
                titles.append(
                    f"{tag}: {ctx.class_name(int(train.labels[j]))}{'' if same else ' ✗'}"
                )
                if tag == "F":
                    feat_hits += same
                else:
                    pix_hits += same
    fig = image_grid(tiles, ncols=2 * k + 1, titles=titles, cell_inches=0.95)
    total = len(q) * k
    caption = (
        f"Columns 2-{k + 1} (F): nearest in feature space (cosine); columns {k + 2}-{2 * k + 1} (P): nearest in "
        f"pixels (L2), searched over {fmt_int(len(pool))} training images; ✗ marks another class. "
        f"Same class as the query: {feat_hits}/{total} in feature space, {pix_hits}/{total} in pixel space."
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
    extract_features = need("convlens.inspect", "extract_features")
    tsne = need("convlens.inspect", "tsne")
    tsne_grid = need("convlens.inspect", "tsne_grid")
    ds = ctx.dataset("test")
    n = min(ctx.options.tsne_images, len(ds))
    if n < 10:
        raise Unavailable(f"the test split has only {n} images; t-SNE needs more.")
    d = ctx.raw["data"]
    feats = extract_features(
        ctx.model,
        ds.images[:n],
        mean=tuple(d["mean"]),
        std=tuple(d["std"]),
        batch_size=ctx.options.batch_size,
    )  # (n, D) penultimate features
    # One thread: openTSNE's threads gain little at this size and lose badly on a busy machine.
    emb = tsne(feats, seed=ctx.options.seed, n_jobs=1)
    xy = np.asarray(emb.coords)  # (n, 2)
    labels = ds.labels[:n].numpy()
    fig, ax = plt.subplots(figsize=(6.2, 5.4))
    cmap = plt.get_cmap("tab10" if len(ctx.classes) <= 10 else "tab20")
    for c in np.unique(labels):
        sel = labels == c
        ax.scatter(
            xy[sel, 0], xy[sel, 1], s=4, color=cmap(int(c) % cmap.N), label=ctx.class_name(int(c))
        )
    ax.set_xticks([])
    ax.set_yticks([])
    if len(ctx.classes) <= 20:
        ax.legend(
            markerscale=3, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False
        )
    fig.tight_layout()
    cells = 24
    grid = tsne_grid(xy, cells, cells)  # (cells, cells) image indices, -1 = empty
    c, h, w = ds.images.shape[1:]
    mosaic = np.ones(
        (cells * h, cells * w, 3), dtype=np.float32
    )  # white where the map has no point
    for (r, q), j in np.ndenumerate(grid):
        if j >= 0:
            a = to_hwc(ds.images[int(j)])
            mosaic[r * h : (r + 1) * h, q * w : (q + 1) * w] = a[..., None] if a.ndim == 2 else a
    gfig, gax = plt.subplots(figsize=(5.4, 5.4))
    gax.imshow(mosaic, interpolation="nearest")
    gax.set_axis_off()
    gfig.tight_layout()
    return Section(
        '<div class="row">'
        + img(
            fig,
            "t-SNE scatter of test features, coloured by class",
            f"{fmt_int(n)} test images, coloured by true class (perplexity {emb.perplexity:g}, KL divergence {emb.kl_divergence:.2f}).",
        )
        + img(
            gfig,
            "t-SNE image grid",
            f"The same map as a {cells}x{cells} grid: each cell shows the image nearest its centre; white where the map is empty.",
        )
        + "</div>"
    )


# --------------------------------------------------------------------------------------------------
# 8. Top-activating patches
# --------------------------------------------------------------------------------------------------


@section(
    "top-patches",
    "Top-activating patches",
    "For a few channels of the last convolution, the test images that excite that channel most, cropped to "
    "the receptive field of the most excited unit: the part of the image the unit can see. One row per "
    "channel; what the crops in a row share is what that channel detects.",
)
def top_patches_section(ctx: ReportContext) -> Section | Skipped:
    top_patches = need("convlens.inspect", "top_patches")
    crop_patches = need("convlens.inspect", "crop_patches")
    layer = ctx.last_conv()
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
    tiles = [crops[a, b] for a in range(crops.shape[0]) for b in range(crops.shape[1])]
    titles = [
        f"ch {top.channels[a]}: {float(top.values[a, b]):.1f}"
        for a in range(crops.shape[0])
        for b in range(crops.shape[1])
    ]
    fig = image_grid(tiles, ncols=crops.shape[1], titles=titles, cell_inches=0.85)
    rh, rw = top.rf_size
    return Section(
        img(
            fig,
            f"top-activating patches of layer {layer}",
            f"Layer {layer} ({top.map_size[0]}x{top.map_size[1]} units per channel, each seeing {rh}x{rw} pixels): "
            f"one row per channel, its {o.top_images} strongest test images, titled with the activation; "
            "grey is the part of the field outside the image (padding).",
        )
    )


# --------------------------------------------------------------------------------------------------
# 9. Activation maximisation
# --------------------------------------------------------------------------------------------------


@section(
    "actmax",
    "Activation maximisation: what a filter wants to see",
    "Images synthesised by gradient ascent, starting from noise, to excite one channel of the last "
    "convolution as much as possible. They show the pattern the channel responds to, free of any "
    "particular test image; repeated motifs mean the channel fires wherever its pattern appears.",
)
def actmax_section(ctx: ReportContext) -> Section | Skipped:
    actmax = need("convlens.inspect", "activation_maximization")
    layer = ctx.last_conv()
    o = ctx.options
    n = min(o.actmax_channels, ctx.conv_layers()[layer].out_channels)
    d = ctx.raw["data"]
    h = ctx.input_shape[1]
    res = actmax(
        ctx.model,
        layer,
        list(range(n)),
        steps=o.actmax_steps,
        size=h,
        mean=tuple(d["mean"]),
        std=tuple(d["std"]),
        seed=o.seed,
    )
    images = getattr(res, "images", res)  # (n, C, H, W) in [0, 1]
    fig = image_grid(
        list(images), ncols=min(n, 8), titles=[f"channel {i}" for i in range(n)], cell_inches=1.0
    )
    return Section(
        img(
            fig,
            f"activation maximisation for layer {layer}",
            f"Layer {layer}, channels 0-{n - 1}, {o.actmax_steps} gradient-ascent steps each, optimised as one batch.",
        )
    )


# --------------------------------------------------------------------------------------------------
# 10. Attribution
# --------------------------------------------------------------------------------------------------


@section(
    "attribution",
    "Occlusion, Grad-CAM and saliency: where the network looks",
    'Three answers to "which pixels made the network say this class?", for test images it got right and '
    "for images it got wrong. Occlusion: how much the predicted class's probability drops when a grey "
    "patch hides each place (red = important). Grad-CAM: which regions of the last convolution's maps "
    "support the class. Saliency: how strongly each pixel's gradient moves the class score.",
)
def attribution_section(ctx: ReportContext) -> Section | Skipped:
    occlusion = need("convlens.inspect", "occlusion")
    grad_cam = need("convlens.inspect", "grad_cam")
    saliency = need("convlens.inspect", "saliency")
    layer = ctx.last_conv()
    ds = ctx.dataset("test")
    probs, pred = ctx.predictions()
    right, wrong = ctx.example_indices()
    c, h, w = ctx.input_shape
    window = max(2, min(h, w) // 7)
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
        occ = occlusion(ctx.model, x, target, window=window, stride=stride)
        occ_map = np.asarray(getattr(occ, "attribution", occ))  # (n, H, W) or (n, C, H, W)
        cam = np.asarray(grad_cam(ctx.model, x, target, layer=layer))
        sal = np.asarray(saliency(ctx.model, x, target))
        fig, axes = plt.subplots(len(idx), 4, figsize=(7.2, 1.85 * len(idx)), squeeze=False)
        for r, i in enumerate(idx):
            truth, guess = ctx.class_name(int(ds.labels[i])), ctx.class_name(int(pred[i]))
            axes[r, 0].imshow(to_hwc(images[r]), cmap="gray" if c == 1 else None, vmin=0, vmax=1)
            axes[r, 0].set_axis_off()
            axes[r, 0].set_title(
                f"true {truth}\npred {guess} ({100 * float(probs[i, pred[i]]):.0f} %)", fontsize=7
            )
            for col, (name, m) in enumerate(
                (("occlusion", occ_map), ("Grad-CAM", cam), ("saliency", sal)), 1
            ):
                heat = _as_hw(m[r])
                overlay_heatmap(axes[r, col], images[r], heat, alpha=0.55)
                if r == 0:
                    axes[r, col].set_title(name, fontsize=8)
        fig.tight_layout()
        parts.append(f"<h3>{esc(title)}</h3>")
        parts.append(
            img(
                fig,
                f"{title.lower()} test images with occlusion, Grad-CAM and saliency maps",
                f"Each map explains the predicted class. Occlusion window {window}x{window}, stride {stride}; "
                f"Grad-CAM at layer {layer}.",
            )
        )
    return Section("".join(parts))


def _as_hw(m: np.ndarray) -> np.ndarray:
    """A map `(H, W)`, `(1, H, W)` or `(C, H, W)` -> `(H, W)` (channels summed)."""
    m = np.asarray(m, dtype=np.float32)
    while m.ndim > 2:
        m = m.sum(0)
    return m


# --------------------------------------------------------------------------------------------------
# 11. Effective receptive field
# --------------------------------------------------------------------------------------------------


@section(
    "erf",
    "Effective receptive field",
    "How much each input pixel influences the centre unit of the last convolution, averaged over random "
    "inputs (Luo et al. 2016), drawn inside the theoretical receptive field (the box). The influence "
    "concentrates near the centre and fades like a Gaussian: a unit effectively sees less than its "
    "theoretical field.",
)
def erf_section(ctx: ReportContext) -> Section | Skipped:
    erf_fn = need("convlens.anatomy", "effective_receptive_field")
    layer = ctx.last_conv()
    res = erf_fn(ctx.model, layer, ctx.input_shape)
    heat = _as_hw(np.asarray(getattr(res, "map", res)))
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    im = ax.imshow(heat / (heat.max() or 1.0), cmap="magma", interpolation="nearest")
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="relative gradient magnitude")
    ax.set_axis_off()
    fig.tight_layout()
    radius = getattr(res, "radius", None)
    caption = f"Layer {layer} on a {ctx.input_shape[1]}x{ctx.input_shape[2]} input."
    if radius is not None:
        caption += f" 95 % of the influence lies within {float(radius):.1f} pixels of the centre."
    return Section(img(fig, f"effective receptive field of layer {layer}", caption))
