"""What a bad request gets: one JSON error with a message and a 4xx status, never a traceback."""

from __future__ import annotations

from convlens.errors import ConvlensError


class RequestError(ConvlensError):
    """A request the server cannot serve, with the HTTP status to answer with.

    Attributes:
        status: 400 (bad value), 404 (unknown subject, layer, channel, job), 409 (not ready yet),
            413 (upload too large), 429 (too many jobs waiting).
    """

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def not_found(what: str, name: object, choices: list[str] | None = None) -> RequestError:
    """``no layer 'x'; choose one of: a, b, c`` as a 404."""
    hint = ""
    if choices is not None:
        shown = ", ".join(choices[:20]) + (", ..." if len(choices) > 20 else "")
        hint = f"; choose one of: {shown}" if choices else f"; there is no {what} at all"
    return RequestError(f"no {what} {name!r}{hint}", 404)
