"""An index on disk: a folder per key holding ``manifest.json`` and NumPy ``.npy`` arrays.

Layout of ``<cache>/<key>/`` (every file written to a temporary name, then renamed; the manifest
last, so a folder without one is never read as an index):

- ``manifest.json``: format, convlens version, the subject, the digests of the key, the
  preprocessing, N, class names, the layers (name, channels, map size), k, skipped files, notices.
- ``labels.npy`` int64 ``(N,)`` (-1 unlabelled); ``top_classes.npy`` int64 ``(N, 5)``;
  ``top_probs.npy`` float32 ``(N, 5)``; ``loss.npy`` float32 / ``correct.npy`` bool ``(N,)`` where
  the labels are the model's outputs; ``features.npy`` float16 ``(N, D)`` (memory-mapped);
  ``units/<i>.values.npy`` float32 ``(C, k)``, ``.images.npy`` int64 ``(C, k)``,
  ``.positions.npy`` int64 ``(C, k, 2)`` for the i-th layer; ``files.json`` (a folder's absolute
  paths) or ``images.npy`` uint8 ``(N, C, H, W)`` (a data set that was in memory); ``embedding-*.npy``.
- ``building/`` while a pass runs: ``state.json`` and one folder per finished shard (see
  :mod:`convlens.index.build`).

Beside the folder, ``<cache>/.<key>.lock`` is held (``fcntl.flock``) by the process building it: a
second process waits for it, `convlens index list` shows the folder as being built and
`convlens index delete` refuses it. The kernel releases the lock when the process ends, however
it ends.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no flock, no lock (one process at a time is the user's rule)
    fcntl = None  # type: ignore[assignment]

import numpy as np
import torch

from convlens.data.paths import cache_dir
from convlens.errors import ConvlensError, InputError
from convlens.index.topk import UnitTopK
from convlens.subjects.core import Preprocess

INDEX_FORMAT = 1
"""The on-disk format written by this version; an index of another format is rebuilt."""


def default_cache_dir() -> Path:
    """``$CONVLENS_CACHE/index``, else ``$XDG_CACHE_HOME/convlens/index``, else
    ``~/.cache/convlens/index`` (beside the data sets convlens caches)."""
    return cache_dir() / "index"


def cache_root(cache_dir: str | Path | None) -> Path:
    """The cache folder to use (the default when None)."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _lock_path(root: Path, key: str) -> Path:
    return root / f".{key}.lock"


