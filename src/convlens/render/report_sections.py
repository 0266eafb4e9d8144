"""The sections of the HTML report, in page order: the network, its training, its data.

Each section is a function `(ctx) -> Section | Skipped` registered with :func:`section`, with the title
and the one or two sentences that lead it on the page. Sections only encode: numbers come from
:mod:`convlens.views` (the same views the CLI and the web app show), pictures from matplotlib
:class:`~matplotlib.figure.Figure` objects (no pyplot state). Anything a section needs and cannot get raises
:class:`~convlens.render.report_base.Unavailable` (shown as "Not shown: <reason>"), so one missing
piece never stops the report. Sections about conv layers ask for their layer first, so a network
without one says that rather than anything else.

The sections about what the network answers (confusion matrix, predictions) are in
:mod:`convlens.render.report_answers`, those about what units look for and where the network looks
(top patches, activation maximisation, attributions, receptive field) in
:mod:`convlens.render.report_units`; :data:`SECTIONS` lists them all, in page order.
"""

from __future__ import annotations

import functools

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from convlens.render import report_answers, report_base, report_units
from convlens.render.report_base import (
    Section,
    SectionSpec,
    Skipped,
    Unavailable,
    fmt_int,
    img,
    para,
    table,
)
from convlens.render.report_context import ReportContext

SECTIONS: list[SectionSpec] = []
section = functools.partial(report_base.section, SECTIONS)


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
    s = ctx.summary()
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
    if ctx.subject.run is None:
        return Skipped(
            f"{ctx.subject.name} comes without training history: only a run directory written by "
            "`convlens train` has loss and accuracy per epoch."
        )
    if not h:
        return Skipped(
            "the run has no metrics.jsonl (no epoch finished), so there are no curves to draw."
        )
    epochs = [
        int(r["epoch"]) + 1 if "epoch" in r else i for i, r in enumerate(h, 1)
    ]  # 0-based in the file
    fig = Figure(figsize=(11, 3.1))
    axes = fig.subplots(1, 3)
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


SECTIONS.extend(report_answers.SECTIONS)  # then what it answers: confusion, predictions


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
    from convlens.render.layers import filters_figure
    from convlens.views import layer_view

    conv = ctx.conv_layers()[layer]
    v = layer_view(ctx.subject, layer, channels=min(64, conv.out_channels), parts=("filters",))
    assert v.filters is not None  # the first convolution has filters
    fig = filters_figure(v.filters, layer=layer, max_filters=64, max_inputs=8)
    _, c_in, kh, kw = v.filters.shape
    return Section(
        img(
            fig,
            f"filters of layer {layer}",
            f"Layer {layer}: {conv.out_channels} filters of {c_in}x{kh}x{kw} weights.",
        ),
        views={"layer": v},
    )


# --------------------------------------------------------------------------------------------------
# 5. Activations
# --------------------------------------------------------------------------------------------------


