"""`convlens serve`: start the local web app on run directories or on a model given by --model.

Only parses options, makes the served subjects and starts uvicorn; the app is
:func:`convlens.serve.create_app`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

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
        import uvicorn

        from convlens.serve import create_app, from_run_dir, from_subject, run_dirs

        if runs_dir is None and model is None:
            raise ConvlensError("give a run directory (or a folder of them) or --model; see --help")
        root = str(data_dir) if data_dir else None
        served = [from_run_dir(p, data_dir=root) for p in run_dirs(runs_dir)] if runs_dir else []
        if model is not None:
            from convlens import subjects

            # Any way of naming a model (issue #17's subjects): run dir, registry, torchvision...
            open_subject = getattr(subjects, "open_subject", None)
            if open_subject is None:
                raise ConvlensError("--model needs a newer convlens; serve a run directory instead")
            subject = open_subject(
                model,
                weights=weights,
                images=str(images) if images else None,
                classes=str(classes) if classes else None,
                data_dir=root,
            )
            served.append(from_subject(subject, name=model))
        cache = cache_dir or Path.home() / ".cache" / "convlens" / "serve"
        web = create_app(served, cache_dir=cache)
        shown = LOOPBACK if host in ("0.0.0.0", "::") else host
        url = f"http://{shown}:{port}/"
        if not is_loopback(host):
            console.print(
                f"[yellow]warning:[/] listening on {host}: anyone who can reach this machine can "
                "use the app and run the models; use --host 127.0.0.1 to keep it local",
                highlight=False,
            )
        names = ", ".join(s.name for s in served)
        console.print(f"serving {names}", highlight=False)
        typer.echo(f"convlens serve: open {url}  (Ctrl+C to stop)")
        if open_browser:
            import webbrowser

            webbrowser.open(url)
        uvicorn.run(web, host=host, port=port, log_level="warning")
