"""`convlens visualize [RUN_DIR | --model SPEC ...] METHOD [options]`: one command, one runner per method.

Each method lives in its own module under :mod:`convlens.cli.methods` and registers a runner with
:func:`method`. A runner receives a :class:`VisualizeRequest` (the parsed options plus the subject:
a run directory, or any model named by `--model`, see :mod:`convlens.cli.subject_options`) and
returns the paths it wrote. Runners ask :mod:`convlens.views` for numbers (the same views the report
and the web app encode) and `convlens.render` for pictures; they do no computation of their own.
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

from convlens.cli import subject_options as so
from convlens.errors import ConvlensError, did_you_mean

if TYPE_CHECKING:
    import torch

    from convlens.data.dataset import Dataset
    from convlens.subjects import Subject
    from convlens.views import ImageIndex

console = Console(stderr=True)


@dataclass
class VisualizeRequest:
    """The options of `convlens visualize`, as given (None = the method's default)."""

    run_dir: Path | None
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
    limit: int | None = None
    metric: str | None = None
    simple: bool = False
    precision: str = "auto"
    objective: str | None = None
    save_data: bool = False
    device: str = "auto"
    seed: int = 0
    data_dir: Path | None = None
    model: str | None = None
    weights: str | None = None
    image_set: Path | None = None
    classes: Path | None = None
    download: bool = False
    _subject: Subject | None = None

    @property
    def subject(self) -> Subject:
        """What the method looks at (RUN_DIR or --model), opened once."""
        if self._subject is None:
            self._subject = so.open_cli_subject(
                self.run_dir, model=self.model, weights=self.weights, images=self.image_set,
                classes=self.classes, download=self.download, device=self.device,
                data_dir=self.data_dir, in_memory=self.method not in STREAMED,
            )  # fmt: skip
        return self._subject

    def index(self, split: str) -> ImageIndex | None:
        """The cached index of the images `split` names (`convlens index build`), or None.

        An index covers the subject's own images (a run's test split, or --images): a run's
        training split has none. Never builds one.
        """
        from convlens.index import find_index

        sub = self.subject
        if split != "test" and sub.images is None and sub.image_list is None:
            return None
        try:
            index = find_index(sub)
        except ConvlensError:
            return None
        if index is not None:
            console.print(f"reading the index of {index.n:,} images", highlight=False)
        return index

    def dataset(self, split: str) -> Dataset:
        """The `--images` set, else the run's `split` (see :meth:`Subject.data`).

        A folder opened without decoding it (a :data:`STREAMED` method) is decoded here, with the
        notes that opening it in memory would have printed.
        """
        sub = self.subject
        decoding = sub.images is None and sub.image_list is not None
        ds = sub.data(split)
        if decoding:
            shown = set(sub.info.get("notices", []))
            for n in ds.extra.get("notices", []):  # type: ignore[attr-defined]
                if n not in shown:
                    console.print(f"[yellow]note:[/] {n}", highlight=False)
        return ds

    def query_images(self, n_default: int = 4) -> tuple[torch.Tensor, list[str]]:
        """uint8 `(N, C, H, W)` query images and their labels for titles.

        From `--image` files when given (prepared as the subject's preprocessing says, with a notice
        for each conversion), else the first `n_default` images of `--images` or the run's test split.
        """
        from convlens.subjects import load_images

        sub = self.subject
        if self.images:
            imgs, notices = load_images(self.images, sub.preprocess)
            for n in notices:
                console.print(f"[yellow]note:[/] {n}", highlight=False)
            return imgs, [p.name for p in self.images]
        ds = self.dataset("test")
        images, labels = ds.head(n_default)  # from every class, where the split is class-ordered
        if not ds.extra.get("labelled", True):
            files = [Path(str(f)).name for f in ds.extra.get("files", [])]  # type: ignore[attr-defined]
            return images, files[: len(images)] or [f"image {i}" for i in range(len(images))]
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
        except ValueError:  # also "1-2-3" (too many values to unpack)
            from convlens.cli.checks import UsageError

            raise UsageError(f"--channels {self.channels!r}: expected e.g. 0-63 or 0,3,5") from None
        return out


# Methods that can look at a folder of any size through its cached index (`convlens index build`):
# their subject is opened without decoding the folder, which is decoded only when they ask for it
# (when there is no index).
STREAMED = frozenset({"tsne", "top-patches"})

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


# The options each method reads, beyond --out, --device, --seed, --data-dir and --save-data: any
# other option given is refused, rather than silently ignored.
METHOD_OPTIONS: dict[str, frozenset[str]] = {
    "filters": frozenset({"layer", "count"}),
    "activations": frozenset({"layer", "images", "count"}),
    "neighbors": frozenset({"images", "k", "count", "metric"}),
    "tsne": frozenset({"layer", "count"}),
    "top-patches": frozenset({"layer", "channels", "count", "k", "limit"}),
    "erf": frozenset({"layer", "count"}),
    "occlusion": frozenset({"images", "target", "window", "stride"}),
    "saliency": frozenset({"images", "target"}),
    "guided-backprop": frozenset({"images", "target"}),
    "gradcam": frozenset({"images", "target", "layer"}),
    "guided-gradcam": frozenset({"images", "target", "layer"}),
    "actmax": frozenset({"layer", "channels", "steps", "size", "objective", "simple", "precision"}),
}
MAX_K = 64  # images drawn per row (neighbours of a query, patches of a channel)
_DEFAULTS = {"images": [], "simple": False, "precision": "auto"}


def check_request(req: VisualizeRequest) -> None:
    """Refuse, before any work, options the method does not read and values that cannot parse."""
    from convlens.cli import checks

    _runner(req.method)
    takes = METHOD_OPTIONS.get(req.method)
    if takes is not None:
        given = [
            name
            for name in ("layer", "images", "target", "window", "stride", "channels", "steps",
                         "size", "k", "count", "limit", "metric", "simple", "precision", "objective")
            if getattr(req, name) != _DEFAULTS.get(name)
        ]  # fmt: skip
        extra = [n for n in given if n not in takes]
        if extra:
            flag = {"images": "--image"}.get(extra[0], f"--{extra[0]}")
            allowed = ", ".join({"images": "--image"}.get(n, f"--{n}") for n in sorted(takes))
            raise checks.UsageError(f"{flag} does not apply to {req.method} (it takes {allowed})")
    if req.k is not None and req.k > MAX_K:
        raise checks.UsageError(
            f"--k {req.k}: at most {MAX_K} images per query or channel fit in a figure"
        )
    if req.channels is not None:
        channels = req.parsed_channels([])
        if not channels or min(channels) < 0:
            raise checks.UsageError(f"--channels {req.channels!r}: expected e.g. 0-63 or 0,3,5")
    for path in req.images:
        if not path.is_file():
            raise ConvlensError(f"--image {path}: no such file")
    checks.output_dir(req.out)


def _runner(name: str) -> Runner:
    runners = _load_methods()
    if name not in runners:
        raise ConvlensError(
            f"unknown method {name!r}; methods: {', '.join(sorted(runners))}."
            + did_you_mean(name, runners)
        )
    return runners[name][0]


def run_method(req: VisualizeRequest) -> list[Path]:
    """Dispatch a request to its runner (shared by the CLI and the report)."""
    runner = _runner(req.method)
    req.out.mkdir(parents=True, exist_ok=True)
    return runner(req)


def register(app: typer.Typer) -> None:
    """Add `visualize` to `app`."""

    @app.command("visualize")
    def visualize(
        run_dir: str | None = typer.Argument(
            None,
            metavar="[RUN_DIR]",
            help="A run directory written by `convlens train` (or name the model with --model).",
        ),
        method_name: str | None = typer.Argument(
            None,
            metavar="METHOD",
            help="filters, activations, neighbors, tsne, top-patches, erf, occlusion, saliency, "
            "guided-backprop, gradcam, guided-gradcam, actmax.",
        ),
        layer: str | None = typer.Option(None, help="Layer name as in model.named_modules()."),
        image: list[Path] = typer.Option([], "--image", help="Query image file(s); repeatable."),
        out: Path = typer.Option(Path("visualizations"), help="Output folder for PNGs."),
        target: int | None = typer.Option(
            None, min=0, help="Target class index (default: predicted)."
        ),
        window: int | None = typer.Option(None, min=1, help="Occlusion window (pixels)."),
        stride: int | None = typer.Option(None, min=1, help="Occlusion stride (pixels)."),
        channels: str | None = typer.Option(None, help="Channels, e.g. 0-63 or 0,3,5."),
        steps: int | None = typer.Option(None, min=0, help="Optimisation steps (actmax)."),
        size: int | None = typer.Option(None, min=1, max=4096, help="Image size (actmax)."),
        k: int | None = typer.Option(
            None, "--k", min=1, help="Neighbours per query / images per channel."
        ),
        count: int | None = typer.Option(
            None, "--count", min=1, help="How many images or channels to use."
        ),
        limit: int | None = typer.Option(
            None,
            "--limit",
            min=1,
            help="Images searched, spread evenly (top-patches; default 2000, see convlens.views.defaults).",
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
        device: str = typer.Option(
            "auto", help="auto (cuda when available, else cpu), cpu, cuda or cuda:N."
        ),
        seed: int = typer.Option(0, min=0, max=2**63 - 1, help="Random seed."),
        data_dir: Path | None = typer.Option(None, help="Where the run's data set lives."),
        model: str | None = so.model_option(),
        weights: str | None = so.weights_option(),
        images: Path | None = so.images_option(),
        classes: Path | None = so.classes_option(),
        download: bool = so.download_option(),
    ) -> None:
        """Draw what a network's layers look for; writes PNGs into --out.

        The network is a run directory (RUN_DIR) or any model named with --model, e.g. `convlens visualize --model torchvision:resnet50 --weights DEFAULT gradcam --image cat.jpg`.
        """
        if method_name is None and model is not None:  # `visualize --model M gradcam`
            run_dir, method_name = None, run_dir
        from convlens.cli import checks

        if method_name is None and run_dir in _load_methods():
            raise checks.UsageError(
                f"Missing argument 'RUN_DIR': name the model before {run_dir}, a run directory or "
                "--model SPEC"
            )
        if method_name is None:
            raise checks.UsageError(
                "Missing argument 'METHOD': one of " + ", ".join(sorted(_load_methods()))
            )
        req = VisualizeRequest(
            run_dir=Path(run_dir) if run_dir is not None else None, method=method_name, out=out,
            layer=layer, images=list(image), model=model, weights=weights, image_set=images,
            classes=classes, download=download,
            target=target, window=window, stride=stride, channels=channels, steps=steps, size=size,
            k=k, count=count, limit=limit, metric=metric, simple=simple, precision=precision, objective=objective,
            save_data=save_data, device=device, seed=seed, data_dir=data_dir,
        )  # fmt: skip
        from convlens.train.run_dir import read_run_json

        check_request(req)
        so.check_subject_args(req.run_dir, model, weights)
        if (
            req.run_dir is not None
        ):  # a missing or foreign folder fails before the device is touched
            read_run_json(req.run_dir)
        checks.input_dir(data_dir, "--data-dir")
        req.device = checks.device(device)
        _ = req.subject  # opened (or refused) before the output folder is made
        for p in run_method(req):
            typer.echo(str(p))
