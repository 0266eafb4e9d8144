"""Resumable training state: written atomically, read with `torch.load(weights_only=True)`.

`checkpoint.pt` holds only tensors and plain Python values (no pickled classes), so reading it
cannot run code. Its keys::

    format        1
    model         state dict of the bare model (not the DDP/compiled wrapper)
    optimizer     optimiser state dict
    scheduler     {"name": ..., "step": ...}; schedules are pure functions of the step
    epoch, batch  the position to continue from: batch `batch` of epoch `epoch` (0-based)
    step          optimiser steps taken
    partial       sums of the unfinished epoch: loss, correct, seen, seconds
    history       the metrics rows of the finished epochs (what metrics.jsonl holds)
    rng           {"torch": uint8 tensor, "cuda": [uint8 tensors]}
    config        the TrainConfig as a dict
    model_name, data_name
"""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from convlens.errors import ConvlensError
from convlens.fileio import atomic_write_bytes

FORMAT = 1


def rng_state() -> dict[str, Any]:
    """Every random-number generator the loop draws from, as tensors."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        cuda = state["cuda"]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Serialise `state` in memory, then replace `path` atomically (a crash leaves the old one)."""
    buf = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises:
        ConvlensError: the file is missing, truncated, corrupt or not a convlens checkpoint.
    """
    path = Path(path)
    if not path.is_file():
        raise ConvlensError(
            f"no checkpoint at {path}; nothing to resume (start a new run without --resume)"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (
        RuntimeError,
        EOFError,
        OSError,
        ValueError,
        zipfile.BadZipFile,
        pickle.UnpicklingError,
    ) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConvlensError(
            f"checkpoint {path} is truncated or corrupt ({first}); "
            "delete it to start the run again from scratch"
        ) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT or "model" not in state:
        raise ConvlensError(f"{path} is not a convlens checkpoint (format {FORMAT})")
    return state
