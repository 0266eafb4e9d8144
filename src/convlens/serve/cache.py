"""Results on disk, keyed by subject, kind and parameters, so that a second visit is instant.

One JSON file per result under ``ROOT/<subject digest>/<kind>-<parameter digest>.json``, written
atomically (a reader sees the old file or the new one). File names are digests computed here, never
text from a request.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from convlens.fileio import atomic_write_text


def digest(obj: Any, length: int = 16) -> str:
    """A short hex digest of a JSON-able object (keys sorted, so equal parameters give equal keys)."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


class ResultCache:
    """JSON results on disk.

    Args:
        root: the cache folder (created on first write).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, subject_key: str, kind: str, params: dict[str, Any]) -> Path:
        """Where the result of `kind` with `params` for the subject with `subject_key` lives."""
        return self.root / subject_key / f"{kind}-{digest(params)}.json"

    def get(self, subject_key: str, kind: str, params: dict[str, Any]) -> Any | None:
        """The stored result, or None (also for a file that cannot be read: it is recomputed)."""
        path = self.path(subject_key, kind, params)
        try:
            return json.loads(path.read_text())
        except (OSError, ValueError):
            return None

    def put(self, subject_key: str, kind: str, params: dict[str, Any], result: Any) -> None:
        """Store `result` atomically."""
        text = json.dumps(result, separators=(",", ":"))
        atomic_write_text(self.path(subject_key, kind, params), text)
