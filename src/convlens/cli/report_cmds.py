"""`convlens report [RUN_DIR | --model SPEC --images DIR]` and `convlens demo`: the self-contained HTML report, and the one command
that trains a small network and writes its report.

Both only parse options, show progress and print paths; the report itself is built by
:mod:`convlens.render.report` and the training by :func:`convlens.train.fit`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from convlens.cli import subject_options as so
from convlens.errors import ConvlensError

if TYPE_CHECKING:
    from convlens.render.report import Report, ReportOptions
    from convlens.subjects import Subject
    from convlens.views import ImageIndex

console = Console(stderr=True, soft_wrap=True)  # long paths and reasons stay on one line

DEMO_DATA = ("sample", "mnist", "fashion-mnist", "cifar10")
# A network that trains to a meaningful accuracy within the demo's few minutes on a laptop CPU.
DEMO_MODEL = {
    "sample": "lenet5",
    "mnist": "lenet5",
    "fashion-mnist": "lenet5",
    "cifar10": "resnet20",
}
# Epochs for the demo (None: the training recipe's default). CIFAR-10 on a CPU gets a short run.
DEMO_EPOCHS: dict[str, int | None] = {"sample": None, "mnist": 3, "fashion-mnist": 5, "cifar10": 3}


def write_report_with_progress(
    run_dir: Path | Subject,
    out: Path | None,
    *,
    options: ReportOptions | None = None,
    data_root: str | None = None,
    index: ImageIndex | None = None,
) -> tuple[Path, Report]:
    """Write the report of `run_dir` (or a subject) with a Rich progress display, one step per section.

    `index`: the index of the subject's images; top patches, the map and the predictions read it.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from convlens.render.report import SectionOutcome, write_report

    with Progress(
        TextColumn("[bold]report[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}"),
        console=console,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None)

        def progress(i: int, total: int, title: str, outcome: SectionOutcome | None) -> None:
            if outcome is None:
                bar.update(task, total=total, completed=i, description=title)
                return
            bar.update(task, completed=i + 1)
            mark = {
                "ok": "[green]done[/]",
                "skipped": "[yellow]not shown[/]",
                "failed": "[red]failed[/]",
            }
            line = f"  {title}: {mark[outcome.status]} ({outcome.seconds:.1f} s)"
            if outcome.status != "ok":
                line += f" [dim]{outcome.reason}[/]"
            bar.console.print(line, highlight=False)

        return write_report(
            run_dir, out, options=options, data_root=data_root, progress=progress, index=index
        )


def _cached_index(subject: Subject) -> ImageIndex | None:
    """The cached index of the subject's images (`convlens index build`), or None: never builds one."""
    from convlens.index import find_index

    try:
        index = find_index(subject)
    except ConvlensError:  # no images to look at: the sections say so themselves
        return None
    if index is not None:
        console.print(f"report: reading the index of {index.n:,} images", highlight=False)
    return index


def _summarise(path: Path, report: Report) -> None:
    shown = sum(s.status == "ok" for s in report.sections)
    failed = [s.title for s in report.sections if s.status == "failed"]
    console.print(
        f"report: {shown} of {len(report.sections)} sections in {report.seconds:.1f} s"
        + (f"; [red]failed: {', '.join(failed)}[/]" if failed else ""),
        highlight=False,
    )
    for p in report.problems:
        console.print(f"[yellow]note:[/] {p}", highlight=False)
    # The path goes to stdout alone, so `open "$(convlens report runs/x)"` works.
    typer.echo(str(path))


