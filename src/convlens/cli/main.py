"""The `convlens` program: one Typer app, one module per group of commands.

Each command module exposes `register(app)`; this file only assembles them and turns a
:class:`~convlens.errors.ConvlensError` into one red line and exit status 1 instead of a traceback,
a usage error into exit status 2, and Ctrl-C / SIGTERM into one line and 130 / 143
(see :mod:`convlens.cli.checks`).

Start-up stays light: torch and the other heavy modules are imported inside the commands that need
them, so `convlens --help` and `convlens explain ...` answer at once.
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

from convlens import __version__, interrupts
from convlens.cli import (
    anatomy_cmds,
    data_cmds,
    experiment_cmds,
    index_cmds,
    model_cmds,
    report_cmds,
    serve_cmds,
    train_cmds,
    visualize,
)
from convlens.cli.checks import EXIT_CODES_HELP, EXIT_ERROR, EXIT_SIGINT, EXIT_USAGE, UsageError
from convlens.errors import ConvlensError, Interrupted
from convlens.interrupts import handle_signals

# Usage errors (unknown option, bad value): typer's own click raises them as TyperExceptions.
_CLICK_ERROR: type[Any] = typer.TyperException

app = typer.Typer(
    name="convlens",
    help=f"Build, train and see inside convolutional neural networks.\n\n{EXIT_CODES_HELP}",
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


for _module in (
    data_cmds,
    model_cmds,
    anatomy_cmds,
    train_cmds,
    visualize,
    report_cmds,
    serve_cmds,
    experiment_cmds,
    index_cmds,
):
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


def _interrupted(e: KeyboardInterrupt) -> int:
    """One line for Ctrl-C or SIGTERM; the exit status 128 + the signal's number."""
    if isinstance(e, Interrupted):
        err_console.print(f"[bold yellow]{e.message}[/]", highlight=False)
        return e.exit_code
    err_console.print("[bold yellow]interrupted[/]", highlight=False)
    return EXIT_SIGINT


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (used by the console script and by tests).

    0 success, 1 error, 2 usage error, 130 interrupted (SIGINT), 143 terminated (SIGTERM).
    """
    try:
        with handle_signals(), _warnings_as_notes():
            status = app(args=argv, prog_name="convlens", standalone_mode=False)
        # Typer returns 130 for a KeyboardInterrupt, without it: it is kept by the handler.
        caught = interrupts.last()
        if caught is not None:
            return _interrupted(caught)
        if isinstance(status, int):
            return status
    except ConvlensError as e:
        err_console.print(f"[bold red]error:[/] {e}", highlight=False)
        return EXIT_USAGE if isinstance(e, UsageError) else EXIT_ERROR
    except typer.Exit as e:
        # Typer turns a KeyboardInterrupt into Exit(130), keeping the interrupt as the cause.
        if isinstance(e.__cause__, KeyboardInterrupt):
            return _interrupted(e.__cause__)
        return e.exit_code
    except typer.Abort as e:
        if isinstance(e.__cause__, KeyboardInterrupt):
            return _interrupted(e.__cause__)
        err_console.print("aborted")
        return EXIT_SIGINT
    except KeyboardInterrupt as e:
        return _interrupted(e)
    except MemoryError as e:
        err_console.print(
            f"[bold red]error:[/] not enough memory for this request ({e}); ask for less",
            highlight=False,
        )
        return EXIT_ERROR
    except Exception as e:
        if isinstance(e, _CLICK_ERROR):  # a usage error: unknown option, bad value (exit 2)
            ctx = getattr(e, "ctx", None)
            hint = f" (see `{ctx.command_path} --help`)" if ctx is not None else ""
            err_console.print(f"[bold red]error:[/] {e.format_message()}{hint}", highlight=False)
            return int(e.exit_code)
        if isinstance(e, OSError):  # a file system refusal the checks could not foresee
            err_console.print(
                f"[bold red]error:[/] {e.strerror or e}: {e.filename}", highlight=False
            )
            return EXIT_ERROR
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
