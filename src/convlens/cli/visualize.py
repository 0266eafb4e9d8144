"""`convlens visualize RUN_DIR METHOD [options]`: one command, one runner per method.

Each method lives in its own module under :mod:`convlens.cli.methods` and registers a runner with
:func:`method`. A runner receives a :class:`VisualizeRequest` (the parsed options plus the loaded run)
and returns the paths it wrote. Runners call `convlens.inspect` for numbers and `convlens.render` for
pictures; they do no computation of their own.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from convlens.errors import ConvlensError, did_you_mean

if TYPE_CHECKING:
    import torch

    from convlens.train.run_dir import Run

console = Console(stderr=True)


@dataclass
class VisualizeRequest:
    """The options of `convlens visualize`, as given (None = the method's default)."""

    run_dir: Path
    method: str
    out: Path
    layer: str | None = None
    images: list[Path] = field(default_factory=list)
    target: int | None = None
    window: int | None = None
    stride: int | None = None
    channels: str | None = None
    steps: int | None = None
    size: int | None = None
    k: int | None = None
    count: int | None = None
    metric: str | None = None
    simple: bool = False
    precision: str = "auto"
    objective: str | None = None
    save_data: bool = False
    device: str = "cpu"
    seed: int = 0
    data_dir: Path | None = None
    _run: Run | None = None

    @property
    def run(self) -> Run:
        """The run directory, loaded once."""
        if self._run is None:
            from convlens.train.run_dir import load_run

            self._run = load_run(self.run_dir, device=self.device)
        return self._run

    def query_images(self, n_default: int = 4) -> tuple[torch.Tensor, list[str]]:
        """uint8 `(N, C, H, W)` query images and their labels for titles.

        From `--image` files when given (converted to the run's input shape, with a notice for each
        conversion), else the first `n_default` images of the run's test split.
        """
        from convlens.inspect.images import load_images

        run = self.run
        if self.images:
            imgs, notices = load_images(self.images, run.data.image_shape)
            for n in notices:
                console.print(f"[yellow]note:[/] {n}")
            return imgs, [p.name for p in self.images]
        ds = run.load_data("test", root=str(self.data_dir) if self.data_dir else None)
        images, labels = ds.head(n_default)  # from every class, where the split is class-ordered
        return images, [ds.classes[int(y)] for y in labels]

    def parsed_channels(self, default: list[int]) -> list[int]:
        """`--channels 0-7,12` -> [0, 1, ..., 7, 12]."""
        if not self.channels:
            return default
        out: list[int] = []
        try:
            for part in self.channels.split(","):
                if "-" in part:
                    a, b = part.split("-")
                    out.extend(range(int(a), int(b) + 1))
                else:
                    out.append(int(part))
        except ValueError:
            raise ConvlensError(
                f"--channels {self.channels!r}: expected e.g. 0-63 or 0,3,5"
            ) from None
        return out


Runner = Callable[[VisualizeRequest], list[Path]]
_RUNNERS: dict[str, tuple[Runner, str]] = {}


def method(name: str, help: str) -> Callable[[Runner], Runner]:
    """Register `fn` as the runner of `convlens visualize RUN_DIR <name>`."""

    def deco(fn: Runner) -> Runner:
        if name in _RUNNERS:
            raise ValueError(f"visualize method {name!r} registered twice")
        _RUNNERS[name] = (fn, help)
        return fn

    return deco


def _load_methods() -> dict[str, tuple[Runner, str]]:
    from convlens.cli import methods

    for info in pkgutil.iter_modules(methods.__path__):
        importlib.import_module(f"{methods.__name__}.{info.name}")
    return _RUNNERS


def run_method(req: VisualizeRequest) -> list[Path]:
    """Dispatch a request to its runner (shared by the CLI and the report)."""
    runners = _load_methods()
    if req.method not in runners:
        raise ConvlensError(
            f"unknown method {req.method!r}; methods: {', '.join(sorted(runners))}."
            + did_you_mean(req.method, runners)
        )
    req.out.mkdir(parents=True, exist_ok=True)
    return runners[req.method][0](req)


def register(app: typer.Typer) -> None:
    """Add `visualize` to `app`."""

    @app.command("visualize")
    def visualize(
        run_dir: Path = typer.Argument(..., help="A run directory written by `convlens train`."),
        method_name: str = typer.Argument(
            ...,
            metavar="METHOD",
            help="filters, activations, neighbors, tsne, top-patches, erf, occlusion, saliency, "
            "guided-backprop, gradcam, guided-gradcam, actmax.",
        ),
        layer: str | None = typer.Option(None, help="Layer name as in model.named_modules()."),
        image: list[Path] = typer.Option([], "--image", help="Query image file(s); repeatable."),
        out: Path = typer.Option(Path("visualizations"), help="Output folder for PNGs."),
        target: int | None = typer.Option(None, help="Target class index (default: predicted)."),
        window: int | None = typer.Option(None, help="Occlusion window (pixels)."),
        stride: int | None = typer.Option(None, help="Occlusion stride (pixels)."),
        channels: str | None = typer.Option(None, help="Channels, e.g. 0-63 or 0,3,5."),
        steps: int | None = typer.Option(None, help="Optimisation steps (actmax)."),
        size: int | None = typer.Option(None, help="Image size (actmax)."),
        k: int | None = typer.Option(
            None, "--k", help="Neighbours per query / images per channel."
        ),
        count: int | None = typer.Option(
            None, "--count", help="How many images or channels to use."
        ),
        metric: str | None = typer.Option(None, help="Feature distance: cosine or l2 (neighbors)."),
        objective: str | None = typer.Option(
            None, help="actmax objective: channel, neuron, logit, negative."
        ),
        simple: bool = typer.Option(False, help="actmax: plain Keras-style gradient ascent."),
        precision: str = typer.Option(
            "auto",
            help="actmax: auto (float32, as fp32) or bf16 (autocast; faster where bf16 units exist).",
        ),
        save_data: bool = typer.Option(False, help="Also write the raw numbers (.npy / .json)."),
        device: str = typer.Option("cpu", help="cpu or cuda."),
        seed: int = typer.Option(0, help="Random seed."),
        data_dir: Path | None = typer.Option(None, help="Where the run's data set lives."),
    ) -> None:
        """Draw what a trained network's layers look for; writes PNGs into --out."""
        req = VisualizeRequest(
            run_dir=run_dir, method=method_name, out=out, layer=layer, images=list(image),
            target=target, window=window, stride=stride, channels=channels, steps=steps, size=size,
            k=k, count=count, metric=metric, simple=simple, precision=precision, objective=objective,
            save_data=save_data, device=device, seed=seed, data_dir=data_dir,
        )  # fmt: skip
        for p in run_method(req):
            typer.echo(str(p))
