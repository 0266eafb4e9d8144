"""`convlens visualize` runners for what the layers look for.

filters, activations, neighbors, tsne, top-patches and erf: each asks `convlens.inspect` (or
`convlens.anatomy`) for the numbers, `convlens.render.layers` for the figure, and writes PNGs into
`--out` (plus `.npy`/`.json` with `--save-data`). No computation happens here.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.cli.visualize import VisualizeRequest, console, method
from convlens.errors import ConvlensError
from convlens.fileio import atomic_open, atomic_write_json
from convlens.render.common import save_figure


def _slug(name: str) -> str:
    """A layer name as a file-name part (`features.0` stays, `a/b` -> `a_b`)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "layer"


def _save_npy(path: Path, array: np.ndarray | torch.Tensor) -> Path:
    a = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    with atomic_open(path, "wb") as f:
        np.save(f, a)
    return path


def _save_json(path: Path, obj: Any) -> Path:
    atomic_write_json(path, obj)
    return path


def _layers_option(req: VisualizeRequest) -> list[str] | None:
    """`--layer a,b` -> ["a", "b"]; None when not given."""
    if not req.layer:
        return None
    return [p.strip() for p in req.layer.split(",") if p.strip()]


def _single_layer(req: VisualizeRequest) -> str | None:
    names = _layers_option(req)
    if names and len(names) > 1:
        raise ConvlensError(f"{req.method} takes one --layer, got {len(names)}: {', '.join(names)}")
    return names[0] if names else None


def _dataset(req: VisualizeRequest, split: str) -> Any:
    return req.dataset(split)


def _positive(value: int | None, default: int, option: str) -> int:
    if value is None:
        return default
    if value < 1:
        raise ConvlensError(f"{option} must be at least 1, got {value}")
    return value


@method("filters", help="First conv layer's filters (or --layer) as an image grid.")
def run_filters(req: VisualizeRequest) -> list[Path]:
    from convlens.inspect.filters import filters, first_conv
    from convlens.render.layers import filters_figure

    model = req.subject.model
    layer = _single_layer(req) or first_conv(model)
    w = filters(model, layer)  # (C_out, C_in, kH, kW)
    count = _positive(req.count, 64, "--count")
    paths = [
        save_figure(
            filters_figure(w, layer=layer, max_filters=count),
            req.out / f"filters_{_slug(layer)}.png",
        )
    ]
    if req.save_data:
        paths.append(_save_npy(req.out / f"filters_{_slug(layer)}.npy", w))
    return paths


@method(
    "activations", help="Every channel of each conv/pool stage (or --layer a,b) for each image."
)
def run_activations(req: VisualizeRequest) -> list[Path]:
    from convlens.inspect.activations import activations
    from convlens.render.layers import activations_figure

    run = req.subject
    images, titles = req.query_images(n_default=1)  # uint8 (N, C, H, W)
    x = run.normalize(images)
    max_channels = _positive(req.count, 32, "--count")
    paths = []
    batch = activations(run.model, x, _layers_option(req))  # {layer: (N, C, H, W)}
    for i, (img, title) in enumerate(zip(images, titles, strict=True)):
        acts = {name: a[i] for name, a in batch.items()}  # {layer: (C, H, W)}
        fig = activations_figure(img, acts, title=title, max_channels=max_channels)
        paths.append(save_figure(fig, req.out / f"activations_{i}.png"))
        if req.save_data:
            for name, a in acts.items():
                paths.append(_save_npy(req.out / f"activations_{i}_{_slug(name)}.npy", a))
    return paths


