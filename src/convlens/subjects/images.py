"""A user's image files as a subject's input: uint8 ``(N, C, H, W)`` prepared as its preprocessing says.

Any JPEG, PNG or WebP (and the other formats of :data:`~convlens.data.images.IMAGE_EXTENSIONS`) of
any size and mode is accepted:

- EXIF orientation is honoured (``PIL.ImageOps.exif_transpose``), as a photo viewer shows the photo.
- Modes are converted to the model's channels: palette, RGBA (alpha composited on black), CMYK,
  16-bit greyscale (top 8 bits) become ``L`` for one channel or ``RGB`` for three.
- Size: with ``Preprocess.resize`` set, the shorter side is resized to it and the centre
  ``Preprocess.size`` is cropped, exactly as torchvision's ``ImageClassification`` transform does on
  a PIL image (same output size arithmetic, same Pillow filter, same rounding of the crop); without
  it the image is resized straight to ``size`` (aspect ratio not kept).
- Giant images: above :data:`MAX_PIXELS` (50 megapixels) a JPEG is decoded at 1/2, 1/4 or 1/8 scale
  by libjpeg (``Image.draft``: never the full image in memory) and a notice says so; any other format
  is refused with a message, before its pixels are decoded. Pillow's own
  ``DecompressionBombWarning`` never reaches the user: this rule replaces it.

A folder is either flat (every image in it, sorted by name: unlabelled) or has one sub-folder per
class (ImageFolder: class = sub-folder name in sorted order; labelled).
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from convlens.data.dataset import Dataset
from convlens.data.images import IMAGE_EXTENSIONS, convert_mode
from convlens.errors import InputError
from convlens.subjects.core import Preprocess

MAX_PIXELS = 50_000_000
"""Images with more pixels than this are decoded at reduced scale (JPEG) or refused (other formats)."""
MAX_FOLDER_BYTES = 2 * 1024**3
"""A folder whose images would take more than this decoded (at the model's size) is refused."""

_ORIENTATION = 0x0112  # the EXIF orientation tag
_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


@dataclass(frozen=True)
class ImageFile:
    """One image file and its label (-1: unlabelled)."""

    path: Path
    label: int = -1


def _resized_size(w: int, h: int, short: int) -> tuple[int, int]:
    """``(W, H)`` after resizing the shorter side to `short` (torchvision's arithmetic, truncating)."""
    if w <= h:
        return short, int(short * h / w)
    return int(short * w / h), short


def prepare(im: Image.Image, pre: Preprocess, name: str, notices: list[str]) -> np.ndarray:
    """A decoded PIL image -> uint8 ``(H, W)`` or ``(H, W, 3)`` at ``pre.size`` (see the module doc)."""
    h, w = pre.size
    flt = _FILTERS.get(pre.interpolation, Image.Resampling.BILINEAR)
    ImageOps.exif_transpose(im, in_place=True)  # in place: no copy of an upright image
    target = "L" if pre.channels == 1 else "RGB"
    if im.mode != target:
        notices.append(f"{name}: converted {im.mode} to {target}")
        im = convert_mode(im, target)
    if pre.resize is None:
        if im.size != (w, h):
            notices.append(f"{name}: resized {im.width}x{im.height} to {w}x{h}")
            im = im.resize((w, h), flt)
    else:
        rw, rh = _resized_size(im.width, im.height, pre.resize)
        if rw * rh > MAX_PIXELS:
            raise InputError(
                f"{name}: {im.width}x{im.height} is too elongated to resize its shorter side to "
                f"{pre.resize} pixels ({rw}x{rh}); crop it first"
            )
        if (rw, rh) != im.size:
            notices.append(
                f"{name}: resized {im.width}x{im.height} to {rw}x{rh}, centre {w}x{h} cropped"
            )
        elif (w, h) != im.size:  # already the resize's size: only the crop happens
            notices.append(f"{name}: centre {w}x{h} of {im.width}x{im.height} cropped")
        if (rw, rh) != im.size:
            im = im.resize((rw, rh), flt)
        # torchvision's center_crop: pad when the crop is larger, then round the offsets
        if rw < w or rh < h:
            padded = Image.new(im.mode, (max(rw, w), max(rh, h)))
            padded.paste(im, ((max(rw, w) - rw) // 2, (max(rh, h) - rh) // 2))
            im, (rw, rh) = padded, padded.size
        top, left = round((rh - h) / 2.0), round((rw - w) / 2.0)
        im = im.crop((left, top, left + w, top + h))
    return np.asarray(im, dtype=np.uint8)


def _open(src: Path | IO[bytes], name: str, pre: Preprocess, notices: list[str]) -> Image.Image:
    """Open an image file, applying the pixel limit before any pixel is decoded."""
    try:
        im = Image.open(src)
    except Image.DecompressionBombError as e:
        raise InputError(
            f"{name} is refused: {e}. Shrink it below {MAX_PIXELS / 1e6:.0f} megapixels first"
        ) from None
    except (UnidentifiedImageError, OSError) as e:
        raise InputError(f"{name} is not an image Pillow can read ({e})") from None
    pixels = im.width * im.height
    if pixels > MAX_PIXELS:
        mp = f"{im.width}x{im.height} ({pixels / 1e6:.0f} megapixels)"
        if im.format != "JPEG":
            im.close()
            raise InputError(
                f"{name} is {mp}, above convlens's limit of {MAX_PIXELS / 1e6:.0f} megapixels for "
                f"{im.format or 'this format'} images (only JPEG decodes at reduced scale); shrink "
                "it first"
            )
        h, w = pre.size
        need = _resized_size(im.width, im.height, pre.resize) if pre.resize else (w, h)
        im.draft(im.mode if im.mode in ("L", "RGB") else None, need)
        notices.append(
            f"{Path(name).name}: {mp} is above the {MAX_PIXELS / 1e6:.0f}-megapixel limit; decoded "
            f"at reduced scale ({im.size[0]}x{im.size[1]}) by the JPEG decoder"
        )
    return im


def load_image(path: str | Path, pre: Preprocess) -> tuple[torch.Tensor, list[str]]:
    """Read one image file as uint8 ``(C, H, W)`` prepared by `pre`; also return the notices.

    Raises:
        InputError: no such file, not an image, truncated, or too large (see the module doc).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no image file at {path}")
    notices: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # replaced by MAX_PIXELS
        arr = _decode(path, str(path), pre, notices)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy()), notices  # Pillow's buffer is read-only


def _decode(src: Path | IO[bytes], name: str, pre: Preprocess, notices: list[str]) -> np.ndarray:
    with _open(src, name, pre, notices) as im:
        try:
            im.load()
            return prepare(im, pre, Path(name).name, notices)
        except (OSError, ValueError, SyntaxError) as e:
            raise InputError(f"{name} is truncated or corrupt ({e})") from None


def decode_image(data: bytes, pre: Preprocess, name: str = "the image") -> torch.Tensor:
    """The bytes of an image file (an upload) -> uint8 ``(C, H, W)`` prepared by `pre`.

    The same rules as :func:`load_image`: pixel limit before decoding, EXIF orientation, modes.

    Raises:
        InputError: not an image, truncated, or too large.
    """
    notices: list[str] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # replaced by MAX_PIXELS
        arr = _decode(io.BytesIO(data), name, pre, notices)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return torch.from_numpy(arr.copy())


def load_images(paths: Sequence[str | Path], pre: Preprocess) -> tuple[torch.Tensor, list[str]]:
    """Read image files as one uint8 batch ``(N, C, H, W)``; also return the notices.

    Pillow releases the GIL while decoding, so a few threads overlap the files.
    """
    files = [Path(p) for p in paths]
    if not files:
        raise InputError("no image files given")
    for p in files:
        if not p.is_file():
            raise InputError(f"no image file at {p}")
    c, h, w = pre.image_shape
    if len(files) * c * h * w > MAX_FOLDER_BYTES:
        raise InputError(
            f"{len(files)} images at {c}x{h}x{w} would take "
            f"{len(files) * c * h * w / 1024**3:.1f} GiB in memory (limit "
            f"{MAX_FOLDER_BYTES / 1024**3:.0f} GiB); pass fewer images (`convlens evaluate` and "
            "`convlens index build` stream a folder of any size)"
        )
    out = np.empty((len(files), c, h, w), dtype=np.uint8)
    per_file: list[list[str]] = [[] for _ in files]

    def work(i: int) -> None:
        arr = _decode(files[i], str(files[i]), pre, per_file[i])
        out[i] = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)

    # One filter for the whole pool: Pillow's bomb warning is replaced by MAX_PIXELS.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        threads = min(4, os.cpu_count() or 1, len(files))
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(work, range(len(files))))
    return torch.from_numpy(out), [n for notes in per_file for n in notes]


def _is_image_name(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not name.startswith(".")


def _files_under(folder: Path, recursive: bool) -> list[Path]:
    """The files in `folder` (and its sub-folders when `recursive`, links followed), in path
    order (part by part, as ``sorted`` orders ``Path`` objects).

    ``os.scandir`` knows each entry's type from the directory listing: a folder of 50,000 images
    is listed without a ``stat`` per file.
    """
    found: list[str] = []
    stack = [str(folder)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:  # unreadable or vanished sub-folder: nothing in it is listed
            continue
        with entries:
            for e in entries:
                if recursive and e.is_dir():
                    stack.append(e.path)
                elif e.is_file():
                    found.append(e.path)
    found.sort(key=lambda s: s.split(os.sep))
    return [Path(s) for s in found]


def scan_images(path: str | Path) -> tuple[list[ImageFile], list[str] | None, list[str]]:
    """The image files of a file or folder: ``(files, class names or None, notices)``.

    A folder with sub-folders is an ImageFolder tree (class = sub-folder, images found recursively;
    files beside the class folders are ignored with a notice); otherwise its images are unlabelled.
    Files without an image extension are skipped with a notice.

    Raises:
        InputError: nothing there, or no image in it.
    """
    root = Path(path).expanduser()
    if root.is_file():
        return [ImageFile(root)], None, []
    if not root.is_dir():
        raise InputError(f"no image file or folder at {root}")
    notices: list[str] = []
    # class folders: sub-folders holding at least one image (not __pycache__, .git, empty ones)
    under = {
        d: _files_under(d, recursive=True)
        for d in sorted(root.iterdir())
        if d.is_dir() and not d.name.startswith((".", "__"))
    }
    subdirs = [d for d, fs in under.items() if any(_is_image_name(f.name) for f in fs)]
    skipped: list[Path] = []
    files: list[ImageFile] = []
    classes: list[str] | None = None
    if subdirs:
        classes = [d.name for d in subdirs]
        loose = [p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")]
        if loose:
            notices.append(
                f"{root}: {len(loose)} file(s) beside the class folders are not used "
                f"({', '.join(p.name for p in sorted(loose)[:3])})"
            )
        for label, d in enumerate(subdirs):
            for p in under[d]:
                if _is_image_name(p.name):
                    files.append(ImageFile(p, label))
                elif not p.name.startswith("."):
                    skipped.append(p)
    else:
        for p in _files_under(root, recursive=False):
            if _is_image_name(p.name):
                files.append(ImageFile(p))
            elif not p.name.startswith("."):
                skipped.append(p)
    if skipped:
        notices.append(
            f"skipped {len(skipped)} non-image file(s) in {root}: "
            + ", ".join(p.name for p in skipped[:3])
            + (", ..." if len(skipped) > 3 else "")
        )
    if not files:
        raise InputError(
            f"{root} holds no images (extensions {', '.join(sorted(IMAGE_EXTENSIONS))})"
        )
    return files, classes, notices


def is_labelled(ds: Dataset) -> bool:
    """Whether `ds` carries true labels (class folders), not just images."""
    return bool(ds.extra.get("labelled", True))


def load_image_set(path: str | Path, pre: Preprocess) -> Dataset:
    """A file or folder of images as a :class:`Dataset` at the preprocessing's size.

    Labelled when the folder has class sub-folders (``classes`` = their names); unlabelled
    otherwise (``labels`` all 0, ``classes == ["unlabelled"]``, ``extra["labelled"] = False``).
    ``extra["notices"]`` lists what was converted, resized, skipped; ``extra["files"]`` the paths.
    """
    return load_image_list(scan_image_list(path), pre)


def load_image_list(images: ImageList, pre: Preprocess) -> Dataset:
    """Decode every file of an :class:`ImageList` into one in-memory :class:`Dataset`.

    Raises:
        InputError: a file cannot be read, or the decoded images would pass
            :data:`MAX_FOLDER_BYTES` (stream such a folder with :mod:`convlens.index`).
    """
    pixels, more = load_images(images.files, pre)
    return Dataset(
        name=f"images:{Path(images.source)}",
        split="test",
        images=pixels,
        labels=torch.from_numpy(np.maximum(images.labels, 0)),
        classes=list(images.classes) if images.classes is not None else ["unlabelled"],
        mean=pre.mean,
        std=pre.std,
        source=images.source,
        extra={
            "labelled": images.labelled,
            "notices": _summarise(images.notices + more),
            "files": [str(f) for f in images.files],
        },
    )


def common_size(path: str | Path) -> tuple[int, int] | None:
    """The ``(H, W)`` most of the images under `path` share (from headers), None when none is read."""
    sizes = image_sizes(path)
    if not sizes:
        return None
    return max(sizes.items(), key=lambda kv: (kv[1], kv[0]))[0]


def image_sizes(path: str | Path) -> dict[tuple[int, int], int]:
    """How many of the (first 1,000) images under `path` have each ``(H, W)`` (from headers)."""
    files, _, _ = scan_images(path)
    sizes: dict[tuple[int, int], int] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        for f in files[:1000]:
            try:
                with Image.open(f.path) as im:
                    turned = im.getexif().get(_ORIENTATION, 1) in (5, 6, 7, 8)  # a quarter turn
                    hw = (im.width, im.height) if turned else (im.height, im.width)
                    sizes[hw] = sizes.get(hw, 0) + 1
            except (UnidentifiedImageError, OSError):
                continue
    return sizes


def _summarise(notices: list[str], limit: int = 5) -> list[str]:
    """At most `limit` notices, then one line counting the rest (a folder of 5,000 RGBA PNGs)."""
    if len(notices) <= limit:
        return notices
    return [*notices[:limit], f"... and {len(notices) - limit} more like these"]


# --------------------------------------------------------------------------------------------------
# Streaming: a folder of any size, decoded file by file (DataLoader workers), never all in memory
# --------------------------------------------------------------------------------------------------


@dataclass
class ImageList:
    """The scanned files of a folder, not decoded: what a streaming pass reads.

    Attributes:
        source: the file or folder it was scanned from.
        files: the image files, in the scanner's order (= image index).
        labels: int64 ``(N,)``; class folder index, or the model's output index once the folder
            names are matched to the model's classes; -1 for unlabelled images.
        classes: the names of the values in `labels` (None: unlabelled).
        notices: what the scanner skipped.
    """

    source: str
    files: list[Path]
    labels: np.ndarray
    classes: list[str] | None
    notices: list[str]

    def __len__(self) -> int:
        return len(self.files)

    @property
    def labelled(self) -> bool:
        """Whether the images carry true labels (class folders)."""
        return self.classes is not None

    def load(self, pre: Preprocess) -> Dataset:
        """Every image decoded into memory (:func:`load_image_list`: refused past the limit)."""
        return load_image_list(self, pre)


def scan_image_list(path: str | Path) -> ImageList:
    """The image files of a file or folder (:func:`scan_images`), as an :class:`ImageList`."""
    files, classes, notices = scan_images(path)
    return ImageList(
        source=str(path),
        files=[f.path for f in files],
        labels=np.array([f.label for f in files], dtype=np.int64),
        classes=list(classes) if classes is not None else None,
        notices=notices,
    )


class StreamingImages(torch.utils.data.Dataset[tuple[torch.Tensor, int, str]]):
    """Image files decoded one by one through the one decoder, for a ``DataLoader``'s workers.

    Item `i` is ``(uint8 (C, H, W), i, problem)``: `problem` is "" for a good image; for a file that
    cannot be read (vanished, truncated, not an image) the pixels are zeros and `problem` is the
    one-line reason, so that one bad file in the middle of a large folder does not end the pass.
    """

    def __init__(self, files: Sequence[str | Path], pre: Preprocess) -> None:
        self.files = [Path(f) for f in files]
        self.pre = pre

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, str]:
        path = self.files[i]
        notices: list[str] = []  # converted / resized: the same for every file of a folder
        try:
            if not path.is_file():
                raise InputError(f"no image file at {path}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # MAX_PIXELS
                arr = _decode(path, str(path), self.pre, notices)
        except InputError as e:
            return torch.zeros(self.pre.image_shape, dtype=torch.uint8), i, str(e)
        arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(arr)), i, ""
