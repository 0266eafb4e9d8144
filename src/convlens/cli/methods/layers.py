"""`convlens visualize` runners for what the layers look for.

filters, activations, neighbors, tsne, top-patches and erf: each asks :mod:`convlens.views` for the
numbers (and the defaults it resolved), `convlens.render.layers` for the figure, and writes PNGs into
`--out` (plus `.npy`/`.json` with `--save-data`). No computation happens here.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from convlens.cli.visualize import VisualizeRequest, console, method
from convlens.errors import ConvlensError
from convlens.fileio import atomic_open, atomic_write_json
from convlens.render.common import save_figure
from convlens.views import defaults

if TYPE_CHECKING:
    from convlens.views import EmbeddingView, ImageIndex

FIGURE_LAYERS = 12  # activation grids drawn by default (the last of each resolution beyond)
# A t-SNE map read from an index may hold up to 50,000 points: its TensorBoard projector (every
# point's features and thumbnail, float32 in memory) is written up to these sizes, else skipped.
PROJECTOR_POINTS = 10_000
PROJECTOR_BYTES = 1024 * 2**20


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
    from convlens.render.layers import filters_figure
    from convlens.views import layer_view

    count = _positive(req.count, 64, "--count")
    v = layer_view(
        req.subject, _single_layer(req) or _first_conv(req), channels=count, parts=("filters",)
    )
    assert v.filters is not None
    paths = [
        save_figure(
            filters_figure(v.filters, layer=v.layer, max_filters=count),
            req.out / f"filters_{_slug(v.layer)}.png",
        )
    ]
    if req.save_data:
        paths.append(_save_npy(req.out / f"filters_{_slug(v.layer)}.npy", v.filters))
    return paths


def _first_conv(req: VisualizeRequest) -> str:
    from convlens.views import network_view

    convs = network_view(req.subject).conv_layers
    if not convs:
        raise ConvlensError(f"{req.subject.name} has no Conv2d layer; pass a layer by name")
    return convs[0]


@method(
    "activations", help="Every channel of each conv/pool stage (or --layer a,b) for each image."
)
def run_activations(req: VisualizeRequest) -> list[Path]:
    from convlens.render.layers import activations_figure
    from convlens.views import activations_view

    images, titles = req.query_images(n_default=1)  # uint8 (N, C, H, W)
    max_channels = _positive(req.count, 32, "--count")
    layers = _layers_option(req)
    paths = []
    for i, (img, title) in enumerate(zip(images, titles, strict=True)):
        view = activations_view(
            req.subject, img, layers, max_layers=None if layers else FIGURE_LAYERS
        )
        acts = {m.name: m.values for m in view.layers if m.name != "output"}  # {layer: (C, H, W)}
        fig = activations_figure(img, acts, title=title, max_channels=max_channels)
        paths.append(save_figure(fig, req.out / f"activations_{i}.png"))
        if req.save_data:
            for name, a in acts.items():
                paths.append(_save_npy(req.out / f"activations_{i}_{_slug(name)}.npy", a))
    return paths


@method(
    "neighbors",
    help="k nearest training images (the indexed ones, with an index) in feature space beside "
    "pixel space.",
)
def run_neighbors(req: VisualizeRequest) -> list[Path]:
    from convlens.inspect.neighbors import METRICS
    from convlens.render.layers import neighbors_figure
    from convlens.views import neighbours_view, pixel_search
    from convlens.views.common import head_indices

    metric = req.metric or defaults.METRIC
    if metric not in METRICS:
        raise ConvlensError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}")
    k = _positive(req.k, 5, "--k")
    count = _positive(req.count, 4, "--count")
    queries, qtitles = req.query_images(n_default=count)
    # Queries from the subject's own images and an index of them: search the indexed images
    # (features from the index, no image through the model); else a run's training split.
    index = None if req.images else req.index("test")
    searched = _dataset(req, "test") if index is not None else None
    if index is not None and searched is not None and index.n != len(searched):
        console.print(
            f"[yellow]note:[/] the index holds {index.n:,} images, the set {len(searched):,}: "
            "the features are computed from the images instead",
            highlight=False,
        )
        index = None
    query_indices: list[int] | None = None
    if index is not None and searched is not None:
        query_indices = head_indices(searched, count).tolist()  # the images `queries` holds
        pixels = pixel_search(req.subject, "test")
        rows = [
            neighbours_view(req.subject, q, k=k, metric=metric, index=index, pixels=pixels)
            for q in query_indices
        ]
        feature = tuple(r.feature[0] for r in rows)
        pixel = tuple(r.pixel[0] for r in rows)
        pool, split = searched, _own_split(req)
        where = f"among the {len(searched):,} indexed {_images_of(split)} (features from the index)"
    else:
        pool, split = _dataset(req, "train"), "train"
        nb = neighbours_view(req.subject, queries, k=k, metric=metric, split=split, progress=True)
        feature, pixel, where = nb.feature, nb.pixel, ""

    def caption(rows: Any) -> list[list[str]]:
        return [[f"{n.label_name or ''} {n.distance:.3g}" for n in row] for row in rows]

    def ids(rows: Any) -> torch.Tensor:
        return torch.tensor([[n.image_index for n in row] for row in rows], dtype=torch.int64)

    fi, pi = ids(feature), ids(pixel)
    fig = neighbors_figure(
        queries, pool.images[fi], pool.images[pi], query_titles=qtitles,
        feature_titles=caption(feature), pixel_titles=caption(pixel), metric=metric,
        subtitle=where,
    )  # fmt: skip
    paths = [save_figure(fig, req.out / "neighbors.png")]
    if req.save_data:
        data = {
            "metric": metric,
            "queries": qtitles,
            "k": k,
            "feature_indices": fi.tolist(),
            "feature_distances": [[n.distance for n in row] for row in feature],
            "pixel_indices": pi.tolist(),
            "pixel_distances": [[n.distance for n in row] for row in pixel],
            "split": split,
        }
        if query_indices is not None:  # the queries are images of the searched set
            data["query_indices"] = query_indices
        paths.append(_save_json(req.out / "neighbors.json", data))
    return paths


def _images_of(split: str) -> str:
    """ "test images" for a run's split, "images" for the user's."""
    return "images" if split == "images" else f"{split} images"


def _own_split(req: VisualizeRequest) -> str:
    """What the subject's own images (those an index covers) are called: a run's "test" split,
    or the user's "images"."""
    sub = req.subject
    return "test" if sub.images is None and sub.image_list is None else "images"


