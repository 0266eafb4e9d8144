"""t-SNE maps of feature vectors, through openTSNE's public API, and the image-grid form of a map.

openTSNE (Poličar et al. 2024) does all the work with its documented building blocks: perplexity
affinities over approximate nearest neighbours (`openTSNE.affinity.PerplexityBasedNN`), a PCA
initialisation, then `TSNEEmbedding.optimize` twice, early exaggeration and the normal phase, with
Barnes-Hut repulsion below 10,000 points and FIt-SNE's FFT interpolation from there (openTSNE's own
rule). Speed against scikit-learn is measured in `benchmarks/inspect_bench.py`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch

from convlens.errors import ConvlensError, InputError, InputTypeError

_FFT_FROM = 10_000  # points; openTSNE's Barnes-Hut is cheaper below (its own "auto" rule)
_EARLY_EXAGGERATION = 12.0  # openTSNE's (and van der Maaten's) early phase: 250 iterations at 12
_EARLY_ITER = 250


@dataclass
class TSNEMap:
    """A 2-D t-SNE embedding.

    Attributes:
        coords: float64 `(N, 2)` map coordinates, row i for feature vector i.
        kl_divergence: KL(P || Q) of the final embedding, as openTSNE reports it.
        perplexity: the perplexity used.
    """

    coords: np.ndarray
    kl_divergence: float
    perplexity: float


def default_perplexity(n: int) -> float:
    """30 (the usual choice) where possible; smaller for few points, as openTSNE needs `3 p < n - 1`."""
    return float(max(1.0, min(30.0, (n - 2) / 3.0)))


def tsne(
    features: torch.Tensor | np.ndarray,
    *,
    perplexity: float | None = None,
    n_iter: int = 500,
    seed: int = 0,
    n_jobs: int | None = None,
    verbose: bool = False,
) -> TSNEMap:
    """Embed feature vectors in 2-D with openTSNE's standard two-phase optimisation.

    Args:
        features: `(N, D)` vectors, e.g. penultimate features from :func:`extract_features`.
        perplexity: effective number of neighbours; default :func:`default_perplexity`.
        n_iter: iterations of the normal phase, after 250 of early exaggeration.
        seed: random seed (the map is reproducible for a given seed and `n_jobs=1`).
        n_jobs: threads; default 1 below 10,000 points (thread start-up and contention cost more
            than they save on small maps), else all cores.
        verbose: let openTSNE print its progress.

    Returns:
        :class:`TSNEMap`.
    """
    # openTSNE is imported here, not at the top: it is slow to import and only this function uses it.
    from openTSNE import TSNEEmbedding
    from openTSNE.affinity import PerplexityBasedNN
    from openTSNE.initialization import pca

    if not isinstance(features, torch.Tensor | np.ndarray):
        raise InputTypeError(
            f"features must be a tensor or array (N, D), not {type(features).__name__}"
        )
    x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise InputError(f"features must be (N, D), got shape {x.shape}")
    if not np.isfinite(x).all():
        raise InputError("features contain NaN or infinite values")
    n = x.shape[0]
    if n < 5:
        raise ConvlensError(f"t-SNE needs at least 5 points, got {n}")
    p = float(perplexity) if perplexity is not None else default_perplexity(n)
    if not 0 < p < (n - 1) / 3:
        raise ConvlensError(
            f"perplexity {p} is out of range for {n} points (0 < p < {(n - 1) / 3:.1f})"
        )
    jobs = n_jobs if n_jobs is not None else (1 if n < _FFT_FROM else os.cpu_count() or 1)
    affinities = PerplexityBasedNN(x, perplexity=p, n_jobs=jobs, random_state=seed, verbose=verbose)
    embedding = TSNEEmbedding(
        pca(x, 2, random_state=seed),  # (N, 2), scaled by openTSNE to a small standard deviation
        affinities,
        negative_gradient_method="fft" if n >= _FFT_FROM else "bh",
        n_jobs=jobs,
        random_state=seed,
        verbose=verbose,
    )
    embedding = embedding.optimize(n_iter=_EARLY_ITER, exaggeration=_EARLY_EXAGGERATION)
    embedding = embedding.optimize(n_iter=n_iter)
    return TSNEMap(
        coords=np.asarray(embedding, dtype=np.float64),
        kl_divergence=float(embedding.kl_divergence),
        perplexity=p,
    )


def tsne_grid(coords: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """The image-grid form of a map: which point each cell of a `rows x cols` grid shows.

    The map's bounding box is cut into cells; each cell shows the point inside it nearest to its
    centre, and stays empty (-1) where the map has no point, so the grid keeps the map's shape (the
    form of Karpathy's CNN-code t-SNE figures).

    Args:
        coords: `(N, 2)` map coordinates (x, y).
        rows: grid rows; row 0 is the top of the map (largest y), as an image is drawn.
        cols: grid columns; column 0 is the left (smallest x).

    Returns:
        int64 `(rows, cols)` point indices, -1 for an empty cell.
    """
    c = np.asarray(coords, dtype=np.float64)
    lo, hi = c.min(0), c.max(0)
    span = np.where(hi > lo, hi - lo, 1.0)
    u = (c - lo) / span  # (N, 2) in [0, 1]
    col = np.minimum((u[:, 0] * cols).astype(np.int64), cols - 1)
    row = np.minimum(((1.0 - u[:, 1]) * rows).astype(np.int64), rows - 1)
    centre_x = (col + 0.5) / cols
    centre_y = 1.0 - (row + 0.5) / rows
    dist = (u[:, 0] - centre_x) ** 2 + (u[:, 1] - centre_y) ** 2
    cell = row * cols + col
    order = np.lexsort((dist, cell))  # by cell, then nearest the centre first
    first = np.unique(cell[order], return_index=True)[1]
    grid = np.full(rows * cols, -1, dtype=np.int64)
    grid[cell[order][first]] = order[first]
    return grid.reshape(rows, cols)
