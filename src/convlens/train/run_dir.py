"""The run directory: everything that passes from training to inspection and reporting.

Layout (every file written atomically by :mod:`convlens.fileio`)::

    RUN_DIR/
      run.json            what was trained, on what, how (schema below)
      model.safetensors   final weights (state dict of the model as created by `models.create`)
      checkpoint.pt       resumable state: model, optimiser, schedule, RNG states, epoch, step
      metrics.jsonl       one JSON object per finished epoch

`run.json`::

    {
      "format": 1,
      "status": "running" | "complete" | "failed",
      "model": {"name": "lenet5", "options": {"num_classes": 10, "in_channels": 1, ...}},
      "data": {"name": "sample", "classes": [...], "mean": [...], "std": [...],
               "image_shape": [C, H, W], "root": "/path/or/null"},
      "train": {... the TrainConfig as a dict ...},
      "seed": 0,
      "versions": {"convlens": "...", "torch": "...", "torchvision": "..."},
      "device": "cpu", "world_size": 1,            (where it trained)
      "result": {"test_acc": ..., "test_loss": ..., "epochs": ..., "elapsed_s": ...},  (when complete)
      "error": "..."                                (when failed)
    }

`metrics.jsonl` lines hold at least: epoch (0-based), train_loss, train_acc, test_loss, test_acc,
lr (at the epoch's last step), images_per_s (training images per second, all processes), seconds
(the epoch's wall time, training and testing), plus elapsed_s (seconds since the run began, summed
over resumes) and step (optimiser steps so far). Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.fileio import atomic_write_bytes, atomic_write_json, atomic_write_text

RUN_JSON = "run.json"
WEIGHTS = "model.safetensors"
CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
RUN_FORMAT = 1  # the `format` of run.json this code writes and reads


@dataclass
class DataInfo:
    """What a run knows of its data set: enough to normalise new images and name classes."""

    name: str
    classes: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_shape: tuple[int, int, int]
    root: str | None = None


@dataclass
class Run:
    """A loaded run directory."""

    path: Path
    model: nn.Module
    model_name: str
    model_options: dict[str, Any]
    data: DataInfo
    config: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    status: str = "complete"
    raw: dict[str, Any] = field(default_factory=dict)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `(N, C, H, W)` -> the float input this model was trained on."""
        from convlens.data import normalize

        return normalize(images, self.data.mean, self.data.std)

    def load_data(self, split: str = "test", root: str | None = None) -> Any:
        """Load the run's data set split (a :class:`convlens.data.Dataset`)."""
        from convlens.data import load

        return load(self.data.name, split=split, root=root or self.data.root)


def read_run_json(path: Path) -> dict[str, Any]:
    """Read and minimally validate `run.json` of a run directory."""
    path = Path(path)
    if not path.is_dir():
        raise ConvlensError(
            f"no run directory at {path}; train one with `convlens train MODEL --out {path}`"
        )
    f = path / RUN_JSON
    if not f.is_file():
        raise ConvlensError(f"{path} is not a run directory: it has no {RUN_JSON}")
    try:
        raw = json.loads(f.read_text())
        raw["model"]["name"], raw["data"]["name"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ConvlensError(f"{f} is corrupt or not a convlens run file ({e})") from None
    fmt = raw.get("format", RUN_FORMAT)
    if fmt != RUN_FORMAT:
        import convlens

        newer = isinstance(fmt, int) and fmt > RUN_FORMAT
        raise ConvlensError(
            f"{f} has format {fmt!r}; this convlens {convlens.__version__} reads format "
            f"{RUN_FORMAT}"
            + ("; it was written by a newer convlens: upgrade convlens" if newer else "")
        )
    return dict(raw)


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The per-epoch history; a torn last line (a crash mid-write) is ignored."""
    f = Path(path) / METRICS
    if not f.is_file():
        return []
    rows = []
    for line in f.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def load_run(
    path: str | Path, *, device: str | torch.device = "cpu", model: nn.Module | None = None
) -> Run:
    """Load a run directory: the model in eval mode with its final weights, data description, history.

    Args:
        path: the run directory.
        device: where to put the model.
        model: for a run of your own module (run.json's model is `user:ClassName`), a fresh
            instance of it: its weights are replaced by the run's (the keys and shapes must match).
            A registry model is rebuilt from its name and needs none.

    Raises:
        ConvlensError: the directory, `run.json` or the weights are missing or belong to another
            model; a run of a user's module loaded without it.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from convlens import models

    path = Path(path)
    raw = read_run_json(path)
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConvlensError(f"unknown device {device!r}; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConvlensError(f"device {device}: PyTorch sees no CUDA device here; use cpu")
    m = raw["model"]
    if model is None:
        if m.get("user_supplied") or str(m["name"]).startswith("user:"):
            raise ConvlensError(
                f"{path} holds a run of your own module {m.get('class', m['name'])}; it cannot be "
                "rebuilt from a name: pass it, load_run(path, model=YourModule(...))"
            )
        model = models.create(m["name"], **m.get("options", {}))
    wfile = path / WEIGHTS
    if not wfile.is_file():
        raise ConvlensError(
            f"{path} has no {WEIGHTS} (status: {raw.get('status', 'unknown')}); "
            "finish or resume the training with `convlens train ... --resume`"
        )
    try:
        state = load_file(str(wfile), device=str(device))
    except (SafetensorError, OSError, ValueError) as e:
        raise ConvlensError(f"{wfile} is truncated or corrupt ({e})") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise ConvlensError(
            f"{wfile} does not hold weights of {m['name']} as described in run.json:\n{e}"
        ) from None
    model.to(device).eval()
    d = raw["data"]
    data = DataInfo(
        name=d["name"],
        classes=list(d["classes"]),
        mean=tuple(d["mean"]),
        std=tuple(d["std"]),
        image_shape=tuple(d["image_shape"]),
        root=d.get("root"),
    )
    return Run(
        path=path,
        model=model,
        model_name=m["name"],
        model_options=dict(m.get("options", {})),
        data=data,
        config=dict(raw.get("train", {})),
        history=read_metrics(path),
        status=str(raw.get("status", "complete")),
        raw=raw,
    )


def write_final(
    out: Path, model: nn.Module, run_json: dict[str, Any], history: list[dict[str, Any]]
) -> None:
    """Write the finished run: the final weights, then run.json marked complete with its result."""
    from safetensors.torch import save

    weights = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    # Serialised in memory, then written beside and renamed: never half a file, mode 0644.
    atomic_write_bytes(out / WEIGHTS, save(weights))
    last = history[-1] if history else {}
    result = {
        "test_acc": last.get("test_acc"),
        "test_loss": last.get("test_loss"),
        "epochs": len(history),
        "elapsed_s": last.get("elapsed_s"),
    }
    atomic_write_json(out / RUN_JSON, {**run_json, "status": "complete", "result": result})


def write_metrics(out: Path, history: list[dict[str, Any]]) -> None:
    """metrics.jsonl: one JSON object per finished epoch (rewritten whole, atomically)."""
    atomic_write_text(out / METRICS, "".join(json.dumps(r) + "\n" for r in history))