@method("neighbors", help="k nearest training images in feature space beside pixel space.")
def run_neighbors(req: VisualizeRequest) -> list[Path]:
    from convlens.inspect.neighbors import METRICS, neighbors
    from convlens.render.layers import neighbors_figure

    metric = req.metric or "cosine"
    if metric not in METRICS:
        raise ConvlensError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}")
    k = _positive(req.k, 5, "--k")
    queries, qtitles = req.query_images(n_default=_positive(req.count, 4, "--count"))
    train = _dataset(req, "train")
    run = req.subject
    nb = neighbors(
        run.model, queries, train.images, k, metric=metric, mean=run.preprocess.mean, std=run.preprocess.std,
        progress=True,
    )  # fmt: skip
    cls = train.classes

    def caption(idx: torch.Tensor, dist: torch.Tensor) -> list[list[str]]:
        return [
            [
                f"{cls[int(train.labels[i])]} {d:.3g}"  # 0.0042, not 0.00
                for i, d in zip(row_i.tolist(), row_d.tolist(), strict=True)
            ]
            for row_i, row_d in zip(idx, dist, strict=True)
        ]

    fig = neighbors_figure(
        queries, train.images[nb.feature_indices], train.images[nb.pixel_indices],
        query_titles=qtitles, feature_titles=caption(nb.feature_indices, nb.feature_distances),
        pixel_titles=caption(nb.pixel_indices, nb.pixel_distances), metric=metric,
    )  # fmt: skip
    paths = [save_figure(fig, req.out / "neighbors.png")]
    if req.save_data:
        paths.append(
            _save_json(
                req.out / "neighbors.json",
                {
                    "metric": metric,
                    "queries": qtitles,
                    "feature_indices": nb.feature_indices.tolist(),
                    "feature_distances": nb.feature_distances.tolist(),
                    "pixel_indices": nb.pixel_indices.tolist(),
                    "pixel_distances": nb.pixel_distances.tolist(),
                    "split": "train",
                },
            )
        )
    return paths


@method("tsne", help="t-SNE map of penultimate features (--count images), scatter and image grid.")
def run_tsne(req: VisualizeRequest) -> list[Path]:
    from convlens.inspect.features import extract_features
    from convlens.inspect.tsne import tsne, tsne_grid
    from convlens.render.layers import tsne_image_grid, tsne_scatter

    run = req.subject
    count = _positive(req.count, 2000, "--count")
    # The test split unless more points are asked for than it has; then the (larger) training split.
    data = _dataset(req, "test")
    if count > len(data):
        data = _dataset(req, "train")
    split = data.split
    gen = torch.Generator().manual_seed(req.seed)
    pick = torch.randperm(len(data), generator=gen)[: min(count, len(data))].sort().values
    images, labels = data.images[pick], data.labels[pick]
    layer = _single_layer(req)
    feats = extract_features(
        run.model,
        images,
        mean=run.preprocess.mean,
        std=run.preprocess.std,
        layer=layer,
        progress=True,
    )  # (N, D)
    with console.status(f"t-SNE of {len(feats)} x {feats.shape[1]} features"):
        emb = tsne(feats, seed=req.seed)
    where = f"{layer or 'penultimate'} features, {len(feats)} {data.name} {split} images"
    side = int(np.clip(round(np.sqrt(len(feats)) / 1.5), 6, 40))
    grid = tsne_grid(emb.coords, side, side)
    paths = [
        save_figure(
            tsne_scatter(
                emb.coords,
                labels,
                data.classes,
                title=f"t-SNE of {where} (KL {emb.kl_divergence:.2f})",
            ),
            req.out / "tsne.png",
        ),
        save_figure(
            tsne_image_grid(grid, images, title=f"t-SNE of {where}"), req.out / "tsne_grid.png"
        ),
    ]
    if req.save_data:
        paths.append(_save_npy(req.out / "tsne.npy", emb.coords))
        paths.append(
            _save_json(
                req.out / "tsne.json",
                {
                    "split": split,
                    "indices": pick.tolist(),
                    "labels": labels.tolist(),
                    "classes": data.classes,
                    "layer": layer or "penultimate",
                    "kl_divergence": emb.kl_divergence,
                    "perplexity": emb.perplexity,
                    "coords": "tsne.npy",
                },
            )
        )
    projector = _projector(req.out / "projector", feats, labels, data.classes, images)
    if projector is not None:
        paths.append(projector)
    return paths


