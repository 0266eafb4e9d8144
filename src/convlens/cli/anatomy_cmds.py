"""`convlens summary` and `convlens explain`: the arithmetic of a whole network, and of one layer.

Parsing and printing only: the numbers come from :mod:`convlens.anatomy`.
"""

from __future__ import annotations

import re
import warnings
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from convlens.cli.checks import MAX_CHANNELS, MAX_CLASSES
from convlens.errors import ConvlensError

if TYPE_CHECKING:
    from convlens.anatomy.explain import Volume

explain_app = typer.Typer(
    name="explain",
    help="Print one layer's arithmetic as a teacher writes it on the board.",
    no_args_is_help=True,
)


class Format(StrEnum):
    """Output formats of `convlens summary`."""

    table = "table"
    json = "json"
    csv = "csv"


def parse_chw(text: str) -> tuple[int, int, int]:
    """``"3x224x224"`` -> (3, 224, 224); a clear error for anything else."""
    numbers = _numbers(text, "--input", "CxHxW, e.g. 3x224x224")
    if len(numbers) != 3:
        raise ConvlensError(
            f"--input takes CxHxW (channels x height x width), e.g. 3x224x224, not {text!r}"
        )
    c, h, w = numbers
    return c, h, w


def _numbers(text: str, option: str, example: str) -> list[int]:
    parts = re.split(r"\s*[x×X,]\s*", text.strip())
    if not all(p.isdigit() for p in parts):
        raise ConvlensError(f"{option} takes {example}, not {text!r}")
    numbers = [int(p) for p in parts]
    if any(n < 1 for n in numbers):
        raise ConvlensError(f"{option} sizes must be positive, not {text!r}")
    return numbers


def parse_volume(text: str, *, allow_flat: bool = False) -> tuple[Volume, str | None]:
    """``"227x227x3"`` (width x height x depth, as the notes write it) -> Volume and an optional note.

    A channels-first ``"3x227x227"`` is recognised (first number <= 4, last > 4) and read as such.
    With `allow_flat`, a single number N is a 1x1xN volume (a fully-connected layer's input).
    """
    from convlens.anatomy.explain import Volume

    example = "WxHxD, e.g. 227x227x3" + (" or a number of values" if allow_flat else "")
    numbers = _numbers(text, "--input", example)
    if allow_flat and len(numbers) == 1:
        return Volume(1, 1, numbers[0]), None
    if len(numbers) != 3:
        raise ConvlensError(f"--input takes {example}, not {text!r}")
    a, b, c = numbers
    if a <= 4 < c:
        return Volume(c, b, a), f"read --input {text} as depth x height x width: {c}x{b}x{a}"
    return Volume(a, b, c), None


def _print_lines(lines: list[str]) -> None:
    for line in lines:
        typer.echo(line)


