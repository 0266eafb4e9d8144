"""CIFAR-10: the official python batches when present, else an ImageFolder tree of image files.

A folder holds CIFAR-10 when it has (first match wins):

1. the official python batches: `cifar-10-batches-py/` (or `data_batch_1..5` and `test_batch`
   directly), or the official `cifar-10-python.tar.gz` that holds them;
2. an extracted ImageFolder tree `train/<class>/*` and `test/<class>/*`;
3. a `.tar.gz` / `.tgz` holding such a tree (the form in the project's shared data: JPEG files).

Image files are decoded once (Pillow, a few threads, a progress bar) and the uint8 arrays cached as
`.npy` files under `~/.cache/convlens/decoded/<archive>-<size>-<mtime>/` (see `paths.cache_dir`), so
that the second load takes a fraction of a second. The cache key is the archive's (or tree's) size and
modification time: a replaced file is decoded again. The python batches are read with an unpickler
that accepts nothing but plain containers and numpy arrays, never arbitrary objects.

A CIFAR-10 must be complete: the ten standard classes and 50,000 + 10,000 images; anything else is an
error (use `folder:PATH` for a subset or another tree).
"""

from __future__ import annotations

import io
import json
import os
import pickle
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from convlens.data.dataset import Dataset
from convlens.data.images import (
    ImageTree,
    decode_images,
    notify,
    scan_folder,
    scan_tar,
    warn_skipped,
)
from convlens.data.paths import cache_dir
from convlens.data.stats import channel_stats
from convlens.errors import ConvlensError
from convlens.fileio import atomic_open, atomic_write_json

CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
COUNTS = {"train": 50_000, "test": 10_000}
SHAPE = (3, 32, 32)
TRAIN_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
TEST_BATCH = "test_batch"
EXPECTED = (
    "cifar-10-batches-py/ (the official python batches), or train/<class>/* and test/<class>/* "
    "image files, as a folder or inside a .tar.gz"
)


@dataclass(frozen=True)
class CifarFiles:
    """Where CIFAR-10 was found: `kind` is `batches` (a folder), `tar` (an archive) or `tree`."""

    kind: str
    path: Path


def find_cifar10(place: Path) -> CifarFiles | None:
    """The CIFAR-10 files in folder `place`, or None."""
    for d in (place / "cifar-10-batches-py", place):
        if (d / TRAIN_BATCHES[0]).is_file() or (d / TEST_BATCH).is_file():
            return CifarFiles("batches", d)
    if (place / "train").is_dir() and (place / "test").is_dir():
        return CifarFiles("tree", place)
    # any archive in a folder named cifar10; elsewhere (root= itself) only one named like CIFAR
    tars = sorted(
        p
        for p in place.iterdir()
        if p.is_file()
        and p.name.endswith((".tar.gz", ".tgz", ".tar"))
        and (place.name == "cifar10" or "cifar" in p.name.lower())
    )
    if tars:
        official = [p for p in tars if p.name.startswith("cifar-10-python")]
        return CifarFiles("tar", (official or tars)[0])
    return None


# ---------------------------------------------------------------- the official python batches