@method("tsne", help="t-SNE map of penultimate features (--count images), scatter and image grid.")
def run_tsne(req: VisualizeRequest) -> list[Path]:
    from convlens.views import embedding_view

    count = _positive(req.count, defaults.EMBEDDING_LIMIT, "--count")
    layer = _single_layer(req)
    # An index holds the penultimate features and their map: --layer needs the model.
    index = req.index("test") if layer is None else None
    if index is not None:
        return _tsne_from_index(req, index, count)
    # The test split unless more points are asked for than it has; then the (larger) training split.
    data = _dataset(req, "test")
    split = "test"
    if count > len(data):
        data, split = _dataset(req, "train"), "train"
    with console.status(f"t-SNE of {min(count, len(data))} images' features"):
        emb = embedding_view(
            req.subject, limit=count, seed=req.seed, layer=layer, split=split, progress=True
        )
    assert emb.features is not None and emb.kl_divergence is not None
    feats, pick = emb.features, emb.indices
    images, labels = data.images[pick], data.labels[pick]
    where = f"{layer or 'penultimate'} features, {len(feats)} {data.name} {data.split} images"
    paths = _write_tsne(
        req, emb, labels, data.classes, where, f"KL {emb.kl_divergence:.2f}", data.split,
        layer or "penultimate", lambda at: images[at],
    )  # fmt: skip
    projector = _projector(req.out / "projector", feats, labels, data.classes, images)
    if projector is not None:
        paths.append(projector)
    return paths


def _tsne_from_index(req: VisualizeRequest, index: ImageIndex, count: int) -> list[Path]:
    """`visualize tsne` from the subject's index: the map stored in it, its labels, and only the
    images drawn in the grid decoded (a folder of any size)."""
    from convlens.views import embedding_view

    with console.status(f"t-SNE of {min(count, index.n):,} images' features (from the index)"):
        emb = embedding_view(req.subject, limit=count, seed=req.seed, index=index, progress=True)
    pick = emb.indices  # (M,) into the indexed images
    labels, classes = emb.labels.clamp_min(0), emb.classes  # unlabelled: all "unlabelled"
    split = _own_split(req)
    where = f"penultimate features, {len(pick):,} of {index.n:,} indexed {_images_of(split)}"

    def decode(at: np.ndarray) -> torch.Tensor:  # uint8 (G, C, H, W): only the images drawn
        return torch.stack([index.image(int(pick[i])) for i in at])

    paths = _write_tsne(
        req, emb, labels, classes, where, "map stored in the index; KL not recorded", split,
        "penultimate", decode,
    )  # fmt: skip
    c, h, w = req.subject.image_shape
    if len(pick) > PROJECTOR_POINTS or len(pick) * c * h * w * 4 > PROJECTOR_BYTES:
        console.print(
            f"[yellow]note:[/] no TensorBoard projector for {len(pick):,} points at {c}x{h}x{w} "
            f"(its thumbnails would pass {PROJECTOR_POINTS:,} images or "
            f"{PROJECTOR_BYTES // 2**20:,} MiB); ask for fewer with --count",
            highlight=False,
        )
        return paths
    feats = torch.from_numpy(np.asarray(index.features()[pick.numpy()], dtype=np.float32))

    def thumbnails() -> torch.Tensor:  # decoded only when tensorboard is there to take them
        return decode(np.arange(len(pick)))

    projector = _projector(req.out / "projector", feats, labels, classes, thumbnails)
    if projector is not None:
        paths.append(projector)
    return paths


