"""Nearest neighbours against a NumPy brute-force search over the whole data set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convlens import models
from convlens.data import Dataset, normalize
from convlens.errors import ConvlensError
from convlens.inspect import neighbors

MEAN, STD = (0.4,), (0.3,)


@pytest.fixture(scope="module")
def setup() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = models.create("lenet5", in_channels=1).eval()
    g = torch.Generator().manual_seed(1)
    data = torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8, generator=g)
    queries = torch.randint(0, 256, (4, 1, 28, 28), dtype=torch.uint8, generator=g)
    queries[0] = data[17]  # an exact copy: its own nearest, at distance 0 in both spaces
    return model, data, queries


def brute_force(
    model: nn.Module, queries: torch.Tensor, data: torch.Tensor, k: int, metric: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every distance computed in NumPy float64, then sorted."""
    with torch.no_grad():
        fq = model.forward_features(normalize(queries, MEAN, STD)).double().numpy()  # type: ignore[operator]
        fx = model.forward_features(normalize(data, MEAN, STD)).double().numpy()  # type: ignore[operator]
    if metric == "cosine":
        fq_n = fq / np.linalg.norm(fq, axis=1, keepdims=True)
        fx_n = fx / np.linalg.norm(fx, axis=1, keepdims=True)
        fd = 1.0 - fq_n @ fx_n.T
    else:
        fd = np.sqrt(((fq[:, None, :] - fx[None, :, :]) ** 2).sum(-1))
    pq = queries.flatten(1).double().numpy() / 255
    px = data.flatten(1).double().numpy() / 255
    pd = np.sqrt(((pq[:, None, :] - px[None, :, :]) ** 2).sum(-1))
    fi, pi = (
        np.argsort(fd, axis=1, kind="stable")[:, :k],
        np.argsort(pd, axis=1, kind="stable")[:, :k],
    )
    return fi, np.take_along_axis(fd, fi, 1), pi, np.take_along_axis(pd, pi, 1)


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_neighbors_equal_numpy_brute_force(setup: tuple, metric: str) -> None:
    model, data, queries = setup
    k = 7
    # batch_size 64 does not divide 300: the running top-k is merged across 5 uneven blocks.
    nb = neighbors(model, queries, data, k, metric=metric, mean=MEAN, std=STD, batch_size=64)
    fi, fd, pi, pd = brute_force(model, queries, data, k, metric)
    np.testing.assert_array_equal(nb.feature_indices.numpy(), fi)
    np.testing.assert_allclose(nb.feature_distances.numpy(), fd, atol=1e-5)
    np.testing.assert_array_equal(nb.pixel_indices.numpy(), pi)
    np.testing.assert_allclose(nb.pixel_distances.numpy(), pd, rtol=1e-12, atol=1e-12)
    assert nb.pixel_indices[0, 0] == 17 and nb.pixel_distances[0, 0] == 0
    assert nb.feature_indices[0, 0] == 17


def test_neighbors_take_a_dataset_and_its_normalisation(setup: tuple) -> None:
    model, data, queries = setup
    ds = Dataset("t", "train", data, torch.zeros(len(data), dtype=torch.int64), ["a"], MEAN, STD)
    nb = neighbors(model, queries, ds, 3)
    fi, _, pi, _ = brute_force(model, queries, data, 3, "cosine")
    np.testing.assert_array_equal(nb.feature_indices.numpy(), fi)
    np.testing.assert_array_equal(nb.pixel_indices.numpy(), pi)


def test_neighbors_k_larger_than_dataset(setup: tuple) -> None:
    model, data, queries = setup
    nb = neighbors(model, queries, data[:5], 9, mean=MEAN, std=STD, batch_size=2)
    assert nb.feature_indices.shape == (4, 5)
    assert sorted(nb.pixel_indices[1].tolist()) == [0, 1, 2, 3, 4]


def test_neighbors_errors(setup: tuple) -> None:
    model, data, queries = setup
    with pytest.raises(ConvlensError, match="unknown metric 'cos'"):
        neighbors(model, queries, data, 3, metric="cos", mean=MEAN, std=STD)
    with pytest.raises(ConvlensError, match=r"\(1, 32, 32\)"):
        neighbors(model, torch.zeros(1, 1, 32, 32, dtype=torch.uint8), data, 3, mean=MEAN, std=STD)


def test_pixel_search_equals_a_float64_brute_force() -> None:
    """PixelSearch ranks in float32 and re-ranks exactly: it equals a NumPy float64 brute force,
    ties (duplicated images) broken by the lower index."""
    from convlens.inspect import PixelSearch

    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (500, 3, 8, 8), dtype=torch.uint8, generator=g)
    images[300] = images[17]  # an exact duplicate: a tie at distance 0 for query 17
    images[301] = images[17]
    queries = images[[17, 42, 499]]
    idx, dist = PixelSearch(images).search(queries, 6)
    x = images.flatten(1).numpy().astype(np.float64)
    for r, q in enumerate(queries.flatten(1).numpy().astype(np.float64)):
        d = ((x - q) ** 2).sum(1)
        order = np.lexsort((np.arange(len(d)), d))[:6]  # by distance, then index
        assert idx[r].tolist() == order.tolist()
        np.testing.assert_allclose(dist[r].numpy(), np.sqrt(d[order]) / 255, rtol=1e-12)
