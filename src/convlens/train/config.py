"""The training configuration: one typed block of hyper-parameters, units in the comments.

A :class:`TrainConfig` is stored verbatim (as a dict) in `run.json` under `"train"` and in every
checkpoint, so a run can be resumed and reproduced from its directory alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from convlens.errors import ConvlensError

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("onecycle", "cosine", "step")
AUGMENTS = ("crop", "flip", "lighting", "cutout")
DEVICES = ("auto", "cpu", "cuda")
MAX_THREADS = 4096  # torch takes a C int; no machine has more cores


@dataclass(frozen=True)
class TrainConfig:
    """How to train. Defaults are generic; :func:`convlens.train.recipes.recipe` picks per model/data."""

    epochs: int = 10  # passes over the training split
    batch_size: int = 128  # images per optimiser step, summed over all processes (global batch)
    lr: float = 0.1  # peak learning rate (after warm-up)
    optimizer: str = "sgd"  # sgd | adamw
    momentum: float = 0.9  # SGD momentum (AdamW: beta1)
    nesterov: bool = True  # Nesterov momentum for SGD
    weight_decay: float = (
        5e-4  # L2 penalty (SGD) / decoupled decay (AdamW); not applied to biases and norms
    )
    schedule: str = (
        "onecycle"  # onecycle (linear up, linear down) | cosine | step (x0.1 at 50 % and 75 %)
    )
    warmup: float = (
        1.0  # epochs of linear warm-up from 0 to `lr` (onecycle: the length of its rise)
    )
    label_smoothing: float = 0.0  # cross-entropy target smoothing, 0..1
    augment: str = "none"  # comma list of crop,flip,lighting,cutout, or "none"
    crop_padding: int = 4  # pixels of padding for random crops (when "crop" is in `augment`)
    lighting: float = (
        0.1  # strength of the random brightness/contrast jitter (when "lighting" is in `augment`)
    )
    cutout: int = 16  # side in pixels of the Cutout square (when "cutout" is in `augment`)
    seed: int = 0  # seeds weights, shuffling and augmentation: same seed + CPU = same weights
    device: str = "auto"  # auto (cuda when available) | cpu | cuda
    threads: int | None = (
        None  # CPU intra-op threads; None = one per physical core (or OMP_NUM_THREADS)
    )
    amp: bool = False  # bf16 autocast (a GPU with bf16; ignored on CPU)
    compile: bool = False  # torch.compile the model (GPU; slow to start, faster per step)
    channels_last: bool = False  # NHWC memory format (faster convolutions on tensor-core GPUs)
    checkpoint_every_s: float = (
        300.0  # seconds between mid-epoch checkpoints (one is always written per epoch)
    )
    eval_batch_size: int = 1000  # images per forward pass when measuring test accuracy
    limit_train: int | None = None  # use only N training images (quick runs, tests): Dataset.head
    limit_test: int | None = None  # use only N test images (Dataset.head)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConvlensError` naming the first option that makes no sense."""
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, float) and not math.isfinite(v):
                raise ConvlensError(f"{f.name.replace('_', ' ')} must be a finite number, not {v}")
        if self.epochs < 1:
            raise ConvlensError(f"epochs must be at least 1, not {self.epochs}")
        if self.batch_size < 1:
            raise ConvlensError(f"batch size must be at least 1, not {self.batch_size}")
        if not self.lr > 0:
            raise ConvlensError(f"learning rate must be positive, not {self.lr}")
        if self.optimizer not in OPTIMIZERS:
            raise ConvlensError(
                f"unknown optimizer {self.optimizer!r}; choose one of {', '.join(OPTIMIZERS)}"
            )
        if self.schedule not in SCHEDULES:
            raise ConvlensError(
                f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}"
            )
        if self.device not in DEVICES and not self.device.startswith("cuda:"):
            raise ConvlensError(f"unknown device {self.device!r}; choose auto, cpu or cuda")
        if not 0 <= self.label_smoothing < 1:
            raise ConvlensError(f"label smoothing must be in [0, 1), not {self.label_smoothing}")
        if self.weight_decay < 0 or self.warmup < 0 or self.momentum < 0:
            raise ConvlensError("weight decay, warm-up and momentum cannot be negative")
        if self.momentum >= 1:
            what = "AdamW's beta1 (--momentum)" if self.optimizer == "adamw" else "SGD momentum"
            raise ConvlensError(f"{what} must be in [0, 1), not {self.momentum}")
        if self.warmup > self.epochs:
            raise ConvlensError(
                f"the warm-up ({self.warmup:g} epochs) is longer than the training "
                f"({self.epochs} epoch{'' if self.epochs == 1 else 's'}): the learning rate would never reach its peak; "
                "shorten --warmup or train for more --epochs"
            )
        if not 0 <= self.seed < 2**63:
            raise ConvlensError(f"seed must be in [0, 2**63), not {self.seed}")
        if not self.checkpoint_every_s >= 0:  # 0: at every check (tests)
            raise ConvlensError(
                f"checkpoint interval must be 0 or more seconds, not {self.checkpoint_every_s}"
            )
        for a in self.augmentations:
            if a not in AUGMENTS:
                raise ConvlensError(
                    f"unknown augmentation {a!r}; use a comma list of {','.join(AUGMENTS)}, or none"
                )
        if self.cutout < 1:
            raise ConvlensError(f"the Cutout side must be at least 1 pixel, not {self.cutout}")
        for name in ("limit_train", "limit_test", "threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ConvlensError(f"{name.replace('_', '-')} must be at least 1, not {v}")
        if self.threads is not None and self.threads > MAX_THREADS:
            raise ConvlensError(f"threads must be at most {MAX_THREADS}, not {self.threads}")

    @property
    def augmentations(self) -> list[str]:
        """The augmentations asked for, e.g. `["crop", "flip"]` (empty for "none")."""
        parts = [p.strip() for p in self.augment.lower().split(",") if p.strip()]
        return [] if parts in ([], ["none"]) else parts

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (what `run.json` and checkpoints store)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys (from newer versions) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with `changes` applied (validated)."""
        return dataclasses.replace(self, **changes)


# Options that may differ when a run is resumed: they change where and how fast it runs, not its result.
RESUMABLE_CHANGES = frozenset(
    {"device", "threads", "checkpoint_every_s", "eval_batch_size", "compile"}
)