def register(app: typer.Typer) -> None:
    """Add `report` and `demo` to `app`."""

    @app.command("report")
    def report(
        run_dir: Path | None = typer.Argument(
            None,
            help="A run directory written by `convlens train` (or name the model with --model).",
        ),
        out: Path | None = typer.Option(
            None,
            "--out",
            "-o",
            help="The HTML file to write (default RUN_DIR/report.html; with --model, report.html).",
        ),
        data_dir: Path | None = typer.Option(
            None, "--data-dir", help="Where the run's data set lives, if not where it was trained."
        ),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda or cuda:N."),
        model: str | None = so.model_option(),
        weights: str | None = so.weights_option(),
        images: Path | None = so.images_option(),
        classes: Path | None = so.classes_option(),
        download: bool = so.download_option(),
    ) -> None:
        """Write one self-contained HTML page showing what a network learned: a run directory, or any model with your images (--model torchvision:alexnet --weights DEFAULT --images photos/).

        Sections: model summary, training curves, confusion matrix, first-layer filters, activations, feature- against pixel-space neighbours, t-SNE map, top-activating patches, activation maximisation, occlusion / Grad-CAM / saliency, effective receptive field.

        Images are embedded and the page makes no network request. A section that cannot apply says why instead (no training history for a model that is not a run; no confusion matrix for unlabelled images). A run must have readable weights (model.safetensors); an interrupted run is finished with `convlens train ... --resume`.
        """
        from convlens.cli import checks
        from convlens.render.report import REPORT_FILE, ReportOptions
        from convlens.train.run_dir import read_run_json

        so.check_subject_args(run_dir, model, weights)
        if run_dir is not None:
            read_run_json(run_dir)  # checked, with the destination, before any work
        default = run_dir / REPORT_FILE if run_dir is not None else Path(REPORT_FILE)
        checks.output_file(out if out is not None else default, "--out")
        checks.input_dir(data_dir, "--data-dir")
        dev = _device(device)
        subject = so.open_cli_subject(
            run_dir, model=model, weights=weights, images=images, classes=classes,
            download=download, device=dev, data_dir=data_dir,
        )  # fmt: skip
        index = _cached_index(subject)
        path, rep = write_report_with_progress(
            subject, out, options=ReportOptions(device=dev), index=index
        )
        _summarise(path, rep)

    @app.command("demo")
    def demo(
        data: str = typer.Option("sample", "--data", help=f"One of: {', '.join(DEMO_DATA)}."),
        model: str | None = typer.Option(
            None, "--model", help="Model name (default lenet5; resnet20 for cifar10)."
        ),
        out: Path = typer.Option(
            Path("runs/demo"), "--out", "-o", help="The run directory to write."
        ),
        epochs: int | None = typer.Option(None, "--epochs", help="Epochs (default: a short run)."),
        data_dir: Path | None = typer.Option(
            None, "--data-dir", help="Folder holding the data set (default: CONVLENS_DATA)."
        ),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
        retrain: bool = typer.Option(
            False, "--retrain", help="Train again even if OUT already holds a finished demo run."
        ),
    ) -> None:
        """Train a small network, write its HTML report and print the report's path.

        By default LeNet-5 on the Fashion-MNIST sample bundled with convlens: no download, no data folder, a couple of minutes on a laptop CPU.

        Run it again and it reuses the trained network (an interrupted training is resumed); --retrain starts over.
        """
        from convlens.render.report import ReportOptions
        from convlens.train import fit, recipe

        if data not in DEMO_DATA:
            from convlens.errors import did_you_mean

            raise ConvlensError(
                f"the demo runs on {', '.join(DEMO_DATA)}, not {data!r}.{did_you_mean(data, DEMO_DATA)} "
                f"For other data use `convlens train MODEL --data {data}` then `convlens report`."
            )
        from convlens.cli import checks

        checks.output_dir(out)
        checks.input_dir(data_dir, "--data-dir")
        checks.positive(epochs, "--epochs")
        name = model or DEMO_MODEL[data]
        root = str(data_dir) if data_dir else None
        report_device = _device(device)  # checked before minutes of training, not after
        t0 = time.perf_counter()
        resume = _prepare_demo_dir(out, name, data, retrain=retrain)
        if resume is None:
            console.print(
                f"[bold]demo:[/] {out} already holds {name} trained on {data}; writing its report "
                "(--retrain to train again)",
                highlight=False,
            )
        else:
            n_epochs = epochs if epochs is not None else DEMO_EPOCHS.get(data)
            verb = "resuming" if resume else "training"
            console.print(f"[bold]demo:[/] {verb} {name} on {data} into {out}", highlight=False)
            config = None if resume else recipe(name, data, epochs=n_epochs, device=device)
            fit(name, data, out=out, config=config, data_root=root, resume=resume, console=console)
        t1 = time.perf_counter()
        path, rep = write_report_with_progress(
            out, None, options=ReportOptions(device=report_device), data_root=root
        )
        console.print(
            f"demo: training {t1 - t0:.0f} s, report {time.perf_counter() - t1:.0f} s",
            highlight=False,
        )
        _summarise(path, rep)


RUN_FILES = ("run.json", "model.safetensors", "checkpoint.pt", "metrics.jsonl", "report.html")


def _prepare_demo_dir(out: Path, model: str, data: str, *, retrain: bool) -> bool | None:
    """Decide what the demo does with `out`: None = reuse the finished run there, True = resume it,
    False = train from scratch (after removing the files of an earlier run when `retrain`)."""
    from convlens.train.run_dir import WEIGHTS, read_run_json

    if not (out / "run.json").is_file():
        return False
    raw = read_run_json(out)
    same = (raw["model"]["name"], raw["data"]["name"]) == (model, data)
    if same and not retrain:
        if raw.get("status") == "complete" and (out / WEIGHTS).is_file():
            return None
        if (out / "checkpoint.pt").is_file():
            return True
    if not retrain:
        raise ConvlensError(
            f"{out} holds a run of {raw['model']['name']} on {raw['data']['name']}; pass --retrain to "
            "replace it, or choose another --out"
        )
    for f in RUN_FILES:  # only the files a run consists of: never anything else the folder holds
        (out / f).unlink(missing_ok=True)
    return False


def _device(device: str) -> str:
    """`auto` -> cuda when available, else cpu; a CUDA device that is not there is a clear error."""
    from convlens.cli import checks

    return checks.device(device)
