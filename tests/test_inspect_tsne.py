"""t-SNE maps and their image-grid form.

Oracles: sklearn's `trustworthiness` (how well the map keeps each point's neighbours), sklearn's
brute-force neighbours, a brute-force repulsion (Z and forces over all pairs), NumPy polynomials
for the interpolation weights, openTSNE's own FFT objective and attraction, and a per-cell
brute-force search for the grid.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import numpy.polynomial.polynomial as npoly
import pytest
import torch
from sklearn.manifold import trustworthiness

from convlens.errors import ConvlensError
from convlens.inspect import tsne, tsne_grid
from convlens.inspect.tsne import (
    FFTGradient,
    _lagrange_weights,
    default_perplexity,
    exact_neighbors,
)
from convlens.render.layers import tsne_image_grid, tsne_scatter


def clusters(
    n_per: int = 80, k: int = 4, d: int = 20, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, (k, d))
    x = np.concatenate([c + rng.normal(0, 1, (n_per, d)) for c in centres])
    return x, np.repeat(np.arange(k), n_per)


def test_tsne_keeps_neighbourhoods_and_separates_clusters() -> None:
    x, y = clusters()
    emb = tsne(torch.from_numpy(x).float(), seed=0, n_jobs=1)
    assert emb.coords.shape == (320, 2) and np.isfinite(emb.coords).all()
    assert trustworthiness(x, emb.coords, n_neighbors=10) > 0.9
    assert emb.perplexity == 30 and 0 < emb.kl_divergence < 3
    # Every point's nearest map neighbour is of its own cluster.
    d = ((emb.coords[:, None] - emb.coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(1)] == y).mean() > 0.99


def test_tsne_is_reproducible_for_a_seed() -> None:
    x, _ = clusters(n_per=30)
    a = tsne(x, seed=3, n_jobs=1).coords
    np.testing.assert_array_equal(a, tsne(x, seed=3, n_jobs=1).coords)


def test_tsne_small_inputs() -> None:
    assert default_perplexity(20) == 6.0 and default_perplexity(10_000) == 30.0
    x, _ = clusters(n_per=5, k=2)
    assert tsne(x, n_jobs=1).coords.shape == (10, 2)
    with pytest.raises(ConvlensError, match="at least 5 points"):
        tsne(x[:3])
    with pytest.raises(ConvlensError, match=r"perplexity 30\.0 is out of range for 10 points"):
        tsne(x, perplexity=30)


def test_exact_neighbors_equal_sklearn_brute_force() -> None:
    from sklearn.neighbors import NearestNeighbors

    x = np.random.default_rng(1).normal(size=(700, 12))
    idx, dist = exact_neighbors(x, 20, block=256)  # several blocks
    ref_dist, ref_idx = NearestNeighbors(n_neighbors=21, algorithm="brute").fit(x).kneighbors(x)
    np.testing.assert_array_equal(idx, ref_idx[:, 1:])  # column 0 is the point itself
    np.testing.assert_allclose(dist, ref_dist[:, 1:], rtol=1e-10)


def exact_repulsion(y: np.ndarray) -> tuple[float, np.ndarray]:
    """Brute force: Z over all i != j and the repulsive gradient -sum_j q_ij^2 Z (y_i - y_j) / Z."""
    diff = y[:, None, :] - y[None, :, :]  # (N, N, 2)
    k = 1.0 / (1.0 + (diff**2).sum(-1))
    np.fill_diagonal(k, 0.0)
    z = k.sum()
    return float(z), -((k**2)[:, :, None] * diff).sum(1) / z


def spread_clusters(extent: float) -> np.ndarray:
    """1,500 points in five 2-D clusters scaled to a map `extent` units wide."""
    x, _ = clusters(n_per=300, k=5, d=2, seed=2)
    return np.ascontiguousarray((x - x.mean(0)) * extent / np.ptp(x, 0).max())


@pytest.mark.parametrize("extent", [10.0, 20.0])  # 4- and 6-node stencils
def test_fft_repulsion_on_a_small_map_matches_brute_force(extent: float) -> None:
    """Below `_MIN_NODES` units the grid is finer than asked, so the repulsion is near exact."""
    y = spread_clusters(extent)
    z_ref, g_ref = exact_repulsion(y)
    z, g = FFTGradient(2.0).repulsion(y)
    assert abs(z - z_ref) / z_ref < 5e-5
    assert np.linalg.norm(g - g_ref) / np.linalg.norm(g_ref) < 3e-4


@pytest.mark.parametrize("extent", [90.0, 300.0])  # the 128-node minimum grid is coarser here
def test_fft_repulsion_matches_brute_force(extent: float) -> None:
    y = spread_clusters(extent)
    z_ref, g_ref = exact_repulsion(y)
    errors = []
    for nodes_per_unit in (2.0, 3.0):
        z, g = FFTGradient(nodes_per_unit).repulsion(y)
        assert abs(z - z_ref) / z_ref < 3e-3
        errors.append(np.linalg.norm(g - g_ref) / np.linalg.norm(g_ref))
    assert errors[0] < 0.05 and errors[1] < 0.01 and errors[1] < errors[0] / 2, errors


@pytest.mark.parametrize("w", [2, 4, 6, 8])
def test_lagrange_weights_reproduce_polynomials(w: int) -> None:
    """Interpolation on a stencil of w nodes is exact for polynomials of degree w - 1 (NumPy)."""
    rng = np.random.default_rng(w)
    coeffs = rng.normal(size=w)  # degree w - 1
    t = rng.uniform(0, 1, 50)
    nodes = np.arange(w) - (w // 2 - 1)  # centred: t lies between the two middle nodes
    weights = _lagrange_weights(torch.from_numpy(t), w).numpy()  # (50, w)
    np.testing.assert_allclose(weights @ npoly.polyval(nodes, coeffs), npoly.polyval(t, coeffs))
    np.testing.assert_allclose(weights.sum(1), 1.0)


def affinities(n_per: int = 250, k: int = 4, seed: int = 3) -> tuple[np.ndarray, Any]:
    from openTSNE.affinity import PerplexityBasedNN

    x, _ = clusters(n_per=n_per, k=k, d=10, seed=seed)
    return x, PerplexityBasedNN(x, perplexity=30, method="exact", random_state=0).P


def test_fft_gradient_matches_opentsne() -> None:
    """Our objective against openTSNE's own FFT gradient and KL on the same P and map."""
    from openTSNE.tsne import kl_divergence_fft

    x, p = affinities()
    y = np.random.default_rng(0).normal(0, 4, (len(x), 2))
    fft = {"n_interpolation_points": 3, "min_num_intervals": 50, "ints_in_interval": 1}
    kl_ref, g_ref = kl_divergence_fft(y.copy(), p, 1, fft, should_eval_error=True)
    kl, g = FFTGradient(3.0)(y.copy(), p, 1, should_eval_error=True)
    assert abs(kl - kl_ref) < 1e-3 * kl_ref
    assert np.linalg.norm(g - g_ref) < 1e-2 * np.linalg.norm(g_ref)


