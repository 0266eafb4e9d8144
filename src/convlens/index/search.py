"""Neighbours and the t-SNE map, from an index's memory-mapped features.

Neighbours are exact: the features are read in chunks of rows (float16 on disk), so memory is one
chunk plus one distance per image. At 50,000 x 512 features a query reads 51 MB of page cache;
``benchmarks/index_bench.py`` measures it against NumPy with every feature in memory (FAISS would
only pay off where that misses the web app's target).

A query costs one float32 product with the features and an exact float64 re-ranking of the few
candidates near the k-th (see :func:`nearest`).

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
RESIDENT_BYTES = 512 * 1024**2
"""Features up to this size as float32 stay in memory after the first query (50,000 x 512: 100 MB):
converting float16 costs several times the product itself. Larger ones are converted chunk by chunk
on every query."""
METRICS = ("cosine", "euclidean")
_ALIASES = {"l2": "euclidean", "cosine": "cosine", "euclidean": "euclidean"}


def _row_norms(index: Index) -> np.ndarray:
    """float64 ``(N,)`` squared norms of the feature rows, computed once per opened index."""
    if "sq_norms" not in index.derived:
        feats = index.features()
        out = np.empty(len(feats), dtype=np.float64)
        for start in range(0, len(feats), CHUNK_ROWS):
            x = np.asarray(feats[start : start + CHUNK_ROWS], dtype=np.float64)
            out[start : start + len(x)] = np.einsum("ij,ij->i", x, x)
        index.derived["sq_norms"] = out
    return index.derived["sq_norms"]


def _resident(index: Index) -> np.ndarray | None:
    """The features as float32 in memory when they fit :data:`RESIDENT_BYTES`, else None."""
    feats = index.features()
    if feats.size * 4 > RESIDENT_BYTES:
        return None
    if "float32" not in index.derived:
        index.derived["float32"] = np.asarray(feats, dtype=np.float32)
    return index.derived["float32"]


def _exact(x: np.ndarray, q: np.ndarray, metric: str) -> np.ndarray:
    """float64 distances of the rows `x` ``(M, D)`` to `q` ``(D,)`` (q unit-length for cosine)."""
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=1)
        return 1.0 - (x @ q) / np.where(norms > 0, norms, 1.0)
    diff = x - q
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def nearest(
    index: Index, query: int | np.ndarray, k: int = 10, metric: str = "cosine"
) -> tuple[np.ndarray, np.ndarray]:
    """The exact `k` nearest images to `query` in the index's feature space.

    Two steps, so that a query costs one float32 matrix-vector product over the memory-mapped
    features (read in chunks) and the answer is still exact: every distance in float32 (row norms
    cached in float64), then the candidates within a bound of the float32 rounding error of the
    k-th are measured again in float64 and ranked.

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
    sq = _row_norms(index)  # (N,)
    q_sq = float(q @ q)
    if m == "cosine" and q_sq > 0:
        q = q / np.sqrt(q_sq)
    q32 = q.astype(np.float32)
    resident = _resident(index)
    approx = np.empty(n, dtype=np.float64)  # (N,) float32-accurate distances
    for start in range(0, n, CHUNK_ROWS):
        block = feats if resident is None else resident
        dots = np.asarray(block[start : start + CHUNK_ROWS], dtype=np.float32) @ q32  # (R,)
        rows = slice(start, start + len(dots))
        if m == "cosine":
            norms = np.sqrt(sq[rows])
            approx[rows] = 1.0 - dots / np.where(norms > 0, norms, 1.0)
        else:
            approx[rows] = sq[rows] - 2.0 * dots + q_sq  # squared
    if skip >= 0:
        approx[skip] = np.inf
    # float32 products of D terms err by at most ~D * 2**-24 of their scale: keep every candidate
    # that close to the k-th, then measure those exactly.
    scale = 1.0 if m == "cosine" else float(sq.max()) + q_sq
    tol = 4.0 * d * 2.0**-24 * scale + 1e-12
    kth = np.partition(approx, k - 1)[k - 1]
    cand = np.flatnonzero(approx <= kth + tol)
    exact = _exact(np.asarray(feats[cand], dtype=np.float64), q, m)
    order = np.lexsort((cand, exact))[:k]
    return cand[order].astype(np.int64), exact[order]


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
