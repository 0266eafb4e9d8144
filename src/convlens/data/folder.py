"""`folder:PATH`: a user's ImageFolder tree, in memory, or streamed when too large for memory.

Splits: `PATH/train/<class>/*` and `PATH/test/<class>/*` (or `val/`) when both exist; otherwise
`PATH/<class>/*` is split like the bundled sample: within each class, in sorted file order, every
fifth image is a test image (a notice says so). The conversion rules (channels, size, skipped files)
are in :mod:`convlens.data.images`.

Memory: a folder whose decoded images would exceed :data:`MAX_IN_MEMORY_BYTES` (2 GiB) is refused by
`load` with a message pointing at :func:`stream_folder`, which decodes images in DataLoader workers
batch by batch and yields the same `(x, y)` batches as :class:`~convlens.data.loader.BatchLoader`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from convlens.data.dataset import Dataset
from convlens.data.images import (
    ImageSource,
    ImageTree,
    decode_images,
    decode_one,
    notify,
    probe,
    scan_folder,
    warn_skipped,
)
from convlens.data.loader import Augment, BatchNormalizer, draw_augment, seeded_generator
from convlens.data.stats import channel_stats
from convlens.errors import ConvlensError

MAX_IN_MEMORY_BYTES = 2 * 1024**3
TEST_EVERY = 5


@dataclass
class FolderPlan:
    """What a folder holds and how it will be decoded (from headers only)."""

    root: Path
    classes: list[str]
    splits: dict[str, list[ImageSource]]  # "train", "test"
    channels: int
    size: tuple[int, int]  # (H, W)
    notices: list[str]

    def nbytes(self, split: str) -> int:
        h, w = self.size
        return len(self.splits[split]) * self.channels * h * w


def _split_every(sources: list[ImageSource]) -> dict[str, list[ImageSource]]:
    rank: dict[int, int] = {}
    train: list[ImageSource] = []
    test: list[ImageSource] = []
    for s in sources:
        k = rank.get(s.label, 0)
        rank[s.label] = k + 1
        (test if k % TEST_EVERY == TEST_EVERY - 1 else train).append(s)
    return {"train": train, "test": test}


def _as_size(size: int | tuple[int, int] | None) -> tuple[int, int] | None:
    if size is None:
        return None
    h, w = (size, size) if isinstance(size, int) else size
    if h < 1 or w < 1:
        raise ConvlensError(f"image size must be positive, got {h}x{w}")
    return int(h), int(w)


def plan_folder(path: str | Path, size: int | tuple[int, int] | None = None) -> FolderPlan:
    """Scan a folder and decide channels and size, reading image headers only."""
    root = Path(path).expanduser().resolve()
    tree: ImageTree = scan_folder(root)
    notices: list[str] = []
    warn_skipped(tree, notices)
    if "all" in tree.splits:
        splits = _split_every(tree.splits["all"])
        notify(
            f"{root} has no train/ and test/ folders: every {TEST_EVERY}th image of each class "
            "(sorted file order) is a test image",
            notices,
        )
    else:
        splits = tree.splits
    every = splits["train"] + splits["test"]
    grey, sizes = probe(every)
    channels = 1 if grey else 3
    target = _as_size(size)
    if target is None:
        target = max(sizes.items(), key=lambda kv: (kv[1], kv[0]))[0]  # most common (ties: larger)
    others = sum(n for s, n in sizes.items() if s != target)
    if others:
        why = "the size asked for" if size is not None else "the most common size"
        notify(
            f"{others} of {len(every)} images resized to {target[0]}x{target[1]} ({why})", notices
        )
    return FolderPlan(root, tree.classes, splits, channels, target, notices)


# Train-split statistics, so that loading the test split after the train split decodes nothing twice.
_STATS: dict[tuple[object, ...], tuple[tuple[float, ...], tuple[float, ...]]] = {}


def load_folder(
    path: str | Path, split: str, *, size: int | tuple[int, int] | None = None
) -> Dataset:
    """Load one split of an ImageFolder tree into memory (mean/std of its train split).

    Raises:
        ConvlensError: no folder, no classes, no images, a corrupt image (named), or a split larger
            than :data:`MAX_IN_MEMORY_BYTES` decoded (use :func:`stream_folder`).
    """
    plan = plan_folder(path, size)
    for s in ("train", split):
        if plan.nbytes(s) > MAX_IN_MEMORY_BYTES:
            raise ConvlensError(
                f"{plan.root}'s {s} split would take {plan.nbytes(s) / 1024**3:.1f} GiB decoded "
                f"(more than {MAX_IN_MEMORY_BYTES / 1024**3:.0f} GiB in memory); stream it with "
                "convlens.data.stream_folder(...) or pass a smaller size="
            )
    if not plan.splits[split]:
        raise ConvlensError(f"{plan.root} has no {split} images")
    c, (h, w) = plan.channels, plan.size
    images, _ = decode_images(plan.splits[split], c, (h, w), description=f"decoding {split} images")
    key = (str(plan.root), c, h, w, *(str(s.path) for s in plan.splits["train"]))
    if key not in _STATS:
        train = images if split == "train" else decode_images(plan.splits["train"], c, (h, w))[0]
        _STATS[key] = channel_stats(torch.from_numpy(train))
    mean, std = _STATS[key]
    labels = torch.tensor([s.label for s in plan.splits[split]], dtype=torch.int64)
    return Dataset(
        f"folder:{plan.root}",
        split,
        torch.from_numpy(images),
        labels,
        list(plan.classes),
        mean,
        std,
        source=str(plan.root),
        extra={"notices": list(plan.notices)},
    )


class _FolderImages(torch.utils.data.Dataset[tuple[torch.Tensor, int]]):
    """Map-style dataset decoding one image per item (in DataLoader workers)."""

    def __init__(self, sources: list[ImageSource], channels: int, size: tuple[int, int]) -> None:
        self.sources = sources
        self.mode = "L" if channels == 1 else "RGB"
        self.size = size

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        arr, _ = decode_one(self.sources[i], self.mode, self.size)
        t = torch.from_numpy(arr.copy())  # Pillow's buffer is read-only
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)  # (C, H, W) uint8
        return t.contiguous(), self.sources[i].label


class FolderStream:
    """Batches of a folder too large for memory, decoded by DataLoader workers.

    Yields the same `(x float normalised (B, C, H, W), y int64 (B,))` batches as
    :class:`~convlens.data.loader.BatchLoader`, with the same determinism rules: the order of epoch
    `e` is seeded by `(seed, e)` and the augmentation of batch `b` by `(seed, e, b)`. Build with
    :func:`stream_folder`.
    """

    def __init__(
        self,
        plan: FolderPlan,
        split: str,
        *,
        batch_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        shuffle: bool,
        augment: Augment | None,
        num_workers: int,
        seed: int,
        device: str | torch.device,
    ) -> None:
        self.plan = plan
        self.classes = plan.classes
        self.mean, self.std = mean, std
        self.dataset = _FolderImages(plan.splits[split], plan.channels, plan.size)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.augment = augment if augment is not None and augment.active else None
        self.num_workers = num_workers
        self.seed = seed
        self.device = torch.device(device)
        self.epoch = 0
        self.start_batch = 0
        self.normalizer = BatchNormalizer(mean, std, self.augment, self.device)
        if self.augment is not None and self.augment.lighting > 0:
            raise ConvlensError(
                "PCA lighting is not available when streaming a folder; use crop/flip"
            )

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / self.batch_size)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """As :meth:`BatchLoader.set_epoch`."""
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start = self.epoch, self.start_batch
        self.start_batch = 0
        n = len(self.dataset)
        perm = (
            torch.randperm(n, generator=seeded_generator(self.seed, epoch))
            if self.shuffle
            else torch.arange(n)
        )
        order = perm[start * self.batch_size :].tolist()
        loader = torch.utils.data.DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=order,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
        )
        c = self.plan.channels
        for b, (xb, yb) in enumerate(loader, start=start):
            xb = xb.to(self.device, non_blocking=True)  # (B, C, H, W) uint8
            draw = None
            if self.augment is not None:
                draw = draw_augment(
                    self.augment,
                    xb.shape[0],
                    c,
                    seeded_generator(self.seed, epoch, b),
                    (xb.shape[2], xb.shape[3]),
                )
            yield self.normalizer(xb, draw), yb.to(self.device, torch.int64)
        if self.epoch == epoch:
            self.epoch = epoch + 1


def stream_folder(
    path: str | Path,
    split: str = "train",
    *,
    batch_size: int = 256,
    size: int | tuple[int, int] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    shuffle: bool | None = None,
    augment: Augment | None = None,
    num_workers: int = 2,
    seed: int = 0,
    device: str | torch.device = "cpu",
    stats_images: int = 2000,
) -> FolderStream:
    """Stream an ImageFolder tree through a torch DataLoader with `num_workers` worker processes.

    For folders too large for memory (`load("folder:PATH")` refuses those above 2 GiB decoded).

    Args:
        path: the ImageFolder tree (same layout and conversion rules as `folder:PATH`).
        split: `"train"` or `"test"`.
        batch_size: images per batch.
        size: common `(H, W)` (or one int); default the most common size.
        mean: per-channel mean in [0, 1] units; default estimated from up to `stats_images` training
            images (every k-th, deterministic).
        std: as `mean`.
        shuffle: default True for the train split, False for the test split.
        augment: crop/flip per batch (PCA lighting is not offered here).
        num_workers: DataLoader worker processes decoding images.
        seed: seeds the order and the augmentation.
        device: where batches are returned.
        stats_images: how many training images estimate mean/std.
    """
    if split not in ("train", "test"):
        raise ConvlensError(f"unknown split {split!r}; use 'train' or 'test'")
    plan = plan_folder(path, size)
    if mean is None or std is None:
        train = plan.splits["train"]
        step = max(1, math.ceil(len(train) / stats_images))
        arr, _ = decode_images(
            train[::step], plan.channels, plan.size, description="estimating mean/std"
        )
        est_mean, est_std = channel_stats(torch.from_numpy(arr))
        mean = est_mean if mean is None else mean
        std = est_std if std is None else std
    return FolderStream(
        plan,
        split,
        batch_size=batch_size,
        mean=tuple(mean),
        std=tuple(std),
        shuffle=(split == "train") if shuffle is None else shuffle,
        augment=augment,
        num_workers=num_workers,
        seed=seed,
        device=device,
    )


def folder_image_bytes(path: str | Path, size: int | tuple[int, int] | None = None) -> int:
    """Bytes the folder's images take decoded (both splits), from headers only."""
    plan = plan_folder(path, size)
    return plan.nbytes("train") + plan.nbytes("test")
