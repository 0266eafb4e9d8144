"""What the units of one layer look for: first-layer filters, activation maximisation and the
data-set patches that excite each channel most."""

from __future__ import annotations

from collections.abc import Collection, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from convlens.errors import ConvlensError
from convlens.subjects import Subject
from convlens.views import defaults
from convlens.views.common import ImageIndex, Report, evenly, images_of, no_report

PARTS = ("filters", "actmax", "patches")
ACTMAX_CHUNK = 16  # channels optimised per batch (one progress step each)


@dataclass(frozen=True)
class Patch:
    """One top-activating image of a channel.

    Attributes:
        image_index: the image's index in the subject's images.
        value: the channel's maximum activation over the image's positions.
        label: the image's label (-1 when unlabelled), label_name: its class name (None unlabelled).
        position: ``(row, col)`` of the arg-max unit in the layer's map.
        box: ``(top, left, bottom, right)`` of that unit's receptive field clipped to the image
            (bottom/right exclusive).
    """

    image_index: int
    value: float
    label: int
    label_name: str | None
    position: tuple[int, int]
    box: tuple[int, int, int, int]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "image_index": self.image_index,
            "value": self.value,
            "label": self.label,
            "label_name": self.label_name,
            "position": list(self.position),
            "box": list(self.box),
        }


@dataclass(frozen=True)
class LayerView:
    """One layer's grid, and what it chose.

    Attributes:
        layer: the layer (resolved default: :func:`defaults.default_layer`).
        channels: the channels shown.
        first_layer: whether it is the first convolution (then `filters` holds its weights).
        filters: float32 ``(K, C_in, kh, kw)`` the channels' weights (first layer only), else None.
        actmax: float32 ``(K, C, S, S)`` pixels in [0, 1] synthesised per channel, else None.
        actmax_values: ``(K,)`` the objective's value on each synthesised image.
        objective: what the images maximise: "channel" (the mean of the channel's map) or "neuron"
            (its centre unit); resolved by :func:`convlens.inspect.activation_maximization` when
            not given (the centre neuron of an affine first layer, else the channel).
        steps, size: the gradient-ascent steps and image side used (None when not computed).
        patches: per channel, the top images, best first.
        crops: uint8 ``(K, n, C, h, w)`` the receptive-field crops of `patches` (padded with grey
            where the field reaches past the image), else None.
        boxes: int64 ``(K, n, 4)`` the receptive-field boxes NOT clipped (may reach into padding).
        images: uint8 ``(K, n, C, H, W)`` the whole top images, else None.
        source: where the patches came from: "index" (all images) or "images" (`limit` of them).
        limit: how many images were searched.
        rf_size, map_size: one unit's receptive field and the layer's map, ``(h, w)``.
    """

    layer: str
    channels: tuple[int, ...]
    first_layer: bool
    filters: torch.Tensor | None = None
    actmax: torch.Tensor | None = None
    actmax_values: torch.Tensor | None = None
    steps: int | None = None
    size: int | None = None
    objective: str | None = None
    patches: tuple[tuple[Patch, ...], ...] = ()
    crops: torch.Tensor | None = None
    boxes: torch.Tensor | None = None
    images: torch.Tensor | None = None
    source: str | None = None
    limit: int | None = None
    rf_size: tuple[int, int] | None = None
    map_size: tuple[int, int] | None = None

    @property
    def values(self) -> torch.Tensor:
        """``(K, n)`` the patches' activations."""
        return torch.tensor([[p.value for p in row] for row in self.patches], dtype=torch.float32)