@section(
    "activations",
    "Activations for a few images",
    "What each stage of the network computes for one image: every small square is one channel's feature "
    "map (bright = strong response), one grid per layer, from the input down. Early layers still look like the "
    "image (edges, strokes); deeper layers are coarser, and more of their channels stay dark.",
)
def activations_section(ctx: ReportContext) -> Section | Skipped:
    ctx.conv_layers()
    from convlens.render.layers import activations_figure
    from convlens.views import activations_view

    ds = ctx.images()
    figures = []
    for i in range(min(ctx.options.activation_images, len(ds))):
        view = activations_view(ctx.subject, ds.images[i], max_layers=6)
        acts = view.maps(spatial_only=True)  # {layer: (C, H, W)} maps, not vectors
        if not acts:
            raise Unavailable("no layer of the model produces a spatial feature map.")
        label = ctx.image_title(ds, i)
        fig = activations_figure(
            ds.images[i],
            acts,
            title=f"(image {i}, {label})",
            max_channels=ctx.options.max_channels,
        )
        figures.append(
            img(
                fig,
                f"activations of image {i}",
                f"Image {i}, {label}: the first "
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
    "For each image on the left, the images closest to it in the network's penultimate feature space "
    "(middle) and closest in raw pixels (right), among a run's training images or the other given "
    "images. Feature-space neighbours share the class even when they look different; pixel-space "
    "neighbours merely overlap in brightness and position.",
)
def neighbors_section(ctx: ReportContext) -> Section | Skipped:
    from convlens.render.layers import neighbors_figure
    from convlens.views import neighbours_view
    from convlens.views.common import head_indices

    o = ctx.options
    ds = ctx.images()
    if ctx.is_run:
        pool_ds = ctx.pool()
        pool = head_indices(pool_ds, o.neighbor_pool)  # from every class (Dataset.head)
        q, qy = ds.head(o.neighbor_queries)
        split, where = "train", "training images"
    else:  # the first images ask, the others answer
        if len(ds) <= o.neighbor_queries + 1:
            raise Unavailable(f"only {len(ds)} images: neighbours need a few more to search.")
        pool_ds = ds
        q, qy = ds.images[: o.neighbor_queries], ds.labels[: o.neighbor_queries]
        stop = min(len(ds), o.neighbor_queries + o.neighbor_pool)
        pool = torch.arange(o.neighbor_queries, stop)
        split, where = "test", "other images"
    nb = neighbours_view(
        ctx.subject, q, k=min(o.neighbors_k, len(pool)), metric="cosine", split=split, pool=pool,
        batch_size=o.batch_size,
    )  # fmt: skip
    labelled = bool(ds.extra.get("labelled", True))
    names = ds.classes
    feature, pixel = nb.indices("feature"), nb.indices("pixel")  # (Q, k) into the pool's split
    pool_labels = pool_ds.labels

    def titles(indices: torch.Tensor) -> list[list[str]]:
        if not labelled:
            return [["" for _ in row] for row in indices.tolist()]
        return [
            [
                names[int(pool_labels[j])] + ("" if int(pool_labels[j]) == int(qy[r]) else " (x)")
                for j in row
            ]
            for r, row in enumerate(indices.tolist())
        ]

    fig = neighbors_figure(
        q,
        pool_ds.images[feature],
        pool_ds.images[pixel],
        query_titles=[names[int(y)] if labelled else f"image {i}" for i, y in enumerate(qy)],
        feature_titles=titles(feature),
        pixel_titles=titles(pixel),
        metric=nb.metric,
    )
    same_f = int((pool_labels[feature] == qy[:, None]).sum())
    same_p = int((pool_labels[pixel] == qy[:, None]).sum())
    total = int(feature.numel())
    caption = f"Searched over {fmt_int(nb.pool_size)} {where}."
    if labelled:
        caption += (
            f" (x) marks a neighbour of another class. Same class as the query: {same_f} of "
            f"{total} in feature space, {same_p} of {total} in pixel space."
        )
    return Section(
        img(fig, "nearest neighbours in feature and pixel space", caption), views={"neighbours": nb}
    )


# --------------------------------------------------------------------------------------------------
# 7. t-SNE
# --------------------------------------------------------------------------------------------------


@section(
    "tsne",
    "t-SNE map of the features",
    "Each image's penultimate feature vector, placed in 2-D by t-SNE so that images the network "
    "finds similar land close together. Well separated islands of one colour mean the classes are easy "
    "to tell apart from these features; the image grid shows which images sit where on the map.",
)
def tsne_section(ctx: ReportContext) -> Section | Skipped:
    from convlens.render.layers import tsne_image_grid, tsne_scatter
    from convlens.views import embedding_view

    ds = ctx.images()
    n = min(ctx.options.tsne_images, len(ds))
    if n < 10:
        raise Unavailable(f"there are only {n} images; t-SNE needs at least 10.")
    # One thread: openTSNE's threads gain little at this size and lose badly on a busy machine.
    emb = embedding_view(ctx.subject, limit=n, seed=ctx.options.seed, n_jobs=1, index=ctx.index)
    images, labels = ds.images[emb.indices], ds.labels[emb.indices]  # spread over the images
    scatter = tsne_scatter(
        emb.coords,
        labels,
        ds.classes or [str(i) for i in range(int(ds.labels.max()) + 1)],
        title=f"t-SNE of {fmt_int(n)} images' features",
        point_size=5.0,
    )
    tsne_run = (
        f"(perplexity {emb.perplexity:g}, KL divergence {emb.kl_divergence:.2f})"
        if emb.perplexity is not None and emb.kl_divergence is not None
        else "(the map kept in the index)"
    )
    cells = 24
    grid = tsne_image_grid(emb.grid(cells, cells), images)
    return Section(
        '<div class="row">'
        + img(
            scatter,
            "t-SNE scatter of the images' features, coloured by class",
            f"{fmt_int(n)} images coloured by {'true class' if ds.extra.get('labelled', True) else 'nothing (unlabelled)'} {tsne_run}.",
        )
        + img(
            grid,
            "t-SNE image grid",
            f"The same map as a {cells}x{cells} grid: each cell shows the image nearest its centre; blank where the map is empty.",
        )
        + "</div>",
        views={"embedding": emb},
    )


SECTIONS.extend(report_units.SECTIONS)  # then what units look for and where the network looks
