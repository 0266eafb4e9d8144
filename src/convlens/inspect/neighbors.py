"""Nearest training images in feature space beside the nearest in pixel space.

The notes' point: images close in the penultimate layer's feature space are of the same kind even when
their pixels differ, while the nearest in pixel (L2) distance are whatever happens to overlap. Both
searches are exact and streamed over the whole data set in batches: a distance matrix (queries x batch)
from one matrix product, merged into a running top-k, so memory is one batch, never the data set's
features.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from convlens import models
from convlens.data.dataset import Dataset
from convlens.errors import ConvlensError, InputError
from convlens.inspect.features import batches, check_data_images, extract_features, to_input
from convlens.models.hooks import evaluating, model_device

Metric = Literal["cosine", "l2"]
METRICS: tuple[str, ...] = ("cosine", "l2")


@dataclass
class Neighbors:
    """The k nearest data-set images of each query, in feature space and in pixel space.

    Attributes:
        feature_indices: int64 `(Q, k)`, data-set indices, nearest first.
        feature_distances: float64 `(Q, k)`: cosine distance `1 - cos` or Euclidean distance of the
            penultimate features, per `metric`.
        pixel_indices: int64 `(Q, k)`, nearest first by Euclidean distance of the raw pixels.
        pixel_distances: float64 `(Q, k)`, Euclidean distance of the pixels in [0, 1] units (exact:
            computed from the integer pixel values in float64).
        metric: the feature-space metric.
    """

    feature_indices: torch.Tensor
    feature_distances: torch.Tensor
    pixel_indices: torch.Tensor
    pixel_distances: torch.Tensor
    metric: str


class _TopK:
    """Running k smallest values per row, with their column indices, over streamed column blocks."""

    def __init__(self, rows: int, k: int, device: torch.device) -> None:
        self.k = k
        self.values = torch.empty(rows, 0, dtype=torch.float64, device=device)
        self.indices = torch.empty(rows, 0, dtype=torch.int64, device=device)

    def add(self, dist: torch.Tensor, offset: int) -> None:
        """Merge a `(rows, B)` block whose columns are data-set items `offset .. offset + B - 1`."""
        idx = torch.arange(offset, offset + dist.shape[1], device=dist.device)
        values = torch.cat([self.values, dist], dim=1)  # (rows, <= k + B)
        indices = torch.cat([self.indices, idx.expand(dist.shape[0], -1)], dim=1)
        k = min(self.k, values.shape[1])
        self.values, pos = values.topk(k, dim=1, largest=False, sorted=True)
        self.indices = indices.gather(1, pos)


def _sq_l2(q: torch.Tensor, x: torch.Tensor, q_sq: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances `(Q, B)` from `|q|^2 + |x|^2 - 2 q.x`, one matrix product."""
    d = q_sq[:, None] + (x * x).sum(1)[None, :] - 2.0 * (q @ x.T)
    return d.clamp_min_(0.0)  # rounding can make an exact 0 slightly negative


