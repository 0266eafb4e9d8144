"""The index: one streaming pass per subject over any number of images, kept on disk and reused.

- :func:`build_index` runs the pass (or returns the cached index), resumable and sharded under
  ``torchrun``; :func:`find_index` returns a cached one only; :func:`open_index` opens a folder;
  :func:`list_indexes` and :func:`delete_index` manage the cache.
- :class:`Index` reads it: predictions, loss and correctness, penultimate features (memory-mapped),
  each channel's top-k images with positions (:class:`UnitTopK`), neighbours, the t-SNE map.

Formats: NumPy ``.npy`` arrays and a JSON manifest in ``$CONVLENS_CACHE/index/<key>/`` (default
``~/.cache/convlens/index``); see :mod:`convlens.index.store`.
"""

from __future__ import annotations

from pathlib import Path

from convlens.data.dataset import Dataset
from convlens.errors import ConvlensError
from convlens.index.build import SHARD_IMAGES, build_index, default_layers
from convlens.index.source import index_key, resolve_source
from convlens.index.store import (
    INDEX_FORMAT,
    DamagedIndex,
    Index,
    IndexEntry,
    IndexNote,
    cache_root,
    default_cache_dir,
    delete_index,
    list_indexes,
    open_index,
)
from convlens.index.topk import UnitTopK
from convlens.subjects.core import Subject
from convlens.subjects.images import ImageList


def find_index(
    subject: Subject,
    source: Dataset | ImageList | str | Path | None = None,
    cache_dir: str | Path | None = None,
) -> Index | None:
    """The cached index of `subject` over `source` (see :func:`build_index`), or None (no pass runs)."""
    key, _ = index_key(subject, resolve_source(subject, source))
    try:
        return open_index(cache_root(cache_dir) / key)
    except ConvlensError:
        return None


__all__ = [
    "INDEX_FORMAT",
    "SHARD_IMAGES",
    "DamagedIndex",
    "Index",
    "IndexEntry",
    "IndexNote",
    "UnitTopK",
    "build_index",
    "default_cache_dir",
    "default_layers",
    "delete_index",
    "find_index",
    "list_indexes",
    "open_index",
]
