"""What the views share: the index they may read from, image selection, and logits -> predictions.

Predictions always come from the logits: the predicted class is the arg-max of the logits, and the
probabilities are ``exp(log_softmax)`` in float64, so that no class is lost to a float32 softmax that
rounds every probability to the same value (or to 0).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import numpy as np
import torch

from convlens.data.dataset import Dataset
from convlens.errors import ConvlensError
from convlens.subjects import Subject

Report = Callable[[int, int, str], None]
"""`report(done, total, message)`: progress of a long view (the web app's jobs show it)."""


def no_report(done: int, total: int, message: str) -> None:
    """A :data:`Report` that says nothing."""


class UnitTopK(Protocol):
    """One layer's top-k images per channel, as :class:`convlens.index.Index` keeps them."""

    @property
    def values(self) -> np.ndarray: ...  # (C, k) float32, highest first

    @property
    def images(self) -> np.ndarray: ...  # (C, k) int64 image indices, -1 where fewer than k

    @property
    def positions(self) -> np.ndarray: ...  # (C, k, 2) int64 (row, col) in the layer's map


class ImageIndex(Protocol):
    """What the views read from a subject's index (:class:`convlens.index.Index`)."""

    @property
    def n(self) -> int: ...

    @property
    def labels(self) -> np.ndarray: ...  # (N,) int64, -1 unlabelled

    @property
    def classes(self) -> list[str] | None: ...  # names of the label values; None unlabelled

    @property
    def labels_are_outputs(self) -> bool: ...  # the labels index the model's outputs

    @property
    def top_classes(self) -> np.ndarray: ...  # (N, 5) int64, from the logits

    @property
    def top_probs(self) -> np.ndarray: ...  # (N, 5) float32

    @property
    def layers(self) -> list[str]: ...

    def map_size(self, layer: str) -> tuple[int, int]: ...

    def units(self, layer: str) -> UnitTopK: ...

    def neighbours(
        self, query: int | np.ndarray, k: int = 10, metric: str = "cosine"
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def embedding(self, limit: int = 50_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]: ...

    def image(self, i: int) -> torch.Tensor: ...

    def features(self) -> np.ndarray: ...  # (N, D) float16 penultimate features, memory-mapped


def evenly(n: int, limit: int | None) -> torch.Tensor:
    """`limit` indices spread evenly over ``range(n)`` (all of them when `limit` is None or >= n)."""
    if limit is None or limit >= n:
        return torch.arange(n)
    return torch.linspace(0, n - 1, max(limit, 1)).round().long().unique()


def head_indices(ds: Dataset, n: int | None) -> torch.Tensor:
    """The indices of :meth:`Dataset.head`: the first `n`, or from every class in turn when the
    data set lists class after class (an ImageFolder tree)."""
    from convlens.data.dataset import spread_by_class

    if n is None or n >= len(ds):
        return torch.arange(len(ds))
    if len(ds) < 2 or not bool((ds.labels[1:] >= ds.labels[:-1]).all()):
        return torch.arange(n)
    return spread_by_class(ds.labels)[:n]


def images_of(subject: Subject, split: str = "test") -> Dataset:
    """The images a view looks at: the user's, else the run's `split` (see :meth:`Subject.data`)."""
    return subject.data(split)


def as_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 ``(C, H, W)`` or ``(N, C, H, W)`` -> ``(N, C, H, W)``."""
    if images.dim() == 3:
        return images[None]
    if images.dim() != 4:
        raise ConvlensError(
            f"expected uint8 images (C, H, W) or (N, C, H, W), got {tuple(images.shape)}"
        )
    return images


def logits_of(subject: Subject, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The model's logits ``(N, K)`` (float32 on the CPU) for uint8 images ``(N, C, H, W)``."""
    out = []
    with torch.inference_mode():
        for i in range(0, len(images), batch_size):
            x = subject.normalize(images[i : i + batch_size])  # (B, C, H, W)
            logits = subject.model(x)
            if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
                raise ConvlensError(
                    f"{subject.name} does not return logits (N, classes) for its input"
                )
            out.append(logits.float().cpu())
    return torch.cat(out) if out else torch.zeros(0, len(subject.classes))


def probabilities(logits: torch.Tensor) -> torch.Tensor:
    """Softmax of `logits` ``(N, K)`` in float64, through ``log_softmax`` (no underflow to 0/0)."""
    return torch.log_softmax(logits.double(), dim=1).exp()


def top_k(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(classes (N, k) int64, probabilities (N, k) float64)``, best first, from the logits.

    The ranking is the logits' own (``topk`` of the logits, ties to the lower index as ``argmax``),
    so the first class is always ``logits.argmax(1)``.
    """
    k = min(k, logits.shape[1])
    # topk does not promise argmax's tie-break; a stable descending sort does (lower index first).
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices[:, :k]  # (N, k)
    return order, probabilities(logits).gather(1, order)
