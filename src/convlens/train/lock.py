"""One writer per run directory: an OS file lock on `RUN_DIR/.lock`.

Two `convlens train --out SAME` would otherwise overwrite each other's checkpoints. The lock is
``fcntl.flock`` on a file holding the writer's PID: the kernel releases it when the process ends in
any way (even ``kill -9``), so a lock is never stuck. A lock file left behind by a killed process is
stale: the next writer takes it over and says so. Where ``fcntl`` does not exist (Windows) runs are not
locked.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

from convlens.errors import ConvlensError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK = ".lock"

_held: dict[Path, int] = {}  # run directories this process holds -> nesting depth


class RunLocked(ConvlensError):
    """Another process is writing the run directory."""


def _read_pid(fd: int) -> int | None:
    os.lseek(fd, 0, os.SEEK_SET)
    text = os.read(fd, 32).decode("ascii", "replace").strip()
    return int(text) if text.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _acquire(path: Path, shown: Path) -> tuple[int, int | None]:
    """Open and lock `path`; return the descriptor and the PID of a stale holder (or None)."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            pid = _read_pid(fd)
            os.close(fd)
            who = f"process {pid}" if pid is not None else "another process"
            gone = pid is not None and not _alive(pid)
            raise RunLocked(
                f"{shown} is being written by {who}"
                + (" (no longer running: a child of it still holds the lock)" if gone else "")
                + "; wait for it to finish, stop it, or choose another --out"
            ) from None
        except OSError as e:  # a file system without locks (some network mounts)
            os.close(fd)
            warnings.warn(f"cannot lock {shown} ({e.strerror}); not locked", stacklevel=3)
            return -1, None
        # The file may have been removed by a holder releasing it between our open and our lock:
        # then we hold a lock on a file nobody else will see. Try again.
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
        except FileNotFoundError:
            same = False
        if not same:
            os.close(fd)
            continue
        stale = _read_pid(fd)
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        return fd, stale


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike[str]) -> Iterator[None]:
    """Hold the write lock of `run_dir` (created if missing) for the duration of the block.

    Re-entrant within one process. A folder this call created is removed again on the way out if
    nothing but the lock was written into it (an option refused before any work).

    Raises:
        RunLocked: another process holds the lock; the message names its PID.
    """
    shown = Path(run_dir)  # as the user wrote it, for messages
    run_dir = shown.absolute()
    if fcntl is None:
        yield
        return
    if run_dir in _held:
        _held[run_dir] += 1
        try:
            yield
        finally:
            _held[run_dir] -= 1
        return
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    fd, stale = _acquire(path, shown)
    if stale is not None and stale != os.getpid():
        warnings.warn(
            f"{shown} was left locked by process {stale}, which has ended; taking it over",
            stacklevel=3,
        )
    _held[run_dir] = 1
    try:
        yield
    finally:
        del _held[run_dir]
        if fd >= 0:
            with contextlib.suppress(OSError):
                path.unlink()
            os.close(fd)  # releases the lock
        if created:
            with contextlib.suppress(OSError):
                run_dir.rmdir()  # only when empty
