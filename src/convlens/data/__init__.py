"""Data sets as in-memory uint8 tensors, and fast batching with on-device augmentation.

- `load(name, split="train"|"test", root=None, *, download=False, size=None)` -> :class:`Dataset`
  for `mnist`, `fashion-mnist`, `cifar10`, `sample` (bundled) and `folder:PATH`;
- `names()`, `describe(name)` (for `convlens datasets`), `locate(name)`;
- :class:`BatchLoader`, :class:`Augment`, `default_augment(name)` in :mod:`convlens.data.loader`;
- `stream_folder(...)`: a torch DataLoader with workers for image folders too large for memory.
"""

from __future__ import annotations

from convlens.data.catalog import DatasetInfo, describe, load, locate, names
from convlens.data.dataset import Dataset, denormalize, normalize
from convlens.data.folder import stream_folder
from convlens.data.images import DataNotice
from convlens.data.loader import Augment, BatchLoader, default_augment

__all__ = [
    "Augment",
    "BatchLoader",
    "DataNotice",
    "Dataset",
    "DatasetInfo",
    "default_augment",
    "denormalize",
    "describe",
    "load",
    "locate",
    "names",
    "normalize",
    "stream_folder",
]
