"""The subjects a server shows, by name: run directories found in a folder, or subjects given.

Requests name a subject; the name is looked up in this catalog, never joined to a path. A run's model
and test images are loaded on first use. Each subject has a lock: one model computation at a time per
subject (hooks and eval/train flags live on the model), while reads of cached results run freely.
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from convlens.anatomy.graph import layer_graph
from convlens.anatomy.summary import Summary, summary
from convlens.errors import ConvlensError
from convlens.serve.errors import RequestError, not_found
from convlens.subjects import Subject, from_run
from convlens.train.run_dir import RUN_JSON, WEIGHTS, load_run

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:+-]{0,127}$")


@dataclass
class Served:
    """One subject as the server holds it.

    Attributes:
        name: the name requests use.
        load: makes the subject (called once, on first use).
        key: a digest that changes when the weights change (names the subject's cache folder).
    """

    name: str
    load: Callable[[], Subject]
    key: str
    lock: threading.RLock = field(
        default_factory=threading.RLock
    )  # one model computation at a time
    _subject: Subject | None = None
    _summary: Summary | None = None
    _graph: dict[str, list[str]] | None = None
    _load_lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def subject(self) -> Subject:
        """The subject, loaded on first use."""
        if self._subject is None:
            with self._load_lock:
                if self._subject is None:
                    self._subject = self.load()
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


def from_run_dir(path: Path, *, images: bool = True, data_dir: str | None = None) -> Served:
    """A run directory as a served subject, named after its folder; its test split as images.

    `data_dir`: where the run's data set lives when not where it was trained (default: as recorded).
    """

    def load() -> Subject:
        run = load_run(path)
        data = None
        if images:
            try:
                data = run.load_data("test", root=data_dir)
            except ConvlensError:
                data = None  # the data set is not on this machine: the views that need it say so
        return from_run(run, images=data)

    return Served(name=_checked_name(path.name), load=load, key=_weights_key(path / WEIGHTS))


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
