"""The effective receptive field (Luo, Li, Urtasun & Zemel 2016, "Understanding the effective
receptive field in deep convolutional neural networks").

A unit's theoretical field says which pixels it *can* see; how much each of them matters is the
magnitude of the gradient of the unit with respect to that pixel. Luo et al. back-propagate from the
centre unit of a layer (all channels summed), average ``|d unit / d input|`` over random inputs (and,
optionally, random initialisations of the weights) and find a roughly Gaussian blob that grows like
the square root of the depth while the theoretical field grows linearly: the effective field is a
small part of the theoretical one.

:func:`effective_receptive_field` returns that map, normalised to sum to 1, and the radius around
the unit's centre that holds 95 % of its mass. Cost: ``n`` forward/backward passes up to the layer
(batched), on images of the given size; the layers after it never run.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from convlens.anatomy.receptive_field import RF
from convlens.anatomy.trace import trace
from convlens.errors import ConvlensError
from convlens.models.hooks import evaluating, get_layer, model_device, truncated_forward


@dataclass(frozen=True)
class EffectiveRF:
    """The effective receptive field of the centre unit of one layer.

    Attributes:
        map: (H, W) mean |gradient| of the unit w.r.t. each input pixel (channels summed), summing to 1.
        radius: distance in pixels from `center` within which `mass` of the map lies.
        mass: the fraction used for `radius` (0.95 by default).
        center: (row, col) centre of the unit's theoretical field in input pixel coordinates.
        unit: (i, j) the unit, the centre of the layer's output map.
        layer: the layer's name.
        theoretical: the layer's theoretical :class:`RF`.
        samples: how many random inputs (x weight draws) were averaged.
    """

    map: NDArray[np.float64]
    radius: float
    mass: float
    center: tuple[float, float]
    unit: tuple[int, int]
    layer: str
    theoretical: RF
    samples: int


def effective_receptive_field(
    model: nn.Module,
    layer: str,
    input_size: tuple[int, int, int],
    *,
    n: int = 32,
    batch_size: int = 16,
    seed: int = 0,
    weights: Literal["model", "random"] = "model",
    mass: float = 0.95,
) -> EffectiveRF:
    """Average |gradient| of the centre unit of `layer` w.r.t. random inputs (Luo et al. 2016).

    Args:
        model: any ``nn.Module``; it is used in eval mode and left as it was (no gradients are
            accumulated in its parameters).
        layer: a module name from ``model.named_modules()``.
        input_size: (C, H, W) of the input images.
        n: number of random inputs; with ``weights="random"``, number of weight draws (one input each).
        batch_size: inputs per forward/backward pass.
        seed: seeds the inputs (and the weight draws); the global RNG is left untouched.
        weights: ``"model"`` uses the model's weights (trained or not); ``"random"`` re-initialises a
            copy of the model for each draw with each module's ``reset_parameters``, as in the paper.
        mass: fraction of the map the reported radius must hold.

    Returns:
        An :class:`EffectiveRF` (``.map`` is ready for ``imshow``).

    Raises:
        ConvlensError: unknown layer (with close names), the gradient is zero everywhere (e.g. dead
            ReLUs), or bad arguments.
    """
    if n < 1 or batch_size < 1 or not 0 < mass <= 1:
        raise ConvlensError("n and batch_size must be positive and mass in (0, 1]")
    if weights not in ("model", "random"):
        raise ConvlensError(f"weights must be 'model' or 'random', not {weights!r}")
    get_layer(model, layer)  # a clear error for a wrong name, before any work
    geometry = [c for c in trace(model, input_size, warn=False).calls if c.name == layer]
    if not geometry or geometry[-1].rf is None or geometry[-1].output_shape is None:
        raise ConvlensError(f"layer {layer!r} produces no feature map to take a centre unit from")
    out_shape, rf = geometry[-1].output_shape, geometry[-1].rf
    oh, ow = (out_shape[-2], out_shape[-1]) if len(out_shape) == 4 else (1, 1)
    unit = (oh // 2, ow // 2)

    device = model_device(model)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    total = torch.zeros(input_size[1:], dtype=torch.float64)  # (H, W)
    draws = n if weights == "random" else 1
    per_draw = 1 if weights == "random" else n
    with evaluating(model):
        for d in range(draws):
            net = model if weights == "model" else _reinitialised(model, seed * 100_003 + d)
            for start in range(0, per_draw, batch_size):
                b = min(batch_size, per_draw - start)
                x = torch.randn(b, *input_size, generator=gen).to(device).requires_grad_(True)
                total += _unit_gradient(net, layer, x, unit)
    if float(total.sum()) == 0.0:
        raise ConvlensError(
            f"the gradient of the centre unit of {layer!r} is zero for every sample (dead units?)"
        )
    erf_map = (total / total.sum()).numpy()
    center = rf.center(*unit)
    return EffectiveRF(
        map=erf_map,
        radius=mass_radius(erf_map, center, mass),
        mass=mass,
        center=center,
        unit=unit,
        layer=layer,
        theoretical=rf,
        samples=n,
    )


def _unit_gradient(
    model: nn.Module, layer: str, x: torch.Tensor, unit: tuple[int, int]
) -> torch.Tensor:
    """Sum over the batch of |d(sum over channels of unit (i, j)) / dx|, channels summed: (H, W)."""
    out = truncated_forward(model, layer, x)  # (B, C, h, w) or (B, D)
    target = out[:, :, unit[0], unit[1]] if out.dim() == 4 else out
    # Each image's unit depends on its own image only (eval mode), so one backward of the sum
    # gives every image's gradient.
    (grad,) = torch.autograd.grad(target.sum(), x)  # (B, C, H, W); parameters untouched
    return grad.detach().abs().sum(dim=(0, 1)).double().cpu()


def _reinitialised(model: nn.Module, seed: int) -> nn.Module:
    """A copy of `model` with every module's parameters drawn afresh (its ``reset_parameters``)."""
    net = copy.deepcopy(model).eval()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for m in net.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
    return net


def mass_radius(
    weights: NDArray[np.float64], center: tuple[float, float], mass: float = 0.95
) -> float:
    """Smallest distance r from `center` such that the pixels within r hold `mass` of `weights`."""
    h, w = weights.shape
    rows, cols = np.mgrid[0:h, 0:w]
    dist = np.hypot(rows - center[0], cols - center[1]).ravel()  # (H * W,)
    order = np.argsort(dist, kind="stable")
    cumulative = np.cumsum(weights.ravel()[order])
    k = int(np.searchsorted(cumulative, mass * cumulative[-1] - 1e-12))
    return float(dist[order][min(k, len(order) - 1)])
