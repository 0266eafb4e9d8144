"""The `convlens` program: one Typer app, one module per group of commands.

Each command module exposes `register(app)`; this file only assembles them and turns a
:class:`~convlens.errors.ConvlensError` into one red line and exit status 1 instead of a traceback.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

import typer
from rich.console import Console

from convlens import __version__
from convlens.cli import anatomy_cmds, data_cmds, model_cmds, report_cmds, train_cmds, visualize
from convlens.errors import ConvlensError

app = typer.Typer(
    name="convlens",
    help="Build, train and see inside convolutional neural networks.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

err_console = Console(stderr=True, soft_wrap=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"convlens {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Build, train and see inside convolutional neural networks."""


for _module in (data_cmds, model_cmds, anatomy_cmds, train_cmds, visualize, report_cmds):
    _module.register(app)


_PACKAGE_DIR = Path(__file__).resolve().parents[1]


@contextlib.contextmanager
def _warnings_as_notes() -> Iterator[None]:
    """Warnings raised by convlens itself print as one yellow `note:` line.

    Python's default shows a source file and line number, which mean nothing to a CLI user
    (a skipped non-image file, a resized image, a layer that falls back to full recomputation).
    Warnings from other libraries keep the default format.
    """
    original = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> Any:
        ours = category.__module__.startswith("convlens") or Path(
            filename
        ).resolve().is_relative_to(_PACKAGE_DIR)
        if ours:
            err_console.print(f"[yellow]note:[/] {message}", highlight=False)
            return None
        return original(message, category, filename, lineno, file, line)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (used by the console script and by tests)."""
    try:
        with _warnings_as_notes():
            app(args=argv, prog_name="convlens", standalone_mode=False)
    except ConvlensError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        return 1
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        err_console.print("aborted")
        return 130
    except KeyboardInterrupt:
        err_console.print("interrupted")
        return 130
    except typer.TyperException as e:  # usage errors (typer's own click) carry code and message
        show = getattr(e, "show", None)
        if callable(show):
            show()
        else:
            err_console.print(f"error: {e.format_message()}", highlight=False)
        return e.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
