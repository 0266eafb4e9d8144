"""Ctrl-C (SIGINT) and SIGTERM: stop cleanly, at a point where nothing is half-written.

Two pieces:

- :func:`handle_signals` (the CLI wraps every command in it): both signals raise
  :class:`~convlens.errors.Interrupted`, so ``finally`` blocks run, atomic writes drop their
  temporary file, and the CLI prints one line and exits with 130 (SIGINT) or 143 (SIGTERM).
  Signals that arrive while that exception unwinds are ignored, so cleanup is never cut short
  (which is what prints Python's "Exception ignored ... KeyboardInterrupt").
- :func:`deferred` (the training loop): inside it a signal only sets a flag that the loop reads with
  :func:`requested` at a batch boundary, where it can write a checkpoint and stop. A second signal
  stops at once.

Handlers can only be set in the main thread; elsewhere both are no-ops.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType
from typing import Any

from convlens.errors import Interrupted

_pending: int | None = None  # the signal received inside `deferred`, not yet acted on
_unwinding = False  # an Interrupted is on its way up: further signals are ignored
_handling = False  # inside handle_signals
_last: Interrupted | None = None  # the last Interrupted raised inside handle_signals


def last() -> Interrupted | None:
    """The :class:`Interrupted` raised inside the current (or last) :func:`handle_signals` block.

    The CLI reads it because Typer turns a KeyboardInterrupt into a bare exit status 130.
    """
    return _last


def _interrupted(signum: int, message: str) -> Interrupted:
    global _last
    e = Interrupted(signum, message)
    if _handling:
        _last = e
    return e


def _verb(signum: int) -> str:
    return "interrupted" if signum == signal.SIGINT else "terminated"


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


def _raise(signum: int, frame: FrameType | None) -> None:
    global _unwinding
    if _unwinding:
        return
    _unwinding = True
    raise _interrupted(signum, _verb(signum))


@contextlib.contextmanager
def handle_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Interrupted` inside the block (once)."""
    global _unwinding, _handling, _last
    if not _main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    _unwinding, _handling, _last = False, True, None
    for s in previous:
        signal.signal(s, _raise)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _unwinding = _handling = False


def _defer(signum: int, frame: FrameType | None) -> None:
    global _pending, _unwinding
    if _pending is not None:  # asked twice: stop now
        _pending, _unwinding = None, _handling
        raise _interrupted(signum, _verb(signum))
    _pending = signum


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside the block, SIGINT (and SIGTERM where a Python handler owns it) only set a flag.

    SIGTERM is taken over only when it already has a Python handler (the CLI's): a plain Python
    program keeps SIGTERM's default of ending the process.
    """
    global _pending
    if not _main_thread():
        yield
        return
    previous: dict[int, Any] = {signal.SIGINT: signal.getsignal(signal.SIGINT)}
    term = signal.getsignal(signal.SIGTERM)
    if callable(term):
        previous[signal.SIGTERM] = term
    _pending = None
    for s in previous:
        signal.signal(s, _defer)
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        _pending = None


def requested() -> int | None:
    """The signal number received inside :func:`deferred`, or None."""
    return _pending


def stop(where: str) -> Interrupted:
    """The exception to raise once the loop has saved its state after :func:`requested`.

    Its message is "interrupted " (or "terminated ") followed by `where`.
    """
    global _unwinding
    _unwinding = _handling  # the CLI's handler ignores signals from here on
    signum = _pending or signal.SIGINT
    return _interrupted(signum, f"{_verb(signum)} {where}")
