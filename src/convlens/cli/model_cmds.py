"""`convlens models`: list the model zoo, or describe one model.

Parameters are counted on the meta device (nothing allocated), so listing ResNet-152 costs nothing.
"""

from __future__ import annotations

import json
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from convlens.cli.checks import MAX_CHANNELS, MAX_CLASSES
from convlens.errors import ConvlensError


def parse_options(pairs: list[str]) -> dict[str, Any]:
    """``["pool=avg", "small_input=true"]`` -> ``{"pool": "avg", "small_input": "true"}``.

    Values stay strings: :func:`convlens.models.create` converts them to each option's type.
    """
    options: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConvlensError(f"--option takes KEY=VALUE (e.g. pool=avg), not {pair!r}")
        options[key.strip()] = value.strip()
    return options


def _size(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _rows(
    names: list[str], num_classes: int | None, in_channels: int | None
) -> list[dict[str, Any]]:
    from rich.progress import track

    from convlens import models

    rows = []
    for name in track(
        names, description="counting parameters", transient=True, disable=len(names) < 40
    ):
        spec = models.info(name)
        rows.append(
            {
                "name": name,
                "family": spec.family,
                "paper": spec.paper,
                "input": _size(spec.input_size),
                "num_classes": spec.num_classes if num_classes is None else num_classes,
                "parameters": models.num_parameters(
                    name, num_classes=num_classes, in_channels=in_channels
                ),
            }
        )
    return rows


def models_command(
    name: str | None = typer.Argument(
        None, help="A model to describe (e.g. resnet20, torchvision:resnet18); all when omitted."
    ),
    family: str | None = typer.Option(None, "--family", help="List only this family (e.g. vgg)."),
    torchvision: bool = typer.Option(
        False, "--torchvision", help="List torchvision's classifiers (usable as torchvision:NAME)."
    ),
    num_classes: int | None = typer.Option(
        None,
        "--num-classes",
        min=1,
        max=MAX_CLASSES,
        help="Count parameters for N classes (default: the paper's).",
    ),
    in_channels: int | None = typer.Option(
        None,
        "--in-channels",
        min=1,
        max=MAX_CHANNELS,
        help="Count parameters for C input channels.",
    ),
    option: list[str] = typer.Option(
        [],
        "--option",
        "-o",
        help="A model option KEY=VALUE (repeatable), e.g. -o small_input=true.",
    ),
    fmt: str = typer.Option("table", "--format", help="table or json."),
) -> None:
    """List the model zoo (name, paper, input size, parameters), or describe one model."""
    from convlens import models
    from convlens.errors import did_you_mean

    if fmt not in ("table", "json"):
        raise ConvlensError(f"--format must be table or json, not {fmt!r}")
    console = Console()
    if name is not None:
        _describe(console, name, num_classes, in_channels, parse_options(option), fmt)
        return
    if option:
        raise ConvlensError("--option needs a model NAME")
    if torchvision:
        names = models.torchvision_names()
    elif family is not None:
        if family not in models.families():
            raise ConvlensError(
                f"no family {family!r}.{did_you_mean(family, models.families())} "
                f"Families: {', '.join(models.families())}"
            )
        names = models.names(family)
    else:
        names = models.names()
    rows = _rows(names, num_classes, in_channels)
    if fmt == "json":
        typer.echo(json.dumps(rows, indent=2))
        return
    table = Table(title="convlens model zoo" if not torchvision else "torchvision classifiers")
    for col, justify in (
        ("name", "left"),
        ("paper", "left"),
        ("input", "right"),
        ("classes", "right"),
        ("parameters", "right"),
    ):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for r in rows:
        table.add_row(
            r["name"], r["paper"], r["input"], str(r["num_classes"]), f"{r['parameters']:,}"
        )
    console.print(table)
    if not torchvision:
        console.print(
            "Any torchvision classifier also works as torchvision:NAME (`convlens models "
            "--torchvision`); describe one model with `convlens models NAME`."
        )


def _describe(
    console: Console,
    name: str,
    num_classes: int | None,
    in_channels: int | None,
    options: dict[str, Any],
    fmt: str,
) -> None:
    from convlens import models

    spec = models.info(name)
    params = models.num_parameters(
        name, num_classes=num_classes, in_channels=in_channels, **options
    )
    if spec.family not in ("torchvision", "timm"):
        options = models.check_options(name, options)
    data: dict[str, Any] = {
        "name": spec.name,
        "family": spec.family,
        "paper": spec.paper,
        "title": spec.title,
        "input": _size(spec.input_size),
        "num_classes": spec.num_classes if num_classes is None else num_classes,
        "in_channels": spec.input_size[0] if in_channels is None else in_channels,
        "description": spec.description,
        "options": {k: options.get(k, v) for k, v in spec.options.items()},
        "parameters": params,
    }
    if fmt == "json":
        typer.echo(json.dumps(data, indent=2, default=str))
        return
    table = Table(show_header=False, title=spec.name)
    table.add_column(style="bold")
    table.add_column()
    for key in ("family", "paper", "title", "input", "num_classes", "in_channels", "description"):
        table.add_row(key, str(data[key]))
    for key, value in data["options"].items():
        table.add_row(f"option {key}", repr(value))
    table.add_row("parameters", f"{params:,}")
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add ``convlens models`` to `app`."""
    app.command("models")(models_command)
