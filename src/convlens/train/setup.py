"""What a training run starts from: the model, the data and the optimiser.

The model is a registry name (created here, seeded) or a user's own ``nn.Module`` (trained as it
is, in place); the data a data set name (loaded here) or the user's own in-memory
:class:`~convlens.data.Dataset` splits. Either way the loop sees the same things: a module whose
own ``forward`` it calls, and uint8 image tensors with their labels and normalisation.
"""

from __future__ import annotations

import contextlib
import platform
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from convlens.data.dataset import Dataset
from convlens.errors import ConvlensError
from convlens.train.config import TrainConfig
from convlens.train.run_dir import RUN_FORMAT

# How run.json names a module the user passed in (it cannot be rebuilt from a name).
USER_MODEL_PREFIX = "user:"


@dataclass
class Splits:
    """The training and test splits a run uses, and how run.json names them."""

    train: Dataset
    test: Dataset
    name: str
    user_supplied: bool


def model_name(model: str | nn.Module) -> str:
    """The name run.json records: the registry name, or `user:ClassName` for a user's module."""
    if isinstance(model, str):
        return model
    return USER_MODEL_PREFIX + type(model).__qualname__


def is_user_model(name: str) -> bool:
    """Whether run.json's model name stands for a module the user passed in."""
    return name.startswith(USER_MODEL_PREFIX)


def load_splits(data: str | Dataset, test: Dataset | None, root: str | None) -> Splits:
    """The train and test splits: loaded by name, or the user's own (`test` then required)."""
    if isinstance(data, str):
        if test is not None:
            raise ConvlensError(
                f"test_data is for a Dataset passed as data; {data!r} brings its own test split"
            )
        from convlens.data import load

        train_split = load(data, split="train", root=root)
        return Splits(train_split, load(data, split="test", root=root), data, False)
    if not isinstance(data, Dataset):
        raise ConvlensError(
            f"data must be a data set name or a convlens.data.Dataset, not {type(data).__name__}"
        )
    if test is None:
        raise ConvlensError(
            "training on your own Dataset needs its held-out split too: pass test_data=Dataset(...) "
            "(the images test accuracy is measured on)"
        )
    if test.image_shape != data.image_shape or list(test.classes) != list(data.classes):
        raise ConvlensError(
            f"test_data holds {test.image_shape} images of {len(test.classes)} classes, but data "
            f"holds {data.image_shape} images of {len(data.classes)} classes"
        )
    if data.images.dtype != torch.uint8 or data.images.ndim != 4:
        raise ConvlensError(
            "a Dataset's images must be uint8 (N, C, H, W) pixels (normalised per batch with "
            "its mean and std)"
        )
    return Splits(data, test, data.name or "user", True)


def build_model(
    model: str | nn.Module,
    options: dict[str, Any],
    image_shape: tuple[int, int, int],
    data: str,
    seed: int,
) -> nn.Module:
    """The registry model created (seeded), or the user's module; checked on one batch of zeros.

    Raises:
        ConvlensError: the images do not fit the model, or it does not give one score per class.
    """
    from convlens import models

    if isinstance(model, str):
        torch.manual_seed(seed)
        net = models.create(model, **options)
    else:
        net = model
    name = model_name(model)
    probe = torch.zeros(2, *image_shape, device=_device_of(net))
    net.eval()
    try:
        with torch.no_grad():
            logits = net(probe)
    except (RuntimeError, ValueError, ConvlensError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        expected = ""
        with contextlib.suppress(Exception):  # not every model (user's, torchvision:) declares one
            expected = f"; {name} expects {tuple(models.info(name).input_size)}"
        raise ConvlensError(
            f"{data} images of shape {tuple(image_shape)} do not fit {name}{expected} ({first})"
        ) from None
    classes = options["num_classes"]
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] != classes:
        shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ConvlensError(
            f"{name} gives outputs of shape {shape} for {data}, expected (N, {classes}) class scores"
        )
    net.train()
    return net


def _device_of(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW; weight decay on conv/linear weights only (biases and norm scales
    gain nothing from it)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim > 1 else no_decay).append(p)
    groups: list[dict[str, Any]] = [
        {"params": decay, "weight_decay": cfg.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    # The fused kernels update all parameters of a group in one call instead of one per tensor.
    fused = all(p.dtype in (torch.float32, torch.float64) for p in decay + no_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.momentum, 0.999), fused=fused)
    return torch.optim.SGD(
        groups,
        lr=cfg.lr,
        momentum=cfg.momentum,
        nesterov=cfg.nesterov and cfg.momentum > 0,
        fused=fused,
    )


def versions() -> dict[str, str]:
    """The versions run.json records."""
    import torchvision

    from convlens import __version__

    return {
        "convlens": __version__,
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "python": platform.python_version(),
    }


FORMAT = RUN_FORMAT  # run.json's format


def describe_run(
    name: str,
    options: dict[str, Any],
    model: nn.Module,
    splits: Splits,
    data_root: str | None,
    cfg: TrainConfig,
    device: torch.device,
    world_size: int,
) -> dict[str, Any]:
    """run.json of a run that starts (see :mod:`convlens.train.run_dir` for the schema)."""
    user_model = {
        "user_supplied": True,
        "class": f"{type(model).__module__}.{type(model).__qualname__}",
    }
    train = splits.train
    return {
        "format": FORMAT,
        "status": "running",
        "model": {"name": name, "options": options, **(user_model if is_user_model(name) else {})},
        "data": {
            "name": splits.name,
            **({"user_supplied": True} if splits.user_supplied else {}),
            "classes": list(train.classes),
            "mean": list(train.mean),
            "std": list(train.std),
            "image_shape": list(train.image_shape),
            "root": data_root,
        },
        "train": cfg.to_dict(),
        "seed": cfg.seed,
        "versions": versions(),
        "device": str(device),
        "world_size": world_size,
    }


def check_classes(data: str, classes: list[str], labels: torch.Tensor, limit: int | None) -> None:
    """A classifier needs two classes or more, and training images of every class it names."""
    if len(classes) < 2:
        raise ConvlensError(
            f"{data} has {len(classes)} class{'' if len(classes) == 1 else 'es'} "
            f"({', '.join(classes) or 'none'}); a classifier needs at least two"
        )
    counts = torch.bincount(labels.long(), minlength=len(classes))  # (K,) images per class
    empty = [classes[i] for i in (counts == 0).nonzero().flatten().tolist()]
    if empty:
        why = f" within --limit-train {limit}" if limit is not None else ""
        raise ConvlensError(
            f"class {empty[0]!r} of {data} has no training images{why}"
            + (f" (nor {len(empty) - 1} more)" if len(empty) > 1 else "")
            + "; add images to it, or remove the empty class folder"
        )
