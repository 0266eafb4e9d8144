"""The one Rich progress bar every long job shows (training has its own richer display).

Transient and on stderr: the bar disappears when the job ends and stdout keeps only what a command
prints (the paths it wrote).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


@contextmanager
def progress_bar(
    total: int, description: str, *, enabled: bool = True, console: Console | None = None
) -> Iterator[Callable[..., None]]:
    """A transient bar of `total` steps; yields `advance(n=1)` (a no-op when not `enabled`).

    Example::

        with progress_bar(len(items), "features") as advance:
            for item in items:
                work(item)
                advance()
    """
    if not enabled or total <= 0:
        yield lambda n=1: None
        return
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
