"""`evaluate`: accuracy, per-class accuracy and the confusion matrix of a trained run."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ConvlensError
from convlens.models.hooks import evaluating
from convlens.train.run_dir import Run, load_run
from convlens.train.runtime import Runtime

TTAS = ("none", "flip")


@dataclass
class Evaluation:
    """How a run's model does on one split of a data set.

    Attributes:
        data: data set name.
        split: `train` or `test`.
        classes: class names, index = label.
        confusion: int64 `(K, K)`; `confusion[i, j]` = images of true class `i` predicted as `j`
            (rows true, columns predicted, as `sklearn.metrics.confusion_matrix`).
        loss: mean cross-entropy (of the averaged probabilities, with test-time augmentation).
        tta: test-time augmentation used: `none`, or `flip` (mean softmax of the image and its mirror).
    """

    data: str
    split: str
    classes: list[str]
    confusion: torch.Tensor
    loss: float
    tta: str = "none"

    @property
    def count(self) -> int:
        """Images evaluated."""
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        """Fraction of images whose top-1 prediction is right."""
        return float(self.confusion.diag().sum()) / max(self.count, 1)

    @property
    def per_class_accuracy(self) -> list[float]:
        """Recall of each class (NaN for a class with no images)."""
        support = self.confusion.sum(1)
        return [
            float(self.confusion[i, i]) / int(n) if n else float("nan")
            for i, n in enumerate(support.tolist())
        ]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (what `convlens evaluate --json` prints)."""
        return {
            "data": self.data,
            "split": self.split,
            "count": self.count,
            "accuracy": self.accuracy,
            "loss": self.loss,
            "tta": self.tta,
            "classes": self.classes,
            "per_class_accuracy": dict(zip(self.classes, self.per_class_accuracy, strict=True)),
            "confusion": self.confusion.tolist(),
        }


def confusion_matrix(labels: torch.Tensor, preds: torch.Tensor, num_classes: int) -> torch.Tensor:
    """int64 `(K, K)` counts of (true, predicted) pairs from two int `(N,)` tensors."""
    flat = labels.to(torch.int64) * num_classes + preds.to(torch.int64)  # (N,) in 0..K*K-1
    return torch.bincount(flat, minlength=num_classes * num_classes).view(num_classes, num_classes)


@torch.inference_mode()
def evaluate(
    run: Run | str | Path,
    *,
    data: str | None = None,
    split: str = "test",
    root: str | None = None,
    batch_size: int = 1000,
    device: str = "cpu",
    limit: int | None = None,
    tta: str = "none",
) -> Evaluation:
    """Run the model of `run` over a data set split and count its predictions.

    Args:
        run: a loaded run or the path of a run directory.
        data: data set name (default: the run's own). It must have the run's image shape and
            number of classes; images are normalised with the run's training statistics.
        split: `test` or `train`.
        root: folder of data sets (default: the run's).
        batch_size: images per forward pass.
        device: where to run the model.
        limit: evaluate only `limit` images (`Dataset.head`: from every class).
        tta: test-time augmentation. `none`: one view. `flip`: average the softmax of each image and
            of its left-right mirror (two forward passes), the usual two-view evaluation on CIFAR-10;
            only for runs trained with flip augmentation, which taught the model mirrored images.

    Raises:
        ConvlensError: the data set does not fit the run's model; `flip` for a run trained without flips.
    """
    from convlens import data as datasets
    from convlens.data import DataNotice

    if not isinstance(run, Run):
        run = load_run(run, device=device)
    else:
        run.model.to(device)
    name = data or run.data.name
    ds = datasets.load(name, split=split, root=root or (run.data.root if data is None else None))
    k = len(run.data.classes)
    if ds.image_shape != tuple(run.data.image_shape):
        raise ConvlensError(
            f"{name} has images of shape {ds.image_shape}, but {run.path} was trained on "
            f"{run.data.name} images of shape {tuple(run.data.image_shape)}"
        )
    if ds.num_classes != k:
        raise ConvlensError(
            f"{name} has {ds.num_classes} classes, but {run.path}'s model tells {k} apart"
        )
    if list(ds.classes) != list(run.data.classes):
        differ = [(a, b) for a, b in zip(ds.classes, run.data.classes, strict=True) if a != b]
        raise ConvlensError(
            f"{name}'s classes differ from those {run.path} was trained on "
            f"(label {ds.classes.index(differ[0][0])}: {differ[0][0]!r} here, {differ[0][1]!r} "
            "in the run): its accuracy would be meaningless"
        )
    if run.data.name == "sample" and name == "fashion-mnist" and split == "test":
        warnings.warn(
            "the sample data set is drawn from Fashion-MNIST's test split, so this run was trained "
            "on some of these test images: the accuracy overstates how well it generalises",
            DataNotice,
            stacklevel=2,
        )
    if tta not in TTAS:
        raise ConvlensError(
            f"unknown test-time augmentation {tta!r}; choose one of {', '.join(TTAS)}"
        )
    augment = str(run.config.get("augment", "none"))
    if tta == "flip" and "flip" not in augment:
        raise ConvlensError(
            f"{run.path} was trained without flip augmentation (augment {augment!r}), so its model "
            "never saw mirrored images; --tta flip would mislead"
        )
    images, labels = ds.head(limit)  # from every class, where the data set is class-ordered
    model = run.model.eval()
    preds, loss_sum = [], 0.0
    for i in range(0, len(images), batch_size):
        x = run.normalize(images[i : i + batch_size].to(device))  # (B, C, H, W) float
        y = labels[i : i + batch_size].to(device)
        log_p = F.log_softmax(model(x).float(), dim=1)  # (B, K)
        if tta == "flip":
            log_p_mirror = F.log_softmax(model(x.flip(3)).float(), dim=1)
            # log of the mean of the two probability vectors
            log_p = torch.logsumexp(torch.stack([log_p, log_p_mirror]), dim=0) - math.log(2.0)
        loss_sum += float(F.nll_loss(log_p, y, reduction="sum"))
        preds.append(log_p.argmax(1).cpu())
    pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)
    return Evaluation(
        data=name,
        split=split,
        classes=list(run.data.classes),
        confusion=confusion_matrix(labels, pred, k),
        loss=loss_sum / max(len(images), 1),
        tta=tta,
    )


@torch.inference_mode()
def test_pass(rt: Runtime, model: nn.Module, loader: Any) -> tuple[float, float]:
    """Mean loss and accuracy of the training loop's test pass (each rank its slice; sums added
    over ranks)."""
    sums = torch.zeros(3, dtype=torch.float64, device=rt.device)
    with evaluating(model):
        for x, y in loader:
            with rt.autocast():
                logits = model(rt.to_input(x))
            sums[0] += F.cross_entropy(logits.float(), y, reduction="sum").double()
            sums[1] += (logits.argmax(1) == y).sum()
            sums[2] += y.shape[0]
    loss_sum, correct, n = rt.sum(sums).tolist()
    return loss_sum / max(n, 1), correct / max(n, 1)