def _write_tsne(
    req: VisualizeRequest,
    emb: EmbeddingView,
    labels: torch.Tensor,
    classes: list[str],
    where: str,
    about: str,
    split: str,
    layer: str,
    images_at: Callable[[np.ndarray], torch.Tensor],
) -> list[Path]:
    """The scatter, the image grid and (with --save-data) tsne.npy / tsne.json of one map.

    `images_at(positions)`: uint8 ``(G, C, H, W)`` images of those positions in ``emb.indices``;
    asked only for the ones the grid draws.
    """
    from convlens.render.layers import tsne_image_grid, tsne_scatter

    pick = emb.indices
    side = int(np.clip(round(np.sqrt(len(pick)) / 1.5), 6, 40))
    grid = emb.grid(side, side)  # (side, side) positions in `pick`, -1 empty
    drawn = np.unique(grid[grid >= 0])
    local = np.full(len(pick), -1, dtype=np.int64)
    local[drawn] = np.arange(len(drawn))
    paths = [
        save_figure(
            tsne_scatter(emb.coords, labels, classes, title=f"t-SNE of {where} ({about})"),
            req.out / "tsne.png",
        ),
        save_figure(
            tsne_image_grid(
                np.where(grid >= 0, local[np.maximum(grid, 0)], -1),
                images_at(drawn),
                title=f"t-SNE of {where}",
            ),
            req.out / "tsne_grid.png",
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
                    "classes": classes,
                    "layer": layer,
                    "kl_divergence": emb.kl_divergence,  # None from an index: it keeps the map
                    "perplexity": emb.perplexity,
                    "coords": "tsne.npy",
                },
            )
        )
    return paths


def _projector(
    path: Path,
    feats: torch.Tensor,
    labels: torch.Tensor,
    classes: list[str],
    images: torch.Tensor | Callable[[], torch.Tensor],
) -> Path | None:
    """TensorBoard projector files for the features, when tensorboard is installed; else None.

    `images`: the uint8 ``(M, C, H, W)`` thumbnails, or a function that decodes them (called only
    when tensorboard is there to take them).
    """
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    writer = SummaryWriter(log_dir=str(path))
    try:
        writer.add_embedding(
            feats,
            metadata=[classes[int(y)] for y in labels],
            label_img=(images if isinstance(images, torch.Tensor) else images()).float() / 255.0,
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
    from convlens.render.layers import top_images_figure, top_patches_figure
    from convlens.views import layer_view

    channels: int | list[int] = (
        req.parsed_channels([]) if req.channels else _positive(req.count, 8, "--count")
    )
    index = req.index("train") if req.limit is None else None
    if index is None and req.subject.image_list is not None:
        req.dataset("test")  # a folder opened without decoding it: decoded now, with its notes
    v = layer_view(
        req.subject, _single_layer(req), channels=channels, patches=_positive(req.k, 8, "--k"),
        limit=req.limit, parts=("patches",), split="train", progress=True, index=index,
    )  # fmt: skip
    if v.crops is None or v.boxes is None or v.images is None or v.rf_size is None:
        raise ConvlensError(f"{req.subject.name} has no images to search; pass --images")
    layer, slug = v.layer, _slug(v.layer)
    paths = [
        save_figure(
            top_patches_figure(v.crops, v.values, v.channels, layer=layer, rf_size=v.rf_size),
            req.out / f"top_patches_{slug}.png",
        ),
        save_figure(
            top_images_figure(v.images, v.boxes, v.values, v.channels, layer=layer),
            req.out / f"top_images_{slug}.png",
        ),
    ]
    if req.save_data:
        paths.append(
            _save_json(
                req.out / f"top_patches_{slug}.json",
                {
                    "layer": layer,
                    "split": "images" if _own_split(req) == "images" else "train",
                    "searched": v.limit,
                    "channels": list(v.channels),
                    "values": v.values.tolist(),
                    "indices": [[p.image_index for p in row] for row in v.patches],
                    "positions": [[list(p.position) for p in row] for row in v.patches],
                    "boxes": v.boxes.tolist(),
                    "clipped_boxes": [[list(p.box) for p in row] for row in v.patches],
                    "labels": [[p.label_name for p in row] for row in v.patches],
                    "map_size": list(v.map_size) if v.map_size else None,
                    "rf_size": list(v.rf_size),
                },
            )
        )
    return paths


@method(
    "erf", help="Effective receptive field of a layer's centre unit beside the theoretical one."
)
def run_erf(req: VisualizeRequest) -> list[Path]:
    from convlens.render.layers import erf_figure
    from convlens.views import unit_fields_view

    n = _positive(req.count, defaults.ERF_SAMPLES, "--count")
    with console.status(f"effective receptive field ({n} random inputs)"):
        u = unit_fields_view(req.subject, _single_layer(req), samples=n, seed=req.seed)
    assert u.erf is not None
    erf, rf, box, layer = u.erf, u.rf, u.box, u.layer
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
