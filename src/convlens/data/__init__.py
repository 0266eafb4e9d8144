"""Data sets as in-memory uint8 tensors, and fast batching with on-device augmentation.

`load(name, split="train"|"test", root=None)` -> :class:`Dataset`.
"""

from __future__ import annotations

from convlens.data.dataset import Dataset, denormalize, normalize

__all__ = ["Dataset", "denormalize", "normalize"]
