"""The subject: what every inspection tool looks at.

A subject is a model in eval mode, its input preprocessing, its class names and, optionally, a data
set of images to look at. A run directory written by `convlens train` is one way to make a subject
(:func:`from_run`); :func:`subject` wraps any ``nn.Module`` a user already has.

Images travel as uint8 ``(N, C, H, W)`` at the model's input size; :meth:`Subject.normalize` turns
them into the float input the model expects (the convention of :mod:`convlens.inspect`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from convlens.data.dataset import Dataset, denormalize, normalize
from convlens.errors import ConvlensError

if TYPE_CHECKING:
    from convlens.subjects.images import ImageList
    from convlens.train.run_dir import Run

# torchvision's ImageNet statistics, the default for a model that says nothing else.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes this model's input.

    Attributes:
        channels: 1 (greyscale) or 3 (RGB).
        size: ``(H, W)`` of the model's input.
        mean: per-channel mean in [0, 1] units, subtracted after scaling pixels to [0, 1].
        std: per-channel standard deviation in [0, 1] units.
        resize: when set, the shorter side of an image is first resized to this many pixels and the
            centre ``size`` is cropped (torchvision's ImageNet evaluation transform); when None the
            image is resized straight to ``size``.
        interpolation: Pillow's resampling filter for the resize: ``bilinear`` (torchvision's
            default), ``bicubic`` or ``nearest``.
    """

    channels: int
    size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    resize: int | None = None
    interpolation: str = "bilinear"

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ConvlensError(f"a subject's images have 1 or 3 channels, not {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ConvlensError(
                f"mean {self.mean} and std {self.std} must have one value per channel "
                f"({self.channels})"
            )
        if self.interpolation not in ("bilinear", "bicubic", "nearest"):
            raise ConvlensError(
                f"interpolation {self.interpolation!r}: use bilinear, bicubic or nearest"
            )

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input image."""
        return (self.channels, *self.size)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` -> the float32 input the model expects."""
        return normalize(images, self.mean, self.std)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """The model's float input -> pixels in [0, 1] (not clamped), for display."""
        return denormalize(x, self.mean, self.std)


@dataclass
class Subject:
    """A model to look inside, with what is needed to feed it and to name its outputs.

    Attributes:
        model: the network, in eval mode.
        preprocess: how images become its input.
        classes: output names, index = logit.
        name: how to call it in titles and messages (a run directory, ``torchvision:resnet18``).
        images: a data set to look at (the run's test split, or a user's folder); None when there is
            none yet. Its images are uint8 at ``preprocess.image_shape``.
        run: the run directory it came from, when it came from one (history, training config).
        info: free-form facts for reports (weights file, source), shown as given.
        data_root: where a run's data set lives when not where it was trained (``--data-dir``).
        image_list: a folder's files, scanned but not decoded, for a streaming pass over a folder
            of any size (:mod:`convlens.index`); :meth:`data` decodes it when asked (small folders).
    """

    model: nn.Module
    preprocess: Preprocess
    classes: list[str]
    name: str = "model"
    images: Dataset | None = None
    run: Run | None = None
    info: dict[str, Any] = field(default_factory=dict)
    data_root: str | None = None
    image_list: ImageList | None = None
    _splits: dict[str, Dataset] = field(default_factory=dict, repr=False, compare=False)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of one input image."""
        return self.preprocess.image_shape

    @property
    def device(self) -> torch.device:
        """Where the model's parameters live (CPU for a model without any)."""
        p = next(self.model.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, C, H, W)`` -> the float input of the model, on the model's device."""
        return self.preprocess.normalize(images.to(self.device))

    def class_name(self, index: int) -> str:
        """The name of output `index` (its number when the subject has no name for it)."""
        return self.classes[index] if 0 <= index < len(self.classes) else str(index)

    def data(self, split: str = "test") -> Dataset:
        """The images to look at: the user's images (for every split), else the run's `split`.

        A run's split is loaded once (from `data_root`, else where the run was trained).

        Raises:
            ConvlensError: no images given and no run to load them from, or the data set is missing.
        """
        if self.images is not None:
            return self.images
        if self.image_list is not None:
            self.images = self.image_list.load(self.preprocess)  # a small folder, decoded once
            return self.images
        if self.run is None:
            raise ConvlensError(
                f"{self.name} has no images to look at; pass a file or folder of images "
                "(--images PATH, or images= in Python)"
            )
        if split not in self._splits:
            self._splits[split] = self.run.load_data(split, root=self.data_root)
        return self._splits[split]

    def labels_are_outputs(self, ds: Dataset) -> bool:
        """Whether the labels of `ds` index this model's outputs (accuracy and confusion apply).

        True for a run's own data set and for class folders named as the model's classes; False for
        unlabelled images and for folders whose names are not the model's class names.
        """
        return bool(ds.extra.get("labelled", True)) and list(ds.classes) == list(self.classes)


