"""Writing one ``.npy`` array so that a reader sees the old file or the new one, never half."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def save_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary file beside `path`, fsync, rename over `path`."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