class _SafeUnpickler(pickle.Unpickler):
    """Unpickles dicts/lists/bytes/numbers and numpy arrays only; anything else is refused."""

    ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # bytes in protocol-2 pickles written by Python 3
            ("copy_reg", "_reconstructor"),
            ("copyreg", "_reconstructor"),
            ("__builtin__", "object"),
            ("builtins", "object"),
        }
    )

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        d = _SafeUnpickler(io.BytesIO(raw), encoding="bytes").load()
        # keys are bytes in the official (Python 2) files read this way, str if re-pickled by Python 3
        d = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in d.items()}
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d["labels"], dtype=np.int64)
    except (pickle.UnpicklingError, EOFError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise ConvlensError(f"{where} is truncated or not a CIFAR-10 python batch ({e})") from None
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or data.shape[0] != labels.shape[0]:
        raise ConvlensError(
            f"{where} holds data of shape {data.shape} and {labels.shape[0]} labels; "
            "expected (N, 3072) and N labels"
        )
    return data.reshape(-1, *SHAPE), labels  # rows are R, G, B planes of 32 x 32


def _batches_from_folder(folder: Path) -> dict[str, bytes]:
    out = {}
    for name in [*TRAIN_BATCHES, TEST_BATCH]:
        p = folder / name
        if not p.is_file():
            raise ConvlensError(
                f"{folder} holds part of the CIFAR-10 python batches but lacks {name}"
            )
        out[name] = p.read_bytes()
    return out


def _batches_from_tar(path: Path) -> dict[str, bytes] | None:
    """The python batches inside an archive, or None when it holds none."""
    out = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                base = m.name.rsplit("/", 1)[-1]
                if m.isfile() and base in (*TRAIN_BATCHES, TEST_BATCH):
                    f = tf.extractfile(m)
                    if f is not None:
                        out[base] = f.read()
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ConvlensError(f"{path} is truncated or corrupt ({e}); download it again") from None
    if not out:
        return None
    missing = [n for n in (*TRAIN_BATCHES, TEST_BATCH) if n not in out]
    if missing:
        raise ConvlensError(f"{path} lacks the CIFAR-10 python batches {', '.join(missing)}")
    return out


def _from_batches(raw: dict[str, bytes], where: str) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    parts = [_read_batch(raw[n], f"{where}/{n}") for n in TRAIN_BATCHES]
    train = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
    return {"train": train, "test": _read_batch(raw[TEST_BATCH], f"{where}/{TEST_BATCH}")}


# ---------------------------------------------------------------- image trees, with a decode cache


def _tree_key(files: CifarFiles) -> str:
    """A cache key that changes when the archive or the tree changes (size and mtime)."""
    p = files.path
    if files.kind == "tar":
        st = p.stat()
        return f"{p.name}-{st.st_size}-{st.st_mtime_ns}"
    count = size = mtime = 0
    for split in ("train", "test"):
        for dirpath, _, filenames in os.walk(p / split):
            for fn in filenames:
                st = os.stat(os.path.join(dirpath, fn))
                count, size, mtime = count + 1, size + st.st_size, max(mtime, st.st_mtime_ns)
    return f"{p.name}-tree-{count}-{size}-{mtime}"


def _cache_folder(files: CifarFiles) -> Path:
    return cache_dir() / "decoded" / f"cifar10-{_tree_key(files)}"


def decode_tree(tree: ImageTree) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Decode both splits of an image tree as RGB 32 x 32 uint8 `(N, 3, 32, 32)` plus labels."""
    warn_skipped(tree)
    out = {}
    for split in ("train", "test"):
        sources = tree.splits.get(split, [])
        images, resized = decode_images(
            sources, 3, SHAPE[1:], description=f"decoding CIFAR-10 {split} images (once, cached)"
        )
        if resized:
            notify(f"{resized} CIFAR-10 {split} images were not 32x32 and were resized")
        out[split] = (images, np.array([s.label for s in sources], dtype=np.int64))
    return out


def _read_cache(folder: Path, splits: tuple[str, ...]) -> dict[str, Any] | None:
    """The cached arrays of `splits` and the meta data, or None when there is no complete cache."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
        arrays = {
            split: (
                np.load(folder / f"{split}_images.npy"),
                np.load(folder / f"{split}_labels.npy"),
            )
            for split in splits
        }
    except (OSError, ValueError, KeyError):
        return None
    return {"arrays": arrays, "classes": meta["classes"], "mean": meta["mean"], "std": meta["std"]}


def _write_cache(
    folder: Path, arrays: dict[str, tuple[np.ndarray, np.ndarray]], meta: dict[str, Any]
) -> None:
    try:
        for split, (images, labels) in arrays.items():
            for what, arr in (("images", images), ("labels", labels)):
                with atomic_open(folder / f"{split}_{what}.npy", "wb") as f:
                    np.save(f, arr)
        atomic_write_json(folder / "meta.json", meta)  # last: its presence marks a complete cache
    except OSError as e:
        notify(f"could not cache decoded CIFAR-10 in {folder} ({e}); the next load decodes again")


def _check(
    arrays: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str], where: Path
) -> None:
    if classes != CLASSES:
        raise ConvlensError(
            f"{where} has class folders {', '.join(classes)}; CIFAR-10's are {', '.join(CLASSES)}. "
            "Load another tree with folder:PATH"
        )
    for split, (images, _) in arrays.items():
        if images.shape[0] != COUNTS[split]:
            raise ConvlensError(
                f"{where} holds {images.shape[0]:,} {split} images; CIFAR-10 has {COUNTS[split]:,}. "
                "Is the archive incomplete? Load a subset with folder:PATH"
            )


