"""Uploaded images: size-limited, decoded with Pillow, checked, converted to the subject's input.

An upload is named by the digest of its bytes (``upload:<hex>``), so that the same photo sent twice
is one image and the cache keys of its results are stable. Decoded images are kept in memory (a
bounded LRU); nothing an upload sends is written under a name it chose.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections import OrderedDict

import torch

from convlens.errors import InputError
from convlens.serve.errors import RequestError
from convlens.subjects import Preprocess, images

MAX_UPLOAD_BYTES = 20 * 1024 * 1024
# Pillow names the file object it could not read: "(cannot identify image file <_io.BytesIO object
# at 0x7f...>)". An upload has no file name, and the repr means nothing to a person: drop it.
_OBJECT_REPR = re.compile(r" \([^()]*<[^<>]* object at 0x[0-9a-fA-F]+>[^()]*\)")


def decode_image(
    data: bytes, pre: Preprocess, *, max_bytes: int = MAX_UPLOAD_BYTES
) -> torch.Tensor:
    """Bytes of an uploaded image file -> uint8 ``(C, H, W)`` at the subject's input size.

    Decoded by :func:`convlens.subjects.images.decode_image`, the same rules as for image files
    (pixel limit before decoding, EXIF orientation, alpha on black, the subject's resize and crop).

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
        return images.decode_image(data, pre, name="the upload")
    except InputError as e:
        message = _OBJECT_REPR.sub("", str(e))
        if "not an image" in message:
            message += "; send an image file (JPEG, PNG, WebP, BMP, GIF or TIFF)"
        raise RequestError(message) from None


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
