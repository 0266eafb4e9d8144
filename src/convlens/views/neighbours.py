"""The data set as the network sees it: nearest neighbours in feature space beside pixel space, and
a t-SNE map of the penultimate features."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from convlens.errors import ConvlensError
from convlens.subjects import Subject
from convlens.views import defaults
from convlens.views.common import ImageIndex, Report, evenly, images_of, no_report

if TYPE_CHECKING:
    from convlens.inspect import PixelSearch


@dataclass(frozen=True)
class Neighbour:
    """One neighbour: its index among the searched images, distance, label and class name."""

    image_index: int
    distance: float
    label: int
    label_name: str | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "index": self.image_index,
            "distance": self.distance,
            "label": self.label,
            "label_name": self.label_name,
        }


@dataclass(frozen=True)
class NeighboursView:
    """The `k` nearest images of each query, in the network's feature space and in pixel space.

    Attributes:
        feature, pixel: per query, the neighbours, nearest first.
        k, metric: what was asked (resolved defaults).
        split: which images were searched ("test": the subject's images; "train": a run's training
            split); pool_size: how many.
        source: "model" (features computed here) or "index".
    """

    feature: tuple[tuple[Neighbour, ...], ...]
    pixel: tuple[tuple[Neighbour, ...], ...]
    k: int
    metric: str
    split: str
    pool_size: int
    source: str = "model"

    def indices(self, space: str = "feature") -> torch.Tensor:
        """int64 ``(Q, k)`` the neighbours' indices in `space` ("feature" or "pixel")."""
        rows = self.feature if space == "feature" else self.pixel
        return torch.tensor([[n.image_index for n in row] for row in rows], dtype=torch.int64)


def neighbours_view(
    subject: Subject,
    query: int | torch.Tensor,
    *,
    k: int | None = None,
    metric: str | None = None,
    split: str = "test",
    pool: torch.Tensor | None = None,
    index: ImageIndex | None = None,
    pixels: PixelSearch | None = None,
    batch_size: int | None = None,
    progress: bool = False,
) -> NeighboursView:
    """The nearest images of `query` among the subject's images (or a run's `split`).

    Args:
        subject: the model and its images.
        query: an index into the searched images (the image itself is left out of its neighbours),
            or uint8 query images ``(N, C, H, W)``.
        k: neighbours per query; default :data:`defaults.NEIGHBOURS_K`.
        metric: "cosine" or "l2" for the features; default :data:`defaults.METRIC`.
        split: "test" (the subject's images) or "train" (a run's training split).
        pool: int64 indices of the images to search among the split's (default all of them);
            neighbours are still numbered by their index in the split.
        index: the subject's index: feature neighbours come from it (for an integer `query`), and
            no image goes through the model.
        pixels: a :class:`~convlens.inspect.PixelSearch` over the same images (see
            :func:`pixel_search`), kept by a caller that answers many queries; used with `index`.
    """
    from convlens.inspect import PixelSearch, neighbors

    k = defaults.NEIGHBOURS_K if k is None else k
    metric = metric or defaults.METRIC
    ds = images_of(subject, split)
    where = torch.arange(len(ds)) if pool is None else pool.long()  # (P,) into the split
    images = ds.images if pool is None else ds.images[where]  # a copy only for a pool
    labelled = bool(ds.extra.get("labelled", True))
    classes = list(ds.classes)

    def row(idx: list[int], dist: list[float]) -> tuple[Neighbour, ...]:
        out = []
        for i, d in zip(idx, dist, strict=True):
            y = int(ds.labels[i]) if labelled else -1
            name = classes[y] if 0 <= y < len(classes) else None
            out.append(Neighbour(image_index=int(i), distance=float(d), label=y, label_name=name))
        return tuple(out)

    if isinstance(query, int):
        if not 0 <= query < len(ds):
            raise ConvlensError(f"no image {query}; there are {len(ds)} (0-{len(ds) - 1})")
        queries, extra = ds.images[query : query + 1], 1  # the image itself comes first: drop it
    else:
        queries, extra = query, 0
    kk = min(k + extra, len(images))
    if index is not None and isinstance(query, int) and pool is None:
        # Features from the index (one product over its memory-mapped features), pixels from a
        # search over the raw images: no image goes through the model.
        fi, fd = index.neighbours(query, k + 1, metric)
        pairs = [(int(i), float(d)) for i, d in zip(fi, fd, strict=True) if int(i) != query][:k]
        search = pixels if pixels is not None else PixelSearch(images)
        pi, pd = search.search(queries, kk)
        pix = [(int(i), float(d)) for i, d in zip(pi[0], pd[0], strict=True) if int(i) != query]
        return NeighboursView(
            feature=(row([p[0] for p in pairs], [p[1] for p in pairs]),),
            pixel=(row([p[0] for p in pix[:k]], [p[1] for p in pix[:k]]),),
            k=k,
            metric=metric,
            split=split,
            pool_size=len(images),
            source="index",
        )
    pre = subject.preprocess
    nb = neighbors(
        subject.model, queries, images, kk, metric=metric, mean=pre.mean, std=pre.std,
        batch_size=batch_size or 1024, progress=progress,
    )  # fmt: skip

    def keep(idx: torch.Tensor, dist: torch.Tensor) -> tuple[tuple[Neighbour, ...], ...]:
        rows = []
        for ri, rd in zip(where[idx].tolist(), dist.tolist(), strict=True):
            pairs = [(i, d) for i, d in zip(ri, rd, strict=True) if not (extra and i == query)][:k]
            rows.append(row([p[0] for p in pairs], [p[1] for p in pairs]))
        return tuple(rows)

    return NeighboursView(
        feature=keep(nb.feature_indices, nb.feature_distances),
        pixel=keep(nb.pixel_indices, nb.pixel_distances),
        k=k,
        metric=metric,
        split=split,
        pool_size=len(images),
        source="model",
    )


