"""What an index is built over, and the key that names its cache folder.

A source is either a folder streamed from disk (an :class:`~convlens.subjects.images.ImageList`:
files decoded in DataLoader workers) or a data set already in memory (a run's test split, a small
folder a subject loaded). The key is a SHA-256 of everything the index depends on:

- the weights: every tensor of the model's ``state_dict`` (name, dtype, shape and bytes) and the
  model's class name;
- the images: for files, each path with its size and modification time (so an edited or replaced
  file changes the key without reading any pixel); for a data set in memory, its pixel bytes;
  and the labels;
- the preprocessing (size, resize and crop, interpolation, mean, std, channels).

The layers and k are not in the key: they are recorded in the manifest, and an index with fewer
layers or a smaller k is rebuilt in place.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from convlens.data.dataset import Dataset
from convlens.errors import ConvlensError, InputError
from convlens.subjects.core import Subject
from convlens.subjects.images import ImageList, is_labelled, scan_image_list


@dataclass
class Source:
    """The images of one index, with their labels.

    Attributes:
        name: where they come from, for messages and the manifest (a folder, ``cifar10 test``).
        labels: int64 ``(N,)``, -1 for unlabelled images.
        classes: the names of the label values (None: unlabelled).
        labels_are_outputs: the labels index the model's outputs (loss and correctness apply).
        files: the image files (a streamed folder), else None.
        images: uint8 ``(N, C, H, W)`` (a data set in memory), else None.
        notices: what the scanner skipped.
    """

    name: str
    labels: np.ndarray
    classes: list[str] | None
    labels_are_outputs: bool
    files: list[Path] | None = None
    images: torch.Tensor | None = None
    notices: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.labels)


def resolve_source(sub: Subject, source: Dataset | ImageList | str | Path | None) -> Source:
    """The images to index: `source` when given, else the subject's own (streamed folder first).

    Raises:
        ConvlensError: the subject has no images and `source` names none, or the images are not
            at the subject's input shape.
    """
    if source is None:
        if sub.image_list is not None:
            source = sub.image_list
        elif sub.images is not None:
            source = sub.images
        else:
            source = sub.data("test")  # a run's test split; raises with advice when there is none
    if isinstance(source, str | Path):
        source = _match_folder(sub, scan_image_list(source))
    if isinstance(source, ImageList):
        if len(source) == 0:
            raise InputError(f"{source.source} holds no images")
        outputs = source.classes is not None and list(source.classes) == list(sub.classes)
        return Source(
            name=source.source,
            labels=np.asarray(source.labels, dtype=np.int64),
            classes=list(source.classes) if source.classes is not None else None,
            labels_are_outputs=outputs,
            files=list(source.files),
            notices=list(source.notices),
        )
    if isinstance(source, Dataset):
        if source.image_shape != sub.image_shape:
            raise ConvlensError(
                f"the images are {source.image_shape} (C, H, W) but {sub.name} takes "
                f"{sub.image_shape}"
            )
        if len(source) == 0:
            raise InputError(f"{source.source or source.name} holds no images")
        labelled = is_labelled(source)
        labels = source.labels.numpy().astype(np.int64) if labelled else None
        files = source.extra.get("files")
        name = source.source or f"{source.name} {source.split}"
        return Source(
            name=str(name),
            labels=labels if labels is not None else np.full(len(source), -1, dtype=np.int64),
            classes=list(source.classes) if labelled else None,
            labels_are_outputs=sub.labels_are_outputs(source),
            files=[Path(f) for f in files] if isinstance(files, list) else None,
            images=source.images,
        )
    raise ConvlensError(
        f"cannot index {type(source).__name__}: pass a folder, a convlens Dataset or an ImageList"
    )


def _match_folder(sub: Subject, images: ImageList) -> ImageList:
    """Class folders named as the subject's classes (any case) label its outputs."""
    if images.classes is None:
        return images
    lookup = {c.lower(): i for i, c in enumerate(sub.classes)}
    index = [lookup.get(c.lower()) for c in images.classes]
    if all(i is not None for i in index):
        images.labels = np.asarray(index, dtype=np.int64)[images.labels]
        images.classes = list(sub.classes)
    return images


# --------------------------------------------------------------------------------------------------
# The key
# --------------------------------------------------------------------------------------------------


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the model's class name and every tensor of its state dict (name, dtype, shape,
    bytes), in name order."""
    h = hashlib.sha256(type(model).__qualname__.encode())
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def files_digest(files: list[Path]) -> str:
    """SHA-256 of each file's absolute path, size and modification time (ns), in order.

    Raises:
        InputError: a file has vanished (the folder changed while it was read).
    """
    h = hashlib.sha256()
    for f in files:
        try:
            st = os.stat(f)
        except OSError as e:
            raise InputError(
                f"{f} is gone or unreadable ({e.strerror}): the folder changed while it was read"
            ) from None
        h.update(f"{os.path.abspath(f)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def images_digest(src: Source, files: str | None = None) -> str:
    """SHA-256 of the source's image files (when it has them: the same folder streamed or loaded in
    memory gives one key) or else its pixels, and its labels. `files`: the files' digest, when the
    caller has it already (a ``stat`` per file is not free over 50,000 files)."""
    h = hashlib.sha256()
    if src.files is not None:
        h.update((files or files_digest(src.files)).encode())
    else:
        assert src.images is not None
        h.update(str(tuple(src.images.shape)).encode())
        h.update(src.images.contiguous().numpy().tobytes())
    h.update(np.ascontiguousarray(src.labels).tobytes())
    return h.hexdigest()


def index_key(sub: Subject, src: Source, files: str | None = None) -> tuple[str, dict[str, str]]:
    """The cache key of `sub` over `src` (24 hex digits) and the digests it is made of (`files`:
    see :func:`images_digest`)."""
    parts = {
        "weights": weights_digest(sub.model),
        "images": images_digest(src, files),
        "preprocess": hashlib.sha256(
            json.dumps(asdict(sub.preprocess), sort_keys=True).encode()
        ).hexdigest(),
    }
    key = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]
    return key, parts
