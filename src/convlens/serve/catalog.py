"""The subjects a server shows, by name: run directories found in a folder, or subjects given.

Requests name a subject; the name is looked up in this catalog, never joined to a path. A run's model
and test images are loaded on first use. Each subject has a lock: one model computation at a time per
subject (hooks and eval/train flags live on the model), while reads of cached results run freely.

A bad run never hides the good ones: every run directory is checked cheaply when the catalog is made
(``run.json`` readable, ``model.safetensors`` present and not truncated) and gets a status, ``ok``,
``unfinished`` (training has not written its weights yet) or ``broken``, with the reason. A subject
that fails to load later turns ``broken`` too. Only the subject itself answers an error (409).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from convlens.anatomy.graph import layer_graph
from convlens.anatomy.summary import Summary, summary
from convlens.errors import ConvlensError
from convlens.index import Index, find_index
from convlens.serve.errors import RequestError, not_found
from convlens.subjects import Subject, from_run
from convlens.train.run_dir import RUN_JSON, WEIGHTS, load_run, read_run_json
from convlens.views import pixel_search

if TYPE_CHECKING:
    from convlens.views.neighbours import PixelSearch

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")


@dataclass
class Served:
    """One subject as the server holds it.

    Attributes:
        name: the name requests use.
        load: makes the subject (called once, on first use).
        key: a digest that changes when the weights change (names the subject's cache folder).
        status: ``ok``, ``unfinished`` or ``broken``.
        reason: why a subject is not ``ok`` (a sentence), else None.
        meta: what is known without loading (model, data, classes, input), for the listing.
        index_dir: where cached indexes are looked up (None: the default cache folder).
    """

    name: str
    load: Callable[[], Subject]
    key: str
    status: str = "ok"
    reason: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    index_dir: Path | None = None
    lock: threading.RLock = field(
        default_factory=threading.RLock
    )  # one model computation at a time
    _subject: Subject | None = None
    _summary: Summary | None = None
    _graph: dict[str, list[str]] | None = None
    _load_lock: threading.Lock = field(default_factory=threading.Lock)
    _index: Index | None = None
    _index_looked: bool = False
    _pixels: PixelSearch | None = None

    @property
    def ok(self) -> bool:
        """Whether the subject can be opened (as far as is known)."""
        return self.status == "ok"

    @property
    def loaded(self) -> bool:
        """Whether the subject has been loaded."""
        return self._subject is not None

    @property
    def subject(self) -> Subject:
        """The subject, loaded on first use.

        Raises:
            RequestError: 409 when the subject is unfinished or broken (loading failed now or
                before), with the reason.
        """
        if self._subject is None:
            with self._load_lock:
                if self._subject is None and self.ok:
                    try:
                        self._subject = self.load()
                    except ConvlensError as e:
                        self.status, self.reason = "broken", str(e)
        if self._subject is None:
            raise RequestError(f"{self.name} cannot be opened: {self.reason}", 409)
        return self._subject

    @property
    def summary(self) -> Summary:
        """Shapes, parameters, MACs and receptive fields of every layer (computed once)."""
        if self._summary is None:
            with self.lock:
                s = self.subject
                self._summary = summary(s.model, s.image_shape, name=self.name, warn=False)
                self._graph = layer_graph(s.model)
        return self._summary

    @property
    def graph(self) -> dict[str, list[str]] | None:
        """Which layer feeds which (None when the model cannot be traced symbolically)."""
        _ = self.summary
        return self._graph

    @property
    def index(self) -> Index | None:
        """The subject's cached index over its images (``convlens index build``), or None.

        Looked up once, when first asked (hashing the weights and the image list is not free); a
        server never builds an index itself: the views then compute from the images.
        """
        if not self._index_looked:
            with self._load_lock:
                if not self._index_looked:
                    s = self.subject
                    if s.images is not None or s.image_list is not None:
                        try:
                            self._index = find_index(s, cache_dir=self.index_dir)
                        except ConvlensError:  # unreadable images: the views say so themselves
                            self._index = None
                    self._index_looked = True
        return self._index

    @property
    def pixels(self) -> PixelSearch:
        """The pixel-space search over the subject's images, made on the first neighbour click
        (float32 pixels: four times the images' memory) and kept."""
        if self._pixels is None:
            with self._load_lock:
                if self._pixels is None:
                    self._pixels = pixel_search(self.subject)
        return self._pixels

    def layer(self, name: str) -> Any:
        """The summary row of layer `name` (404 listing the layers when there is none)."""
        rows = self.summary.layers
        for row in rows:
            if row.name == name:
                return row
        raise not_found("layer", name, [r.name for r in rows])

    def image(self, index: int) -> torch.Tensor:
        """Test image `index`, uint8 ``(C, H, W)`` (404 when out of range or there are none)."""
        images = self.subject.images
        if images is None:
            raise RequestError(f"{self.name} has no images; start the server with --images", 404)
        if not 0 <= index < len(images):
            raise RequestError(
                f"no image {index}; {self.name} has {len(images)} (0-{len(images) - 1})", 404
            )
        return images.images[index]


class Catalog:
    """The subjects of one server, by name."""

    def __init__(self, served: Iterable[Served]) -> None:
        self._by_name: dict[str, Served] = {}
        for s in served:
            if s.name in self._by_name:
                raise ConvlensError(f"two subjects are called {s.name!r}")
            self._by_name[s.name] = s

    def __getitem__(self, name: str) -> Served:
        served = self._by_name.get(name)
        if served is None:
            raise not_found("subject", name, list(self._by_name))
        return served

    def __iter__(self) -> Iterator[Served]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)


def run_dirs(folder: str | Path) -> list[Path]:
    """`folder` itself when it is a run directory, else its run-directory children (sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConvlensError(f"no folder at {folder}; pass a run directory or a folder of them")
    if (folder / RUN_JSON).is_file():
        return [folder]
    runs = sorted(p for p in folder.iterdir() if p.is_dir() and (p / RUN_JSON).is_file())
    if not runs:
        raise ConvlensError(
            f"{folder} holds no run directory (a folder with {RUN_JSON}); "
            "train one with `convlens train MODEL --out DIR`, or pass --model"
        )
    return runs


def from_run_dir(
    path: Path,
    *,
    images: bool = True,
    data_dir: str | None = None,
    images_dir: str | Path | None = None,
) -> Served:
    """A run directory as a served subject, named after its folder; its test split as images.

    Args:
        path: the run directory.
        images: look at the run's test split (when `images_dir` is not given).
        data_dir: where the run's data set lives when not where it was trained (default: as
            recorded).
        images_dir: a file or folder of images to look at instead of the test split (prepared as
            the run's preprocessing says).
    """
    path = Path(path)
    status, reason, meta = check_run(path)

    def load() -> Subject:
        from convlens.subjects import load_image_set

        run = load_run(path)
        s = from_run(run)
        if images_dir is not None:
            s.images = load_image_set(images_dir, s.preprocess)
        elif images:
            # The data set may not be on this machine: then the views that need images say so.
            with contextlib.suppress(ConvlensError):
                s.images = run.load_data("test", root=data_dir)
        return s

    return Served(
        name=_checked_name(path.name),
        load=load,
        key=_weights_key(path / WEIGHTS),
        status=status,
        reason=reason,
        meta=meta,
    )


def check_run(path: Path) -> tuple[str, str | None, dict[str, Any]]:
    """``(status, reason, meta)`` of a run directory, without loading it.

    ``ok`` when run.json reads and ``model.safetensors`` is complete (its header and the size of
    the file agree); ``unfinished`` when training has not written the weights yet; ``broken``
    otherwise. `meta`: model, data, classes and input shape from run.json (empty when unreadable).
    """
    try:
        raw = read_run_json(path)
    except ConvlensError as e:
        return "broken", str(e), {}
    data: dict[str, Any] = raw["data"] if isinstance(raw.get("data"), dict) else {}
    meta = {
        "model": raw["model"]["name"],
        "data": data.get("name"),
        "classes": data.get("classes"),
        "input": data.get("image_shape"),
        "run_status": raw.get("status"),
    }
    weights = path / WEIGHTS
    if not weights.is_file():
        state = raw.get("status", "unknown")
        if state == "failed":
            why = raw.get("error") or "no reason recorded"
            return "broken", f"its training failed ({why}) and there is no {WEIGHTS}", meta
        return (
            "unfinished",
            f"its training has not finished (status: {state}); there is no {WEIGHTS} yet",
            meta,
        )
    problem = safetensors_problem(weights)
    return ("broken", problem, meta) if problem else ("ok", None, meta)


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file at a glance (empty, truncated, bad header), or None.

    The format: 8 bytes (little-endian header length N), N bytes of JSON naming each tensor's
    ``data_offsets`` [begin, end) in the data that follows; the file must reach the largest end.
    """
    size = path.stat().st_size
    try:
        with path.open("rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 0 or 8 + n > size:
                return f"{path.name} is empty or truncated ({size} bytes)"
            header = json.loads(f.read(n))
        ends = [
            int(v["data_offsets"][1])
            for k, v in header.items()
            if k != "__metadata__" and isinstance(v, dict)
        ]
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return f"{path.name} is corrupt: its header is not a safetensors header"
    need = 8 + n + max(ends, default=0)
    if size < need:
        return f"{path.name} is truncated: {size} bytes of {need}"
    return None


def from_subject(s: Subject, *, name: str | None = None) -> Served:
    """An already loaded subject (e.g. from ``--model``) as a served one."""
    h = hashlib.sha256()
    for t in s.model.state_dict().values():
        h.update(str(tuple(t.shape)).encode())
        h.update(t.detach().cpu().contiguous().view(-1)[:4096].float().numpy().tobytes())
    served = Served(name=_checked_name(name or s.name), load=lambda: s, key=h.hexdigest()[:16])
    served._subject = s
    return served


def _checked_name(name: str) -> str:
    clean = re.sub(r"[^A-Za-z0-9._:+-]", "-", name).lstrip("-.") or "model"
    if not _NAME.match(clean):
        raise ConvlensError(f"cannot serve a subject called {name!r}")
    return clean[:128]


def _weights_key(path: Path) -> str:
    st = path.stat() if path.is_file() else None
    text = f"{path.resolve()}|{st.st_size if st else 0}|{st.st_mtime_ns if st else 0}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]
