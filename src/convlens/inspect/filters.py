"""The learned filters of a convolution: its weights, read straight from the layer."""

from __future__ import annotations

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.models.hooks import get_layer
from convlens.models.interface import conv_layers

# Every convolution torch has (their common base class is private).
CONV_TYPES = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d
)  # fmt: skip


def first_conv(model: nn.Module) -> str:
    """Name of the first `nn.Conv2d` in forward order (as `convlens.models.conv_layers` gives it)."""
    convs = conv_layers(model)
    if not convs:
        raise ConvlensError(f"{type(model).__name__} has no Conv2d layer")
    return next(iter(convs))


def filters(model: nn.Module, layer: str | None = None) -> torch.Tensor:
    """The weights of a convolution layer, one filter per output channel.

    Args:
        model: any module.
        layer: a conv layer's name in `model.named_modules()`; default the first conv layer (whose
            filters act on pixels, so they can be drawn as images).

    Returns:
        float32 `(C_out, C_in / groups, kH, kW)` on the CPU, a copy (drawing it cannot change the model).

    Raises:
        ConvlensError: the layer does not exist, or is not a convolution.
    """
    name = layer if layer is not None else first_conv(model)
    module = get_layer(model, name)
    weight = getattr(module, "weight", None)
    if not isinstance(module, CONV_TYPES) or not isinstance(weight, torch.Tensor):
        convs = ", ".join(conv_layers(model)) or "none"
        raise ConvlensError(
            f"layer {name!r} is a {type(module).__name__}, not a convolution; conv layers: {convs}"
        )
    if weight.dim() != 4:
        raise ConvlensError(f"layer {name!r} has {weight.dim() - 2}-D filters; only 2-D are drawn")
    return weight.detach().to("cpu", torch.float32).clone()
