"""The named data sets: `load(name, split)`, `names()`, and `describe(name)` for listing.

| name | what | where its files are looked for |
| --- | --- | --- |
| `mnist` | 60,000 + 10,000 handwritten digits, 1x28x28 | the four IDX files, gzipped or not |
| `fashion-mnist` | 60,000 + 10,000 Zalando articles, 1x28x28 | the four IDX files, gzipped or not |
| `cifar10` | 50,000 + 10,000 photos, 3x32x32 | official python batches, or `train/<class>/*`, `test/<class>/*` as a folder or `.tar.gz` |
| `sample` | Fashion-MNIST's test split, fixed 8,000 / 2,000 | bundled in the package (always found) |
| `folder:PATH` | any ImageFolder tree | PATH itself |

The search order is in :mod:`convlens.data.paths`.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convlens.data import cifar, mnist
from convlens.data.dataset import Dataset
from convlens.data.paths import search_places
from convlens.errors import ConvlensError, did_you_mean

SPLITS = ("train", "test")
Root = str | os.PathLike[str] | None


@dataclass(frozen=True)
class _Spec:
    title: str
    expected: str  # what a folder must hold, for messages
    find: Callable[[Path], Any]  # folder -> found files, or None
    load: Callable[[Any, str], Dataset]  # (found, split) -> Dataset
    describe: Callable[[Any], dict[str, tuple[int, tuple[int, int, int]]]]
    classes: list[str]


_SPECS: dict[str, _Spec] = {
    "mnist": _Spec(
        "MNIST",
        mnist.expected_files(),
        lambda p: mnist.find_idx_files("mnist", p),
        lambda f, s: mnist.load_idx("mnist", f, s),
        mnist.describe_idx,
        mnist.MNIST_CLASSES,
    ),
    "fashion-mnist": _Spec(
        "Fashion-MNIST",
        mnist.expected_files(),
        lambda p: mnist.find_idx_files("fashion-mnist", p),
        lambda f, s: mnist.load_idx("fashion-mnist", f, s),
        mnist.describe_idx,
        mnist.FASHION_CLASSES,
    ),
    "cifar10": _Spec(
        "CIFAR-10",
        cifar.EXPECTED,
        cifar.find_cifar10,
        cifar.load_cifar10,
        cifar.describe_cifar10,
        cifar.CLASSES,
    ),
}


def names() -> list[str]:
    """The data set names `load` accepts (besides `folder:PATH`)."""
    return [*_SPECS, "sample"]


def _check(name: str, split: str) -> None:
    if split not in SPLITS:
        raise ConvlensError(f"unknown split {split!r}; use 'train' or 'test'")
    if name not in _SPECS and name != "sample" and not name.startswith("folder:"):
        raise ConvlensError(
            f"unknown data set {name!r}.{did_you_mean(name, names())} "
            f"Known: {', '.join(names())}, or folder:PATH for an ImageFolder tree"
        )


@dataclass
class Located:
    """Where a data set was found (`found is None`: not found) and every place looked in."""

    name: str
    found: Path | None
    files: Any
    places: list[Path] = field(default_factory=list)


def locate(name: str, root: Root = None) -> Located:
    """Find the files of data set `name` along the search path (no download, no decoding)."""
    spec = _SPECS[name]
    places = search_places(name, root)
    for place in places:
        if place.is_dir():
            files = spec.find(place)
            if files is not None:
                return Located(name, place, files, places)
    return Located(name, None, None, places)


def not_found_message(name: str, places: list[Path]) -> str:
    """One message naming every place looked in and how to fix it."""
    spec = _SPECS[name]
    looked = "\n".join(f"  - {p}" for p in places)
    return (
        f"no {spec.title} files found; looked in:\n{looked}\n"
        f"A {name} folder holds {spec.expected}. Point convlens at the folder that holds "
        f"{name}/ with --data-dir DIR (root= in Python) or the CONVLENS_DATA environment variable, "
        "or pass --download to fetch it with torchvision."
    )


def load(
    name: str,
    split: str = "train",
    root: Root = None,
    *,
    download: bool = False,
    size: int | tuple[int, int] | None = None,
) -> Dataset:
    """Load one split of a named data set into memory.

    Args:
        name: `mnist`, `fashion-mnist`, `cifar10`, `sample` or `folder:PATH`.
        split: `"train"` or `"test"`.
        root: a folder looked in first (holding `NAME/`, or the data set's files themselves).
        download: when the files are nowhere on the search path, fetch them with torchvision's
            checksummed downloader into `~/.cache/convlens/NAME` (needs internet).
        size: `folder:` only: the common image size `(H, W)` (or one int); default the most common.

    Returns:
        A :class:`Dataset`: uint8 images `(N, C, H, W)`, int64 labels, class names, and the mean and
        standard deviation per channel of the *training* split in [0, 1] units.

    Raises:
        ConvlensError: unknown name or split, files not found (naming every place looked in),
            truncated or corrupt files (naming the file).
    """
    name = name.strip()
    _check(name, split)
    if size is not None and not name.startswith("folder:"):
        raise ConvlensError(f"size= applies to folder:PATH data sets only, not to {name}")
    if name == "sample":
        return mnist.load_sample(split)
    if name.startswith("folder:"):
        from convlens.data.folder import load_folder

        path = name[len("folder:") :].strip()
        if not path:
            raise ConvlensError("folder: needs a path, e.g. folder:~/pictures/pets")
        return load_folder(path, split, size=size)

    loc = locate(name, root)
    if loc.found is None:
        if not download:
            raise ConvlensError(not_found_message(name, loc.places))
        from convlens.data.download import download_dataset

        target = download_dataset(name)
        files = _SPECS[name].find(target)
        if files is None:
            raise ConvlensError(f"downloaded {name} into {target} but cannot find its files there")
        loc = Located(name, target, files, loc.places)
    return _SPECS[name].load(loc.files, split)


@dataclass
class DatasetInfo:
    """What `convlens datasets` shows for one data set (read from file headers, nothing decoded)."""

    name: str
    found: str | None
    places: list[Path]
    sizes: dict[str, int]
    image_shape: tuple[int, int, int] | None
    classes: list[str]
    error: str | None = None


def describe(name: str, root: Root = None) -> DatasetInfo:
    """Where `name` is found and how big it is, without decoding images. Never raises for bad files."""
    if name == "sample":
        img_file, _ = mnist.sample_files()
        from convlens.data.idx import read_header

        try:
            n, h, w = read_header(img_file, 3)
        except ConvlensError as e:
            return DatasetInfo(
                name, None, [img_file.parent], {}, None, mnist.FASHION_CLASSES, str(e)
            )
        test = n // mnist.SAMPLE_TEST_EVERY
        return DatasetInfo(
            name,
            "bundled with convlens",
            [img_file.parent],
            {"train": n - test, "test": test},
            (1, h, w),
            list(mnist.FASHION_CLASSES),
        )
    _check(name, "train")
    if name.startswith("folder:"):
        return _describe_folder(name)
    spec = _SPECS[name]
    try:
        loc = locate(name, root)
    except ConvlensError as e:
        return DatasetInfo(name, None, search_places(name, root), {}, None, spec.classes, str(e))
    if loc.found is None:
        return DatasetInfo(name, None, loc.places, {}, None, spec.classes)
    try:
        d = spec.describe(loc.files)
    except ConvlensError as e:
        return DatasetInfo(name, str(loc.found), loc.places, {}, None, spec.classes, str(e))
    shape = next(iter(d.values()))[1]
    return DatasetInfo(
        name, str(loc.found), loc.places, {s: n for s, (n, _) in d.items()}, shape, spec.classes
    )


def _describe_folder(name: str) -> DatasetInfo:
    from convlens.data.folder import plan_folder

    text = name[len("folder:") :].strip()
    if not text:  # not the current directory: a path the user forgot
        return DatasetInfo(
            name, None, [], {}, None, [], "folder: needs a path, e.g. folder:~/pictures/pets"
        )
    path = Path(text).expanduser()
    try:
        with warnings.catch_warnings():  # listing: the notices are for loading
            warnings.simplefilter("ignore")
            plan = plan_folder(path)
    except ConvlensError as e:
        return DatasetInfo(name, None, [path], {}, None, [], str(e))
    sizes = {s: len(v) for s, v in plan.splits.items()}
    return DatasetInfo(
        name, str(plan.root), [path], sizes, (plan.channels, *plan.size), plan.classes
    )
