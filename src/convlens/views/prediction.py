"""What the network says about images: its predictions, and what every layer computes on the way.

Predictions come from the logits (see :mod:`convlens.views.common`): class = arg-max of the logits,
probabilities = ``exp(log_softmax)`` in float64.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from convlens.subjects import Subject
from convlens.views import defaults
from convlens.views.common import ImageIndex, as_batch, logits_of, top_k


@dataclass(frozen=True)
class ClassScore:
    """One class of a prediction: its output index, name, probability and logit."""

    index: int
    name: str
    probability: float
    logit: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready ``{index, name, p, logit}``."""
        return {"index": self.index, "name": self.name, "p": self.probability, "logit": self.logit}


@dataclass(frozen=True)
class PredictionView:
    """The top classes of one image.

    Attributes:
        top: the `k` best classes, best first (``top[0].index`` is the arg-max of the logits).
        label: the image's true class when it has one among the model's outputs, else None.
        label_name: its name.
        wrong: whether the prediction differs from `label` (None when unlabelled).
        source: "model" (a forward pass) or "index" (read from the subject's index).
    """

    top: tuple[ClassScore, ...]
    label: int | None = None
    label_name: str | None = None
    wrong: bool | None = None
    source: str = "model"

    @property
    def predicted(self) -> int:
        """The predicted class: the arg-max of the logits."""
        return self.top[0].index

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "top": [c.to_dict() for c in self.top],
            "predicted": self.predicted,
            "label": self.label,
            "label_name": self.label_name,
            "wrong": self.wrong,
            "source": self.source,
        }


@dataclass(frozen=True)
class PredictionsView:
    """Predictions of many images at once (what a confusion matrix or a gallery needs).

    Attributes:
        classes: int64 ``(N, k)`` best classes per image, best first (column 0 = arg-max of the logits).
        probs: float64 ``(N, k)`` their probabilities.
        logits: float32 ``(N, K)`` the logits, when computed here (None when read from an index).
    """

    classes: torch.Tensor
    probs: torch.Tensor
    logits: torch.Tensor | None = None

    @property
    def predicted(self) -> torch.Tensor:
        """``(N,)`` the predicted classes."""
        return self.classes[:, 0]

    @property
    def confidence(self) -> torch.Tensor:
        """``(N,)`` float64 the probability of the predicted class."""
        return self.probs[:, 0]


def predictions_view(
    subject: Subject,
    images: torch.Tensor,
    *,
    k: int | None = None,
    batch_size: int | None = None,
    image_indices: torch.Tensor | None = None,
    index: ImageIndex | None = None,
) -> PredictionsView:
    """Top-`k` predictions of uint8 images ``(N, C, H, W)`` (batched forward passes).

    With an `index` and the images' `image_indices` in the subject's images, read from the index.
    """
    k = defaults.TOP if k is None else k
    if index is not None and image_indices is not None and k <= index.top_classes.shape[1]:
        idx = image_indices.numpy()
        return PredictionsView(
            classes=torch.from_numpy(index.top_classes[idx, :k]).long(),
            probs=torch.from_numpy(index.top_probs[idx, :k]).double(),
        )
    logits = logits_of(subject, as_batch(images), batch_size or defaults.BATCH_SIZE)
    classes, probs = top_k(logits, k)
    return PredictionsView(classes=classes, probs=probs, logits=logits)


def prediction_view(
    subject: Subject,
    image: torch.Tensor,
    *,
    label: int | None = None,
    k: int | None = None,
    image_index: int | None = None,
    index: ImageIndex | None = None,
) -> PredictionView:
    """The top-`k` classes of one uint8 image ``(C, H, W)``, with its true `label` when known.

    `label` counts only when it is one of the model's outputs (0 <= label < classes).
    """
    use_index = index is not None and image_index is not None
    res = predictions_view(
        subject,
        image,
        k=k,
        image_indices=torch.tensor([image_index]) if use_index else None,
        index=index if use_index else None,
    )
    logits = res.logits[0] if res.logits is not None else None
    top = tuple(
        ClassScore(
            index=int(c),
            name=subject.class_name(int(c)),
            probability=float(p),
            logit=float(logits[int(c)]) if logits is not None else None,
        )
        for c, p in zip(res.classes[0].tolist(), res.probs[0].tolist(), strict=True)
    )
    if label is not None and not 0 <= label < len(subject.classes):
        label = None
    return PredictionView(
        top=top,
        label=label,
        label_name=subject.class_name(label) if label is not None else None,
        wrong=(top[0].index != label) if label is not None else None,
        source="model" if logits is not None else "index",
    )


@dataclass(frozen=True)
class LayerMap:
    """What one layer computed for an image: float32 ``(C, H, W)`` (a flat output is ``(D, 1, 1)``)."""

    name: str
    values: torch.Tensor
    min: float
    max: float

    @property
    def shape(self) -> tuple[int, ...]:
        """``(C, H, W)``."""
        return tuple(self.values.shape)


@dataclass(frozen=True)
class ActivationsView:
    """Every layer's output for one image, in forward order, ending with the classifier's logits.

    Attributes:
        layers: one :class:`LayerMap` per layer; the last is ``"output"`` (the logits, ``(K, 1, 1)``).
        chosen: "given" (the caller named the layers) or "stages" (every conv, pool and block output).
    """

    layers: tuple[LayerMap, ...]
    chosen: str

    def maps(self, spatial_only: bool = False) -> dict[str, torch.Tensor]:
        """``{name: (C, H, W)}``; with `spatial_only`, the layers whose map is larger than 1x1."""
        return {
            m.name: m.values
            for m in self.layers
            if not spatial_only or m.values.shape[-1] > 1 or m.values.shape[-2] > 1
        }


def activations_view(
    subject: Subject,
    image: torch.Tensor,
    layers: list[str] | None = None,
    *,
    max_layers: int | None = None,
) -> ActivationsView:
    """What every layer computes for one uint8 image ``(C, H, W)``.

    Args:
        subject: the model.
        image: uint8 ``(C, H, W)``.
        layers: names to record; default every conv and pooling layer and every block's output
            (see :func:`convlens.views.network.block_names`), then the logits.
        max_layers: with default layers, keep only the last layer of each resolution when there are
            more than this many (:func:`convlens.inspect.activations`'s rule).
    """
    from convlens.inspect import activations
    from convlens.views.network import block_names

    x = subject.normalize(as_batch(image))  # (1, C, H, W)
    if layers is None:
        if max_layers is not None:
            acts = activations(subject.model, x, max_layers=max_layers)
        else:
            from convlens.inspect.activations import STAGE_TYPES

            wanted = [
                n for n, m in subject.model.named_modules() if n and isinstance(m, STAGE_TYPES)
            ]
            acts = activations(subject.model, x, wanted + block_names(subject.model))
        chosen = "stages"
    else:
        acts = activations(subject.model, x, layers)
        chosen = "given"
    with torch.inference_mode():
        logits = subject.model(x)[0].float().cpu()  # (K,)
    maps = [LayerMap(n, a[0], float(a[0].min()), float(a[0].max())) for n, a in acts.items()]
    out = logits[:, None, None]
    maps.append(LayerMap("output", out, float(out.min()), float(out.max())))
    return ActivationsView(layers=tuple(maps), chosen=chosen)
