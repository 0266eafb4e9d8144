"""Intermediate activations: every channel of chosen layers for one image."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.inspect.attribution import model_input
from convlens.models.hooks import capture, evaluating, get_layer, model_device

# The layers that make a "conv/pool stage" of a CNN.
STAGE_TYPES: tuple[type[nn.Module], ...] = (
    nn.Conv2d,
    nn.MaxPool2d,
    nn.AvgPool2d,
    nn.AdaptiveAvgPool2d,
    nn.AdaptiveMaxPool2d,
    nn.LPPool2d,
)


def stage_ends(shapes: dict[str, tuple[int, ...]], max_layers: int) -> list[str]:
    """Pick the layers to show from candidates in forward order with their output shapes.

    All of them when there are at most `max_layers`; else the last candidate before each change of
    spatial size (the end of each resolution stage, where VGG pools and ResNet downsamples), so that a
    deep network gives a handful of grids, one per scale.
    """
    names = list(shapes)
    if len(names) <= max_layers:
        return names
    keep = [
        name
        for name, nxt in zip(names, [*names[1:], None], strict=True)
        if nxt is None or shapes[name][-2:] != shapes[nxt][-2:]
    ]
    if len(keep) > max_layers:  # many scales: keep the deepest ones, the most abstract
        keep = keep[-max_layers:]
    return keep


def activations(
    model: nn.Module,
    images: torch.Tensor,
    layers: Sequence[str] | None = None,
    *,
    max_layers: int = 12,
) -> dict[str, torch.Tensor]:
    """The outputs of `layers` for a batch of images, every channel.

    Args:
        model: any module.
        images: normalised float `(N, C, H, W)` (what the model takes; see `Subject.normalize`).
        layers: names in `model.named_modules()`; default each conv/pool stage: every `Conv2d` and
            pooling layer that runs, or (more than `max_layers` of them) the last one of each spatial
            resolution.
        max_layers: the most layers chosen by default.

    Returns:
        `{name: float32 (N, C, H, W) on the CPU}` in forward order; a layer with a flat output
        `(N, D)` is given as `(N, D, 1, 1)`. Outputs are copied when recorded, so in-place ops that follow (e.g.
        `ReLU(inplace=True)`) do not change them.
    """
    x = model_input(model, images).to(model_device(model))
    if layers is None:
        wanted = [n for n, m in model.named_modules() if n and isinstance(m, STAGE_TYPES)]
    else:
        wanted = list(dict.fromkeys(layers))
        for name in wanted:
            get_layer(model, name)  # unknown name -> error listing the valid ones, before any work
    with evaluating(model), torch.inference_mode(), capture(model, wanted, clone=True) as acts:
        model(x)
    # `acts` is filled as the hooks fire, so its order is the forward order, whatever the module order.
    out: dict[str, torch.Tensor] = {}
    for name, a in acts.items():
        a = a.float().cpu()
        out[name] = a if a.dim() == 4 else a.reshape(a.shape[0], -1, 1, 1)
    if layers is None:
        keep = stage_ends({k: tuple(v.shape[1:]) for k, v in out.items()}, max_layers)
        return {k: out[k] for k in keep}
    missing = [n for n in wanted if n not in out]
    if missing:
        raise ConvlensError(f"layer(s) {', '.join(missing)} did not run in the forward pass")
    return out
