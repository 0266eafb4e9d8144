"""Reading weights from local files: safetensors, or ``torch.load(weights_only=True)`` (never a pickle
of arbitrary objects)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.errors import ConvlensError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a local file: safetensors, or ``torch.load(weights_only=True)``.

    A checkpoint that nests the weights under ``"state_dict"`` or ``"model"`` is unwrapped.

    Raises:
        ConvlensError: missing, corrupt or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise ConvlensError(f"no weights file at {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # safetensors, pickle and zip errors all mean the same thing here
        raise ConvlensError(f"{path} is not a readable weights file ({e})") from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConvlensError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> None:
    """Load a local state dict file into `model` (see :func:`read_state_dict`).

    Raises:
        ConvlensError: the file is unreadable or holds weights of another architecture.
    """
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=strict)
    except RuntimeError as e:
        raise ConvlensError(
            f"{path} does not hold weights of {type(model).__name__} as built:\n{e}"
        ) from None
