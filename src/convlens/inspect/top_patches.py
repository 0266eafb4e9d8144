"""The data-set images and patches that most excite each channel of a layer.

"Retrieving images that maximally activate a neuron" (Girshick et al. 2014, as the notes show it): run
the data set through the network, keep for each channel the images with the highest activation (the
maximum over positions), and crop each around the arg-max unit's receptive field, the only part of the
image that unit can see.

All requested channels are ranked in one pass over the data set: a batch's `(B, K)` per-channel maxima
are merged into a running top-N `(K, N)` with one `topk`, and the forward pass stops at the layer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from convlens.anatomy.receptive_field import receptive_fields
from convlens.data.dataset import Dataset
from convlens.errors import ConvlensError
from convlens.inspect.features import batches, check_data_images, to_input
from convlens.models.hooks import evaluating, get_layer, model_device, truncated_forward
from convlens.models.interface import default_layer


@dataclass
class TopPatches:
    """The top-N images per channel and where in each the channel fired most.

    Attributes:
        layer: the layer's name.
        channels: the K channel numbers, in the order of the rows below.
        values: float32 `(K, N)`, each image's maximum activation over positions, highest first.
        indices: int64 `(K, N)`, the images' indices in the data set.
        positions: int64 `(K, N, 2)`, `(row, col)` of the arg-max unit in the layer's output map.
        boxes: int64 `(K, N, 4)`, `(top, left, bottom, right)` of that unit's receptive field in input
            pixels, bottom/right exclusive and NOT clipped (it may reach past the image, into padding).
        map_size: `(H', W')` of the layer's output.
        rf_size: `(h, w)` of the theoretical receptive field of one unit of the layer.
    """

    layer: str
    channels: list[int]
    values: torch.Tensor
    indices: torch.Tensor
    positions: torch.Tensor
    boxes: torch.Tensor
    map_size: tuple[int, int]
    rf_size: tuple[int, int]


def _channel_list(channels: int | Sequence[int], available: int, layer: str) -> list[int]:
    chans = list(range(min(channels, available))) if isinstance(channels, int) else list(channels)
    bad = [c for c in chans if not 0 <= c < available]
    if bad:
        raise ConvlensError(
            f"layer {layer!r} has {available} channels (0-{available - 1}); no channel {bad[0]}"
        )
    if not chans:
        raise ConvlensError("no channels asked for")
    return chans


def rank_channels(
    model: nn.Module,
    layer: str,
    images: torch.Tensor,
    channels: int | Sequence[int],
    n: int,
    *,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor, tuple[int, int]]:
    """One pass over `images`: the top-`n` images of each channel by maximum activation.

    Returns:
        channels (K), values `(K, n)`, image indices `(K, n)`, flat arg-max positions `(K, n)`,
        and the layer's output map size `(H', W')`.
    """
    get_layer(model, layer)
    dev = torch.device(device) if device is not None else model_device(model)
    total = int(images.shape[0])
    chans: list[int] = []
    values = indices = flat_pos = torch.empty(0)
    map_size = (1, 1)
    with evaluating(model), torch.inference_mode():
        for sl in batches(total, batch_size, description=f"top patches {layer}", progress=progress):
            a = truncated_forward(model, layer, to_input(images[sl], mean, std, dev))
            if a.dim() == 2:  # a flat layer (Linear): one "position" per channel
                a = a[:, :, None, None]
            if a.dim() != 4:
                raise ConvlensError(
                    f"layer {layer!r} outputs shape {tuple(a.shape)}, not (N, C, H, W)"
                )
            if not chans:
                chans = _channel_list(channels, a.shape[1], layer)
                sel = torch.tensor(chans, device=a.device)
                k = len(chans)
                map_size = (int(a.shape[2]), int(a.shape[3]))
                values = torch.empty(k, 0, device=a.device)
                indices = torch.empty(k, 0, dtype=torch.int64, device=a.device)
                flat_pos = torch.empty(k, 0, dtype=torch.int64, device=a.device)
            a = a.index_select(1, sel).flatten(2).float()  # (B, K, H'W')
            best, arg = a.max(dim=2)  # (B, K): each image's maximum per channel, and where
            img = torch.arange(sl.start, sl.stop, device=a.device).expand(len(chans), -1)
            values = torch.cat([values, best.T], dim=1)  # (K, <= n + B)
            indices = torch.cat([indices, img], dim=1)
            flat_pos = torch.cat([flat_pos, arg.T], dim=1)
            values, keep = values.topk(min(n, values.shape[1]), dim=1)  # sorted, highest first
            indices, flat_pos = indices.gather(1, keep), flat_pos.gather(1, keep)
    return chans, values.cpu(), indices.cpu(), flat_pos.cpu(), map_size


def top_patches(
    model: nn.Module,
    layer: str | None,
    dataset: Dataset | torch.Tensor,
    channels: int | Sequence[int] = 8,
    n: int = 9,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> TopPatches:
    """The `n` data-set images that most activate each of `channels`, with receptive-field boxes.

    Args:
        model: any module.
        layer: a name in `model.named_modules()`; None for :func:`convlens.models.default_layer`
            (the last conv layer with a map larger than 1x1).
        dataset: a :class:`~convlens.data.Dataset`, uint8 `(N, C, H, W)` images with `mean` and
            `std`, or normalised float `(N, C, H, W)` images.
        channels: the first K channels (an int) or a list of channel numbers.
        n: images per channel.
        mean: normalisation mean in [0, 1] units; default the data set's.
        std: normalisation standard deviation; default the data set's.
        batch_size: images per forward pass.
        device: where to run; default the model's device.
        progress: show a Rich progress bar.

    Returns:
        :class:`TopPatches` (tensors on the CPU). Crop the pictures with :func:`crop_patches`.
    """
    images = dataset.images if isinstance(dataset, Dataset) else dataset
    if isinstance(dataset, Dataset):
        mean = mean if mean is not None else dataset.mean
        std = std if std is not None else dataset.std
    if isinstance(images, torch.Tensor) and images.ndim == 4 and len(images) == 0:
        raise ConvlensError("the data set is empty")
    check_data_images(images, mean, std)
    if layer is None:
        c, h, w = (int(s) for s in images.shape[1:])
        layer = default_layer(model, (c, h, w))
    if n < 1:
        raise ConvlensError(f"need at least one image per channel, got {n}")
    chans, values, indices, flat_pos, (mh, mw) = rank_channels(
        model, layer, images, channels, n, mean=mean, std=std, batch_size=batch_size,
        device=device, progress=progress,
    )  # fmt: skip
    positions = torch.stack([flat_pos // mw, flat_pos % mw], dim=-1)  # (K, n, 2) as (row, col)
    c, h, w = (int(s) for s in images.shape[1:])
    rf = receptive_fields(model, (c, h, w)).get(layer)
    if rf is None:
        # A layer the receptive-field arithmetic does not reach (e.g. after flattening): it sees it all.
        boxes = torch.tensor([0, 0, h, w]).expand(*positions.shape[:2], 4).clone()
        rf_size = (h, w)
    else:
        boxes = torch.tensor(
            [[rf.box(i, j) for i, j in row] for row in positions.tolist()],
            dtype=torch.int64,
        ).reshape(*positions.shape[:2], 4)
        rf_size = (int(rf.size[0]), int(rf.size[1]))
    return TopPatches(
        layer=layer, channels=chans, values=values, indices=indices, positions=positions,
        boxes=boxes, map_size=(mh, mw), rf_size=rf_size,
    )  # fmt: skip


def crop_patches(images: torch.Tensor, top: TopPatches, *, fill: int = 128) -> torch.Tensor:
    """The receptive-field crops of a :class:`TopPatches`, padded to the full field for display.

    Each crop is the box clipped to the image; the part of the field outside the image (the network's
    zero padding) is shown as `fill`, so every crop has the same size and the unit's centre is at its
    centre.

    Args:
        images: the uint8 `(N, C, H, W)` images `top` was computed on.
        top: the result of :func:`top_patches`.
        fill: grey level for the part of a field outside the image.

    Returns:
        uint8 `(K, n, C, h, w)` with `(h, w) = top.rf_size`.
    """
    k, n = top.indices.shape
    c, h, w = (int(s) for s in images.shape[1:])
    rh, rw = top.rf_size
    out = torch.full((k, n, c, rh, rw), fill, dtype=torch.uint8)
    for a in range(k):
        for b in range(n):
            t, left, btm, r = (int(v) for v in top.boxes[a, b])
            ct, cl, cb, cr = max(t, 0), max(left, 0), min(btm, h), min(r, w)  # clipped to the image
            if cb <= ct or cr <= cl:
                continue
            img = images[int(top.indices[a, b])]
            out[a, b, :, ct - t : cb - t, cl - left : cr - left] = img[:, ct:cb, cl:cr]
    return out
