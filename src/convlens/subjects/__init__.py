"""Subjects: a model, its preprocessing, its class names and optionally images to look at.

- :func:`open_subject` opens any way of naming a model: a run directory, a registry name,
  ``torchvision:NAME`` / ``timm:NAME`` with pretrained weights, a checkpoint, TorchScript, or the
  user's own ``file.py:build_fn``; with the user's images.
- :func:`subject` wraps any ``nn.Module``; :func:`from_run` makes one from a loaded run directory.
- :func:`load_image`, :func:`load_images` and :func:`load_image_set` read image files as a subject's
  preprocessing says (:mod:`convlens.subjects.images`).
"""

from __future__ import annotations

from convlens.subjects.core import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    Subject,
    from_run,
    num_outputs,
    subject,
)
from convlens.subjects.images import MAX_PIXELS, load_image, load_image_set, load_images
from convlens.subjects.open import open_subject, read_class_names

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MAX_PIXELS",
    "Preprocess",
    "Subject",
    "from_run",
    "load_image",
    "load_image_set",
    "load_images",
    "num_outputs",
    "open_subject",
    "read_class_names",
    "subject",
]
