"""t-SNE maps of feature vectors, with openTSNE, and the image-grid form of a map.

openTSNE (Poličar et al. 2024) drives the optimisation (PCA initialisation, affinities, gains,
momentum, the attractive forces over the sparse affinities); three pieces are ours, measured on
20,000 x 84 Fashion-MNIST features (`benchmarks/inspect_bench.py`) on the 2-core box:

1. **Exact neighbours by brute force** (:func:`exact_neighbors`): a blocked matrix product and top-k
   finds the `3 * perplexity` nearest neighbours of every point exactly in about 5 CPU-seconds, where
   openTSNE's default Annoy forest took about 10 s for approximate ones.
2. **The repulsive forces by FFT interpolation in torch** (:class:`FFTGradient`), FIt-SNE's method
   (Linderman et al. 2019: spread each point's charge onto nearby nodes of a uniform grid by
   Lagrange interpolation, convolve the grid with the kernel by FFT, interpolate back) with four
   changes, each measured:

   - *Centred stencils.* FIt-SNE cuts the map into fixed boxes of `p` nodes; a point near a box's
     edge lies outside its nodes' span, so the polynomial extrapolates. Here every point uses the
     `w x w` nodes around it (w = 6, quintic), so it always lies between the two middle ones. On a
     converged 20,000-point map (extent 224) against the brute-force sum over all pairs, the force
     error is 3.4 % for FIt-SNE's 3 nodes per unit, 0.75 % for centred stencils at the same 3 nodes
     per unit, 0.37 % at 3.5 and 3.9 % at 2 (FIt-SNE's boxes need 5 nodes per unit for 0.31 %).
     More stencil nodes at a coarse spacing do not help (2 nodes per unit: 5.8 %, 3.9 %, 3.1 % for
     w = 4, 6, 8): the Cauchy kernel's poles sit 1 unit off the real axis (Runge's phenomenon).
   - *Three transforms, not seven.* The grid is convolved with the vector kernels `K^2 dx` and
     `K^2 dy` (K = 1 / (1 + d^2)) instead of `K^2` against the charges `1, y0, y1`: one forward
     FFT of the charges and two inverse ones, and the forces need no difference of large terms.
     Z = sum_ab q_a K_ab q_b comes from the forward transform alone (Parseval).
   - *Transforms one channel at a time, pruned.* A batched `irfft2` measured 4x slower per channel
     than single ones; the inverse computes only the rows and columns that hold nodes.
   - *Two threads sharing the work, not two OpenMP threads per operation.* openTSNE's attractive
     term (about 14 ms a call on one thread) runs in row blocks on a helper thread while torch
     spreads and transforms the grid on this one; then both take the two force components and the
     blocks left. Both release the GIL, and no OpenMP barrier waits on a core another process
     holds (torch with 2 threads took ~300 ms a call instead of 10-30 ms on the shared box).

   Repulsion per call at extent 238 on one thread (locked, load ~2): 27 ms at 2 nodes per unit,
   40 ms at 3, against ~330 ms for the previous 5-node boxes.
3. **openTSNE's update rule as whole-array NumPy** (:func:`_vectorised_gradient_descent`): the same
   gains, momentum, step clipping and centring, without the boolean-mask updates that cost
   ~2.4 ms an iteration at 20,000 points (serial time, beside ~20 ms for the gradient).

Why the schedule below. A t-SNE map's repulsive forces nearly cancel its attractive ones near
convergence, so a few per cent of interpolation error in the repulsion is most of the remaining
gradient (measured: 3.3 % error turned the total gradient 25 degrees away from the exact one);
that, not the iteration count, held openTSNE's default run at KL 1.78 against scikit-learn's 1.75.
The map therefore grows for 300 iterations on a coarser grid (2.5 nodes per unit, 1.6 %), cheap
while it is small, and is refined for 150 on a finer one (3 nodes per unit, 0.75 %). Early
exaggeration stays openTSNE's (250 iterations at 12, learning rate `N / 12`, momentum 0.8); its map
is under 16 units wide, so the grid's 128-node minimum makes its repulsion near exact for free
(force error ~1e-4, with 4-node stencils at that spacing, 16 nodes a point instead of 36).
Momentum 0.9 after it (0.8 in openTSNE) speeds the slow expansion of the map (KL 1.791 against
1.825 after the same 500 iterations on the default grid). KL under one common P at 20,000 points
(one run each, load ~2, scikit-learn: 1.7515), growing + refining nodes per unit and iterations:
previous 250 + 250 on 5-node boxes 1.739 in 110 s; 2 + 3, 350 + 150: 1.733 in 25 s; 2.5 + 3,
350 + 150: 1.711 in 33 s; 2.5 + 3, 300 + 150 (the default): 1.717-1.727 in 21-24 s; 2.5 + 3,
250 + 150: 1.744 in 18 s; 2 + 3, 150 + 150: 1.789. The grid's accuracy while the map grows matters
as much as the iteration count. Rounding alone (the same run with its sums in another order)
moved the KL by up to 0.01.

Where the time goes (`benchmarks/inspect_bench.py --skip-top`, 20,000 points, 2 threads, load
0.8-1.9): 23.5 s (44.1 CPU-s) in all against scikit-learn's 124.6 s, 5.3x; neighbours, affinities
and PCA 4.0 s; early exaggeration 5.2 s (21 ms an iteration); growing 7.7 s (26 ms); refining 6.6 s
(44 ms: the 3-node grid at extent ~240, m = 1,458 FFTs). The two threads keep ~1.9 cores busy, so
less work, not more overlap, is what is left: the attraction is ~14 ms of CPU an iteration and
the point-side spreading and gathering ~10 ms.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch

from convlens.errors import ConvlensError, InputError, InputTypeError

# Normal-phase schedule (after early exaggeration): (iterations, grid nodes per unit length).
_GROW = (300, 2.5)
_REFINE = (150, 3.0)
_STENCIL = 6  # interpolation nodes per point and axis
# Grid nodes a side: finer than asked while the map is small (free); at most _MAX_NODES, coarser
# than asked beyond ~680 units (the kernels' transforms then take ~200 MB, FFTs of 4,096^2).
_MIN_NODES, _MAX_NODES = 128, 2048
_FINE_SPACING = 0.12  # units between nodes, below which a 4-node stencil suffices
_ATTRACTION_BLOCKS = 16  # row blocks of the attractive term, shared out between two threads
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
    """The smallest even `m >= n` whose prime factors are 2, 3, 5 and 7 (fast FFT lengths)."""
    n += n % 2
    while True:
        m = n
        for f in (2, 3, 5, 7):
            while m % f == 0:
                m //= f
        if m == 1:
            return n
        n += 2


def _lagrange_weights(t: torch.Tensor, w: int) -> torch.Tensor:
    """`(N, w)` Lagrange basis values at `t` `(N,)` in `[0, 1)` for the nodes `-w/2 + 1 .. w/2`.

    The stencil is centred on the point (it always lies between the two middle nodes), so the
    polynomial never extrapolates, unlike FIt-SNE's fixed boxes whose edge points lie outside
    their nodes' span. Basis j is `prod_{k != j} (t - x_k) / (x_j - x_k)`: the products of the
    factors before and after j, built up as running products over whole `(N,)` vectors.
    """
    x = [k - w // 2 + 1 for k in range(w)]
    d = [t - xk for xk in x]
    before = [torch.ones_like(t)]
    for k in range(w - 1):
        before.append(before[-1] * d[k])
    after = [torch.ones_like(t)]
    for k in range(w - 1, 0, -1):
        after.append(after[-1] * d[k])
    after.reverse()
    cols = [
        before[j] * after[j] * (1.0 / float(np.prod([x[j] - x[k] for k in range(w) if k != j])))
        for j in range(w)
    ]
    return torch.stack(cols, 1)


@dataclass
class _Grid:
    """The transformed charge grid of one gradient evaluation (see :meth:`FFTGradient._charges`)."""

    n1: int  # nodes a side
    m: int  # padded FFT size
    w: int  # stencil nodes a side
    weights: torch.Tensor  # (N, w*w) interpolation weights of each point's stencil
    runs: torch.Tensor  # (N*w,) flat index of the first node of each stencil row
    qf: torch.Tensor  # (m, m/2+1) rfft2 of the charges
    kf: torch.Tensor  # (3, m, m/2+1) rfft2 of K, K^2 dx, K^2 dy
    z: float  # sum over i != j of K_ij


class FFTGradient:
    """t-SNE's KL gradient for openTSNE, the repulsion by FFT interpolation in torch (see module doc).

    Called by openTSNE's optimiser as its `negative_gradient_method`; `nodes_per_unit` can be
    changed between `optimize` calls (a coarse grid while the map grows, a fine one to refine).

    Args:
        nodes_per_unit: grid nodes per unit of map length (the Cauchy kernel's scale is 1).
        stencil: interpolation nodes per point and axis (even; 6 = quintic).
        n_threads: 1: repulsion (torch) then attraction (openTSNE) on this thread; from 2: the
            attraction starts on a helper thread while this one computes the repulsion with one
            torch thread (call :meth:`close` when done to stop the helper).
    """

    def __init__(self, nodes_per_unit: float = 3.0, stencil: int = 6, n_threads: int = 1) -> None:
        if stencil < 2 or stencil % 2:
            raise ValueError(f"stencil must be even and >= 2, got {stencil}")
        self.nodes_per_unit = nodes_per_unit
        self.stencil = stencil
        self.n_threads = n_threads
        self._kernel_key: tuple[int, float] | None = None
        self._kernel_fft = torch.empty(0)
        self._pool: ThreadPoolExecutor | None = None

    def close(self) -> None:
        """Stop the thread that computes the attraction (a later call starts a new one)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None

    def _kernels(self, m: int, h: float) -> torch.Tensor:
        """rfft2 of the kernels K, K^2 dx and K^2 dy on the `(m, m)` circulant node grid, `(3, m, m/2+1)`."""
        if (m, h) != self._kernel_key:
            # Node offsets 0 .. m/2 then negative ones: the circulant embedding of the Toeplitz
            # kernel matrix; m >= 2 n1 - 1, so no two real nodes meet an offset twice.
            i = torch.arange(m, dtype=torch.float64)
            d = torch.where(i <= m // 2, i, i - m) * h
            dx, dy = d[:, None], d[None, :]  # target minus source
            k = 1.0 / (1.0 + dx**2 + dy**2)  # (m, m)
            self._kernel_fft = torch.stack(
                [torch.fft.rfft2(g.float()) for g in (k, k * k * dx, k * k * dy)]
            )
            self._kernel_key = (m, h)
        return self._kernel_fft

    def _charges(self, y_np: np.ndarray) -> _Grid:
        """Spread the points onto the grid and transform it; Z from the transform (Parseval)."""
        y = torch.from_numpy(y_np)  # (N, 2) float64
        n = len(y)
        lo = y.min(0).values
        extent = max(float((y.max(0).values - lo).max()), 1e-12)
        # Node spacing h: finer while the map is small (free), coarser if a point flew far away
        # (the grid stays at most _MAX_NODES a side).
        h = min(1.0 / self.nodes_per_unit, extent / _MIN_NODES)
        h = max(h, extent / (_MAX_NODES - self.stencil - 1))
        # On a grid that fine (early exaggeration's map) 4 nodes a side are as exact (force error
        # 7e-5 at spacing 0.1) and spread and gather 16 nodes a point instead of 36.
        w = 4 if h <= _FINE_SPACING else self.stencil
        n1 = int(extent / h) + w + 1  # nodes a side, stencils included
        m = _fft_size(2 * n1 - 1)  # zero padding: a linear, not circular, convolution
        u = (y - lo) / h + (w // 2 - 1)  # (N, 2) in node units, first stencil node >= 0
        base = u.floor()
        t = (u - base).float()
        wx, wy = _lagrange_weights(t[:, 0], w), _lagrange_weights(t[:, 1], w)  # (N, w) each
        weights = (wx[:, :, None] * wy[:, None, :]).reshape(n, w * w)  # (N, w*w)
        first = base.long() - (w // 2 - 1)  # (N, 2) first stencil node
        corner = first[:, 0] * n1 + first[:, 1]  # (N,) flat index of the stencil's first node
        ar = torch.arange(w)
        node = (corner[:, None] + (ar[:, None] * n1 + ar).reshape(-1)).reshape(-1)  # (N*w*w,)
        # Charges on the nodes (scatter_add_ measured 2x faster than bincount here).
        q = torch.zeros(n1 * n1).scatter_add_(0, node, weights.reshape(-1))
        qf = torch.fft.rfft2(q.reshape(n1, n1), s=(m, m))  # (m, m/2+1)
        kf = self._kernels(m, h)
        # Z by Parseval, sum_ab q_a K_ab q_b = sum_k |qf_k|^2 Kf_k / m^2, no inverse transform;
        # the half spectrum counts its inner columns twice. Minus the diagonal's ones.
        power = (qf.real.square() + qf.imag.square()) * kf[0].real
        z = (2 * float(power.sum(dtype=torch.float64)) - float(power[:, 0].sum(dtype=torch.float64))
             - float(power[:, -1].sum(dtype=torch.float64))) / (m * m) - n  # fmt: skip
        # The stencil rows of each point: w runs of w consecutive nodes, (N*w,) run starts.
        runs = (corner[:, None] + ar * n1).reshape(-1)
        return _Grid(n1=n1, m=m, w=w, weights=weights, runs=runs, qf=qf, kf=kf, z=z)

    def _forces(self, grid: _Grid, c: int, out: torch.Tensor) -> None:
        """Component `c` of sum_j K_ij^2 (y_i - y_j) at every point, into `out[:, c]` `(N, 2)`."""
        n1, m, w = grid.n1, grid.m, grid.w
        # Pruned inverse: only the first n1 rows and columns are nodes. One channel at a time: a
        # batched irfft2 measured 4x slower per channel.
        rows = torch.fft.ifft(grid.qf * grid.kf[1 + c], dim=0)[:n1]  # (n1, m/2+1)
        force = torch.fft.irfft(rows, n=m, dim=1)[:, :n1].contiguous()  # (n1, n1)
        # Every window of w nodes is a row of an unfolded view: one gather per run.
        at_nodes = force.view(-1).unfold(0, w, 1).index_select(0, grid.runs)  # (N*w, w)
        out[:, c] = (at_nodes.view(len(out), w * w) * grid.weights).sum(1)

    def repulsion(self, y_np: np.ndarray) -> tuple[float, np.ndarray]:
        """Z = sum over i != j of `1 / (1 + |y_i - y_j|^2)` and the repulsive gradient `(N, 2)`."""
        grid = self._charges(y_np)
        f = torch.empty(len(y_np), 2, dtype=torch.float64)
        for c in range(2):
            self._forces(grid, c, f)
        return grid.z, (-f / grid.z).numpy()

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
        n = len(y)
        # Work shared between this thread and a helper (both release the GIL: openTSNE's
        # attraction and torch's operators): openTSNE's attractive term in row blocks, and the two
        # force components of the repulsion once the grid is transformed. Each thread takes the
        # next piece left as it comes free: the helper starts on the attraction while this one
        # spreads and transforms the grid, then both take force components and blocks. Every
        # piece writes its own rows or column and the block sums are added in block order, so
        # the result does not depend on which thread took what.
        attractive = np.zeros_like(y)
        forces = torch.empty(n, 2, dtype=torch.float64)
        bounds = np.linspace(0, n, _ATTRACTION_BLOCKS + 1).astype(int)
        sums: list[tuple[float, float]] = [(0.0, 0.0)] * _ATTRACTION_BLOCKS
        blocks = iter(range(_ATTRACTION_BLOCKS))  # next() on these is atomic under the GIL
        components = iter(range(2))
        grids: list[_Grid] = []
        transformed = threading.Event()

        def attract() -> None:
            for b in blocks:
                s, e = bounds[b], bounds[b + 1]
                # One OpenMP thread: its pool and torch's spin against each other on a 2-core
                # machine (200 ms a call instead of 13 ms, measured).
                sums[b] = _tsne.estimate_positive_gradient_nn(
                    P.indices, P.indptr[s : e + 1], P.data, y[s:e], y, attractive[s:e], dof,
                    num_threads=1, should_eval_error=should_eval_error,
                )  # fmt: skip

        def repel() -> None:
            for c in components:
                self._forces(grids[0], c, forces)

        def helper() -> None:
            attract()
            transformed.wait()
            if grids:  # else this thread failed, and raises
                repel()

        pending = None
        if self.n_threads >= 2:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="tsne-gradient")
            pending = self._pool.submit(helper)
        try:
            with _torch_threads(1 if pending is not None else self.n_threads):
                grids.append(self._charges(y))
                transformed.set()
                repel()
            attract()
        finally:
            transformed.set()
            if pending is not None:
                pending.result()
        z = grids[0].z
        gradient = attractive - (forces / z).numpy()
        sum_p, kl = (float(v) for v in np.sum(sums, axis=0))
        if should_eval_error:
            kl += sum_p * np.log(z + 1e-12)
        return float(kl), gradient


def _vectorised_gradient_descent() -> Any:
    """openTSNE's `gradient_descent`, its update written as whole-array NumPy operations.

    The same rule (Jacobs' gains +0.2 / x0.8 + `min_gain`, momentum, each point's step clipped to
    `max_step_norm`, the map re-centred) for the FFT path, where openTSNE's boolean-mask updates
    cost ~2.4 ms an iteration at 20,000 points, as much as a tenth of the gradient itself; the
    rest (exaggeration, the final KL) as openTSNE does it. Built in a function so that openTSNE
    is imported only when a map is made.
    """
    from openTSNE.tsne import gradient_descent

    class VectorisedGradientDescent(gradient_descent):
        gains: np.ndarray | None  # (N, 2), kept between optimize calls as openTSNE keeps it
        update: np.ndarray | None  # (N, 2)

        def __call__(
            self,
            embedding: np.ndarray,
            P: Any,
            n_iter: int,
            objective_function: Any,
            learning_rate: float,
            momentum: float = 0.8,
            exaggeration: float | None = None,
            dof: float = 1,
            min_gain: float = 0.01,
            max_grad_norm: float | None = None,
            max_step_norm: float | None = 5,
            reference_embedding: Any = None,
            use_callbacks: bool = False,
            verbose: bool = False,
            **unused: Any,
        ) -> tuple[float, np.ndarray]:
            if max_grad_norm is not None or reference_embedding is not None or use_callbacks:
                raise ValueError("gradient clipping, transforms and callbacks are not supported")
            y = embedding.view(np.ndarray)  # (N, 2), updated in place as openTSNE does
            update: np.ndarray = np.zeros_like(y) if self.update is None else self.update
            gains: np.ndarray = np.ones_like(y) if self.gains is None else self.gains
            # openTSNE exaggerates P in place; a scaled copy leaves the caller's P alone.
            p_opt = P * exaggeration if exaggeration not in (None, 1) else P
            start = time.perf_counter()
            for _iteration in range(n_iter):
                _error, grad = objective_function(y, p_opt, dof=dof, should_eval_error=False)
                flipped = np.sign(update) != np.sign(grad)  # (N, 2)
                gains = np.where(flipped, gains + 0.2, gains * 0.8 + min_gain)
                update = momentum * update - learning_rate * gains * grad
                if max_step_norm is not None:
                    norm = np.sqrt(np.square(update).sum(1))  # (N,)
                    update *= np.minimum(1.0, max_step_norm / np.maximum(norm, 1e-300))[:, None]
                y += update
                y -= y.mean(0)
            self.update, self.gains = update, gains
            error, _grad = objective_function(y, P, dof=dof, should_eval_error=True)
            if verbose:
                print(
                    f"{n_iter} iterations (exaggeration {exaggeration or 1:g}, learning rate "
                    f"{learning_rate:g}) in {time.perf_counter() - start:.1f} s, KL {error:.4f}"
                )
            return error, embedding

    return VectorisedGradientDescent()


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
    `N`, momentum 0.9: from 10,000 points the repulsion by :class:`FFTGradient`, first on a grid of
    2.5 nodes per unit, the last 150 (or half of `n_iter`, if smaller) on 3 nodes per unit; below,
    openTSNE's Barnes-Hut repulsion throughout.

    Args:
        features: `(N, D)` vectors, e.g. penultimate features from :func:`extract_features`.
        perplexity: effective number of neighbours; default :func:`default_perplexity`.
        n_iter: optimisation iterations after early exaggeration.
        seed: random seed (the map is reproducible for a given seed).
        n_jobs: threads for the neighbour search, the affinities and the gradient (from 2, the
            attraction and the repulsion run side by side); default 1 below
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
    fft = FFTGradient(_GROW[1], _STENCIL, n_threads=jobs) if n >= _FFT_FROM else None
    embedding = TSNEEmbedding(
        pca(x, 2, random_state=seed),
        affinities,
        negative_gradient_method=fft if fft is not None else "bh",
        n_jobs=jobs,
        random_state=seed,
        verbose=verbose,
        optimizer=_vectorised_gradient_descent() if fft is not None else None,
    )
    try:
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
                fft.nodes_per_unit = nodes
            embedding.optimize(n_iter=iters, learning_rate=n, momentum=_MOMENTUM, inplace=True)
    finally:
        if fft is not None:
            fft.close()
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
