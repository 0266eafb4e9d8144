"""What the report's sections read: a subject, the images to look at, and results shared between sections.

The subject is a run directory (its test split is the images, its training split the neighbours'
pool, its metrics the training curves) or any model with the user's images (those are the images and
the pool; there is no training history). Sections ask through the methods here, which raise
:class:`~convlens.render.report_base.Unavailable` (a reason a reader can act on) when something is
not there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from convlens.data.dataset import Dataset
from convlens.errors import ConvlensError
from convlens.render.report_base import ReportOptions, Unavailable
from convlens.subjects import Subject
from convlens.views import (
    ImageIndex,
    NetworkView,
    PredictionsView,
    network_view,
    predictions_view,
)

if TYPE_CHECKING:
    from convlens.anatomy.summary import Summary


@dataclass
class ReportContext:
    """The subject of the report, what is missing from it, and shared caches."""

    subject: Subject
    options: ReportOptions = field(default_factory=ReportOptions)
    index: ImageIndex | None = None  # the images' index: top patches, map and predictions from it
    problems: list[str] = field(default_factory=list)
    _cache: dict[str, Any] = field(default_factory=dict)

    # -- the model ----------------------------------------------------------------------------------

    @property
    def model(self) -> nn.Module:
        """The model in eval mode."""
        return self.subject.model

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """`(C, H, W)` of the model's input."""
        return self.subject.image_shape

    @property
    def classes(self) -> list[str]:
        """Output names, index = logit."""
        return self.subject.classes

    @property
    def history(self) -> list[dict[str, Any]]:
        """The run's per-epoch metrics; empty for a subject that is not a run."""
        run = self.subject.run
        return list(run.history) if run is not None else []

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 `(N, C, H, W)` -> the model's normalised float input, on the model's device."""
        return self.subject.normalize(images)

    def class_name(self, label: int) -> str:
        """The name of output `label` (its number when there is no name)."""
        return self.subject.class_name(label)

    def conv_layers(self) -> dict[str, nn.Conv2d]:
        """The model's conv layers in forward order (raises :class:`Unavailable` when there is none)."""
        if "conv_layers" not in self._cache:
            from convlens import models

            self._cache["conv_layers"] = dict(models.conv_layers(self.model))
        convs: dict[str, nn.Conv2d] = self._cache["conv_layers"]
        if not convs:
            raise Unavailable(
                f"{type(self.model).__name__} has no convolutional layer, so there are no filters, "
                "feature maps or receptive fields to show."
            )
        return convs

    def network(self) -> NetworkView:
        """The network view (layer table, default layer), computed once."""
        if "network" not in self._cache:
            self._cache["network"] = network_view(self.subject)
        view: NetworkView = self._cache["network"]
        return view

    def summary(self) -> Summary:
        """The model's layer table (shapes, parameters, MACs, receptive fields), computed once."""
        net = self.network()
        if net.summary is None:
            raise Unavailable(net.problem or "the model cannot be traced")
        return net.summary

    def first_conv(self) -> str:
        """Name of the first conv layer."""
        return next(iter(self.conv_layers()))

    def spatial_conv(self) -> str:
        """The default layer of every view (:func:`convlens.views.defaults.default_layer`: the last
        conv layer whose output is a map larger than 1x1; LeNet-5's C5 is 1x1)."""
        self.conv_layers()  # a network without one says so first
        if "spatial_conv" not in self._cache:
            from convlens.views import defaults

            self._cache["spatial_conv"] = defaults.default_layer(self.subject)
        return str(self._cache["spatial_conv"])

    # -- images -------------------------------------------------------------------------------------

    @property
    def is_run(self) -> bool:
        """Whether the subject is a run directory (with data splits and history)."""
        return self.subject.run is not None and self.subject.images is None

    def images(self) -> Dataset:
        """The images to look at: the user's, else the run's test split (loaded once)."""
        return self._data("test")

    def pool(self) -> Dataset:
        """Where neighbours are searched: the run's training split, else the user's images."""
        return self._data("train") if self.is_run else self.images()

    def _data(self, split: str) -> Dataset:
        key = f"data:{split}"
        if key not in self._cache:
            try:
                self._cache[key] = self.subject.data(split)
            except ConvlensError as e:
                run = self.subject.run
                if run is not None and self.subject.images is None:
                    reason = f"the {split} split of {run.data.name!r} could not be loaded: {e}"
                else:
                    reason = str(e)
                self._cache[key] = Unavailable(reason)
        value = self._cache[key]
        if isinstance(value, Unavailable):
            raise value
        return value

    def labelled(self) -> bool:
        """Whether the images' labels are the model's outputs (accuracy and confusion apply)."""
        return self.subject.labels_are_outputs(self.images())

    def image_title(self, ds: Dataset, i: int) -> str:
        """How to name image `i` of `ds` in a caption: its class, else its file name."""
        if ds.extra.get("labelled", True):
            return ds.classes[int(ds.labels[i])]
        files = ds.extra.get("files")
        return Path(str(files[i])).name if isinstance(files, list) else f"image {i}"

    def predictions(self) -> PredictionsView:
        """The predictions of all the images, from the logits (cached)."""
        if "predictions" not in self._cache:
            ds = self.images()
            self._cache["predictions"] = predictions_view(
                self.subject, ds.images, batch_size=self.options.batch_size,
                image_indices=torch.arange(len(ds)), index=self.index,
            )  # fmt: skip
        view: PredictionsView = self._cache["predictions"]
        return view

    def example_indices(self) -> tuple[list[int], list[int]]:
        """Images to explain: the first correctly and the first wrongly classified ones, one per class
        where possible; for images without output labels, the first ones (and none wrong)."""
        ds = self.images()
        pred = self.predictions().predicted
        n = self.options.attribution_images
        if not self.labelled():
            return list(range(min(n, len(ds)))), []
        right = (pred == ds.labels).numpy()
        labels = ds.labels.numpy()

        def pick(mask: np.ndarray) -> list[int]:
            chosen: list[int] = []
            seen: set[int] = set()
            for i in np.flatnonzero(mask):
                if labels[i] not in seen:
                    chosen.append(int(i))
                    seen.add(int(labels[i]))
                if len(chosen) == n:
                    break
            return chosen

        return pick(right), pick(~right)
