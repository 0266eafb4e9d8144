"""Theoretical receptive fields of every layer of any network: :func:`receptive_fields`.

The geometry (:class:`RF`, the recurrence, branches, padding) is in :mod:`convlens.anatomy.fields`;
how it travels through a model's forward pass is in :mod:`convlens.anatomy.trace`.
"""

from __future__ import annotations

from torch import nn

from convlens.anatomy.fields import RF, Box, clip_box, describe
from convlens.anatomy.trace import trace

__all__ = ["RF", "Box", "clip_box", "describe", "receptive_fields"]


def receptive_fields(
    model: nn.Module,
    input_size: tuple[int, int, int],
    *,
    warn: bool = True,
    through_gates: bool = True,
) -> dict[str, RF]:
    """The theoretical receptive field of every module of `model` that runs in its forward pass.

    Computed on the meta device (no data, instant even for ResNet-152 at 224x224), on any
    ``nn.Module``: residual adds, concatenations and functional ops (``torch.flatten``, ``F.relu``,
    ``+``, slicing, ``F.pad``) are followed; see the module docstring for the rules.

    Args:
        model: any network taking one (N, C, H, W) image batch.
        input_size: (C, H, W) of one input image.
        warn: emit a ``UserWarning`` where branches disagree on centre or jump (the union is reported).
        through_gates: a feature map multiplied by a global gate (a 1x1 map computed from the whole
            input: squeeze-and-excitation in MobileNetV3, EfficientNet, RegNetY) depends on every
            input pixel, so its units see the whole input (True, the default, and what the input
            gradient shows). False ignores such gates and reports the local field, the window
            whose content the unit responds to, more useful to crop patches.

    Returns:
        ``{module name: RF}`` in forward order, containers (e.g. ``"layer1"``) included. A module
        called more than once (torchvision's shared ``relu`` in a ResNet block) maps to its last call,
        the output that :func:`convlens.models.hooks.capture` records.

    Raises:
        ConvlensError: the input is too small for the network (names the layer that collapses).
    """
    result = trace(model, input_size, warn=warn, through_gates=through_gates)
    return {call.name: call.rf for call in result.calls if call.rf is not None}
