"""`convlens serve`: start the local web app on run directories or on a model given by --model.

Only parses options, makes the served subjects and starts uvicorn; the app is
:func:`convlens.serve.create_app`. Everything a user can get wrong is checked before the "serving"
line, each with one line and exit 1: the cache folder (a file, or not writable), the address (an
unknown --host, a port in use: the socket is bound here and handed to uvicorn, so that --port 0
prints the port it got), options that do not apply, and subjects that cannot be opened. A folder of
runs where some are unfinished or broken is served, each bad one named with its reason; when no
subject can be opened the command refuses (a server with nothing to show helps nobody).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import tempfile
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from convlens.errors import ConvlensError

console = Console(stderr=True, soft_wrap=True)

LOOPBACK = "127.0.0.1"


def is_loopback(host: str) -> bool:
    """Whether `host` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_cache_dir(path: Path) -> Path:
    """`path` as a writable folder (created when missing).

    Raises:
        ConvlensError: it is a file, or cannot be created or written.
    """
    path = path.expanduser()
    if path.exists() and not path.is_dir():
        raise ConvlensError(
            f"--cache-dir {path} is a file; give a folder (it is created if missing)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConvlensError(
            f"--cache-dir {path} cannot be written ({e.strerror or e}); give a folder you can write"
        ) from None
    return path


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on `host`:`port` (port 0: a free port the system picks).

    Raises:
        ConvlensError: the host is unknown, the port is in use, or the address cannot be used.
    """
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ConvlensError(
            f"unknown --host {host!r} ({reason}); use an address of this machine such as "
            "127.0.0.1 (this machine only) or 0.0.0.0 (every network)"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(128)
    except OSError as e:
        sock.close()
        if e.errno == errno.EADDRINUSE:
            raise ConvlensError(
                f"port {port} on {host} is in use (another server?); pick another with --port, "
                "or --port 0 for a free one"
            ) from None
        if e.errno == errno.EACCES:
            raise ConvlensError(
                f"port {port} on {host} needs administrator rights; use a port above 1023"
            ) from None
        raise ConvlensError(
            f"cannot listen on {host} port {port} ({e.strerror or e}); is {host} an address of "
            "this machine?"
        ) from None
    sock.set_inheritable(True)
    return sock


class _CancelledLifespan(logging.Filter):
    """Drops uvicorn's report of a lifespan task cancelled as the process ends.

    Ctrl-C twice makes uvicorn exit without the lifespan's shutdown; the event loop then cancels
    the lifespan task, Starlette reports the cancellation as a failed shutdown (the traceback as
    text) and uvicorn logs it as an error. Being cancelled at exit is what was asked for.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, asyncio.CancelledError):
            return False
        text = str(record.msg).rstrip()
        return not (text.startswith("Traceback") and text.endswith("CancelledError"))