def subject(
    model: nn.Module,
    *,
    preprocess: Preprocess | None = None,
    input_size: tuple[int, int, int] = (3, 224, 224),
    classes: Sequence[str] | None = None,
    images: Dataset | None = None,
    name: str | None = None,
) -> Subject:
    """Wrap any ``nn.Module`` as a subject (it is put in eval mode).

    Args:
        model: the network.
        preprocess: how images become its input; default: `input_size` with ImageNet statistics for
            3 channels, mean 0.5 / std 0.5 for 1 channel.
        input_size: ``(C, H, W)`` used when `preprocess` is not given.
        classes: output names; default ``"0"``, ``"1"``, ... for every output of the model.
        images: a data set to look at, uint8 at the preprocessing's size.
        name: shown in titles; default the model's class name.
    """
    if preprocess is None:
        c, h, w = input_size
        mean, std = (IMAGENET_MEAN, IMAGENET_STD) if c == 3 else ((0.5,) * c, (0.5,) * c)
        preprocess = Preprocess(channels=c, size=(h, w), mean=mean, std=std)
    if classes is None:
        classes = [str(i) for i in range(num_outputs(model, preprocess))]
    if images is not None and images.image_shape != preprocess.image_shape:
        raise ConvlensError(
            f"the images are {images.image_shape} (C, H, W) but the model takes "
            f"{preprocess.image_shape}"
        )
    model.eval()
    return Subject(
        model=model,
        preprocess=preprocess,
        classes=list(classes),
        name=name or type(model).__name__,
        images=images,
    )


def from_run(run: Run, *, images: Dataset | None = None, data_root: str | None = None) -> Subject:
    """The subject of a loaded run directory (its model, normalisation and class names).

    `images` default to none: :meth:`Subject.data` then loads the run's own splits (from
    `data_root` when given, else where the run was trained).
    """
    c, h, w = run.data.image_shape
    pre = Preprocess(channels=c, size=(h, w), mean=run.data.mean, std=run.data.std)
    return Subject(
        model=run.model.eval(),
        preprocess=pre,
        classes=list(run.data.classes),
        name=str(run.path),
        images=images,
        run=run,
        info={"model": run.model_name, "data": run.data.name},
        data_root=data_root,
    )


def num_outputs(model: nn.Module, pre: Preprocess) -> int:
    """The number of logits, read from one forward pass of a zero image.

    Raises:
        ConvlensError: the model does not return ``(N, classes)`` logits for that input.
    """
    p = next(model.parameters(), None)
    x = torch.zeros(1, *pre.image_shape, device=p.device if p is not None else "cpu")
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            out = model(x)
    except RuntimeError as e:  # a shape error deep inside: the input size is not the model's
        raise ConvlensError(
            f"{type(model).__name__} cannot run on a {pre.image_shape} (C, H, W) input "
            f"({str(e).splitlines()[0]})"
        ) from None
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        raise ConvlensError(
            f"{type(model).__name__} does not return logits (N, classes) for a {pre.image_shape} "
            "input; pass classes= and check the input size"
        )
    return int(out.shape[1])