def _projector(
    path: Path, feats: torch.Tensor, labels: torch.Tensor, classes: list[str], images: torch.Tensor
) -> Path | None:
    """TensorBoard projector files for the features, when tensorboard is installed; else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    writer = SummaryWriter(log_dir=str(path))
    try:
        writer.add_embedding(
            feats,
            metadata=[classes[int(y)] for y in labels],
            label_img=images.float() / 255.0,
            tag="features",
        )
    finally:
        writer.close()
    console.print(f"TensorBoard projector files in {path} (tensorboard --logdir {path})")
    return path


@method(
    "top-patches", help="For each channel, the training images and patches that excite it most."
)
def run_top_patches(req: VisualizeRequest) -> list[Path]:
    from convlens import models
    from convlens.inspect.top_patches import crop_patches, top_patches
    from convlens.render.layers import top_images_figure, top_patches_figure

    run = req.subject
    layer = _single_layer(req) or models.default_layer(run.model, run.image_shape)
    channels: int | list[int] = (
        req.parsed_channels([]) if req.channels else _positive(req.count, 8, "--count")
    )
    n = _positive(req.k, 8, "--k")
    data = _dataset(req, "train")
    top = top_patches(
        run.model,
        layer,
        data.images,
        channels,
        n,
        mean=run.preprocess.mean,
        std=run.preprocess.std,
        progress=True,
    )
    crops = crop_patches(data.images, top)  # (K, n, C, h, w)
    slug = _slug(layer)
    paths = [
        save_figure(
            top_patches_figure(crops, top.values, top.channels, layer=layer, rf_size=top.rf_size),
            req.out / f"top_patches_{slug}.png",
        ),
        save_figure(
            top_images_figure(
                data.images[top.indices], top.boxes, top.values, top.channels, layer=layer
            ),
            req.out / f"top_images_{slug}.png",
        ),
    ]
    if req.save_data:
        paths.append(
            _save_json(
                req.out / f"top_patches_{slug}.json",
                {
                    "layer": layer,
                    "split": "train",
                    "channels": top.channels,
                    "values": top.values.tolist(),
                    "indices": top.indices.tolist(),
                    "positions": top.positions.tolist(),
                    "boxes": top.boxes.tolist(),
                    "map_size": list(top.map_size),
                    "rf_size": list(top.rf_size),
                },
            )
        )
    return paths


@method(
    "erf", help="Effective receptive field of a layer's centre unit beside the theoretical one."
)
def run_erf(req: VisualizeRequest) -> list[Path]:
    from convlens import models
    from convlens.anatomy import effective_receptive_field
    from convlens.render.layers import erf_figure

    run = req.subject
    layer = _single_layer(req) or models.default_layer(run.model, run.image_shape)
    n = _positive(req.count, 32, "--count")
    with console.status(f"effective receptive field of {layer} ({n} random inputs)"):
        erf = effective_receptive_field(run.model, layer, run.image_shape, n=n, seed=req.seed)
    rf = erf.theoretical
    box = rf.box(*erf.unit)
    fig = erf_figure(
        erf.map,
        box,
        layer=layer,
        rf_size=rf.size,
        center=erf.center,
        radius=erf.radius,
        mass=erf.mass,
    )
    slug = _slug(layer)
    paths = [save_figure(fig, req.out / f"erf_{slug}.png")]
    if req.save_data:
        paths.append(_save_npy(req.out / f"erf_{slug}.npy", erf.map))
        paths.append(
            _save_json(
                req.out / f"erf_{slug}.json",
                {
                    "layer": layer,
                    "unit": list(erf.unit),
                    "center": list(erf.center),
                    "radius": erf.radius,
                    "mass": erf.mass,
                    "samples": erf.samples,
                    "theoretical": rf.to_dict(),
                    "theoretical_box": list(box),
                    "map": f"erf_{slug}.npy",
                },
            )
        )
    return paths