def run_server(app: Any, sock: socket.socket) -> None:
    """Serve `app` with uvicorn on the already bound `sock` until Ctrl-C."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    quiet = _CancelledLifespan()
    log = logging.getLogger("uvicorn.error")
    log.addFilter(quiet)
    try:
        server.run(sockets=[sock])
    finally:
        log.removeFilter(quiet)


def register(app: typer.Typer) -> None:
    """Add `serve` to `app`."""

    @app.command("serve")
    def serve(
        runs_dir: Path | None = typer.Argument(
            None, help="A run directory, or a folder of run directories (each a subject)."
        ),
        model: str | None = typer.Option(
            None,
            "--model",
            help="A model to serve: run dir, registry name, torchvision:NAME, "
            "timm:NAME, a checkpoint, or file.py:function.",
        ),
        weights: str | None = typer.Option(None, "--weights", help="Weights for --model."),
        images: Path | None = typer.Option(
            None,
            "--images",
            help="Images to look at with --model (a folder; class subfolders label them).",
        ),
        classes: Path | None = typer.Option(None, "--classes", help="Class names for --model."),
        data_dir: Path | None = typer.Option(
            None, "--data-dir", help="Folder holding the data sets (default: CONVLENS_DATA)."
        ),
        port: int = typer.Option(8000, "--port", min=0, max=65535, help="TCP port."),
        host: str = typer.Option(
            LOOPBACK, "--host", help="Address to listen on; other than 127.0.0.1 exposes the app."
        ),
        cache_dir: Path | None = typer.Option(
            None,
            "--cache-dir",
            help="Where computed views are kept (default: ~/.cache/convlens/serve).",
        ),
        open_browser: bool = typer.Option(False, "--open", help="Open the page in a browser."),
    ) -> None:
        """Explore networks in the browser: architecture, channels, images, t-SNE, conv arithmetic.

        Listens on 127.0.0.1 (this machine only) and opens no browser unless --open. Everything the page needs is served by convlens: it works offline.
        """
        from convlens.serve import create_app

        if runs_dir is None and model is None:
            raise ConvlensError("give a run directory (or a folder of them) or --model; see --help")
        if model is None:
            for given, option in ((weights, "--weights"), (classes, "--classes")):
                if given is not None:
                    raise ConvlensError(
                        f"{option} is for --model; a run directory has its own "
                        f"{'weights' if option == '--weights' else 'class names'}"
                    )
        if images is not None and not images.exists():
            raise ConvlensError(f"--images {images}: no such file or folder")
        if images is not None and runs_dir is not None:
            from convlens.subjects.images import scan_images

            scan_images(images)  # a folder without images is refused now, not at the first view
        cache = check_cache_dir(cache_dir or Path.home() / ".cache" / "convlens" / "serve")
        sock = bind(host, port)  # before any work: a port in use or a bad host ends here
        try:
            served = _subjects(runs_dir, model, weights, images, classes, data_dir)
            web = create_app(served, cache_dir=cache)
            shown = LOOPBACK if host in ("0.0.0.0", "::") else host
            url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{sock.getsockname()[1]}/"
            if not is_loopback(host):
                console.print(
                    f"[yellow]warning:[/] listening on {host}: anyone who can reach this machine "
                    "can use the app and run the models; use --host 127.0.0.1 to keep it local",
                    highlight=False,
                )
            for s in served:
                if not s.ok:
                    console.print(
                        f"[yellow]note:[/] {s.name} is {s.status}: {s.reason}", highlight=False
                    )
            console.print(f"serving {', '.join(s.name for s in served if s.ok)}", highlight=False)
            typer.echo(f"convlens serve: open {url}  (Ctrl+C to stop)")
            if open_browser:
                import webbrowser

                webbrowser.open(url)
            run_server(web, sock)
        finally:
            sock.close()


def _subjects(
    runs_dir: Path | None,
    model: str | None,
    weights: str | None,
    images: Path | None,
    classes: Path | None,
    data_dir: Path | None,
) -> list[Any]:
    """The served subjects; refuses when none of them can be opened."""
    from convlens.serve import from_run_dir, from_subject, run_dirs

    root = str(data_dir) if data_dir else None
    served = []
    if runs_dir is not None:
        served = [from_run_dir(p, data_dir=root, images_dir=images) for p in run_dirs(runs_dir)]
    if model is not None:
        from convlens import subjects

        subject = subjects.open_subject(
            model,
            weights=weights,
            images=str(images) if images else None,
            classes=str(classes) if classes else None,
            data_dir=root,
        )
        served.append(from_subject(subject, name=model))
    bad = [s for s in served if not s.ok]
    if len(bad) == len(served) == 1:
        raise ConvlensError(f"{bad[0].name} cannot be served: {bad[0].reason}")
    if len(bad) == len(served):
        raise ConvlensError(
            f"none of the {len(bad)} runs can be served; the first, {bad[0].name}: {bad[0].reason}"
        )
    return served