def neighbors(
    model: nn.Module,
    queries: torch.Tensor,
    dataset: Dataset | torch.Tensor,
    k: int = 5,
    *,
    metric: Metric | str = "cosine",
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Neighbors:
    """Exact k nearest neighbours of each query in the data set, in feature and in pixel space.

    Args:
        model: any module; features are its penultimate layer (`convlens.models.forward_features`).
        queries: uint8 `(Q, C, H, W)` images, the data set's shape. Pixel space is the raw pixels,
            so this method (alone) takes the data set's uint8 pixels, not normalised images.
        dataset: a :class:`~convlens.data.Dataset` (usually the training split) or uint8 `(N, C, H, W)`.
        k: neighbours per query (at most N).
        metric: feature-space distance, `"cosine"` (1 - cosine similarity) or `"l2"`.
        mean: normalisation mean in [0, 1] units; default the data set's (its training split's).
        std: normalisation standard deviation; default the data set's.
        batch_size: data-set images per step (one forward pass and one distance block).
        device: where to run; default the model's device.
        progress: show a Rich progress bar.

    Returns:
        :class:`Neighbors`, tensors on the CPU.
    """
    if metric not in METRICS:
        raise ConvlensError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    images = dataset.images if isinstance(dataset, Dataset) else dataset
    if isinstance(dataset, Dataset):
        mean = mean if mean is not None else dataset.mean
        std = std if std is not None else dataset.std
    if mean is None or std is None:
        raise InputError("pass mean and std (the training split's) with a tensor data set")
    check_data_images(images, mean, std)
    if not isinstance(queries, torch.Tensor) or queries.dtype != torch.uint8:
        raise InputError(
            "queries must be uint8 (Q, C, H, W) pixels like the data set's (pixel-space distances "
            "are taken on the raw pixels)"
        )
    if queries.shape[1:] != images.shape[1:]:
        raise ConvlensError(
            f"query images are {tuple(queries.shape[1:])} but the data set's are "
            f"{tuple(images.shape[1:])} (C, H, W); bring them to the data set's shape first"
        )
    n = int(images.shape[0])
    if n == 0:
        raise ConvlensError("the data set is empty")
    if k < 1:
        raise ConvlensError(f"k must be at least 1, got {k}")
    dev = torch.device(device) if device is not None else model_device(model)
    # Queries: (Q, D) features and (Q, P) pixels. float64 so the pixel distances of integer values are
    # exact (sums of products below 2**53) and feature distances match a NumPy reference to ~1e-12.
    q_feat = extract_features(model, queries, mean=mean, std=std, device=dev).to(dev, torch.float64)
    if metric == "cosine":
        q_feat = F.normalize(q_feat, dim=1)
    q_feat_sq = (q_feat * q_feat).sum(1)
    q_pix = queries.flatten(1).to(dev, torch.float64)  # (Q, P), 0..255
    q_pix_sq = (q_pix * q_pix).sum(1)

    by_feature = _TopK(len(queries), k, dev)
    by_pixel = _TopK(len(queries), k, dev)
    with evaluating(model), torch.inference_mode():
        for sl in batches(n, batch_size, description="neighbours", progress=progress):
            batch = images[sl]
            f = models.forward_features(model, to_input(batch, mean, std, dev))  # (B, D)
            f = f.flatten(1).to(torch.float64)
            if metric == "cosine":
                d = 1.0 - q_feat @ F.normalize(f, dim=1).T  # (Q, B)
            else:
                d = _sq_l2(q_feat, f, q_feat_sq)
            by_feature.add(d, sl.start)
            x = batch.flatten(1).to(dev, torch.float64)  # (B, P)
            by_pixel.add(_sq_l2(q_pix, x, q_pix_sq), sl.start)

    feat_d = by_feature.values if metric == "cosine" else by_feature.values.sqrt()
    return Neighbors(
        feature_indices=by_feature.indices.cpu(),
        feature_distances=feat_d.cpu(),
        pixel_indices=by_pixel.indices.cpu(),
        pixel_distances=(by_pixel.values.sqrt() / 255.0).cpu(),
        metric=str(metric),
    )


class PixelSearch:
    """Exact Euclidean nearest neighbours in raw pixel space, ready for many single queries.

    :func:`neighbors` converts every data-set batch from uint8 for each call; a web app that answers
    one click at a time keeps the pixels as float32 once (4 bytes a pixel: 614 MB for CIFAR-10's
    50,000 training images) with their squared norms, so a query is one matrix-vector product. The
    float32 distances only choose candidates: the best ``4 k + 32`` are re-ranked from the integer
    pixels in float64, so the answer equals a float64 brute force (as :func:`neighbors`' pixel half).

    Args:
        images: uint8 ``(N, C, H, W)`` the searched images.
    """

    def __init__(self, images: torch.Tensor) -> None:
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise InputError("pixel search takes uint8 (N, C, H, W) images")
        self.images = images
        self.flat = images.flatten(1).float()  # (N, P), 0..255, exact in float32
        self.sq = (self.flat * self.flat).sum(1)  # (N,)

    def __len__(self) -> int:
        return int(self.flat.shape[0])

    def search(self, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The `k` nearest images of uint8 `queries` ``(Q, C, H, W)``: int64 indices ``(Q, k)``,
        nearest first (ties: lower index first), and float64 distances in [0, 1] pixel units."""
        if queries.dtype != torch.uint8 or queries.shape[1:] != self.images.shape[1:]:
            raise InputError(
                f"queries must be uint8 (Q, {', '.join(map(str, self.images.shape[1:]))}) pixels"
            )
        k = min(k, len(self))
        q = queries.flatten(1).float()  # (Q, P)
        approx = self.sq[None, :] - 2.0 * (q @ self.flat.T)  # (Q, N), |q|^2 left out: same order
        m = min(len(self), 4 * k + 32)
        cand = approx.topk(m, dim=1, largest=False).indices  # (Q, m)
        exact = (
            (
                self.images[cand.flatten()].flatten(1).double()
                - queries.flatten(1).double().repeat_interleave(m, 0)
            )
            .pow(2)
            .sum(1)
            .view(len(queries), m)
        )  # (Q, m) float64 squared distances of the candidates, from the integer pixels
        # Sort by (distance, index): a stable sort of the index-ordered candidates.
        order = cand.argsort(dim=1)
        cand, exact = cand.gather(1, order), exact.gather(1, order)
        best = exact.argsort(dim=1, stable=True)[:, :k]
        return cand.gather(1, best), exact.gather(1, best).sqrt() / 255.0