def _load(files: CifarFiles, split: str) -> dict[str, Any]:
    """Both splits, the classes and the train mean/std, from the batches, the cache or by decoding."""
    where = str(files.path)
    folder = _cache_folder(files)
    raw: dict[str, bytes] | None
    if files.kind == "batches":
        raw = _batches_from_folder(files.path)
    else:
        cached = _read_cache(folder, (split,))  # only the split asked for: 0.2 s, not 20 s
        if cached is not None:
            return cached
        raw = _batches_from_tar(files.path) if files.kind == "tar" else None
    if raw is not None:  # the python batches: no decoding, no cache needed
        arrays = _from_batches(raw, where)
        _check(arrays, CLASSES, files.path)
        mean, std = channel_stats(torch.from_numpy(arrays["train"][0]))
        return {"arrays": arrays, "classes": CLASSES, "mean": mean, "std": std}
    tree = scan_tar(files.path) if files.kind == "tar" else scan_folder(files.path)
    if set(tree.splits) != {"train", "test"}:
        raise ConvlensError(f"{files.path} has no train/ and test/ folders; {EXPECTED}")
    arrays = decode_tree(tree)
    _check(arrays, tree.classes, files.path)
    mean, std = channel_stats(torch.from_numpy(arrays["train"][0]))
    meta = {"classes": tree.classes, "mean": mean, "std": std, "source": where}
    _write_cache(folder, arrays, meta)
    return {"arrays": arrays, "classes": tree.classes, "mean": mean, "std": std}


def load_cifar10(files: CifarFiles, split: str) -> Dataset:
    """One split of CIFAR-10 as uint8 `(N, 3, 32, 32)`, with the train split's mean/std."""
    d = _load(files, split)
    images, labels = d["arrays"][split]
    return Dataset(
        "cifar10",
        split,
        torch.from_numpy(images),
        torch.from_numpy(labels),
        list(d["classes"]),
        tuple(d["mean"]),
        tuple(d["std"]),
        source=str(files.path),
    )


def describe_cifar10(files: CifarFiles) -> dict[str, tuple[int, tuple[int, int, int]]]:
    """split -> (count, shape) without decoding: file counts (the cache when present), or batch sizes."""
    if files.kind == "batches":
        n_train = sum(1 for b in TRAIN_BATCHES if (files.path / b).is_file()) * 10_000
        return {"train": (n_train, SHAPE), "test": (10_000, SHAPE)}
    cached = _cache_folder(files) / "meta.json"
    if cached.is_file():
        out = {}
        for split in ("train", "test"):
            arr = np.load(cached.parent / f"{split}_labels.npy", mmap_mode="r")
            out[split] = (int(arr.shape[0]), SHAPE)
        return out
    if files.kind == "tar":
        counts = {"train": 0, "test": 0}
        try:
            with tarfile.open(files.path, "r:*") as tf:
                for m in tf:
                    parts = m.name.split("/")
                    if m.isfile() and len(parts) >= 3 and parts[-3] in counts:
                        counts[parts[-3]] += 1
                    elif m.isfile() and parts[-1].startswith("data_batch_"):
                        counts["train"] += 10_000
                    elif m.isfile() and parts[-1] == TEST_BATCH:
                        counts["test"] += 10_000
        except (tarfile.TarError, EOFError, OSError) as e:
            raise ConvlensError(f"{files.path} is truncated or corrupt ({e})") from None
        return {s: (n, SHAPE) for s, n in counts.items()}
    tree = scan_folder(files.path)
    return {s: (len(v), SHAPE) for s, v in tree.splits.items()}