def test_fft_gradient_attraction_in_blocks_on_two_threads_equals_opentsne() -> None:
    """The attraction, shared out in row blocks between two threads, equals openTSNE's one call."""
    from openTSNE import _tsne

    x, p = affinities()
    y = np.random.default_rng(1).normal(0, 30, (len(x), 2))
    one, two = FFTGradient(3.0, n_threads=1), FFTGradient(3.0, n_threads=2)
    try:
        kl1, g1 = one(y, p, 1, should_eval_error=True)
        kl2, g2 = two(y, p, 1, should_eval_error=True)
    finally:
        two.close()
    np.testing.assert_array_equal(g1, g2)
    assert kl1 == kl2
    z, g_ref = one.repulsion(y)
    sum_p, kl_ref = _tsne.estimate_positive_gradient_nn(
        p.indices, p.indptr, p.data, y, y, g_ref, 1, num_threads=1, should_eval_error=True
    )
    np.testing.assert_allclose(g1, g_ref, rtol=1e-12, atol=1e-15)
    assert kl1 == pytest.approx(kl_ref + sum_p * np.log(z + 1e-12), rel=1e-12)


def test_tsne_grid_equals_per_cell_brute_force() -> None:
    rng = np.random.default_rng(0)
    coords = np.concatenate([rng.normal(0, 1, (200, 2)), rng.normal(6, 0.5, (50, 2))])
    rows, cols = 7, 9
    grid = tsne_grid(coords, rows, cols)
    lo, hi = coords.min(0), coords.max(0)
    cw, ch = (hi[0] - lo[0]) / cols, (hi[1] - lo[1]) / rows
    for r in range(rows):
        for c in range(cols):
            # Cell (r, c): x in [lo_x + c cw, ...), y in (hi_y - (r + 1) ch, hi_y - r ch]; row 0 on top.
            x0, y1 = lo[0] + c * cw, hi[1] - r * ch
            inside = [
                i for i, (x, y) in enumerate(coords)
                if (x0 <= x < x0 + cw or (c == cols - 1 and x == hi[0]))
                and (y1 - ch < y <= y1 or (r == rows - 1 and y == lo[1]))
            ]  # fmt: skip
            if not inside:
                assert grid[r, c] == -1
                continue
            centre = np.array([x0 + cw / 2, y1 - ch / 2])
            best = min(inside, key=lambda i: float(((coords[i] - centre) ** 2).sum()))
            assert grid[r, c] == best, (r, c)
    assert (grid == -1).any() and len(set(grid[grid >= 0].tolist())) == (grid >= 0).sum()