@contextmanager
def building_lock(root: Path, key: str, enabled: bool = True) -> Iterator[None]:
    """Hold the exclusive lock of index `key` in cache `root` while building it. A second process
    building the same index waits for the first (one line says so), then finds it made.

    Raises:
        ConvlensError: the cache folder cannot be written (full disk, permissions).
    """
    if not enabled or fcntl is None:
        yield
        return
    try:
        root.mkdir(parents=True, exist_ok=True)
        f = open(_lock_path(root, key), "a+")  # noqa: SIM115 (held across the yield)
    except OSError as e:
        raise ConvlensError(f"cannot write the index cache at {root}: {e.strerror or e}") from None
    with f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            note(f"another process is building the index {key}; waiting for it to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def being_built(root: Path, key: str) -> bool:
    """Whether another process holds the building lock of index `key` now."""
    path = _lock_path(root, key)
    if fcntl is None or not path.is_file():
        return False
    try:
        with open(path, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            fcntl.flock(f, fcntl.LOCK_UN)
    except OSError:
        return False
    return False


class IndexNote(UserWarning):
    """Something the user should know about an index pass (a rebuild, skipped files): the CLI
    prints it as one ``note:`` line."""


def note(message: str) -> None:
    """Warn with an :class:`IndexNote`."""
    warnings.warn(message, IndexNote, stacklevel=3)


class DamagedIndex(ConvlensError):
    """A cached index that cannot be used as it is (another format, a truncated file)."""


class Index:
    """One subject's pass over its images, read from disk (arrays memory-mapped).

    Attributes:
        path: the index folder.
        manifest: ``manifest.json`` as a dict.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest
        self._arrays: dict[str, np.ndarray] = {}
        self._files: list[str] | None = None
        self.derived: dict[
            str, Any
        ] = {}  # computed from the arrays once (row norms for neighbours)

    def __repr__(self) -> str:
        return f"Index({self.key}, {self.n:,} images, layers {', '.join(self.layers)}, k={self.k})"

    def _array(self, name: str) -> np.ndarray:
        if name not in self._arrays:
            self._arrays[name] = np.load(self.path / name, mmap_mode="r")
        return self._arrays[name]

    @property
    def key(self) -> str:
        """The cache key (a hash of the weights, the image list and the preprocessing)."""
        return str(self.manifest["key"])

    @property
    def n(self) -> int:
        """Images in the index (unreadable files skipped)."""
        return int(self.manifest["n"])

    @property
    def k(self) -> int:
        """Images kept per channel."""
        return int(self.manifest["k"])

    @property
    def classes(self) -> list[str] | None:
        """Names of the values in :attr:`labels` (the model's classes when the labels are its
        outputs); None for unlabelled images."""
        c = self.manifest["classes"]
        return list(c) if c is not None else None

    @property
    def labels_are_outputs(self) -> bool:
        """Whether the labels index the model's outputs (then loss and correctness exist)."""
        return bool(self.manifest["labels_are_outputs"])

    @property
    def labels(self) -> np.ndarray:
        """int64 ``(N,)`` true labels, -1 for unlabelled images."""
        return self._array("labels.npy")

    @property
    def files(self) -> list[str] | None:
        """The image files in index order (a folder), else None (a data set held in memory)."""
        if not (self.path / "files.json").is_file():
            return None
        if self._files is None:
            self._files = [str(f) for f in json.loads((self.path / "files.json").read_text())]
        return self._files

    @property
    def top_classes(self) -> np.ndarray:
        """int64 ``(N, 5)``: the model's five most probable outputs, first = argmax of the logits
        (-1 pads a model with fewer than five outputs)."""
        return self._array("top_classes.npy")

    @property
    def top_probs(self) -> np.ndarray:
        """float32 ``(N, 5)``: their probabilities, from ``log_softmax`` of the logits in float64."""
        return self._array("top_probs.npy")

    @property
    def loss(self) -> np.ndarray | None:
        """float32 ``(N,)`` cross-entropy of each image, or None when the labels are not outputs."""
        return self._array("loss.npy") if self.labels_are_outputs else None

    @property
    def correct(self) -> np.ndarray | None:
        """bool ``(N,)``: top-1 equals the label; None when the labels are not outputs."""
        return self._array("correct.npy") if self.labels_are_outputs else None

    @property
    def layers(self) -> list[str]:
        """The layers whose channels have top-k images, in forward order."""
        return [entry["name"] for entry in self.manifest["layers"]]

    @property
    def preprocess(self) -> Preprocess:
        """How the images were prepared for the model."""
        p = dict(self.manifest["preprocess"])
        p["size"] = tuple(p["size"])
        p["mean"], p["std"] = tuple(p["mean"]), tuple(p["std"])
        return Preprocess(**p)

    @property
    def skipped(self) -> list[dict[str, str]]:
        """Files that could not be read, ``{"file", "reason"}``: not in the index."""
        return list(self.manifest.get("skipped", []))

    def features(self) -> np.ndarray:
        """float16 ``(N, D)`` penultimate features (the classifier's input), memory-mapped."""
        return self._array("features.npy")

    def map_size(self, layer: str) -> tuple[int, int]:
        """``(H', W')`` of `layer`'s output map (``(1, 1)`` for a flat layer)."""
        h, w = self._layer_entry(layer)["map_size"]
        return int(h), int(w)

    def _layer_entry(self, layer: str) -> dict[str, Any]:
        for i, entry in enumerate(self.manifest["layers"]):
            if entry["name"] == layer:
                return {**entry, "i": i}
        raise ConvlensError(
            f"the index has no top-k images for layer {layer!r}; its layers: "
            f"{', '.join(self.layers)} (build it with --layers {layer})"
        )

    def units(self, layer: str) -> UnitTopK:
        """Each channel's top-k images of `layer`: values, image indices, arg-max positions."""
        i = self._layer_entry(layer)["i"]
        return UnitTopK(
            values=np.asarray(self._array(f"units/{i}.values.npy")),
            images=np.asarray(self._array(f"units/{i}.images.npy")),
            positions=np.asarray(self._array(f"units/{i}.positions.npy")),
        )

    def neighbours(
        self, query: int | np.ndarray, k: int = 10, metric: str = "cosine"
    ) -> tuple[np.ndarray, np.ndarray]:
        """The exact `k` nearest images in feature space (see :func:`convlens.index.search.nearest`).

        An image index as `query` leaves that image itself out of its neighbours.
        """
        from convlens.index.search import nearest

        return nearest(self, query, k, metric)

    def embedding(self, limit: int = 50_000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """t-SNE map of the features (see :func:`convlens.index.search.embedding`), kept in the index."""
        from convlens.index.search import embedding

        return embedding(self, limit=limit, seed=seed)

    def image(self, i: int) -> torch.Tensor:
        """uint8 ``(C, H, W)`` of image `i`, as the model saw it (decoded again from its file).

        Raises:
            InputError: no image `i`, or its file is gone or changed into something unreadable.
        """
        if not 0 <= i < self.n:
            raise InputError(f"no image {i} in an index of {self.n:,} images")
        if (self.path / "images.npy").is_file():
            return torch.from_numpy(np.array(self._array("images.npy")[i]))
        files = self.files
        assert files is not None
        from convlens.subjects.images import load_image

        return load_image(files[i], self.preprocess)[0]


# --------------------------------------------------------------------------------------------------
# Opening, listing, deleting
# --------------------------------------------------------------------------------------------------


def read_manifest(path: Path) -> dict[str, Any]:
    """The manifest of the index folder `path`.

    Raises:
        DamagedIndex: missing, unreadable, or of another format.
    """
    try:
        manifest = json.loads((path / "manifest.json").read_text())
    except FileNotFoundError:
        raise DamagedIndex(f"{path} holds no finished index (no manifest.json)") from None
    except (OSError, ValueError) as e:
        raise DamagedIndex(f"the manifest of {path} is unreadable ({e})") from None
    if not isinstance(manifest, dict):
        raise DamagedIndex(f"the manifest of {path} is not a JSON object")
    fmt = manifest.get("format")
    if fmt != INDEX_FORMAT:
        raise DamagedIndex(
            f"the index at {path} was written by convlens {manifest.get('convlens_version', '?')} "
            f"in index format {fmt} (this version reads format {INDEX_FORMAT})"
        )
    return manifest


def expected_arrays(manifest: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Every array file of an index and its (shape, dtype), from its manifest."""
    n, k = int(manifest["n"]), int(manifest["k"])
    out: dict[str, tuple[tuple[int, ...], str]] = {
        "labels.npy": ((n,), "int64"),
        "top_classes.npy": ((n, 5), "int64"),
        "top_probs.npy": ((n, 5), "float32"),
        "features.npy": ((n, int(manifest["feature_dim"])), "float16"),
    }
    if manifest["labels_are_outputs"]:
        out["loss.npy"] = ((n,), "float32")
        out["correct.npy"] = ((n,), "bool")
    if manifest["source"]["in_memory"]:
        out["images.npy"] = ((n, *manifest["preprocess_shape"]), "uint8")
    for i, entry in enumerate(manifest["layers"]):
        c = int(entry["channels"])
        out[f"units/{i}.values.npy"] = ((c, k), "float32")
        out[f"units/{i}.images.npy"] = ((c, k), "int64")
        out[f"units/{i}.positions.npy"] = ((c, k, 2), "int64")
    return out


def open_index(path: str | Path) -> Index:
    """Open the index folder `path`, checking that every array is there, whole and of its shape.

    Raises:
        DamagedIndex: no finished index there, another format, or a missing or truncated file.
    """
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise InputError(f"no index folder at {folder}")
    manifest = read_manifest(folder)
    try:
        for name, (shape, dtype) in expected_arrays(manifest).items():
            try:
                a = np.load(folder / name, mmap_mode="r")
            except FileNotFoundError:
                raise DamagedIndex(f"the index at {folder} is damaged: {name} is missing") from None
            except (OSError, ValueError) as e:
                raise DamagedIndex(
                    f"the index at {folder} is damaged: {name} is truncated or unreadable ({e})"
                ) from None
            if tuple(a.shape) != shape or str(a.dtype) != dtype:
                raise DamagedIndex(
                    f"the index at {folder} is damaged: {name} is {a.dtype} {tuple(a.shape)}, "
                    f"expected {dtype} {shape}"
                )
        if not manifest["source"]["in_memory"]:
            files = json.loads((folder / "files.json").read_text())
            if len(files) != manifest["n"]:
                raise DamagedIndex(f"the index at {folder} is damaged: files.json does not list N")
    except (KeyError, TypeError) as e:
        raise DamagedIndex(f"the manifest of {folder} lacks {e}") from None
    except (OSError, ValueError) as e:
        raise DamagedIndex(f"the index at {folder} is damaged ({e})") from None
    return Index(folder, manifest)


@dataclass(frozen=True)
class IndexEntry:
    """One folder of the cache, as :func:`list_indexes` finds it.

    Attributes:
        path: the folder.
        key: its name.
        status: ``ok``, ``unfinished`` (a pass stopped part-way: resumable) or ``damaged``.
        reason: why it is not ``ok`` ("" when it is).
        manifest: the manifest when readable, else None.
        size_bytes: bytes on disk.
    """

    path: Path
    key: str
    status: str
    reason: str
    manifest: dict[str, Any] | None
    size_bytes: int


def _size(folder: Path) -> int:
    total = 0
    for root, _, files in os.walk(folder):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except OSError:
                continue
    return total


def list_indexes(cache_dir: str | Path | None = None) -> list[IndexEntry]:
    """Every index folder in the cache (newest first), finished or not."""
    root = cache_root(cache_dir)
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        if not folder.is_dir() or folder.name.startswith("."):
            continue
        manifest: dict[str, Any] | None = None
        try:
            manifest = open_index(folder).manifest
            status, reason = "ok", ""
        except ConvlensError as e:
            unfinished = (folder / "building").is_dir()
            status = "unfinished" if unfinished else "damaged"
            reason = "stopped part-way; build again to resume" if unfinished else str(e)
            if being_built(root, folder.name):
                status, reason = "building", "another process is building it now"
        out.append(IndexEntry(folder, folder.name, status, reason, manifest, _size(folder)))
    out.sort(key=lambda e: e.path.stat().st_mtime, reverse=True)
    return out


def delete_index(target: str | Path | Index, cache_dir: str | Path | None = None) -> Path:
    """Delete one index: an :class:`Index`, its folder, or its key (a unique prefix is enough).

    Raises:
        InputError: no such index, or a key prefix that matches several.
    """
    if isinstance(target, Index):
        folder = target.path
    elif Path(target).expanduser().is_dir():
        folder = Path(target).expanduser()
    else:
        root = cache_root(cache_dir)
        found = (
            [p for p in root.iterdir() if p.is_dir() and p.name.startswith(str(target))]
            if (root.is_dir())
            else []
        )
        if not found:
            raise InputError(f"no index {target!r} in {root} (`convlens index list` shows them)")
        if len(found) > 1:
            raise InputError(
                f"{target!r} names {len(found)} indexes in {root}; give more of the key"
            )
        folder = found[0]
    in_cache = folder.resolve().parent == cache_root(cache_dir).resolve()
    looks = (folder / "manifest.json").is_file() or (folder / "building").is_dir()
    if not in_cache and not looks:
        raise InputError(f"{folder} is not an index folder; not deleting it")
    if being_built(folder.parent, folder.name):
        raise InputError(
            f"the index {folder.name} is being built by another process; stop it first"
        )
    shutil.rmtree(folder)
    _lock_path(folder.parent, folder.name).unlink(missing_ok=True)
    return folder