def pixel_search(subject: Subject, split: str = "test") -> PixelSearch:
    """A :class:`~convlens.inspect.PixelSearch` over the subject's images (or a run's `split`),
    for a caller that keeps it between queries (the web app: one per subject)."""
    from convlens.inspect import PixelSearch

    return PixelSearch(images_of(subject, split).images)


@dataclass(frozen=True)
class EmbeddingView:
    """A t-SNE map of the images' penultimate features.

    Attributes:
        indices: int64 ``(M,)`` the mapped images' indices in the subject's images.
        coords: float ``(M, 2)`` their places on the map.
        labels: int64 ``(M,)`` their labels (-1 unlabelled).
        predicted: int64 ``(M,)`` the predicted classes (arg-max of the logits).
        correct: bool ``(M,)`` or None when the labels are not the model's classes.
        classes: the label names.
        features: float32 ``(M, D)`` the features mapped (None when read from an index).
        perplexity, kl_divergence: of the t-SNE run (None from an index).
        limit: how many images were asked for (resolved default); source: "model" or "index".
    """

    indices: torch.Tensor
    coords: np.ndarray
    labels: torch.Tensor
    predicted: torch.Tensor
    correct: torch.Tensor | None
    classes: list[str]
    features: torch.Tensor | None
    perplexity: float | None
    kl_divergence: float | None
    limit: int
    source: str = "model"

    def grid(self, rows: int, cols: int) -> np.ndarray:
        """int ``(rows, cols)`` positions in :attr:`indices` of the point nearest each cell's centre
        of the map, -1 for an empty cell (:func:`convlens.inspect.tsne_grid`)."""
        from convlens.inspect import tsne_grid

        return tsne_grid(self.coords, rows, cols)


def embedding_view(
    subject: Subject,
    *,
    limit: int | None = None,
    index: ImageIndex | None = None,
    seed: int = 0,
    layer: str | None = None,
    split: str = "test",
    n_jobs: int | None = None,
    tsne: bool = True,
    report: Report = no_report,
    progress: bool = False,
) -> EmbeddingView:
    """A t-SNE map of `limit` images spread evenly over the subject's images.

    Args:
        limit: images mapped; default :data:`defaults.EMBEDDING_LIMIT`.
        index: the subject's index: coordinates, labels and predictions come from it, and no
            image is decoded (not with `layer`, whose features it does not hold).
        layer: the features' layer; default the penultimate (the classifier's input).
        tsne: False: only the features and predictions (a projector export), no map.
    """
    from convlens.inspect import extract_features
    from convlens.inspect import tsne as run_tsne
    from convlens.views.prediction import predictions_view

    limit = defaults.EMBEDDING_LIMIT if limit is None else limit
    if index is not None and layer is None and tsne:
        # Everything from the index: no image is decoded (a folder of any size).
        idx_np, coords = index.embedding(limit=limit, seed=seed)
        idx = torch.from_numpy(np.asarray(idx_np)).long()
        pred = torch.from_numpy(np.asarray(index.top_classes[idx_np, 0])).long()
        labels = torch.from_numpy(np.asarray(index.labels[idx_np])).long()
        # An unlabelled set is named as the in-memory loader names it (labels all -1).
        names = index.classes if index.classes is not None else ["unlabelled"]
        return EmbeddingView(
            indices=idx, coords=np.asarray(coords), labels=labels, predicted=pred,
            correct=(pred == labels) if index.labels_are_outputs else None, classes=list(names),
            features=None, perplexity=None, kl_divergence=None, limit=limit, source="index",
        )  # fmt: skip
    ds = images_of(subject, split)
    labelled = subject.labels_are_outputs(ds)
    labels_all = ds.labels if bool(ds.extra.get("labelled", True)) else torch.full((len(ds),), -1)
    if len(ds) < 10 and tsne:
        raise ConvlensError(f"there are only {len(ds)} images; t-SNE needs at least 10")
    idx = evenly(len(ds), limit)
    images = ds.images[idx]
    pre = subject.preprocess
    report(0, 2, f"features of {len(idx)} images")
    feats = extract_features(
        subject.model, images, mean=pre.mean, std=pre.std, layer=layer, progress=progress
    )  # (M, D)
    pred = predictions_view(subject, images, k=1).predicted
    labels = labels_all[idx]
    coords, perplexity, kl = np.zeros((len(idx), 2)), None, None
    if tsne:
        report(1, 2, f"t-SNE of {len(idx)} points")
        m = run_tsne(feats, seed=seed, n_jobs=n_jobs)
        coords, perplexity, kl = m.coords, m.perplexity, m.kl_divergence
    report(2, 2, "done")
    return EmbeddingView(
        indices=idx, coords=coords, labels=labels, predicted=pred,
        correct=(pred == labels) if labelled else None, classes=list(ds.classes), features=feats,
        perplexity=perplexity, kl_divergence=kl, limit=limit,
    )  # fmt: skip
