"""Uploaded images: size-limited, decoded with Pillow, checked, converted to the subject's input.

An upload is named by the digest of its bytes (``upload:<hex>``), so that the same photo sent twice
is one image and the cache keys of its results are stable. Decoded images are kept in memory (a
bounded LRU); nothing an upload sends is written under a name it chose.
"""

from __future__ import annotations

import hashlib
import io
import threading
import warnings
from collections import OrderedDict

import numpy as np
import torch
from PIL import Image, ImageOps

from convlens.serve.errors import RequestError
from convlens.subjects import Preprocess

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
MAX_PIXELS = (
    50_000_000  # a 7,000 x 7,000 photo; more is refused before decoding (decompression bombs)
)


def decode_image(
    data: bytes, pre: Preprocess, *, max_bytes: int = MAX_UPLOAD_BYTES
) -> torch.Tensor:
    """Bytes of an image file -> uint8 ``(C, H, W)`` at the subject's input size.

    EXIF orientation is honoured; alpha is composited on black; the image is resized (and centre
    cropped when the preprocessing says so) as the subject's preprocessing does.

    Raises:
        RequestError: empty (400), too large (413), not an image Pillow can read, or too many pixels.
    """
    if not data:
        raise RequestError("the upload is empty; send an image file (JPEG, PNG, WebP...)")
    if len(data) > max_bytes:
        raise RequestError(
            f"the upload is {len(data) / 1e6:.1f} MB; the limit is {max_bytes / 1e6:.0f} MB", 413
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            opened: Image.Image = Image.open(io.BytesIO(data))
            w, h = opened.size
            if w * h > MAX_PIXELS:
                raise RequestError(
                    f"the image is {w} x {h} pixels; at most {MAX_PIXELS:,} are accepted"
                )
            opened.load()
    except RequestError:
        raise
    except (Image.DecompressionBombWarning, Image.DecompressionBombError):
        raise RequestError(
            f"the image has too many pixels; at most {MAX_PIXELS:,} are accepted"
        ) from None
    except (OSError, ValueError, SyntaxError, Warning) as e:
        raise RequestError(
            f"the upload is not an image Pillow can read ({type(e).__name__})"
        ) from None
    im: Image.Image = ImageOps.exif_transpose(opened)
    mode = "L" if pre.channels == 1 else "RGB"
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    im = im.convert(mode)
    th, tw = pre.size
    if pre.resize is not None:  # torchvision's evaluation transform: shorter side, then centre crop
        scale = pre.resize / min(im.size)
        im = im.resize(
            (max(tw, round(im.width * scale)), max(th, round(im.height * scale))),
            Image.Resampling.BILINEAR,
        )
        left, top = (im.width - tw) // 2, (im.height - th) // 2
        im = im.crop((left, top, left + tw, top + th))
    elif im.size != (tw, th):
        im = im.resize((tw, th), Image.Resampling.BILINEAR)
    arr = np.asarray(im, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())  # (C, H, W)


class UploadStore:
    """Decoded uploads by ``(subject, digest)``, the most recent `capacity` kept."""

    def __init__(self, capacity: int = 256) -> None:
        self._items: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()
        self._capacity = capacity

    def add(self, subject: str, data: bytes, image: torch.Tensor) -> str:
        """Keep `image`; return its id (the hex digest of the uploaded bytes)."""
        key = hashlib.sha256(data).hexdigest()[:32]
        with self._lock:
            self._items[(subject, key)] = image
            self._items.move_to_end((subject, key))
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
        return key

    def get(self, subject: str, key: str) -> torch.Tensor:
        """The image uploaded with id `key` (404 when unknown or forgotten)."""
        with self._lock:
            image = self._items.get((subject, key))
        if image is None:
            raise RequestError(f"no upload {key!r} for {subject}; upload the image again", 404)
        return image
