"""Reading weights from local files: state dicts (safetensors, ``torch.save``), TorchScript, and what
is refused.

- A state dict is read with safetensors or ``torch.load(weights_only=True)``: tensors only, no code.
  A checkpoint nesting it under ``"state_dict"`` or ``"model"`` is unwrapped.
- A TorchScript file (``torch.jit.save``) holds its architecture as TorchScript code; it is loaded
  with ``torch.jit.load``, which runs TorchScript, not arbitrary Python.
- A whole pickled module (``torch.save(model)``) is refused: unpickling it would run any code the
  file names. The message says how to save a state dict or TorchScript instead.
- Loading into a model is strict; a mismatch names the first key that differs.
"""

from __future__ import annotations

import re
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.errors import ConvlensError, InputError
from convlens.models.interface import classifier

_SAVE_INSTEAD = (
    "save its weights instead: torch.save(model.state_dict(), 'weights.pt') (or safetensors) and "
    "pass --model ARCH --weights weights.pt, or export it: torch.jit.trace(model, example_input).save('model.pt') "
    "and pass --model model.pt"
)


def is_torchscript(path: Path) -> bool:
    """Whether `path` is a TorchScript archive (a zip with ``code/`` and ``constants.pkl``)."""
    if not zipfile.is_zipfile(path):
        return False
    try:
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
    except (zipfile.BadZipFile, OSError):
        return False
    return any(n.endswith("constants.pkl") for n in names) and any("/code/" in n for n in names)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict file safely (see the module doc).

    Raises:
        InputError: no file, a truncated or corrupt file, a TorchScript file, a pickled module, or
            anything that is not a mapping of names to tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no weights file at {path}")
    if path.stat().st_size == 0:
        raise InputError(f"{path} is empty (0 bytes): not a weights file; was it copied or saved?")
    if is_torchscript(path):
        raise InputError(
            f"{path} is a TorchScript file: it holds its own architecture, so pass it as the model "
            f"(--model {path}) without --weights"
        )
    state: Any
    if path.suffix == ".safetensors" or _looks_like_safetensors(path):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except (SafetensorError, OSError, ValueError) as e:
            raise InputError(f"{path} is truncated or corrupt ({e})") from None
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # pickle, zip and torch errors: what they mean is decided below
            raise _load_error(path, e) from None
    if isinstance(state, dict):
        for key in ("state_dict", "model"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    if isinstance(state, nn.Module):  # only reachable if an allow-list admitted the class
        raise InputError(f"{path} holds a whole pickled model, not a state dict; {_SAVE_INSTEAD}")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path} does not hold a state dict (a mapping of names to tensors)")
    return dict(state)


def _looks_like_safetensors(path: Path) -> bool:
    """safetensors starts with an 8-byte header length and a JSON object."""
    with path.open("rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{"


def _load_error(path: Path, e: Exception) -> InputError:
    text = str(e)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found and "Unsupported global" in text:
        what = found.group(1)
        if re.search(r"\.[A-Z]\w*$", what) and not what.startswith(("numpy", "collections")):
            return InputError(
                f"{path} holds a whole pickled model ({what}), not a state dict. convlens does not "
                f"unpickle it, because unpickling runs whatever code the file names; {_SAVE_INSTEAD}"
            )
        return InputError(
            f"{path} needs {what} to unpickle, which torch.load(weights_only=True) refuses; "
            f"{_SAVE_INSTEAD}"
        )
    first = next((ln for ln in text.splitlines() if ln.strip()), type(e).__name__)
    return InputError(f"{path} is truncated or corrupt, or not a weights file ({first})")


def load_torchscript(path: str | Path, device: str = "cpu") -> nn.Module:
    """Load a TorchScript file (its architecture comes with it).

    Raises:
        InputError: not a file or not a readable TorchScript archive.
    """
    path = Path(path)
    try:
        with warnings.catch_warnings():  # torch's notice that TorchScript is deprecated
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path), map_location=device)
    except Exception as e:  # torch's archive reader raises RuntimeError for most damage
        raise InputError(f"{path} is not a readable TorchScript file ({e})") from None


def first_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """A sentence naming the first key where `state` does not fit `model`; None when it fits."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if not (missing or unexpected or shapes):
        return None
    first = next((k for k in own if k in missing or k in shapes), None)
    if first is None:
        lead = f"the file has {unexpected[0]!r}, which the model lacks"
    elif first in missing:
        lead = f"the model's {first!r} is not in the file"
    else:
        lead = (
            f"{first!r} is {list(state[first].shape)} in the file but "
            f"{list(own[first].shape)} in the model"
        )
    counts = f"{len(missing)} missing, {len(unexpected)} unexpected, {len(shapes)} of another shape"
    return f"first mismatch: {lead} ({counts})"


def load_into(model: nn.Module, state: dict[str, torch.Tensor], *, source: str, what: str) -> None:
    """Load `state` strictly into `model`; a mismatch is an error naming the first differing key.

    Raises:
        ConvlensError: the state dict does not fit.
    """
    mismatch = first_mismatch(model, state)
    if mismatch is not None:
        raise ConvlensError(f"{source} does not hold weights of {what}: {mismatch}")
    model.load_state_dict(state, strict=True)


def classifier_and_input_sizes(
    model: nn.Module, state: dict[str, torch.Tensor]
) -> tuple[int | None, int | None]:
    """``(num_classes, in_channels)`` that `state` implies for the final layer and the first conv.

    Read from the weights of the model's own classifier and first ``Conv2d``; None where the state
    dict does not hold that layer.
    """
    head = classifier(model)
    head_name = next((n for n, m in model.named_modules() if m is head), None)
    conv_name = next((n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), None)
    k = state.get(f"{head_name}.weight") if head_name is not None else None
    c = state.get(f"{conv_name}.weight") if conv_name is not None else None
    return (
        int(k.shape[0]) if k is not None and k.ndim >= 1 else None,
        int(c.shape[1]) if c is not None and c.ndim == 4 else None,
    )


def load_weights(model: nn.Module, path: str | Path, *, strict: bool = True) -> None:
    """Load a local state dict file into `model` (see :func:`read_state_dict`).

    Raises:
        ConvlensError: the file is unreadable or holds weights of another architecture (strict:
            the message names the first key that differs).
    """
    state = read_state_dict(path)
    if strict:
        load_into(model, state, source=str(path), what=f"{type(model).__name__} as built")
        return
    try:
        model.load_state_dict(state, strict=False)
    except RuntimeError as e:  # strict=False still refuses tensors of another shape
        raise ConvlensError(
            f"{path} does not hold weights of {type(model).__name__} as built:\n{e}"
        ) from None
