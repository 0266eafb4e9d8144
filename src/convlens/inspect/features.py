"""Streaming a data set through a model: penultimate features (or any layer's) in batches.

Every data-set-wide method of this package (nearest neighbours, t-SNE, top-activating patches) reads
the images through :func:`batches` and runs the model under :func:`evaluating` and
`torch.inference_mode()`, so that memory holds one batch of activations plus the outputs kept, whatever
the size of the data set, and a model left in training mode is neither used nor changed in that mode
(batch-norm statistics would otherwise move).
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import torch
from torch import nn

from convlens import models
from convlens.data import normalize
from convlens.errors import InputError
from convlens.models.hooks import evaluating, get_layer, model_device, truncated_forward
from convlens.progress import progress_bar
from convlens.validate import check_images

# torch's words for an input the layers cannot take ("Output size is too small", "shapes cannot be
# multiplied", "expected input ... to have 3 channels").
_SHAPE_ERROR = re.compile(r"size|shape|channels|dimension", re.IGNORECASE)


def batches(
    n: int, batch_size: int, *, description: str = "", progress: bool = False
) -> Iterator[slice]:
    """Slices `[start, stop)` covering `range(n)` in steps of `batch_size`; a Rich bar when `progress`."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    with progress_bar(n, description or "batches", enabled=progress) as advance:
        for s in range(0, n, batch_size):
            yield slice(s, min(s + batch_size, n))
            advance(min(batch_size, n - s))


def check_data_images(
    images: torch.Tensor, mean: tuple[float, ...] | None, std: tuple[float, ...] | None
) -> torch.Tensor:
    """The boundary check of the data-set-wide methods: a data set's uint8 `(N, C, H, W)` pixels
    with its `mean` and `std` (normalised per batch, on the device), or normalised float images."""
    if isinstance(images, torch.Tensor) and images.dtype == torch.uint8:
        if images.ndim != 4:
            raise InputError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")
        if mean is None or std is None:
            raise InputError(
                "uint8 images need the data set's mean and std to be normalised: pass mean=, std= "
                "(the training split's), or a convlens Dataset"
            )
        return images
    return check_images(images)


def to_input(
    images: torch.Tensor,
    mean: tuple[float, ...] | None,
    std: tuple[float, ...] | None,
    device: torch.device,
) -> torch.Tensor:
    """A batch of uint8 images -> the normalised float input on `device`; float input passes through.

    Normalisation runs on the device, after the (four times smaller) uint8 copy.
    """
    x = images.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        if mean is None or std is None:
            raise InputError("uint8 images need the data set's mean and std to be normalised")
        return normalize(x, mean, std)
    return x.float()


def extract_features(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    batch_size: int = 256,
    layer: str | None = None,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Feature vectors of `images`, computed batch by batch under `torch.inference_mode()`.

    Args:
        model: any module taking `(N, C, H, W)` normalised input.
        images: uint8 `(N, C, H, W)` pixels (normalised per batch with `mean`/`std`), or float input
            that is already normalised.
        mean: per-channel mean in [0, 1] units (the training split's); needed for uint8 images.
        std: per-channel standard deviation in [0, 1] units.
        batch_size: images per forward pass; memory is one batch of activations plus the output.
        layer: None for the penultimate features (`convlens.models.forward_features`, the input of the
            classifier); else a name from `model.named_modules()`, whose output is flattened (the
            forward stops at that layer).
        device: where to run; default the model's device.
        progress: show a Rich progress bar.

    Returns:
        float32 `(N, D)` on the CPU.
    """
    check_data_images(images, mean, std)
    if layer is not None:
        get_layer(model, layer)  # an unknown name fails before any work, listing the valid ones
    dev = torch.device(device) if device is not None else model_device(model)
    n = int(images.shape[0])
    out: torch.Tensor | None = None
    with evaluating(model), torch.inference_mode():
        for sl in batches(n, batch_size, description="features", progress=progress):
            x = to_input(images[sl], mean, std, dev)  # (B, C, H, W)
            try:
                if layer is None:
                    f = models.forward_features(model, x)  # (B, D)
                else:
                    f = truncated_forward(model, layer, x)  # (B, C', H', W') or (B, D)
            except RuntimeError as e:
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                if not _SHAPE_ERROR.search(first):
                    raise  # a fault of the model itself, not of the images' shape
                raise InputError(
                    f"the model cannot take images of shape {tuple(x.shape[1:])} (C, H, W): {first}"
                ) from None
            f = f.flatten(1).float().cpu()
            if out is None:
                # Allocated once the width is known: the kept output, nothing else, grows with N.
                out = torch.empty(n, f.shape[1], dtype=torch.float32)
            out[sl] = f
    if out is None:
        return torch.empty(0, 0)
    return out
