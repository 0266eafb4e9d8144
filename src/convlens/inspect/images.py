"""Bringing a user's image files to a model's input.

Any size and mode is accepted: the image is converted to the model's channels (greyscale `L` for one
channel, `RGB` for three; palette, RGBA, CMYK and 16-bit images are converted by Pillow, alpha is
composited on black) and resized to the model's height and width with bilinear filtering (aspect ratio
not kept, as torchvision's `Resize((h, w))`). A notice is returned for every conversion so the CLI can
say what it did.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from convlens.data.images import open_image
from convlens.errors import ConvlensError


def load_image(path: str | Path, shape: tuple[int, int, int]) -> tuple[torch.Tensor, list[str]]:
    """Read one image file as uint8 `(C, H, W)` of the given `shape`; also return the notices."""
    c, h, w = shape
    path = Path(path)
    if not path.is_file():
        raise ConvlensError(f"no image file at {path}")
    try:
        with open_image(path, str(path)) as im:
            im.load()
            img = im.copy()
    except (UnidentifiedImageError, OSError) as e:
        raise ConvlensError(f"{path} is not an image Pillow can read ({e})") from None
    notices: list[str] = []
    target_mode = "L" if c == 1 else "RGB"
    if c not in (1, 3):
        raise ConvlensError(
            f"the model takes {c}-channel input; only 1 or 3 channels can come from an image file"
        )
    if img.mode != target_mode:
        if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
            img = img.convert("RGBA")
            bg = Image.new("RGBA", img.size, (0, 0, 0, 255))
            img = Image.alpha_composite(bg, img)
        notices.append(f"{path.name}: converted {img.mode} to {target_mode}")
        img = img.convert(target_mode)
    if img.size != (w, h):
        notices.append(f"{path.name}: resized {img.size[0]}x{img.size[1]} to {w}x{h}")
        img = img.resize((w, h), Image.Resampling.BILINEAR)
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy()), notices


def load_images(
    paths: list[str] | list[Path], shape: tuple[int, int, int]
) -> tuple[torch.Tensor, list[str]]:
    """Read several image files as one uint8 batch `(N, C, H, W)`; also return the notices."""
    tensors, notices = [], []
    for p in paths:
        t, n = load_image(p, shape)
        tensors.append(t)
        notices.extend(n)
    return torch.stack(tensors), notices
