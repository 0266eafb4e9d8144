"""Checks at the public boundary: one clear message instead of a torch or NumPy internal error.

Every public function that takes images calls :func:`check_images` first; the message says what
was expected and how to get it.
"""

from __future__ import annotations

from typing import Any

import torch

from convlens.errors import InputError, InputTypeError


def check_images(
    images: Any,
    *,
    name: str = "images",
    channels: int | None = None,
    min_size: int = 1,
    finite: bool = True,
) -> torch.Tensor:
    """Check a batch of normalised float images ``(N, C, H, W)`` and return it.

    Args:
        images: the value to check.
        name: how to call it in the message.
        channels: the channels the model takes, when known.
        min_size: the smallest height and width the model can take.
        finite: refuse NaN and infinity.

    Raises:
        InputTypeError: not a tensor.
        InputError: wrong rank, dtype, channels, size, or non-finite values.
    """
    if not isinstance(images, torch.Tensor):
        raise InputTypeError(
            f"{name} must be a torch.Tensor (N, C, H, W), not {type(images).__name__}"
        )
    if images.ndim == 3:
        raise InputError(
            f"{name} must be a batch (N, C, H, W); got one image {tuple(images.shape)}: "
            "use images.unsqueeze(0)"
        )
    if images.ndim != 4:
        raise InputError(f"{name} must be (N, C, H, W); got shape {tuple(images.shape)}")
    if not images.is_floating_point():
        raise InputError(
            f"{name} must be float (N, C, H, W), normalised; got {images.dtype}: "
            "use run.normalize(images) (or subject.normalize) on uint8 images"
        )
    if images.shape[0] == 0:
        raise InputError(f"{name} is an empty batch")
    if channels is not None and images.shape[1] != channels:
        raise InputError(f"{name} have {images.shape[1]} channels but the model takes {channels}")
    h, w = images.shape[-2:]
    if min(h, w) < min_size:
        raise InputError(f"{name} are {h}x{w}; the model needs at least {min_size}x{min_size}")
    if finite and not bool(torch.isfinite(images).all()):
        raise InputError(f"{name} contain NaN or infinite values")
    return images
