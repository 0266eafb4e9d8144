"""Neighbours and the t-SNE map, from an index's memory-mapped features.

Neighbours are exact: the features are read in chunks of rows (float16 on disk, float64 in the
arithmetic), each chunk's distances to the query merged into a running top-k, so memory is one chunk
whatever N. At 50,000 x 512 features a query reads 51 MB of page cache; FAISS would only pay off at
sizes this index does not aim at (see ``benchmarks/index_bench.py``).

The map is openTSNE through :func:`convlens.inspect.tsne` over at most `limit` points: beyond, a
uniform random sample of `limit` images drawn with ``numpy.random.default_rng(seed)`` (sorted). The
coordinates are stored in the index folder and reused.
"""

from __future__ import annotations

import json
import os
from typing import TYPE_CHECKING

import numpy as np

from convlens.errors import ConvlensError, InputError
from convlens.index.arrays import save_array

if TYPE_CHECKING:
    from convlens.index.store import Index

CHUNK_ROWS = 16_384
"""Feature rows per step of the neighbour search."""
METRICS = ("cosine", "euclidean")
_ALIASES = {"l2": "euclidean", "cosine": "cosine", "euclidean": "euclidean"}


def nearest(
    index: Index, query: int | np.ndarray, k: int = 10, metric: str = "cosine"
) -> tuple[np.ndarray, np.ndarray]:
    """The exact `k` nearest images to `query` in the index's feature space.

    Args:
        index: the index.
        query: an image index (that image is left out of its own neighbours) or a feature vector
            ``(D,)``.
        k: neighbours wanted (at most the images available).
        metric: ``cosine`` (distance ``1 - cos``; a zero vector has cosine 0 with everything) or
            ``euclidean`` (``l2``).

    Returns:
        ``(indices int64 (k,), distances float64 (k,))``, nearest first; equal distances: the
        lower image index first.
    """
    m = _ALIASES.get(metric)
    if m is None:
        raise ConvlensError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    feats = index.features()
    n, d = feats.shape
    skip = -1
    if isinstance(query, int | np.integer):
        if not 0 <= int(query) < n:
            raise InputError(f"no image {query} in an index of {n:,} images")
        skip = int(query)
        q = np.asarray(feats[skip], dtype=np.float64)
    else:
        q = np.asarray(query, dtype=np.float64).reshape(-1)
        if q.shape != (d,):
            raise InputError(f"a query vector must have the features' {d} values, got {q.shape}")
    k = min(int(k), n - (skip >= 0))
    if k < 1:
        raise ConvlensError("k must be at least 1 (and the index must hold another image)")
    if m == "cosine":
        q_norm = np.linalg.norm(q)
        q = q / q_norm if q_norm > 0 else q
    best_d = np.empty(0)
    best_i = np.empty(0, dtype=np.int64)
    for start in range(0, n, CHUNK_ROWS):
        x = np.asarray(feats[start : start + CHUNK_ROWS], dtype=np.float64)  # (R, D)
        if m == "cosine":
            norms = np.linalg.norm(x, axis=1)
            dist = 1.0 - (x @ q) / np.where(norms > 0, norms, 1.0)
        else:
            diff = x - q
            dist = np.sqrt(np.einsum("ij,ij->i", diff, diff))
        idx = np.arange(start, start + len(x), dtype=np.int64)
        if start <= skip < start + len(x):
            keep = idx != skip
            dist, idx = dist[keep], idx[keep]
        cand_d = np.concatenate([best_d, dist])
        cand_i = np.concatenate([best_i, idx])
        if len(cand_d) > k:  # the k smallest, then an exact order (ties: lower index)
            part = np.argpartition(cand_d, k - 1)[:k]
            cut = cand_d[part].max()
            part = np.flatnonzero(cand_d <= cut)  # every candidate tied at the cut stays
            cand_d, cand_i = cand_d[part], cand_i[part]
        order = np.lexsort((cand_i, cand_d))[:k]
        best_d, best_i = cand_d[order], cand_i[order]
    return best_i, best_d


def sample(n: int, limit: int, seed: int) -> np.ndarray:
    """The images a map shows: all `n`, or a sorted uniform random `limit` of them (``seed``)."""
    if n <= limit:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=limit, replace=False)).astype(np.int64)


def embedding(index: Index, *, limit: int = 50_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The t-SNE map of the index's features: ``(indices int64 (M,), coords float64 (M, 2))``.

    Computed once per ``(M, seed)`` and stored in the index folder (in memory only when the folder
    is read-only).
    """
    from convlens.inspect.tsne import tsne

    if limit < 5:
        raise ConvlensError(f"a map needs at least 5 points, got limit={limit}")
    chosen = sample(index.n, limit, seed)
    name = f"embedding-m{len(chosen)}-s{seed}"
    for entry in index.manifest.get("embeddings", []):
        if entry.get("name") == name:
            try:
                coords = np.load(index.path / f"{name}.coords.npy")
                stored = np.load(index.path / f"{name}.indices.npy")
                if coords.shape == (len(chosen), 2) and np.array_equal(stored, chosen):
                    return chosen, coords
            except (OSError, ValueError):
                break  # damaged: computed again below
    x = np.asarray(index.features()[chosen], dtype=np.float32)  # (M, D)
    coords = tsne(x, seed=seed).coords
    try:
        save_array(index.path / f"{name}.indices.npy", chosen)
        save_array(index.path / f"{name}.coords.npy", coords)
        manifest = dict(index.manifest)
        manifest["embeddings"] = [
            e for e in manifest.get("embeddings", []) if e.get("name") != name
        ] + [{"name": name, "points": len(chosen), "seed": seed, "images": index.n}]
        tmp = index.path / f".manifest.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(manifest, indent=2))
        os.replace(tmp, index.path / "manifest.json")
        index.manifest = manifest
    except OSError:
        pass  # a read-only cache: the map is still returned
    return chosen, coords
