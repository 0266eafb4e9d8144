"""Checks every command makes before it starts working: where it writes, which device, which numbers.

A destination that cannot be written fails in a fraction of a second with one line, not after minutes
of training or rendering with an ``IsADirectoryError`` traceback. Nothing here creates a file or a
folder: the commands create them when they write.

Exit statuses of the `convlens` program (documented in its ``--help``):
0 success, 1 an error (bad input, a missing file, ...), 2 a usage error (an unknown option, a value
of the wrong type or out of range), 130 interrupted by Ctrl-C (SIGINT), 143 stopped by SIGTERM.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from convlens.errors import ConvlensError

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_SIGINT = 130
EXIT_SIGTERM = 143

# Bounds of model-shape options: beyond them a model would not fit in memory (or mean anything).
MAX_CLASSES = 100_000
MAX_CHANNELS = 1024
MAX_THREADS = 4096  # as convlens.train.config.MAX_THREADS (not imported: it would load torch)

EXIT_CODES_HELP = (
    "Exit status: 0 success, 1 error, 2 usage error (bad option or value), "
    "130 interrupted (Ctrl-C), 143 terminated (SIGTERM)."
)


class UsageError(ConvlensError):
    """An option that does not apply, or a value no command could use: exit status 2."""


def _existing_ancestor(path: Path) -> Path:
    """The nearest folder above `path` (or `path` itself) that exists."""
    p = path.absolute()
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    return p


def _writable(folder: Path) -> bool:
    """Whether a file can be created in `folder`: tried, as permissions alone do not tell
    (root ignores them; /proc and read-only mounts refuse anyone)."""
    if not os.access(folder, os.W_OK | os.X_OK):
        return False
    try:
        with tempfile.TemporaryFile(dir=folder):  # unnamed where the OS allows (O_TMPFILE)
            return True
    except OSError:
        return False


def _check_creatable(path: Path, option: str) -> None:
    """`path` does not exist: its nearest existing ancestor must be a folder we may write into."""
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise ConvlensError(f"{option} {path}: {base} is a file, not a folder")
    if not _writable(base):
        raise ConvlensError(f"{option} {path}: cannot write into {base}")


def output_file(path: Path, option: str = "--out") -> Path:
    """Check that a file can be written at `path` (new or replaced); return it.

    Raises:
        ConvlensError: `path` is a folder, lies below a file, or its folder is not writable.
    """
    if path.is_dir():
        raise ConvlensError(f"{option} {path} is a folder; give a file name, e.g. {path / 'out'}")
    if str(path).endswith(os.sep):
        raise ConvlensError(f"{option} {path} names a folder; give a file name")
    if path.exists():
        if not path.is_file():
            raise ConvlensError(f"{option} {path} exists and is not a regular file")
        # The file is replaced by a rename: what matters is the folder holding it.
        if not _writable(path.parent):
            raise ConvlensError(f"{option} {path}: cannot write into {path.parent}")
        return path
    _check_creatable(path, option)
    return path


def output_dir(path: Path, option: str = "--out") -> Path:
    """Check that `path` is, or can become, a folder we may write into; return it.

    Raises:
        ConvlensError: `path` is a file, lies below a file, or is not writable.
    """
    if path.exists():
        if not path.is_dir():
            raise ConvlensError(f"{option} {path} is a file; give a folder (it is created if new)")
        if not _writable(path):
            raise ConvlensError(f"{option} {path}: cannot write into it")
        return path
    _check_creatable(path, option)
    return path


def input_dir(path: Path | None, option: str) -> Path | None:
    """A folder the user named must exist (None passes: the default is used)."""
    if path is None:
        return None
    if not path.exists():
        raise ConvlensError(f"{option} {path} does not exist")
    if not path.is_dir():
        raise ConvlensError(f"{option} {path} is a file, not a folder")
    return path


def device(name: str, option: str = "--device") -> str:
    """`auto` -> cuda when available, else cpu; `cpu`, `cuda`, `cuda:N` when they exist here.

    Raises:
        ConvlensError: an unknown device, or a CUDA device this machine does not have.
    """
    import torch

    name = name.strip().lower()
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cpu":
        return name
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ConvlensError(
                f"{option} {name}: this machine has no CUDA device; use {option} cpu"
            )
        index = name.partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            raise ConvlensError(
                f"{option} {name}: this machine has CUDA devices 0..{torch.cuda.device_count() - 1}"
            )
        return name
    raise ConvlensError(f"unknown device {name!r} for {option}; use auto, cpu, cuda or cuda:N")


def positive(value: int | float | None, option: str) -> None:
    """Numbers that count something (images, epochs, steps) must be at least 1."""
    if value is not None and value < 1:
        raise ConvlensError(f"{option} must be at least 1, not {value}")


def empty_path_option(root: object, argv: list[str]) -> str | None:
    """The first path option given an empty value (``--out ""``, ``--out=``) in `argv`, else None.

    An empty path would become ``Path("")`` == ``Path(".")``: the current folder, which nobody
    asked for (a run written into it, a listing of it). `root` is the program's command tree; the
    command is found by walking its sub-command names, and its options by their declared type.
    """
    from pathlib import Path as _Path

    cmd: object = root
    options: dict[str, object] = {}
    for i, token in enumerate(argv):
        sub = getattr(cmd, "commands", None)
        if isinstance(sub, dict) and token in sub:
            cmd = sub[token]
            options = {o: p for p in getattr(cmd, "params", []) for o in getattr(p, "opts", [])}
            continue
        name, eq, value = token.partition("=")
        if eq and name in options and value == "":
            param = options[name]
        elif token in options and i + 1 < len(argv) and argv[i + 1] == "":
            param, name = options[token], token
        else:
            continue
        annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
        if _Path in (annotation, *getattr(annotation, "__args__", ())):
            return name
    return None