def layer_view(
    subject: Subject,
    layer: str | None = None,
    *,
    channels: Sequence[int] | int | None = None,
    steps: int | None = None,
    patches: int | None = None,
    limit: int | None = None,
    objective: str | None = None,
    index: ImageIndex | None = None,
    parts: Collection[str] | None = None,
    seed: int = 0,
    split: str = "test",
    batch_size: int | None = None,
    lock: AbstractContextManager[Any] | None = None,
    report: Report = no_report,
    progress: bool = False,
) -> LayerView:
    """The grid of one layer: per channel its filter, synthesised image and top data-set patches.

    Args:
        subject: the model (and its images, for the patches).
        layer: a conv layer; default :func:`defaults.default_layer`.
        channels: a list, or the first N; default :func:`defaults.channels`.
        steps: gradient-ascent steps; default :func:`defaults.actmax_steps`.
        objective: "channel" or "neuron" for the synthesised images; default the method's rule.
        patches: top images per channel; default :data:`defaults.PATCHES`.
        limit: images searched without an index, spread evenly; default :data:`defaults.IMAGES_LIMIT`
            (None in `index` mode: the index covers them all).
        index: the subject's index: the patches come from it.
        parts: which of "filters", "actmax", "patches" to compute; default all three, with filters
            for the first convolution only (asked for explicitly: of any convolution). Patches need
            images or an index.
        seed: seed of the activation maximisation.
        split: which of a run's splits holds the images (see :meth:`Subject.data`).
        batch_size: inference batch of the patch search.
        lock: held around each model computation (the web app lets a prediction run in between).
        report: progress callback ``(done, total, message)``.
        progress: show progress bars on the terminal.
    """
    from convlens import inspect
    from convlens.models import conv_layers
    from convlens.models.hooks import get_layer

    guard = lock if lock is not None else nullcontext()
    explicit = parts is not None
    parts = PARTS if parts is None else tuple(parts)
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ConvlensError(f"unknown part {sorted(unknown)[0]!r}; choose from {', '.join(PARTS)}")
    convs = list(conv_layers(subject.model))
    with guard:  # each of these runs the model once
        layer = layer or defaults.default_layer(subject)
        get_layer(subject.model, layer)  # an unknown name: an error that lists the layers
        available = _output_channels(subject, layer)
        need_macs = channels is None or (steps is None and "actmax" in parts)
        macs = _macs(subject) if need_macs else None
    if channels is None:
        chans = defaults.channels(available, macs)
    elif isinstance(channels, int):
        chans = list(range(min(channels, available)))
    else:
        chans = list(channels)
    bad = [c for c in chans if not 0 <= c < available]
    if bad:
        raise ConvlensError(
            f"layer {layer!r} has {available} channels (0-{available - 1}); no channel {bad[0]}"
        )
    first = bool(convs) and layer == convs[0]
    chunks = -(-len(chans) // ACTMAX_CHUNK) if "actmax" in parts else 0
    total = 1 + chunks
    fields: dict[str, Any] = {}

    if "patches" in parts:
        report(0, total, "top patches")
        fields.update(
            _patches(subject, layer, chans, patches or defaults.PATCHES, limit, index, split,
                     batch_size or defaults.BATCH_SIZE, guard, progress)
        )  # fmt: skip
    if "filters" in parts and (first or explicit):
        w = inspect.filters(subject.model, layer)  # (C_out, C_in, kh, kw)
        fields["filters"] = w[chans].detach().float().cpu()
    if "actmax" in parts:
        from convlens.views.synthesis import synthesis_view

        def chunk_report(done: int, chunks: int, message: str) -> None:
            if done < chunks:  # the grid reports its own end
                report(1 + done, total, message)

        # Always in chunks of ACTMAX_CHUNK: every face gets the same images for the same channels.
        syn = synthesis_view(
            subject, layer, chans, steps=defaults.actmax_steps(macs) if steps is None else steps,
            size=defaults.actmax_size(subject), objective=objective, seed=seed, colours="imagenet",
            chunk=ACTMAX_CHUNK, lock=guard, report=chunk_report, progress=progress,
        )  # fmt: skip
        fields.update(
            actmax=syn.images,
            actmax_values=syn.values.float(),
            steps=syn.steps,
            size=syn.size,
            objective=syn.objective,
        )
    report(total, total, "done")
    return LayerView(layer=layer, channels=tuple(chans), first_layer=first, **fields)


def _output_channels(subject: Subject, layer: str) -> int:
    from convlens.inspect.actmax import output_channels

    return int(output_channels(subject.model, layer, subject.image_shape))


def _macs(subject: Subject) -> int | None:
    from convlens.anatomy.summary import summary

    try:
        return int(summary(subject.model, subject.image_shape, warn=False).totals["macs"])
    except ConvlensError:  # a model the summary cannot trace (TorchScript): the full work
        return None


def _patches(
    subject: Subject,
    layer: str,
    chans: list[int],
    n: int,
    limit: int | None,
    index: ImageIndex | None,
    split: str,
    batch_size: int,
    guard: AbstractContextManager[Any],
    progress: bool,
) -> dict[str, Any]:
    """The fields of :class:`LayerView` about top patches (empty without images or index)."""
    from convlens.anatomy.receptive_field import receptive_fields
    from convlens.inspect import TopPatches, crop_patches, top_patches

    if index is not None and layer in index.layers:
        units = index.units(layer)
        # Columns where every channel has an image (-1 marks a channel with fewer than k images).
        filled = int((units.images[chans] >= 0).all(0).sum())
        k = min(n, filled)
        values = torch.from_numpy(units.values[chans, :k]).float()  # (K, n)
        indices = torch.from_numpy(units.images[chans, :k]).long()  # (K, n) into the index's images
        positions = torch.from_numpy(units.positions[chans, :k]).long()  # (K, n, 2)
        c, h, w = subject.image_shape
        rf = receptive_fields(subject.model, (c, h, w)).get(layer)
        boxes = torch.tensor(
            [
                [rf.box(i, j) if rf is not None else (0, 0, h, w) for i, j in row]
                for row in positions.tolist()
            ],
            dtype=torch.int64,
        ).reshape(len(chans), k, 4)
        rf_size = (int(rf.size[0]), int(rf.size[1])) if rf is not None else (h, w)
        uniq = torch.unique(indices)
        pool = torch.stack([torch.as_tensor(index.image(int(i))) for i in uniq.tolist()])
        local = torch.searchsorted(uniq, indices)
        with_local = TopPatches(
            layer, chans, values, local, positions, boxes, index.map_size(layer), rf_size
        )
        labels = torch.from_numpy(np.array(index.labels, dtype=np.int64))
        classes = [subject.class_name(i) for i in range(len(subject.classes))]
        return _fields(subject, with_local, indices, crop_patches(pool, with_local), pool[local],
                       labels, classes, "index", index.n)  # fmt: skip
    try:
        ds = images_of(subject, split)
    except ConvlensError:
        return {}
    limit = defaults.IMAGES_LIMIT if limit is None else limit
    pick = evenly(len(ds), limit)  # (M,) indices into the subject's images
    images = ds.images[pick]
    pre = subject.preprocess
    with guard:
        top = top_patches(
            subject.model, layer, images, chans, min(n, len(images)), mean=pre.mean, std=pre.std,
            batch_size=batch_size, progress=progress,
        )  # fmt: skip
    labelled = bool(ds.extra.get("labelled", True))
    return _fields(subject, top, pick[top.indices], crop_patches(images, top), images[top.indices],
                   ds.labels if labelled else None, list(ds.classes), "images", len(images))  # fmt: skip


def _fields(
    subject: Subject,
    top: Any,
    image_indices: torch.Tensor,
    crops: torch.Tensor,
    whole: torch.Tensor,
    labels: torch.Tensor | None,
    classes: list[str],
    source: str,
    searched: int,
) -> dict[str, Any]:
    h, w = subject.image_shape[1:]
    rows = []
    for a in range(len(top.channels)):
        row = []
        for b in range(top.values.shape[1]):
            i = int(image_indices[a, b])
            y = int(labels[i]) if labels is not None else -1
            t, left, btm, r = (int(v) for v in top.boxes[a, b])
            row.append(
                Patch(
                    image_index=i,
                    value=float(top.values[a, b]),
                    label=y,
                    label_name=classes[y] if 0 <= y < len(classes) else None,
                    position=(int(top.positions[a, b, 0]), int(top.positions[a, b, 1])),
                    box=(max(t, 0), max(left, 0), min(btm, h), min(r, w)),
                )
            )
        rows.append(tuple(row))
    return {
        "patches": tuple(rows),
        "crops": crops,
        "boxes": top.boxes,
        "images": whole,
        "source": source,
        "limit": searched,
        "rf_size": tuple(top.rf_size),
        "map_size": tuple(top.map_size),
    }
