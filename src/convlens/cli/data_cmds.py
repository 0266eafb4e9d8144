"""`convlens datasets`: every data set, where it was found (or every place looked in), its size."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from convlens.errors import ConvlensError


def _classes(classes: list[str], limit: int = 4) -> str:
    shown = ", ".join(classes[:limit])
    return f"{len(classes)}: {shown}{', ...' if len(classes) > limit else ''}"


def datasets(
    names: list[str] | None = typer.Argument(
        None, help="Data sets to list (default: all); folder:PATH describes an image folder."
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="A folder holding <name>/ sub-folders, looked in first."
    ),
    download: bool = typer.Option(
        False, "--download", help="Fetch the named data sets that are not found (torchvision)."
    ),
) -> None:
    """List the data sets: where each was found (or every place looked in), split sizes, shape, classes.

    Search order: --data-dir, $CONVLENS_DATA/<name>, ~/.cache/convlens/<name>,
    /usr/share/datasets/<name>. Only headers are read: nothing is decoded.
    """
    from convlens import data

    chosen = [n.strip() for n in names] if names else data.names()
    if download and not names:
        raise ConvlensError(
            "name the data sets to download, e.g. `convlens datasets mnist --download`"
        )
    root = str(data_dir) if data_dir is not None else None
    infos = []
    for name in chosen:
        info = data.describe(name, root)
        if download and info.found is None and name != "sample" and not name.startswith("folder:"):
            from convlens.data.download import download_dataset

            download_dataset(name)
            info = data.describe(name, root)
        infos.append(info)

    table = Table(title="convlens data sets", show_lines=True)
    table.add_column("name", no_wrap=True)
    table.add_column("found in", overflow="fold", ratio=3)
    table.add_column("train", justify="right", no_wrap=True)
    table.add_column("test", justify="right", no_wrap=True)
    table.add_column("C x H x W", no_wrap=True)
    table.add_column("classes", overflow="fold", ratio=2)
    for info in infos:
        if info.error:
            where = f"[red]error[/]: {info.error}"
        elif info.found is None:
            looked = "\n".join(f"  {p}" for p in info.places)
            where = f"[yellow]not found[/]; looked in:\n{looked}"
        else:
            where = f"[green]{info.found}[/]"
        sizes = [f"{info.sizes[s]:,}" if s in info.sizes else "-" for s in ("train", "test")]
        shape = "x".join(map(str, info.image_shape)) if info.image_shape else "-"
        table.add_row(info.name, where, *sizes, shape, _classes(info.classes))
    console = Console()
    broken = [i for i in infos if i.error and names]
    if broken and len(infos) == 1:  # the one data set asked about: its reason is the whole answer
        info = broken[0]
        said = info.name.startswith("folder:")  # the message names the folder already
        raise ConvlensError(info.error if said else f"{info.name}: {info.error}")
    console.print(table)
    if any(i.found is None for i in infos):
        console.print(
            "Point convlens at your files with --data-dir DIR or CONVLENS_DATA=DIR (DIR holds <name>/), "
            "or fetch them with --download.",
            highlight=False,
        )
    if broken:  # named, and unreadable: listed above, and the exit status says so
        raise ConvlensError(
            f"{len(broken)} of the data sets named cannot be read: "
            + "; ".join(f"{i.name}: {i.error}" for i in broken)
        )


def register(app: typer.Typer) -> None:
    """Add this module's commands to `app`."""
    app.command("datasets")(datasets)
