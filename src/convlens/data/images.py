"""Image files to uint8 arrays: ImageFolder trees (in a folder or a tar archive), decoding, conversion.

Shared by `folder:PATH` and by CIFAR-10's JPEG tree. The rules:

- An ImageFolder tree is `ROOT/<class>/<image>` (images may sit deeper, as in torchvision); classes are
  the sub-folder names in sorted order, label = position.
- Files whose extension is not an image extension (`.jpg .jpeg .png .bmp .gif .tif .tiff .webp .ppm
  .pgm .pbm`) are **skipped with a warning** (a README, a `.csv` of labels, `Thumbs.db`); hidden
  files (`.DS_Store`) are skipped silently. A file with an image extension that Pillow cannot decode
  is an error naming the file: a data set must not shrink silently.
- Channels: one (greyscale) when every image is greyscale (`1`, `L`, `LA`, `I`, `I;16`, `F`), else
  three (RGB). Palette, RGBA, CMYK and other modes are converted by Pillow; transparency is composited
  on black (as `convlens.subjects.images` does for single images).
- Size: the one given, else the most common size; other images are resized (bilinear, aspect ratio
  not kept, as `torchvision.transforms.Resize((h, w))`) with a notice.
"""

from __future__ import annotations

import io
import os
import tarfile
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from convlens.errors import ConvlensError
from convlens.progress import progress_bar

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm"}
)
GREY_MODES = frozenset({"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
TEST_SPLIT_NAMES = ("test", "val", "valid", "validation")


class DataNotice(UserWarning):
    """Something the data layer did to the user's files that they should know (skipped, resized)."""


def notify(message: str, notices: list[str] | None = None) -> None:
    """Record a notice and emit it as a :class:`DataNotice` warning."""
    if notices is not None:
        notices.append(message)
    warnings.warn(message, DataNotice, stacklevel=3)


@dataclass(frozen=True)
class ImageSource:
    """One image of a tree: its label, a name for messages, and a path or the file's bytes."""

    label: int
    name: str
    path: Path | None = None
    data: bytes | None = None

    def open(self) -> Image.Image:
        src: Any = self.path if self.path is not None else io.BytesIO(self.data or b"")
        try:
            return open_image(src, self.name)
        except (UnidentifiedImageError, OSError) as e:
            raise ConvlensError(
                f"{self.name} is not an image Pillow can read ({e}); remove or replace it"
            ) from None


# Pillow's guard against decompression bombs: it warns above this many pixels and refuses twice as
# many. convlens keeps the limit and says it in one line instead of Pillow's warning.
MAX_PIXELS: int = Image.MAX_IMAGE_PIXELS or 89_478_485


def open_image(src: Any, name: str) -> Image.Image:
    """`Image.open(src)`, with Pillow's decompression-bomb warning as one clear note or error.

    Raises:
        ConvlensError: the image has more than twice :data:`MAX_PIXELS` pixels.
        OSError, UnidentifiedImageError: as `Image.open`.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(src)
        except Image.DecompressionBombWarning:
            pass
        except Image.DecompressionBombError:
            raise ConvlensError(
                f"{name} has more than {2 * MAX_PIXELS / 1e6:.0f} megapixels, more than convlens "
                "decodes (a guard against decompression bombs); resize it first"
            ) from None
    if hasattr(src, "seek"):
        src.seek(0)
    with warnings.catch_warnings():  # over MAX_PIXELS but under twice that: read it, noted once
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(src)
    w, h = im.size
    warnings.warn(
        f"{name} is {w:,}x{h:,} ({w * h / 1e6:.0f} megapixels, over {MAX_PIXELS / 1e6:.0f}): "
        "decoding it takes time and memory",
        DataNotice,
        stacklevel=2,
    )
    return im


@dataclass
class ImageTree:
    """An ImageFolder tree: class names and, per split, its images in a fixed order."""

    where: str
    classes: list[str]
    splits: dict[str, list[ImageSource]]
    skipped: list[str] = field(default_factory=list)


def _is_hidden(name: str) -> bool:
    return name.startswith(".") or name.startswith("__MACOSX")


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not _is_hidden(p.name))


def _scan_class_dirs(root: Path, classes: list[str], skipped: list[str]) -> list[ImageSource]:
    out = []
    for label, cls in enumerate(classes):
        d = root / cls
        if not d.is_dir():
            continue
        for dirpath, dirnames, filenames in os.walk(d):
            dirnames[:] = sorted(n for n in dirnames if not _is_hidden(n))
            for fn in sorted(filenames):
                if _is_hidden(fn):
                    continue
                p = Path(dirpath) / fn
                if p.suffix.lower() in IMAGE_EXTENSIONS:
                    out.append(ImageSource(label, str(p), path=p))
                else:
                    skipped.append(str(p))
    return out


def scan_folder(root: Path) -> ImageTree:
    """Scan an ImageFolder tree on disk.

    `ROOT/train/<class>/*` and `ROOT/test/<class>/*` (or `val/`) give the two splits; a plain
    `ROOT/<class>/*` (or `ROOT/train/<class>/*` alone) gives one split, named `"all"` (the caller
    splits it).

    Raises:
        ConvlensError: no such folder, no class folders, or no images at all.
    """
    if root.exists() and not root.is_dir():
        raise ConvlensError(
            f"{root} is a file, not a folder; folder:PATH needs an ImageFolder tree "
            "PATH/<class>/<image>"
        )
    if not root.is_dir():
        raise ConvlensError(
            f"no folder at {root}; folder:PATH needs an ImageFolder tree PATH/<class>/<image>"
        )
    skipped: list[str] = []
    test_dir = next((root / t for t in TEST_SPLIT_NAMES if (root / t).is_dir()), None)
    if (root / "train").is_dir() and test_dir is not None:
        classes = [p.name for p in _class_dirs(root / "train")]
        test_classes = [p.name for p in _class_dirs(test_dir)]
        unknown = sorted(set(test_classes) - set(classes))
        if unknown:
            raise ConvlensError(
                f"{test_dir} has class folders that {root / 'train'} lacks: {', '.join(unknown)}"
            )
        splits = {
            "train": _scan_class_dirs(root / "train", classes, skipped),
            "test": _scan_class_dirs(test_dir, classes, skipped),
        }
    else:
        # a train/ folder alone is the tree (split by the caller), not a class called "train"
        tree_root = root / "train" if (root / "train").is_dir() else root
        classes = [p.name for p in _class_dirs(tree_root)]
        splits = {"all": _scan_class_dirs(tree_root, classes, skipped)}
    if not classes:
        loose = sum(
            1 for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        )
        flat = f" ({loose} images lie in it directly: put each in a folder named by its class)"
        raise ConvlensError(
            f"{root} holds no class folders{flat if loose else ''}; an ImageFolder tree is "
            "PATH/<class>/<image> (or PATH/train/<class>/<image> and PATH/test/<class>/<image>)"
        )
    if not any(splits.values()):
        raise ConvlensError(
            f"{root} holds no images (extensions {', '.join(sorted(IMAGE_EXTENSIONS))}) "
            f"in its class folders {', '.join(classes[:5])}{', ...' if len(classes) > 5 else ''}"
        )
    return ImageTree(str(root), classes, splits, skipped)


def scan_tar(path: Path) -> ImageTree:
    """Read an ImageFolder tree `train/<class>/*`, `test/<class>/*` from a (gzipped) tar archive.

    The tree may sit under a top folder (`cifar10/train/...`). The files' bytes are read into memory
    (CIFAR-10 as JPEG is 19 MB); decoding is left to :func:`decode_images`.

    Raises:
        ConvlensError: the archive is truncated or corrupt, or holds no such tree.
    """
    found: dict[str, dict[str, list[tuple[str, bytes]]]] = {"train": {}, "test": {}}
    skipped: list[str] = []
    try:
        with tarfile.open(path, "r:*") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                parts = PurePosixPath(m.name).parts
                idx = next((i for i, p in enumerate(parts) if p in ("train", "test")), None)
                if idx is None or len(parts) < idx + 3 or any(_is_hidden(p) for p in parts):
                    continue
                split, cls = parts[idx], parts[idx + 1]
                if PurePosixPath(m.name).suffix.lower() not in IMAGE_EXTENSIONS:
                    skipped.append(f"{path}:{m.name}")
                    continue
                f = tf.extractfile(m)
                if f is None:
                    continue
                found[split].setdefault(cls, []).append((m.name, f.read()))
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ConvlensError(f"{path} is truncated or corrupt ({e}); download it again") from None
    classes = sorted(found["train"])
    if not classes or not found["test"]:
        raise ConvlensError(f"{path} holds no ImageFolder tree train/<class>/*, test/<class>/*")
    unknown = sorted(set(found["test"]) - set(classes))
    if unknown:
        raise ConvlensError(f"{path}: test/ has classes that train/ lacks: {', '.join(unknown)}")
    splits = {}
    for split, by_class in found.items():
        splits[split] = [
            ImageSource(label, f"{path}:{name}", data=data)
            for label, cls in enumerate(classes)
            for name, data in sorted(by_class.get(cls, []))
        ]
    return ImageTree(str(path), classes, splits, skipped)


def warn_skipped(tree: ImageTree, notices: list[str] | None = None) -> None:
    """One notice for the non-image files a scan skipped."""
    if tree.skipped:
        shown = ", ".join(tree.skipped[:3]) + (", ..." if len(tree.skipped) > 3 else "")
        notify(f"skipped {len(tree.skipped)} non-image file(s) in {tree.where}: {shown}", notices)


def probe(sources: list[ImageSource]) -> tuple[bool, Counter[tuple[int, int]]]:
    """Read only the headers: (all greyscale?, Counter of (H, W) sizes)."""
    grey = True
    sizes: Counter[tuple[int, int]] = Counter()
    for s in sources:
        with s.open() as im:
            grey = grey and im.mode in GREY_MODES
            sizes[(im.height, im.width)] += 1
    return grey, sizes


def convert_mode(im: Image.Image, mode: str) -> Image.Image:
    """`im` in `mode` (`L` or `RGB`): transparency composited on black, 16-bit scaled to 8 bits."""
    if im.mode == mode:
        return im
    if im.mode in ("RGBA", "LA", "PA", "La", "RGBa") or (
        im.mode == "P" and "transparency" in im.info
    ):
        rgba = im.convert("RGBA")
        im = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    if im.mode.startswith("I;16"):  # 16-bit greyscale: keep the top 8 bits, not Pillow's clipping
        arr = np.asarray(im, dtype=np.uint16) >> 8
        im = Image.fromarray(arr.astype(np.uint8), "L")
    return im.convert(mode)


def decode_one(src: ImageSource, mode: str, size: tuple[int, int]) -> tuple[np.ndarray, bool]:
    """Decode one image to `mode` (`L` or `RGB`) at `size` `(H, W)`: `(H, W[, 3])` uint8, resized?"""
    h, w = size
    with src.open() as im:
        resized = im.size != (w, h)
        try:
            if im.format == "JPEG" and im.width >= 2 * w and im.height >= 2 * h:
                # let libjpeg decode at 1/2, 1/4 or 1/8 scale (still >= the target): photos shrunk
                # to network size decode several times faster
                im.draft(None, (w, h))
            im.load()
            im2 = convert_mode(im, mode)
        except (OSError, ValueError, SyntaxError) as e:
            raise ConvlensError(
                f"{src.name} is truncated or corrupt ({e}); remove or replace it"
            ) from None
        if im2.size != (w, h):
            im2 = im2.resize((w, h), Image.Resampling.BILINEAR)
        return np.asarray(im2, dtype=np.uint8), resized


def decode_images(
    sources: list[ImageSource],
    channels: int,
    size: tuple[int, int],
    *,
    description: str = "decoding images",
    threads: int | None = None,
) -> tuple[np.ndarray, int]:
    """Decode images into one uint8 array `(N, C, H, W)`; also return how many were resized.

    Pillow releases the GIL while decoding, so a small thread pool overlaps the work of several files.
    """
    n = len(sources)
    h, w = size
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((n, h, w) if channels == 1 else (n, h, w, 3), dtype=np.uint8)  # (N, H, W[, 3])
    chunk = 512
    threads = threads or min(4, os.cpu_count() or 1)

    def work(start: int) -> int:
        resized = 0
        for i in range(start, min(start + chunk, n)):
            out[i], r = decode_one(sources[i], mode, size)
            resized += r
        return resized

    total_resized = 0
    # Small jobs finish before a bar would be seen.
    with (
        progress_bar(n, description, enabled=n >= 5000) as advance,
        ThreadPoolExecutor(threads) as pool,
    ):
        for start, r in zip(range(0, n, chunk), pool.map(work, range(0, n, chunk)), strict=True):
            total_resized += r
            advance(min(chunk, n - start))
    arr = out[:, None] if channels == 1 else out.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(arr), total_resized