def summary_command(
    model: str = typer.Argument(
        ..., help="A model of the zoo (see `convlens models`) or torchvision:<name>."
    ),
    input_size: str | None = typer.Option(
        None, "--input", "-i", help="Input size CxHxW, e.g. 3x224x224 (default: the paper's)."
    ),
    num_classes: int | None = typer.Option(
        None,
        "--num-classes",
        min=1,
        max=MAX_CLASSES,
        help="Outputs of the final layer (default: the paper's).",
    ),
    in_channels: int | None = typer.Option(
        None,
        "--in-channels",
        min=1,
        max=MAX_CHANNELS,
        help="Input channels of the model (default: C of --input).",
    ),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="table, json or csv."),
    option: list[str] = typer.Option(
        [],
        "--option",
        "-o",
        help="A model option KEY=VALUE (e.g. -o small_input=true); repeatable.",
    ),
    output: Path | None = typer.Option(
        None, "--output", help="Write the summary to this file instead of printing it."
    ),
    local_rf: bool = typer.Option(
        False,
        "--local-rf",
        help="Receptive fields ignore global gates (squeeze-and-excitation): the local window.",
    ),
) -> None:
    """Every layer's output shape, neurons, parameters (shared and unshared), MACs and receptive field.

    Nothing is computed on data (the forward pass runs on the meta device): instant even for ResNet-152.

    Example: convlens summary alexnet --input 3x227x227
    """
    from convlens import models
    from convlens.anatomy.summary import summary
    from convlens.cli import checks
    from convlens.cli.model_cmds import parse_options

    if output is not None:
        checks.output_file(output, "--output")
    spec = models.info(model)  # unknown names fail here, with close names
    size = parse_chw(input_size) if input_size is not None else spec.input_size
    net = models.create(
        model,
        num_classes=num_classes or spec.num_classes,
        in_channels=in_channels or size[0],
        **parse_options(option),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = summary(net, size, name=model, warn=True, through_gates=not local_rf)
    err = Console(stderr=True)
    for w in caught:
        if issubclass(w.category, UserWarning) and "receptive field" in str(w.message):
            err.print(f"[yellow]warning:[/] {w.message}", highlight=False)
    if fmt is Format.table:
        if output is not None:
            text = str(result)
        else:
            console = Console()
            if not console.is_terminal:  # piped: do not squeeze the table into 80 columns
                console = Console(width=200)
            console.print(result.table())
            return
    else:
        text = result.to_json() + "\n" if fmt is Format.json else result.to_csv()
    if output is not None:
        from convlens.fileio import atomic_write_text

        atomic_write_text(output, text)
        err.print(f"wrote {output}", highlight=False)
    else:
        typer.echo(text, nl=False)


@explain_app.command("conv")
def explain_conv(
    input_volume: str = typer.Option(
        ..., "--input", "-i", help="Input volume WxHxD as in the notes, e.g. 227x227x3."
    ),
    kernel: int = typer.Option(..., "--kernel", "-k", help="Filter size K (K x K)."),
    stride: int = typer.Option(1, "--stride", "-s", help="Stride S."),
    pad: int = typer.Option(0, "--pad", "-p", help="Zero padding P on each side."),
    filters: int = typer.Option(..., "--filters", "-n", help="Number of filters (output depth)."),
    show_one: bool = typer.Option(
        False, "--show-one", help="Also compute one output neuron by hand and compare with torch."
    ),
    at: str = typer.Option("0,0", "--at", help="With --show-one: the neuron's ROW,COL."),
    filter_index: int = typer.Option(0, "--filter", help="With --show-one: which filter."),
    seed: int = typer.Option(
        0, "--seed", min=0, max=2**63 - 1, help="With --show-one: seed of the random integers."
    ),
) -> None:
    """A convolution layer: output size, neurons, weights per neuron, parameters with and without sharing.

    Example: convlens explain conv --input 227x227x3 --kernel 11 --stride 4 --pad 0 --filters 96
    """
    from convlens.anatomy import explain

    volume, note = parse_volume(input_volume)
    if note:
        typer.echo(f"({note})")
    _print_lines(explain.explain_conv(volume, kernel, stride, pad, filters))
    if show_one:
        match = re.fullmatch(r"\s*(\d+)\s*[,x]\s*(\d+)\s*", at)
        if match is None:
            raise ConvlensError(f"--at takes ROW,COL, e.g. 3,5, not {at!r}")
        parts = [int(match.group(1)), int(match.group(2))]
        typer.echo("")
        _print_lines(
            explain.explain_neuron(
                volume,
                kernel,
                stride,
                pad,
                filters,
                at=(parts[0], parts[1]),
                filter_index=filter_index,
                seed=seed,
            )
        )


@explain_app.command("pool")
def explain_pool(
    input_volume: str = typer.Option(
        ..., "--input", "-i", help="Input volume WxHxD, e.g. 55x55x96."
    ),
    kernel: int = typer.Option(2, "--kernel", "-k", help="Window size K (K x K)."),
    stride: int = typer.Option(2, "--stride", "-s", help="Stride S."),
    pad: int = typer.Option(0, "--pad", "-p", help="Padding P on each side."),
    kind: str = typer.Option("max", "--kind", help="max or avg."),
) -> None:
    """A pooling layer: output size, neurons, no parameters, how much it keeps.

    Example: convlens explain pool --input 55x55x96 --kernel 3 --stride 2
    """
    from convlens.anatomy import explain

    volume, note = parse_volume(input_volume)
    if note:
        typer.echo(f"({note})")
    _print_lines(explain.explain_pool(volume, kernel, stride, pad, kind))


@explain_app.command("fc")
def explain_fc(
    input_volume: str = typer.Option(
        ..., "--input", "-i", help="Input volume WxHxD (e.g. 7x7x512) or a number of values."
    ),
    units: int = typer.Option(..., "--units", "-n", help="Number of neurons of the layer."),
) -> None:
    """A fully-connected layer: every neuron sees the whole input.

    Example: convlens explain fc --input 7x7x512 --units 4096
    """
    from convlens.anatomy import explain

    volume, note = parse_volume(input_volume, allow_flat=True)
    if note:
        typer.echo(f"({note})")
    _print_lines(explain.explain_fc(volume, units))


@explain_app.command("stack")
def explain_stack(
    kernel: int = typer.Option(3, "--kernel", "-k", max=1000, help="Filter size K of each layer."),
    depth: int = typer.Option(3, "--depth", "-d", max=1000, help="Number of stacked layers."),
    channels: int = typer.Option(64, "--channels", "-c", help="C, for the worked numbers."),
) -> None:
    """Stacked KxK convolutions against one large one: field, weights, non-linearities.

    Example: convlens explain stack --kernel 3 --depth 3
    """
    from convlens.anatomy import explain

    _print_lines(explain.explain_stack(kernel, depth, channels))


def register(app: typer.Typer) -> None:
    """Add `summary` and `explain` to `app`."""
    app.command("summary")(summary_command)
    app.add_typer(explain_app, name="explain")
