"""Accuracy, loss and the confusion matrix of a subject, from its index (any number of images)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from convlens.data.dataset import spread_by_class
from convlens.errors import InputError
from convlens.index.build import build_index
from convlens.index.store import Index
from convlens.subjects.core import Subject
from convlens.subjects.images import ImageList
from convlens.train.evaluate import Evaluation, confusion_matrix


def evaluation(index: Index, classes: list[str]) -> Evaluation:
    """The :class:`~convlens.train.evaluate.Evaluation` of an index whose labels are outputs.

    Predictions are each image's top-1 (the arg-max of the logits); the loss is the mean of the
    per-image cross-entropies.

    Raises:
        InputError: the index's labels are not the model's outputs.
    """
    if index.loss is None or index.classes is None:
        raise InputError(
            f"cannot measure accuracy on {index.manifest['source']['name']}: its images are not "
            "in class folders named as the model's classes"
        )
    labels = torch.from_numpy(np.array(index.labels))  # copies: the index is read-only
    preds = torch.from_numpy(np.array(index.top_classes[:, 0]))
    return Evaluation(
        data=str(index.manifest["source"]["name"]),
        split="images",
        classes=list(classes),
        confusion=confusion_matrix(labels, preds, len(classes)),
        loss=float(np.asarray(index.loss, dtype=np.float64).mean()),
    )


def evaluate_folder(
    sub: Subject,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int | None = None,
    limit: int | None = None,
    progress: bool = True,
) -> tuple[Evaluation, Index]:
    """Evaluate `sub` on its labelled folder (``subject.image_list``) streamed through its index.

    Memory is one batch, whatever the number of images.

    `limit` takes that many images spread over the classes (as ``Dataset.head`` does).

    Returns:
        The evaluation, and the index it was read from (cached: a second evaluation is a lookup).

    Raises:
        InputError: the folder is unlabelled, or its class folders are not the model's classes.
    """
    images = sub.image_list
    if images is None:
        raise InputError(f"{sub.name} has no folder of images to evaluate on (pass --images DIR)")
    if images.classes != list(sub.classes):
        why = (
            "they are not in class folders"
            if images.classes is None
            else f"their folder names ({', '.join(images.classes[:3])}, ...) are not the model's "
            "class names; pass --classes FILE naming the outputs, or name the folders as the classes"
        )
        raise InputError(f"cannot measure accuracy on {images.source}: {why}")
    if limit is not None and limit < len(images):
        labels = torch.from_numpy(np.asarray(images.labels))
        keep = sorted(spread_by_class(labels)[:limit].tolist())
        images = ImageList(
            images.source,
            [images.files[i] for i in keep],
            np.asarray(images.labels)[keep],
            images.classes,
            images.notices,
        )
    index = build_index(sub, images, cache_dir=cache_dir, batch_size=batch_size, progress=progress)
    return evaluation(index, sub.classes), index
