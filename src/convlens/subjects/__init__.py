"""Subjects: a model, its preprocessing, its class names and optionally images to look at.

- :func:`subject` wraps any ``nn.Module``; :func:`from_run` makes one from a loaded run directory.
"""

from __future__ import annotations

from convlens.subjects.core import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Preprocess,
    Subject,
    from_run,
    subject,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Preprocess", "Subject", "from_run", "subject"]
