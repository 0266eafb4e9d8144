"""`convlens train` and `convlens evaluate`: parsing and printing around :mod:`convlens.train`.

Under `torchrun --nproc-per-node=N -m convlens.cli.main train ...` the same command trains with
DistributedDataParallel; only rank 0 prints and writes.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import re
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from convlens.cli import checks
from convlens.cli import subject_options as so
from convlens.errors import ConvlensError

console = Console(soft_wrap=True)  # a result line holds a path: never broken inside it
err_console = Console(stderr=True)


def _parse_options(items: list[str]) -> dict[str, Any]:
    """`["width=2", "pool=avg"]` -> `{"width": 2, "pool": "avg"}` (Python literals, else strings)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConvlensError(f"model option {item!r} is not KEY=VALUE (e.g. --option pool=avg)")
        try:
            options[key.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key.strip()] = value
    return options


def default_out(model: str, data: str, *, resume: bool) -> Path:
    """`runs/<model>-<data>`, numbered `-2`, `-3`, ... when taken (the plain name when resuming)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", f"{model}-{data}").strip("_")
    base = Path("runs") / stem
    if resume:
        return base
    out, n = base, 1
    while (out / "run.json").exists():
        n += 1
        out = base.with_name(f"{stem}-{n}")
    return out


def train(
    model: str = typer.Argument(
        ..., help="Registry name: lenet5, resnet20, torchvision:resnet18, ..."
    ),
    data: str = typer.Option(
        "sample",
        "--data",
        "-d",
        help="Data set: mnist, fashion-mnist, cifar10, sample, folder:PATH.",
    ),
    data_dir: Path | None = typer.Option(
        None, "--data-dir", help="Folder holding the data sets (default: $CONVLENS_DATA)."
    ),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Run directory to write (default: runs/MODEL-DATA)."
    ),
    resume: bool = typer.Option(
        False, "--resume", help="Continue the run in --out from its last checkpoint."
    ),
    epochs: int | None = typer.Option(
        None, "--epochs", min=1, max=1_000_000, help="Passes over the training data."
    ),
    batch_size: int | None = typer.Option(
        None, "--batch-size", min=1, max=1_000_000, help="Images per step, over all processes."
    ),
    lr: float | None = typer.Option(None, "--lr", help="Peak learning rate."),
    optimizer: str | None = typer.Option(None, "--optimizer", help="sgd or adamw."),
    momentum: float | None = typer.Option(
        None, "--momentum", min=0.0, max=1.0, help="SGD momentum / AdamW beta1, in [0, 1)."
    ),
    weight_decay: float | None = typer.Option(
        None, "--weight-decay", min=0.0, help="Weight decay."
    ),
    schedule: str | None = typer.Option(None, "--schedule", help="onecycle, cosine or step."),
    warmup: float | None = typer.Option(
        None, "--warmup", min=0.0, help="Epochs of linear warm-up (at most --epochs)."
    ),
    label_smoothing: float | None = typer.Option(
        None, "--label-smoothing", min=0.0, max=1.0, help="Cross-entropy label smoothing, [0, 1)."
    ),
    augment: str | None = typer.Option(
        None, "--augment", help="Comma list of crop,flip,lighting,cutout, or none."
    ),
    cutout: int | None = typer.Option(
        None,
        "--cutout",
        min=1,
        max=10_000,
        help="Side of the Cutout square in pixels (with --augment ...,cutout).",
    ),
    seed: int | None = typer.Option(
        None, "--seed", min=0, max=2**63 - 1, help="Random seed (weights, order, augmentation)."
    ),
    device: str | None = typer.Option(None, "--device", help="auto, cpu or cuda."),
    amp: bool | None = typer.Option(None, "--amp/--no-amp", help="bf16 autocast on a GPU."),
    compile: bool | None = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the model."
    ),
    channels_last: bool | None = typer.Option(
        None, "--channels-last/--no-channels-last", help="NHWC memory format (GPU)."
    ),
    threads: int | None = typer.Option(
        None,
        "--threads",
        min=1,
        max=checks.MAX_THREADS,
        help="CPU threads (default: physical cores).",
    ),
    checkpoint_every: float | None = typer.Option(
        None, "--checkpoint-every", min=0.0, help="Seconds between mid-epoch checkpoints."
    ),
    limit_train: int | None = typer.Option(
        None,
        "--limit-train",
        min=1,
        help="Train on N images only (the first N, or for a class-ordered folder the first of every class in turn).",
    ),
    limit_test: int | None = typer.Option(
        None, "--limit-test", min=1, help="Test on N images only (chosen as for --limit-train)."
    ),
    option: list[str] = typer.Option(
        [], "--option", "-O", help="Model option KEY=VALUE (repeatable), e.g. -O pool=avg."
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or epoch lines."),
) -> None:
    """Train MODEL on a data set and write a run directory (weights, metrics, checkpoint).

    Options left out come from the recipe for MODEL and the data set (He et al. for the CIFAR
    ResNets, a fast one-cycle recipe for LeNet-5). Under `torchrun --nproc-per-node=N` the same
    command trains with DistributedDataParallel.
    """
    from convlens.train import fit
    from convlens.train.lock import run_lock

    overrides: dict[str, Any] = {
        "epochs": epochs,
        "batch_size": batch_size,
        "lr": lr,
        "optimizer": optimizer,
        "momentum": momentum,
        "weight_decay": weight_decay,
        "schedule": schedule,
        "warmup": warmup,
        "label_smoothing": label_smoothing,
        "augment": augment,
        "cutout": cutout,
        "seed": seed,
        "device": device,
        "amp": amp,
        "compile": compile,
        "channels_last": channels_last,
        "threads": threads,
        "checkpoint_every_s": checkpoint_every,
        "limit_train": limit_train,
        "limit_test": limit_test,
    }
    given = {k: v for k, v in overrides.items() if v is not None}
    model_options = _parse_options(option)
    checks.input_dir(data_dir, "--data-dir")
    if cutout is not None and augment is not None and "cutout" not in augment.lower():
        raise checks.UsageError(
            f"--cutout applies with --augment ...,cutout; --augment {augment!r} has no cutout"
        )
    where = checks.device(device or "auto")
    if amp and where == "cpu":
        err_console.print(
            "[yellow]note:[/] --amp (bf16 autocast) applies on a CUDA device only; "
            "this CPU run trains in float32",
            highlight=False,
        )
    out = out or default_out(model, data, resume=resume)
    checks.output_dir(out)
    if resume:
        from convlens.train.run_dir import read_run_json

        read_run_json(out)  # before the lock creates the folder
    rank0 = int(os.environ.get("RANK", "0")) == 0
    # Locked before fit looks at the folder, so two `train --out SAME` cannot both start it.
    with run_lock(out) if rank0 else contextlib.nullcontext():
        run = fit(
            model,
            data,
            out=out,
            overrides=given,
            model_options=model_options or None,
            data_root=data_dir,
            resume=resume,
            progress=not quiet,
            console=err_console,
        )
    if rank0 and run.history:
        last = run.history[-1]
        console.print(
            f"{run.path}: test accuracy {last['test_acc']:.2%} (loss {last['test_loss']:.4f})",
            highlight=False,
        )


def evaluate(
    run_dir: Path | None = typer.Argument(
        None,
        help="A run directory written by `convlens train` (or name the model with --model and "
        "give labelled --images).",
    ),
    data: str | None = typer.Option(
        None, "--data", "-d", help="Evaluate on this data set (default: the run's own)."
    ),
    data_dir: Path | None = typer.Option(None, "--data-dir", help="Folder holding the data sets."),
    split: str = typer.Option("test", "--split", help="test or train."),
    device: str = typer.Option("cpu", "--device", help="cpu or cuda."),
    limit: int | None = typer.Option(
        None, "--limit", min=1, help="Only N images (as train's --limit-test)."
    ),
    tta: str = typer.Option(
        "none", "--tta", help="Test-time augmentation: none, or flip (image + mirror, averaged)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON."),
    model: str | None = so.model_option(),
    weights: str | None = so.weights_option(),
    images: Path | None = so.images_option(),
    classes: Path | None = so.classes_option(),
    download: bool = so.download_option(),
) -> None:
    """Accuracy, per-class accuracy and the confusion matrix of a trained run, or of any model (--model) on class folders of images named as its classes (--images)."""
    if split not in ("test", "train"):
        raise checks.UsageError(f"--split must be test or train, not {split!r}")
    if tta not in ("none", "flip"):
        raise checks.UsageError(f"--tta must be none or flip, not {tta!r}")
    checks.input_dir(data_dir, "--data-dir")
    so.check_subject_args(run_dir, model, weights)
    if model is None and images is None and run_dir is not None:
        from convlens.train import evaluate as run_evaluate
        from convlens.train.run_dir import read_run_json

        read_run_json(run_dir)  # a missing or foreign folder fails before the device is touched
        who = str(run_dir)
        ev = run_evaluate(
            run_dir,
            data=data,
            split=split,
            root=None if data_dir is None else str(data_dir),
            device=checks.device(device),
            limit=limit,
            tta=tta,
        )
    else:
        from convlens.index.evaluate import evaluate_folder

        if images is None:
            raise ConvlensError("--model needs --images: a folder with one sub-folder per class")
        if data is not None or tta != "none":
            raise ConvlensError("--data and --tta apply to a run's own data set, not to --images")
        # The folder streams through the subject's index (cached, memory one batch): any size.
        sub = so.open_cli_subject(
            run_dir, model=model, weights=weights, images=images, classes=classes,
            download=download, device=checks.device(device), data_dir=data_dir, in_memory=False,
        )  # fmt: skip
        ev, index = evaluate_folder(sub, limit=limit)
        err_console.print(
            f"[yellow]note:[/] predictions kept in the index {index.path} (`convlens index list`)",
            highlight=False,
            soft_wrap=True,
        )
        who = sub.name
    if as_json:
        typer.echo(json.dumps(ev.to_dict(), indent=2))
        return
    console.print(
        f"{who} on {ev.data} ({ev.split}, {ev.count:,} images"
        + (", flip TTA" if ev.tta == "flip" else "")
        + "): "
        f"accuracy [bold]{ev.accuracy:.2%}[/], loss {ev.loss:.4f}",
        highlight=False,
    )
    per_class = Table(title="per-class accuracy")
    per_class.add_column("class")
    per_class.add_column("images", justify="right")
    per_class.add_column("accuracy", justify="right")
    support = ev.confusion.sum(1).tolist()
    many = len(ev.classes) > 30  # ImageNet's 1,000: only the classes the images hold
    for name, n, acc in zip(ev.classes, support, ev.per_class_accuracy, strict=True):
        if n or not many:
            per_class.add_row(name, f"{n:,}", "-" if n == 0 else f"{acc:.2%}")
    console.print(per_class)
    if many:
        console.print(f"({len(ev.classes)} classes: --json prints the whole confusion matrix)")
        return
    # Columns are numbered (class names do not fit side by side); rows name the class in full.
    cm = Table(title="confusion matrix (rows: true class, columns: predicted class number)")
    cm.add_column("true class")
    for j in range(len(ev.classes)):
        cm.add_column(str(j), justify="right")
    for i, row in enumerate(ev.confusion.tolist()):
        cells = (f"[bold]{v}[/]" if i == j else str(v) for j, v in enumerate(row))
        cm.add_row(f"{i} {ev.classes[i]}", *cells)
    console.print(cm)


def register(app: typer.Typer) -> None:
    """Add `train` and `evaluate` to `app`."""
    app.command("train")(train)
    app.command("evaluate")(evaluate)
