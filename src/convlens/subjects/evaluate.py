"""Accuracy and the confusion matrix of any subject on its labelled images.

A run evaluates on its own data set with :func:`convlens.train.evaluate`; a subject opened with
`--model` evaluates on the user's class folders, which must be named as the model's classes (the
labels are then indices of its outputs, see :meth:`Subject.labels_are_outputs`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from convlens.errors import InputError
from convlens.subjects.core import Subject
from convlens.train.evaluate import Evaluation, confusion_matrix


@torch.inference_mode()
def evaluate_subject(
    sub: Subject, *, batch_size: int = 256, limit: int | None = None
) -> Evaluation:
    """Run `sub`'s model over its images and count its predictions.

    Raises:
        InputError: no images, unlabelled images, or class folders not named as the model's classes.
    """
    ds = sub.data("test")
    if not sub.labels_are_outputs(ds):
        why = (
            "they are not in class folders"
            if not ds.extra.get("labelled", True)
            else f"their folder names ({', '.join(ds.classes[:3])}, ...) are not the model's class "
            "names; pass --classes FILE naming the outputs, or name the folders as the classes"
        )
        raise InputError(f"cannot measure accuracy on {ds.source or ds.name}: {why}")
    images, labels = ds.head(limit)
    k = len(sub.classes)
    preds, loss_sum = [], 0.0
    for i in range(0, len(images), batch_size):
        x = sub.normalize(images[i : i + batch_size])  # (B, C, H, W) float on the model's device
        y = labels[i : i + batch_size].to(x.device)
        log_p = F.log_softmax(sub.model(x).float(), dim=1)  # (B, K)
        loss_sum += float(F.nll_loss(log_p, y, reduction="sum"))
        preds.append(log_p.argmax(1).cpu())
    pred = torch.cat(preds) if preds else torch.zeros(0, dtype=torch.int64)
    return Evaluation(
        data=ds.source or ds.name,
        split="images",
        classes=list(sub.classes),
        confusion=confusion_matrix(labels, pred, k),
        loss=loss_sum / max(len(images), 1),
    )
