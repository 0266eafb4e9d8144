"""The options that name a subject, shared by `visualize`, `report` and `evaluate`.

A command takes either a run directory (the positional RUN_DIR, as always) or `--model SPEC` with
`--weights`, `--images`, `--classes` and `--download`; :func:`open_cli_subject` checks the
combination and opens the subject with :func:`convlens.subjects.open_subject`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from convlens.errors import InputError

if TYPE_CHECKING:
    from convlens.subjects import Subject

console = Console(stderr=True, soft_wrap=True)

MODEL_HELP = (
    "The model, instead of RUN_DIR: a registry name (resnet20), torchvision:NAME, timm:NAME, a "
    "TorchScript file, or your code as file.py:build_fn or package.module:build_fn (this runs "
    "that code)."
)
WEIGHTS_HELP = (
    "With --model: a weights file (safetensors or a torch.save state dict), or for "
    "torchvision:/timm: DEFAULT or a weights name such as IMAGENET1K_V1 (read from torch hub's "
    "cache, $TORCH_HOME)."
)
IMAGES_HELP = (
    "Images to look at: a file, or a folder (flat, or one sub-folder per class for a labelled set)."
)
CLASSES_HELP = "Class names: a file with one name per line, or a JSON list."
DOWNLOAD_HELP = (
    "Fetch pretrained torchvision/timm weights that are not in the cache (never by default)."
)


def model_option() -> str | None:
    """The `--model` option (a fresh default object for each command)."""
    return typer.Option(None, "--model", "-m", help=MODEL_HELP)


def weights_option() -> str | None:
    """The `--weights` option (a fresh default object for each command)."""
    return typer.Option(None, "--weights", help=WEIGHTS_HELP)


def images_option() -> Path | None:
    """The `--images` option (a fresh default object for each command)."""
    return typer.Option(None, "--images", help=IMAGES_HELP)


def classes_option() -> Path | None:
    """The `--classes` option (a fresh default object for each command)."""
    return typer.Option(None, "--classes", help=CLASSES_HELP)


def download_option() -> bool:
    """The `--download` option (a fresh default object for each command)."""
    return typer.Option(False, "--download", help=DOWNLOAD_HELP)


def open_cli_subject(
    run_dir: Path | None,
    *,
    model: str | None,
    weights: str | None,
    images: Path | None,
    classes: Path | None,
    download: bool,
    device: str,
    data_dir: Path | None,
    in_memory: bool = True,
) -> Subject:
    """Check that exactly one of RUN_DIR and --model names the subject, then open it.

    `in_memory=False` scans `images` without decoding them (``subject.image_list``), for the
    commands that stream a folder of any size through the index (`evaluate`, `index build`).

    Notices (converted or resized images, skipped files) are printed as `note:` lines.

    Raises:
        InputError: neither or both given, --weights without --model, or what opening reports.
    """
    from convlens.subjects import open_subject

    check_subject_args(run_dir, model, weights)
    spec = str(run_dir) if run_dir is not None else str(model)
    sub = open_subject(
        spec,
        weights=weights,
        images=images,
        classes=classes,
        device=device,
        data_dir=data_dir,
        download=download,
        in_memory=in_memory,
    )
    for note in sub.info.get("notices", []):
        console.print(f"[yellow]note:[/] {note}", highlight=False)
    return sub


def check_subject_args(run_dir: Path | None, model: str | None, weights: str | None) -> None:
    """Exactly one of RUN_DIR and --model; --weights only with --model; RUN_DIR is a folder.

    Raises:
        InputError: what is wrong, in one line.
    """
    from convlens.cli.checks import UsageError

    if run_dir is None and model is None:
        raise UsageError(
            "Missing argument 'RUN_DIR': name a run directory, or any model with --model SPEC "
            "(e.g. --model torchvision:resnet18 --weights DEFAULT)"
        )
    if run_dir is not None and model is not None:
        raise UsageError(
            f"give RUN_DIR ({run_dir}) or --model ({model}), not both; a run directory is its own model"
        )
    if model is None and weights is not None:
        raise UsageError("--weights goes with --model; a run directory has its own weights")
    if run_dir is not None and not run_dir.is_dir():
        raise InputError(
            f"no run directory at {run_dir}; train one with `convlens train MODEL --out {run_dir}`, "
            "or name any model with --model"
        )
