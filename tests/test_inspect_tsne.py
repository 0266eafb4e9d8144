"""t-SNE maps and their image-grid form.

Oracles: sklearn's `trustworthiness` (how well the map keeps each point's neighbours), sklearn's
exact t-SNE and an exact KL divergence computed here in NumPy, and a per-cell brute-force search
for the grid.
"""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from sklearn.manifold import trustworthiness

from convlens.errors import ConvlensError
from convlens.inspect import tsne, tsne_grid
from convlens.inspect.tsne import default_perplexity
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
    """openTSNE's FFT repulsion (used from 10,000 points) on a small set, forced on."""
    monkeypatch.setattr(importlib.import_module("convlens.inspect.tsne"), "_FFT_FROM", 0)
    x, y = clusters()
    emb = tsne(x, seed=0, n_jobs=1)
    assert np.isfinite(emb.coords).all() and 0 < emb.kl_divergence < 3
    assert trustworthiness(x, emb.coords, n_neighbors=10) > 0.9
    d = ((emb.coords[:, None] - emb.coords[None]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    assert (y[d.argmin(1)] == y).mean() > 0.99


def exact_kl(x: np.ndarray, y: np.ndarray, perplexity: float) -> float:
    """KL(P || Q) of map `y` for points `x`, exactly: P from a binary search for each point's
    Gaussian bandwidth over all other points (van der Maaten's exact t-SNE), Q over all pairs."""
    d = ((x[:, None] - x[None]) ** 2).sum(-1)  # (N, N) squared distances
    n = len(x)
    p = np.zeros((n, n))
    target = np.log(perplexity)
    for i in range(n):
        row = np.delete(d[i], i)
        row = row - row.min()
        lo, hi = 0.0, np.inf
        beta = 1.0 / np.median(row)
        for _ in range(200):
            w = np.exp(-row * beta)
            q = w / w.sum()
            h = -(q * np.log(np.maximum(q, 1e-300))).sum()  # entropy in nats
            if abs(h - target) < 1e-8:
                break
            if h > target:  # too flat: a narrower Gaussian
                lo = beta
                beta = beta * 2 if hi == np.inf else (beta + hi) / 2
            else:
                hi = beta
                beta = (beta + lo) / 2
        p[i, np.arange(n) != i] = q
    p = (p + p.T) / (2 * n)
    num = 1 / (1 + ((y[:, None] - y[None]) ** 2).sum(-1))
    np.fill_diagonal(num, 0)
    qq = num / num.sum()
    mask = p > 0
    return float((p[mask] * np.log(p[mask] / qq[mask])).sum())


def test_tsne_reaches_sklearns_kl_divergence() -> None:
    """The map is as good an optimum as sklearn's exact t-SNE finds, by one exact KL for both."""
    from sklearn.manifold import TSNE

    x, _ = clusters(n_per=50, d=10, seed=2)
    ours = tsne(x, seed=0, n_jobs=1)
    ref = TSNE(perplexity=30.0, init="pca", method="exact", random_state=0).fit_transform(x)
    kl_ours, kl_ref = exact_kl(x, ours.coords, 30.0), exact_kl(x, ref, 30.0)
    assert kl_ours < kl_ref + 0.05, (kl_ours, kl_ref)
    assert abs(ours.kl_divergence - kl_ours) < 0.1, (ours.kl_divergence, kl_ours)