def test_tsne_figures() -> None:
    rng = np.random.default_rng(0)
    coords = rng.normal(size=(40, 2))
    labels = np.arange(40) % 3
    fig = tsne_scatter(coords, labels, ["a", "b", "c"])
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["a", "b", "c"]
    images = torch.randint(0, 256, (40, 1, 6, 6), dtype=torch.uint8)
    grid = tsne_grid(coords, 4, 5)
    fig = tsne_image_grid(grid, images)
    canvas = np.asarray(fig.axes[0].images[0].get_array())
    assert canvas.shape == (24, 30)
    r, c = np.argwhere(grid >= 0)[0]
    np.testing.assert_allclose(
        canvas[r * 6 : r * 6 + 6, c * 6 : c * 6 + 6], images[grid[r, c], 0].numpy() / 255
    )


@pytest.mark.slow
def test_tsne_fft_path_keeps_neighbourhoods(monkeypatch: pytest.MonkeyPatch) -> None:
    """The grow-then-refine FFT path (used from 10,000 points) on a small set, forced on."""
    monkeypatch.setattr(importlib.import_module("convlens.inspect.tsne"), "_FFT_FROM", 0)
    x, y = clusters()
    emb = tsne(x, seed=0, n_jobs=1)
    assert np.isfinite(emb.coords).all() and 0 < emb.kl_divergence < 3
    assert trustworthiness(x, emb.coords, n_neighbors=10) > 0.9
    d = ((emb.coords[:, None] - emb.coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(1)] == y).mean() > 0.99


def test_vectorised_gradient_descent_equals_opentsne() -> None:
    """Our vectorised update against openTSNE's own gradient descent, same objective and steps."""
    from openTSNE.tsne import gradient_descent

    from convlens.inspect.tsne import _vectorised_gradient_descent

    x, p = affinities(n_per=100)
    y0 = np.random.default_rng(2).normal(0, 1e-2, (len(x), 2))
    fft = FFTGradient(3.0)
    maps, kls = [], []
    for optimizer in (gradient_descent(), _vectorised_gradient_descent()):
        y = y0.copy()
        for exaggeration, lr, momentum, n_iter in ((12.0, 30.0, 0.8, 40), (None, 400.0, 0.9, 40)):
            # A fresh P each phase: openTSNE exaggerates its P in place and divides it back,
            # which need not restore every bit.
            kl, y = optimizer(
                embedding=y, P=p.copy(), n_iter=n_iter, objective_function=fft,
                learning_rate=lr, momentum=momentum, exaggeration=exaggeration,
            )  # fmt: skip
        maps.append(y)
        kls.append(kl)
    assert np.abs(maps[0]).max() > 1  # the map grew: steps were taken
    np.testing.assert_allclose(maps[1], maps[0], rtol=1e-9, atol=1e-9)
    assert kls[1] == pytest.approx(kls[0], rel=1e-9)


def test_fft_repulsion_of_a_map_with_a_far_outlier_stays_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A point flung far away coarsens the grid to `_MAX_NODES` a side instead of growing it."""
    module = importlib.import_module("convlens.inspect.tsne")
    monkeypatch.setattr(module, "_MAX_NODES", 256)
    y = spread_clusters(20.0)
    y[0] = [5000.0, 0.0]  # at 3 nodes per unit: a 15,000-node grid without the cap
    _, g_ref = exact_repulsion(y)
    fft = FFTGradient(3.0)
    z, g = fft.repulsion(y)
    assert fft._kernel_fft.shape[1] <= 2 * 256  # (3, m, m/2+1), m padded from 2 * 256 - 1
    # A coarse grid (20 units a node) cannot resolve the clusters, but the sums stay finite and
    # the outlier, alone out there, still feels the rest of the map at its distance.
    assert np.isfinite(g).all() and np.isfinite(z)
    assert np.sign(g[0, 0]) == np.sign(g_ref[0, 0])
