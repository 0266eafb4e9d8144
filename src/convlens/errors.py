"""The one exception type a user is meant to read.

Anything a user can cause (a wrong path, a corrupt file, an unknown model or layer name, a checkpoint of
another model, an input too small for a network) raises :class:`ConvlensError` with a message that says
what is wrong and how to fix it. The CLI prints that message and exits with status 1, never a traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class ConvlensError(Exception):
    """An error caused by the user's input, with a message they can act on."""


def did_you_mean(name: str, choices: Iterable[str], n: int = 5) -> str:
    """Return a hint naming the valid choices closest to `name` ("" when none is close)."""
    close = difflib.get_close_matches(name, list(choices), n=n, cutoff=0.5)
    return f" Did you mean: {', '.join(close)}?" if close else ""


class InputError(ConvlensError, ValueError):
    """A value passed to the Python API that it cannot use (wrong shape, dtype, range)."""


class InputTypeError(ConvlensError, TypeError):
    """An argument of the wrong type passed to the Python API."""


class Interrupted(KeyboardInterrupt):
    """The process was asked to stop (Ctrl-C: SIGINT, or SIGTERM) and did so cleanly.

    A :class:`KeyboardInterrupt`, so every ``finally`` and ``except KeyboardInterrupt`` sees it; the
    CLI prints :attr:`message` as one line and exits with :attr:`exit_code` (128 + the signal's
    number: 130 for SIGINT, 143 for SIGTERM), the shells' convention.
    """

    def __init__(self, signum: int = 2, message: str = "interrupted") -> None:
        super().__init__(message)
        self.signum = signum
        self.message = message

    @property
    def exit_code(self) -> int:
        """128 + the signal's number."""
        return 128 + self.signum
