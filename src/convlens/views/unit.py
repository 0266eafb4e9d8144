"""The unit view: how one neuron of a convolution was computed for one image, with real numbers.

Wraps :func:`convlens.inspect.unit.unit_computation` for a subject and a uint8 image: the image is
normalised as the subject's preprocessing says, the model runs once, and the result carries the
input patch per input channel, the kernel, the products, their sum, the bias, the pre-activation, the
BatchNorm and activation that follow, and the value the network computed, with whether they agree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from convlens.errors import InputError
from convlens.inspect.unit import UnitComputation, unit_computation
from convlens.models import conv_layers
from convlens.subjects import Subject


@dataclass(frozen=True)
class UnitView:
    """One conv unit's computation for one image of a subject.

    Attributes:
        subject: the subject's name.
        image_shape: ``(C, H, W)`` of the model's input.
        layer, channel, row, col: the unit.
        first_layer: whether the layer reads the image itself (its patch is pixels, normalised).
        computation: the numbers (see :class:`~convlens.inspect.unit.UnitComputation`).
    """

    subject: str
    image_shape: tuple[int, int, int]
    layer: str
    channel: int
    row: int
    col: int
    first_layer: bool
    computation: UnitComputation

    @property
    def equal(self) -> bool:
        """Whether the computation by hand equals the value the network computed."""
        return self.computation.equal


def unit_view(
    subject: Subject, image: torch.Tensor, layer: str, channel: int, row: int, col: int
) -> UnitView:
    """The computation of unit ``(channel, row, col)`` of conv `layer` for `image`.

    Args:
        subject: what to look at.
        image: uint8 ``(C, H, W)`` (or ``(1, C, H, W)``) at the subject's input size.
        layer: an ``nn.Conv2d``'s name.
        channel, row, col: the unit: output channel and position in the layer's map.

    Raises:
        ConvlensError: not a convolution, or the unit is outside the layer's output.
    """
    if image.dim() == 4:
        image = image[0]
    if image.dtype != torch.uint8 or tuple(image.shape) != subject.image_shape:
        raise InputError(
            f"the image must be uint8 {subject.image_shape} (C, H, W), not {image.dtype} "
            f"{tuple(image.shape)}"
        )
    x = subject.normalize(image[None])  # (1, C, H, W)
    comp = unit_computation(subject.model, x, layer, channel, row, col)
    return UnitView(
        subject=subject.name,
        image_shape=subject.image_shape,
        layer=layer,
        channel=channel,
        row=row,
        col=col,
        first_layer=_is_first(subject, layer),
        computation=comp,
    )


def _is_first(subject: Subject, layer: str) -> bool:
    """Whether `layer` is the model's first convolution (registration order), reading the image."""
    names = list(conv_layers(subject.model))
    return bool(names) and names[0] == layer
