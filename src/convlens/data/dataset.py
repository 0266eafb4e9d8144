"""The in-memory data set every other layer receives."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Dataset:
    """A labelled image data set held in memory.

    Attributes:
        name: the name it was loaded by (`mnist`, `fashion-mnist`, `cifar10`, `sample`, `folder:PATH`).
        split: `"train"` or `"test"`.
        images: uint8 tensor `(N, C, H, W)`, pixel values 0..255.
        labels: int64 tensor `(N,)`.
        classes: class names, index = label.
        mean: per-channel mean of the *training* split, in [0, 1] units (e.g. `(0.1307,)` for MNIST).
        std: per-channel standard deviation of the training split, in [0, 1] units.
        source: where the files were found (shown by `convlens datasets`).
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""
    extra: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __repr__(self) -> str:
        # The dataclass default would print every pixel of `images`.
        c, h, w = self.image_shape
        return (
            f"Dataset({self.name!r}, split={self.split!r}, {len(self):,} images {c}x{h}x{w}, "
            f"{self.num_classes} classes)"
        )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """`(C, H, W)` of one image."""
        c, h, w = self.images.shape[1:]
        return int(c), int(h), int(w)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def head(self, n: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` images and their labels that cover the classes (all of them for None).

        The first `n` when the data set is in no class order (MNIST, the CIFAR-10 python batches);
        an ImageFolder tree lists class after class, and its first `n` would be one or two
        classes, so there the images are taken from every class in turn (the first of each
        class, then the second, ...), keeping their order within a class.
        """
        if n is None or n >= len(self):
            return self.images, self.labels
        if len(self) < 2 or not bool((self.labels[1:] >= self.labels[:-1]).all()):
            return self.images[:n], self.labels[:n]
        idx = spread_by_class(self.labels)[:n]
        return self.images[idx], self.labels[idx]


def spread_by_class(labels: torch.Tensor) -> torch.Tensor:
    """Indices that visit the classes in turn: `labels[result]` cycles 0, 1, ..., 0, 1, ...

    Within a class the original order is kept; classes that run out drop out of the cycle.
    """
    labels = labels.to(torch.int64)
    order = torch.argsort(labels, stable=True)  # class by class, original order within
    counts = torch.bincount(labels)
    starts = torch.cumsum(counts, 0) - counts  # (classes,) first position of each class
    rank = torch.empty_like(labels)
    rank[order] = torch.arange(len(labels)) - starts[labels[order]]  # position within its class
    # Sort by rank within the class, then by class: 1st of every class, 2nd of every class, ...
    key = rank * (int(labels.max()) + 1) + labels
    return torch.argsort(key, stable=True)


def normalize(
    images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """uint8 `(N, C, H, W)` -> float32 `(N, C, H, W)`, scaled to [0, 1] then standardised per channel."""
    x = images.to(torch.float32).div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def denormalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Inverse of :func:`normalize`: float `(N, C, H, W)` -> float pixels in [0, 1] (not clamped)."""
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x * s + m
