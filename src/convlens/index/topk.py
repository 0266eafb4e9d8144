"""Each channel's top-k images, merged exactly across batches, shards and ranks.

A channel's score for an image is its maximum activation over the layer's map, at the arg-max unit
``(row, col)`` (the first one in row-major order when several units share the maximum, torch's
``max`` rule). The k best images per channel are kept: highest value first, and among equal values
the LOWER image index first, so that the result does not depend on the batch size, on how the
images were cut into shards, or on how many processes computed them. NaN never ranks (it counts as
minus infinity).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class UnitTopK:
    """The top-k images of every channel of one layer.

    Attributes:
        values: float32 ``(C, k)``, each image's maximum activation over the map, highest first.
        images: int64 ``(C, k)``, the images' indices in the index (-1 where fewer than k images).
        positions: int64 ``(C, k, 2)``, ``(row, col)`` of the arg-max unit in the layer's map.
    """

    values: np.ndarray
    images: np.ndarray
    positions: np.ndarray

    @property
    def k(self) -> int:
        """Images kept per channel."""
        return int(self.values.shape[1])


def empty(channels: int, k: int) -> UnitTopK:
    """A running top-k with nothing in it yet (values -inf, images -1)."""
    return UnitTopK(
        values=np.full((channels, k), -np.inf, dtype=np.float32),
        images=np.full((channels, k), -1, dtype=np.int64),
        positions=np.zeros((channels, k, 2), dtype=np.int64),
    )


def merge(a: UnitTopK, b: UnitTopK, k: int) -> UnitTopK:
    """The top-`k` of the union of two top-k sets of the same channels (exact, ties by image)."""
    return select(
        np.concatenate([a.values, b.values], axis=1),
        np.concatenate([a.images, b.images], axis=1),
        np.concatenate([a.positions, b.positions], axis=1),
        k,
    )


def select(values: np.ndarray, images: np.ndarray, positions: np.ndarray, k: int) -> UnitTopK:
    """The top-`k` columns of each row: highest value first, lower image index first on ties.

    Args:
        values: float ``(C, M)`` candidate scores (NaN counts as -inf).
        images: int64 ``(C, M)`` their image indices (-1: an empty slot, ranked last).
        positions: int64 ``(C, M, 2)`` their arg-max units.
        k: how many to keep (at most M are filled; the rest stay empty).
    """
    v = np.where(np.isnan(values), -np.inf, values).astype(np.float32)
    # Empty slots go after every real image, whatever their value.
    empty_slot = images < 0
    img_key = np.where(empty_slot, np.iinfo(np.int64).max, images)
    # lexsort: the last key is the primary one; sort by -value, then by image index, per row.
    order = np.lexsort((img_key, empty_slot, -v.astype(np.float64)), axis=-1)[:, :k]
    rows = np.arange(v.shape[0])[:, None]
    out_v, out_i, out_p = v[rows, order], images[rows, order], positions[rows, order]
    if out_v.shape[1] < k:  # fewer candidates than k: pad with empty slots
        pad = empty(v.shape[0], k - out_v.shape[1])
        out_v = np.concatenate([out_v, pad.values], axis=1)
        out_i = np.concatenate([out_i, pad.images], axis=1)
        out_p = np.concatenate([out_p, pad.positions], axis=1)
    return UnitTopK(out_v, out_i.astype(np.int64), out_p.astype(np.int64))
