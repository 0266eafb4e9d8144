"""What every endpoint is handed: the server's state, and the subject named in the path.

FastAPI resolves these as dependencies (``Annotated[..., Depends(...)]``): a handler that takes a
:data:`ServedSubject` receives an opened subject, or the request has already been answered 404 (no
such subject, with the list of names) or 409 (the subject is unfinished or broken, with the reason).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Annotated, Any

import torch
from fastapi import Depends, Request

from convlens.serve.cache import ResultCache
from convlens.serve.catalog import Catalog, Served
from convlens.serve.errors import RequestError
from convlens.serve.jobs import JobPool
from convlens.serve.uploads import UploadStore

_IMAGE = re.compile(r"^(test):(\d{1,9})$|^(upload):([0-9a-f]{32})$")


@dataclass
class ServeState:
    """Everything one app holds (``app.state.serve``); made by :func:`convlens.serve.create_app`."""

    catalog: Catalog
    cache: ResultCache
    pool: JobPool
    uploads: UploadStore
    max_upload_bytes: int
    defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # by subject name

    def image(self, served: Served, spec: str) -> torch.Tensor:
        """The image named ``test:INDEX`` or ``upload:ID``, uint8 ``(C, H, W)``."""
        m = _IMAGE.match(spec)
        if m is None:
            raise RequestError(f"image must be 'test:INDEX' or 'upload:ID', not {spec[:64]!r}")
        if m.group(1):
            return served.image(int(m.group(2)))
        return self.uploads.get(served.name, m.group(4))

    def test_index(self, spec: str) -> int | None:
        """INDEX of ``test:INDEX``; None for an upload."""
        m = _IMAGE.match(spec)
        return int(m.group(2)) if m is not None and m.group(1) else None


def get_state(request: Request) -> ServeState:
    """The app's state."""
    state: ServeState = request.app.state.serve
    return state


State = Annotated[ServeState, Depends(get_state)]


def get_served(name: str, state: State) -> Served:
    """The subject called `name`, opened (loaded on first use, in the thread pool).

    Raises:
        RequestError: 404 no such subject (with the names there are); 409 it cannot be opened.
    """
    served = state.catalog[name]
    _ = served.subject  # loads it, or answers why it cannot be
    return served


ServedSubject = Annotated[Served, Depends(get_served)]
