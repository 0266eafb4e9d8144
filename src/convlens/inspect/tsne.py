"""t-SNE maps of feature vectors, with openTSNE, and the image-grid form of a map.

openTSNE (Poličar et al. 2024) drives the optimisation (PCA initialisation, gains, momentum, the
attractive forces over the sparse affinities); two pieces are ours, both measured on 20,000 x 84
Fashion-MNIST features (`benchmarks/inspect_bench.py`) on the 2-core box:

1. **Exact neighbours by brute force** (:func:`exact_neighbors`): a blocked matrix product and top-k
   finds the `3 * perplexity` nearest neighbours of every point exactly in about 5 CPU-seconds, where
   openTSNE's default Annoy forest took about 10 s for approximate ones.
2. **The repulsive forces by FFT interpolation in torch** (:class:`FFTGradient`): the same method as
   openTSNE's own (FIt-SNE, Linderman et al. 2019: spread each point over a `p x p` block of grid nodes
   by Lagrange interpolation, convolve the grid with the kernel by FFT, interpolate back), but the
   convolution runs in float32 with a zero-padding-aware (pruned) FFT, the kernel's transform is kept
   while the grid size stays the same, and Z comes from its own Cauchy-kernel channel (no cancellation,
   so float32 is safe). At a map extent of 190 this is ~3x cheaper per iteration than openTSNE's.

Why the schedule below. A t-SNE map's repulsive forces nearly cancel its attractive ones near
convergence, so a few per cent of interpolation error in the repulsion is most of the remaining
gradient: measured on a converged 20,000-point map, the default grid (3 nodes per unit box) has a
3.3 % error in the repulsion and the total gradient it yields points 25 degrees away from the exact one
(cosine 0.89). That error, not the number of iterations, is what held openTSNE's default run at KL 1.78
against scikit-learn's 1.75: the same 250 + 500 iterations with a grid twice as fine reached 1.761. A
fine grid costs ~4x per iteration at large extents, so the map is first grown on the default grid and
then refined on a finer one (5 nodes per unit box: 0.3 % error), where the KL falls quickly
(1.83 -> 1.75 in 150 iterations). Momentum 0.9 after early exaggeration (0.8 in openTSNE) speeds the
slow expansion of the map (KL 1.791 against 1.825 after the same 500 iterations on the default grid).
Early exaggeration stays openTSNE's: 250 iterations at 12 with learning rate `N / 12`, then `N`.

Where the time goes (20,000 points, one thread, 250 + 250 + 200 iterations): neighbours and
affinities 5 s, early exaggeration 8 s, growing 13 s, refining 85 s; the fine grid at a map extent of
~210 (2,100^2 FFTs) is the cost to attack next (a near-field/far-field split, fewer refine nodes).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from convlens.errors import ConvlensError

# Normal-phase schedule (after early exaggeration): (iterations, interpolation nodes per box).
# Boxes are 1 unit wide once the map is wider than `_MIN_BOXES` units (openTSNE's
# `ints_in_interval=1`); below that the map is cut into `_MIN_BOXES` boxes.
_GROW = (250, 3)  # grow the map on openTSNE's default grid (3.3 % repulsion error)
_REFINE = (250, 5)  # then refine on a finer one (0.3 % error)
_MIN_BOXES = 50
_FFT_FROM = 10_000  # points; Barnes-Hut below
_EARLY_EXAGGERATION = 12.0
_EARLY_ITER = 250
_MOMENTUM_EARLY, _MOMENTUM = 0.8, 0.9


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


def exact_neighbors(x: np.ndarray, k: int, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """The exact `k` nearest neighbours of every row of `x` (Euclidean), itself excluded.

    Candidates come from float32 squared distances `|a|^2 + |b|^2 - 2 a.b` (one matrix product per
    block of rows); their distances are then recomputed in float64 from the differences, so the
    distances are exact and only near-ties can order differently from a float64 search.

    Args:
        x: `(N, D)` points.
        k: neighbours per point, `k < N`.
        block: rows per matrix product (memory: `block x N` floats).

    Returns:
        int64 `(N, k)` indices and float64 `(N, k)` distances, nearest first.
    """
    xd = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))
    xf = xd.float()
    sq = (xf * xf).sum(1)  # (N,)
    n = len(xd)
    indices = torch.empty(n, k, dtype=torch.int64)
    distances = torch.empty(n, k, dtype=torch.float64)
    for s in range(0, n, block):
        e = min(s + block, n)
        d2 = torch.addmm(sq[None, :], xf[s:e], xf.T, alpha=-2.0).add_(sq[s:e, None])  # (B, N)
        d2[torch.arange(e - s), torch.arange(s, e)] = float("inf")  # not its own neighbour
        cand = d2.topk(k, dim=1, largest=False, sorted=False).indices  # (B, k)
        dist = (xd[s:e, None, :] - xd[cand]).square_().sum(-1).sqrt_()  # (B, k) float64
        dist, order = dist.sort(1)
        indices[s:e] = cand.gather(1, order)
        distances[s:e] = dist
    return indices.numpy(), distances.numpy()


def _fft_size(n: int) -> int:
    """The smallest `m >= n` whose prime factors are 2, 3, 5 and 7 (fast FFT lengths)."""
    while True:
        m = n
        for f in (2, 3, 5, 7):
            while m % f == 0:
                m //= f
        if m == 1:
            return n
        n += 1


def _lagrange_weights(t: torch.Tensor, p: int) -> torch.Tensor:
    """`(N, p)` Lagrange basis values at `t` in `[0, 1)` for `p` nodes at `(j + 0.5) / p`."""
    nodes = [(j + 0.5) / p for j in range(p)]
    cols = []
    for j in range(p):
        v = torch.ones_like(t)
        for m in range(p):
            if m != j:
                v = v * ((t - nodes[m]) / (nodes[j] - nodes[m]))
        cols.append(v)
    return torch.stack(cols, 1)


class FFTGradient:
    """t-SNE's KL gradient for openTSNE, the repulsion by FFT interpolation in torch (see module doc).

    Called by openTSNE's optimiser as its `negative_gradient_method`; `n_interpolation_points` can be
    changed between `optimize` calls (the grow and refine stages).

    Args:
        n_interpolation_points: grid nodes per box side (openTSNE's default 3).
        n_threads: torch threads for the FFTs.
    """

    def __init__(self, n_interpolation_points: int = 3, n_threads: int = 1) -> None:
        self.n_interpolation_points = n_interpolation_points
        self.n_threads = n_threads
        self._kernel_key: tuple[int, int, float] | None = None
        self._kernel_fft = torch.empty(0)

    def _kernels(self, n_boxes: int, box_width: float) -> torch.Tensor:
        """rfft2 of the squared and plain Cauchy kernels on the zero-padded node grid, `(2, m, m/2+1)`."""
        p = self.n_interpolation_points
        key = (n_boxes, p, box_width)
        if key != self._kernel_key:
            n1 = n_boxes * p  # nodes per side
            # Offsets between nodes, -n1 .. n1-1 node spacings: a circulant embedding of the Toeplitz
            # kernel matrix (offset -n1 never pairs two real nodes, so it is zeroed).
            d = (torch.arange(2 * n1, dtype=torch.float64) - n1) * (box_width / p)
            k1 = 1.0 / (1.0 + d[:, None] ** 2 + d[None, :] ** 2)  # (2 n1, 2 n1)
            k1[0, :] = 0.0
            k1[:, 0] = 0.0
            self._kernel_fft = torch.fft.rfft2(torch.stack([k1 * k1, k1]).float())
            self._kernel_key = key
        return self._kernel_fft

    def repulsion(self, y_np: np.ndarray) -> tuple[float, np.ndarray]:
        """Z = sum over i != j of `1 / (1 + |y_i - y_j|^2)` and the repulsive gradient `(N, 2)`."""
        p = self.n_interpolation_points
        y = torch.from_numpy(y_np)  # (N, 2) float64
        n = len(y)
        lo = y.min(0).values
        extent = float((y.max(0).values - lo).max())
        if extent >= _MIN_BOXES:
            box_width, n_boxes = 1.0, _fft_size(int(np.ceil(extent)) + 1)
        else:
            box_width, n_boxes = max(extent, 1e-12) * (1 + 1e-9) / _MIN_BOXES, _MIN_BOXES
        n1, m = n_boxes * p, 2 * n_boxes * p
        rel = (y - lo) / box_width  # (N, 2) in box units
        box = rel.floor().clamp_(max=n_boxes - 1)
        wx = _lagrange_weights((rel[:, 0] - box[:, 0]).float(), p)  # (N, p)
        wy = _lagrange_weights((rel[:, 1] - box[:, 1]).float(), p)
        weights = (wx[:, :, None] * wy[:, None, :]).reshape(n, p * p)  # (N, p*p)
        first = box.long() * p  # first node of each point's box, (N, 2)
        ar = torch.arange(p)
        node = ((first[:, :1] + ar)[:, :, None] * n1 + (first[:, 1:] + ar)[:, None, :]).reshape(-1)
        yc = (y - lo).float()  # relative to the grid corner, to keep float32 terms small
        charges = torch.cat([torch.ones(n, 1), yc], 1)  # (N, 3): 1, y0, y1
        vals = (weights[:, :, None] * charges[:, None, :]).reshape(-1, 3)  # (N*p*p, 3)
        # bincount, not index_add_: many points share a node and index_add_ serialises on them.
        grid = torch.stack(
            [torch.bincount(node, weights=vals[:, c], minlength=n1 * n1) for c in range(3)]
        ).float()  # (3, n1*n1)
        # Pruned 2-D FFT: the input lives in the top-left (n1, n1) quadrant of the (m, m) padded grid
        # and only the bottom-right quadrant of the output is needed.
        f = torch.fft.fft(torch.fft.rfft(grid.reshape(3, n1, n1), n=m, dim=2), n=m, dim=1)
        kf = self._kernels(n_boxes, box_width)  # (2, m, m/2+1)
        prod = torch.cat([f * kf[0], f[:1] * kf[1]])  # (4, m, m/2+1): k^2 * (1, y0, y1), k * 1
        out = torch.fft.irfft(torch.fft.ifft(prod, dim=1)[:, n1:], n=m, dim=2)[:, :, n1:]
        at_nodes = out.reshape(4, -1).T[node].reshape(n, p * p, 4)
        phi = (at_nodes * weights[:, :, None]).sum(1).double()  # (N, 4)
        z = float(phi[:, 3].sum()) - n  # minus the diagonal's ones
        grad = -(yc.double() * phi[:, :1] - phi[:, 1:3]) / z  # (N, 2)
        return z, grad.numpy()

    def __call__(
        self,
        embedding: np.ndarray,
        P: Any,
        dof: float = 1,
        should_eval_error: bool = False,
        **_: Any,
    ) -> tuple[float, np.ndarray]:
        """openTSNE's objective interface: (KL if asked, else 0) and the gradient `(N, 2)`."""
        from openTSNE import _tsne

        if dof != 1:
            raise ValueError("FFTGradient supports the Cauchy kernel (dof=1) only")
        y = np.ascontiguousarray(embedding, dtype=np.float64)
        with _torch_threads(self.n_threads):
            z, gradient = self.repulsion(y)
        gradient = np.ascontiguousarray(gradient)
        # openTSNE's attractive term over the sparse P, adding into `gradient`. One thread: its
        # OpenMP pool and torch's spin against each other on a 2-core machine (200 ms a call
        # instead of 13 ms, measured).
        sum_p, kl = _tsne.estimate_positive_gradient_nn(
            P.indices, P.indptr, P.data, y, y, gradient, dof,
            num_threads=1, should_eval_error=should_eval_error,
        )  # fmt: skip
        if should_eval_error:
            kl += sum_p * np.log(z + 1e-12)
        return float(kl), gradient


@contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def tsne(
    features: torch.Tensor | np.ndarray,
    *,
    perplexity: float | None = None,
    n_iter: int = _GROW[0] + _REFINE[0],
    seed: int = 0,
    n_jobs: int | None = None,
    verbose: bool = False,
) -> TSNEMap:
    """Embed feature vectors in 2-D with openTSNE, exact neighbours and a grow-then-refine grid.

    Settings (reasons and measurements in the module docstring): exact `3 * perplexity` nearest
    neighbours, openTSNE's perplexity affinities and PCA initialisation, 250 early-exaggeration
    iterations (12, learning rate `N / 12`, momentum 0.8), then `n_iter` iterations at learning rate
    `N`, momentum 0.9: from 10,000 points the first on openTSNE's default FFT grid, the last 250 (or
    half of `n_iter`, if smaller) on a finer one; below, openTSNE's Barnes-Hut repulsion throughout.

    Args:
        features: `(N, D)` vectors, e.g. penultimate features from :func:`extract_features`.
        perplexity: effective number of neighbours; default :func:`default_perplexity`.
        n_iter: optimisation iterations after early exaggeration.
        seed: random seed (the map is reproducible for a given seed).
        n_jobs: threads for the neighbour search, the affinities and the FFTs; default 1 below
            10,000 points (where thread start-up and contention cost more than they save: 150
            points took 40 s with 2 threads on a busy 2-core machine, 4 s with one), else all cores.
        verbose: let openTSNE print its progress.

    Returns:
        :class:`TSNEMap`.
    """
    from openTSNE import TSNEEmbedding
    from openTSNE.affinity import PerplexityBasedNN
    from openTSNE.initialization import pca
    from openTSNE.nearest_neighbors import KNNIndex

    x = features.detach().cpu().numpy() if isinstance(features, torch.Tensor) else features
    x = np.ascontiguousarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"features must be (N, D), got shape {x.shape}")
    n = x.shape[0]
    if n < 5:
        raise ConvlensError(f"t-SNE needs at least 5 points, got {n}")
    p = float(perplexity) if perplexity is not None else default_perplexity(n)
    if not 0 < p < (n - 1) / 3:
        raise ConvlensError(
            f"perplexity {p} is out of range for {n} points (0 < p < {(n - 1) / 3:.1f})"
        )
    jobs = n_jobs if n_jobs is not None else (1 if n < 10_000 else os.cpu_count() or 1)

    class ExactKNN(KNNIndex):  # openTSNE's interface to a neighbour search
        VALID_METRICS: ClassVar[list[str]] = ["euclidean"]

        def build(self) -> tuple[np.ndarray, np.ndarray]:
            with _torch_threads(jobs):
                return exact_neighbors(self.data, self.k)

    k = min(n - 1, int(3 * p))  # openTSNE's (and sklearn's) neighbour count for perplexity p
    affinities = PerplexityBasedNN(
        perplexity=p, n_jobs=jobs, knn_index=ExactKNN(x, k), verbose=verbose
    )
    # Below 10,000 points openTSNE's Barnes-Hut is cheaper than any FFT grid (openTSNE's own rule).
    fft = FFTGradient(_GROW[1], n_threads=jobs) if n >= _FFT_FROM else None
    embedding = TSNEEmbedding(
        pca(x, 2, random_state=seed),
        affinities,
        negative_gradient_method=fft if fft is not None else "bh",
        n_jobs=jobs,
        random_state=seed,
        verbose=verbose,
    )
    embedding.optimize(
        n_iter=_EARLY_ITER,
        exaggeration=_EARLY_EXAGGERATION,
        learning_rate=n / _EARLY_EXAGGERATION,
        momentum=_MOMENTUM_EARLY,
        inplace=True,
    )
    refine = min(_REFINE[0], n_iter // 2)
    for iters, nodes in ((n_iter - refine, _GROW[1]), (refine, _REFINE[1])):
        if fft is not None:
            fft.n_interpolation_points = nodes
        embedding.optimize(n_iter=iters, learning_rate=n, momentum=_MOMENTUM, inplace=True)
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
