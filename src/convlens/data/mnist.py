"""MNIST, Fashion-MNIST and the bundled `sample` (Fashion-MNIST's test split): the IDX data sets.

A folder holds such a data set when it has the four standard files, gzipped or not
(`train-images-idx3-ubyte[.gz]`, `train-labels-idx1-ubyte[.gz]`, `t10k-images-idx3-ubyte[.gz]`,
`t10k-labels-idx1-ubyte[.gz]`), directly or in torchvision's layout (`MNIST/raw/`, `FashionMNIST/raw/`).

`sample` is the official Fashion-MNIST test split (10,000 images, MIT licence) shipped inside the package
and served as a fixed, stratified 8,000 / 2,000 split: within each class, taken in file order, every
fifth image (the class's 5th, 10th, 15th, ... image) is a test image and the other four are training
images. That is 800 train and 200 test images per class, the same on every machine, with no random
numbers involved.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from convlens.data.dataset import Dataset
from convlens.data.idx import read_header, read_idx
from convlens.data.stats import channel_stats
from convlens.errors import ConvlensError

MNIST_CLASSES = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"]
FASHION_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CLASSES = {"mnist": MNIST_CLASSES, "fashion-mnist": FASHION_CLASSES, "sample": FASHION_CLASSES}

# split -> (images file, labels file), without the optional .gz
STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# torchvision keeps the raw files under <root>/MNIST/raw and <root>/FashionMNIST/raw.
SUBDIRS = {"mnist": ("", "MNIST/raw", "raw"), "fashion-mnist": ("", "FashionMNIST/raw", "raw")}

SAMPLE_DIR = Path(__file__).resolve().parent / "_sample"
SAMPLE_TEST_EVERY = 5  # every 5th image of each class is a test image -> 200 per class


@dataclass(frozen=True)
class IdxFiles:
    """The four files of an IDX data set."""

    folder: Path
    train_images: Path
    train_labels: Path
    test_images: Path
    test_labels: Path

    def pair(self, split: str) -> tuple[Path, Path]:
        if split == "train":
            return self.train_images, self.train_labels
        return self.test_images, self.test_labels


def expected_files() -> str:
    """The file names an IDX data set folder must hold, for messages."""
    return ", ".join(f"{s}[.gz]" for pair in STEMS.values() for s in pair)


def _find_file(folder: Path, stem: str) -> Path | None:
    # The MNIST web site's own names use a dot: train-images.idx3-ubyte.
    dotted = stem.replace("-idx", ".idx")
    for cand in (f"{stem}.gz", stem, f"{dotted}.gz", dotted):
        p = folder / cand
        if p.is_file():
            return p
    return None


def find_idx_files(name: str, place: Path) -> IdxFiles | None:
    """The four files of `name` in folder `place` (or its torchvision sub-folders); None if absent.

    Raises:
        ConvlensError: some but not all of the four files are there.
    """
    for sub in SUBDIRS.get(name, ("",)):
        folder = place / sub if sub else place
        if not folder.is_dir():
            continue
        found = {s: _find_file(folder, s) for pair in STEMS.values() for s in pair}
        if not any(found.values()):
            continue
        missing = [s for s, p in found.items() if p is None]
        if missing:
            raise ConvlensError(
                f"{folder} holds part of {name} but lacks {', '.join(f'{m}[.gz]' for m in missing)}; "
                "add the missing files or remove the folder"
            )
        (ti, tl), (vi, vl) = ([found[s] for s in STEMS[k]] for k in ("train", "test"))
        assert ti and tl and vi and vl
        return IdxFiles(folder, ti, tl, vi, vl)
    return None


def _read_pair(
    images_file: Path, labels_file: Path, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_file, 3)  # (N, H, W)
    labels = read_idx(labels_file, 1)  # (N,)
    if images.shape[0] != labels.shape[0]:
        raise ConvlensError(
            f"{images_file} holds {images.shape[0]:,} images but {labels_file} holds "
            f"{labels.shape[0]:,} labels; one of them is truncated or from another data set"
        )
    if labels.size and int(labels.max()) >= num_classes:
        raise ConvlensError(
            f"{labels_file} holds label {int(labels.max())}; expected 0..{num_classes - 1}"
        )
    return images, labels


def _key(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_size, st.st_mtime_ns


# Train-split statistics keyed by the train images file: loading a test split needs them too.
_STATS: dict[tuple[object, ...], tuple[tuple[float, ...], tuple[float, ...]]] = {}


def _to_tensors(images: np.ndarray, labels: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1)  # (N, 1, H, W) uint8
    y = torch.from_numpy(labels.astype(np.int64))  # (N,)
    return x, y


def load_idx(name: str, files: IdxFiles, split: str) -> Dataset:
    """Load one split of an IDX data set; mean/std are those of its training split."""
    classes = CLASSES[name]
    images, labels = _read_pair(*files.pair(split), len(classes))
    key = ("idx", *_key(files.train_images))
    if key not in _STATS:
        train = images if split == "train" else _read_pair(*files.pair("train"), len(classes))[0]
        _STATS[key] = channel_stats(torch.from_numpy(np.ascontiguousarray(train)).unsqueeze(1))
    mean, std = _STATS[key]
    x, y = _to_tensors(images, labels)
    return Dataset(name, split, x, y, list(classes), mean, std, source=str(files.folder))


def describe_idx(files: IdxFiles) -> dict[str, tuple[int, tuple[int, int, int]]]:
    """split -> (count, (C, H, W)) from the headers only."""
    out = {}
    for split in ("train", "test"):
        n, h, w = read_header(files.pair(split)[0], 3)
        out[split] = (n, (1, h, w))
    return out


def sample_split_mask(labels: np.ndarray) -> np.ndarray:
    """Boolean mask of the `sample` test images: every fifth image of each class, in file order."""
    rank = np.zeros(labels.shape[0], dtype=np.int64)  # position of each image within its class
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        rank[idx] = np.arange(idx.size)
    return rank % SAMPLE_TEST_EVERY == SAMPLE_TEST_EVERY - 1


def sample_files() -> tuple[Path, Path]:
    """The bundled Fashion-MNIST test split files."""
    return SAMPLE_DIR / "t10k-images-idx3-ubyte.gz", SAMPLE_DIR / "t10k-labels-idx1-ubyte.gz"


def load_sample(split: str) -> Dataset:
    """The bundled sample: Fashion-MNIST's test split as a fixed 8,000 / 2,000 train/test split."""
    img_file, lab_file = sample_files()
    if not img_file.is_file() or not lab_file.is_file():
        raise ConvlensError(
            f"the bundled sample is missing from {SAMPLE_DIR}; reinstall convlens (pip install -e .)"
        )
    images, labels = _read_pair(img_file, lab_file, len(FASHION_CLASSES))
    test = sample_split_mask(labels)
    key = ("sample", *_key(img_file))
    if key not in _STATS:
        _STATS[key] = channel_stats(torch.from_numpy(images[~test]).unsqueeze(1))
    mean, std = _STATS[key]
    keep = test if split == "test" else ~test
    x, y = _to_tensors(images[keep], labels[keep])
    return Dataset(
        "sample",
        split,
        x,
        y,
        list(FASHION_CLASSES),
        mean,
        std,
        source=f"bundled ({SAMPLE_DIR})",
        extra={"split_rule": "every 5th image of each class (file order) is a test image"},
    )
