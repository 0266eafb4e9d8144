"""Gradient attributions: saliency, guided backpropagation, Grad-CAM, guided Grad-CAM.

Each function takes a batch of model inputs `(N, C, H, W)` and a target class (default: each image's
predicted class) and returns a tensor on the model's device, without the graph. They agree with
Captum's ``Saliency``, ``GuidedBackprop``, ``LayerGradCam`` (+ ``LayerAttribution.interpolate``) and
``GuidedGradCam`` on the same model, layer and input (tests hold them to 1e-5).

The model is left exactly as it was: every hook is removed and every training flag restored on every
exit path, including when the model raises. Gradients are taken with :func:`torch.autograd.grad`, so
the parameters' ``.grad`` fields are never touched.

Guided backpropagation changes the backward pass of every ``nn.ReLU`` *module* (in-place ones
included): the gradient leaving a ReLU is clamped at zero. ReLUs applied as functions
(``F.relu``/``torch.relu`` inside a ``forward``) cannot be reached by hooks and keep their ordinary
gradient, exactly as in Captum.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ConvlensError
from convlens.models.hooks import evaluating, get_layer, require_hooks
from convlens.models.interface import default_layer
from convlens.validate import check_images

__all__ = ["grad_cam", "guided_backprop", "guided_grad_cam", "model_input", "saliency"]

Target = int | torch.Tensor | list[int] | None


def resolve_targets(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """`(N,)` class indices: each image's argmax when `target` is None, else `target` checked."""
    N, K = logits.shape
    if target is None:
        return logits.argmax(1)
    t = torch.as_tensor(target, dtype=torch.long, device=logits.device).reshape(-1)
    if t.numel() == 1:
        t = t.expand(N)
    if t.numel() != N:
        raise ConvlensError(f"{t.numel()} targets for {N} images; give one, or one per image")
    if bool(((t < 0) | (t >= K)).any()):
        raise ConvlensError(
            f"target class {t.tolist()} out of range: the model has {K} classes (0-{K - 1})"
        )
    return t


def model_input(model: nn.Module, images: Any, name: str = "images") -> torch.Tensor:
    """The check every method makes on the images it is given, and the one cast it allows.

    ``(N, C, H, W)`` normalised floats (:func:`convlens.validate.check_images`: uint8, NaN, a NumPy
    array or one unbatched image are an :class:`~convlens.errors.InputError` saying how to fix
    it); as many channels as the model's first convolution takes (an ``InputError`` too, whatever
    the method); float64 or float16 images are cast to the model's own float type, so a method
    answers instead of failing inside torch with a dtype error.
    """
    check_images(images, name=name, channels=input_channels(model))
    p = next((t for t in model.parameters() if t.is_floating_point()), None)
    if p is not None and images.dtype != p.dtype:
        images = images.to(p.dtype)
    return images


def input_channels(model: nn.Module) -> int | None:
    """The channels the model's first convolution takes; None when there is none to read.

    TorchScript hides the module types: there, the first 4-D weight tells.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    if isinstance(model, torch.jit.ScriptModule):
        for t in model.parameters():
            if t.ndim == 4:
                return int(t.shape[1])
    return None


def _score(model: nn.Module, x: torch.Tensor, target: Target) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum over the batch of each image's target logit (gradients stay per image), and the targets."""
    logits = model(x)
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2:
        raise ConvlensError("attributions need a model that returns (N, classes) scores")
    t = resolve_targets(target, logits.detach())
    return logits.gather(1, t[:, None]).sum(), t


def _input_grad(model: nn.Module, images: torch.Tensor, target: Target) -> torch.Tensor:
    x = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        score, _ = _score(model, x, target)
        (grad,) = torch.autograd.grad(score, x)
    return grad


def saliency(model: nn.Module, images: torch.Tensor, target: Target = None) -> torch.Tensor:
    """Image-specific class saliency (Simonyan, Vedaldi, Zisserman 2013).

    The absolute gradient of the target's logit with respect to each input pixel, maximised over
    channels: `(N, H, W)`. Equals ``Saliency(model).attribute(x, target, abs=True).amax(1)``.
    """
    images = model_input(model, images)
    with evaluating(model):
        return _input_grad(model, images, target).abs().amax(dim=1)


class _GuidedReLU(torch.autograd.Function):
    """Identity forward; backward lets through only positive gradients where the ReLU was open."""

    @staticmethod
    def forward(ctx: Any, out: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(out)
        return out.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (out,) = ctx.saved_tensors
        return grad.clamp(min=0) * (out > 0)


@contextlib.contextmanager
def _guided_relus(model: nn.Module) -> Iterator[int]:
    """Route every `nn.ReLU` module's output through :class:`_GuidedReLU`; yields how many."""
    handles = []

    def hook(_m: nn.Module, _inp: Any, out: torch.Tensor) -> torch.Tensor:
        # `out` is the ReLU's output (for an in-place ReLU, its input overwritten): its positive
        # entries are exactly where the ReLU passed gradients.
        return _GuidedReLU.apply(out)

    try:
        for m in model.modules():
            if isinstance(m, nn.ReLU):
                handles.append(m.register_forward_hook(hook))
        yield len(handles)
    finally:
        for h in handles:
            h.remove()


def guided_backprop(model: nn.Module, images: torch.Tensor, target: Target = None) -> torch.Tensor:
    """Guided backpropagation (Springenberg et al. 2015): `(N, C, H, W)`.

    The gradient of the target's logit with respect to the input, where every ``nn.ReLU`` module
    passes back only positive gradients through its open units. Equals Captum's ``GuidedBackprop``.
    """
    images = model_input(model, images)
    require_hooks(model, "guided backpropagation")
    with evaluating(model), _guided_relus(model):
        return _input_grad(model, images, target)


def _layer_cam(model: nn.Module, images: torch.Tensor, target: Target, layer: str) -> torch.Tensor:
    """Grad-CAM at the layer's resolution: `relu(sum_k mean_ij(dy/dA_k) * A_k)`, `(N, 1, h, w)`."""
    module = get_layer(model, layer)
    acts: list[torch.Tensor] = []

    def hook(_m: nn.Module, _inp: Any, out: Any) -> Any:
        t = out[0] if isinstance(out, tuple | list) else out
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ConvlensError(
                f"Grad-CAM needs a layer with (N, C, H, W) output; {layer!r} is not one"
            )
        acts.append(t)
        # Later in-place ops (VGG's ReLU(inplace=True)) then work on a copy, not on the activations.
        return (t.clone(), *out[1:]) if isinstance(out, tuple) else t.clone()

    x = images.detach().clone().requires_grad_(True)
    handle = module.register_forward_hook(hook)
    try:
        with torch.enable_grad():
            score, _ = _score(model, x, target)
            if not acts:
                raise ConvlensError(f"layer {layer!r} did not run in the forward pass")
            (grad,) = torch.autograd.grad(score, acts[-1])
    finally:
        handle.remove()
    a = acts[-1].detach()
    weights = grad.mean(dim=(2, 3), keepdim=True)  # (N, K, 1, 1): global-average-pooled gradients
    return F.relu((weights * a).sum(dim=1, keepdim=True))


def grad_cam(
    model: nn.Module,
    images: torch.Tensor,
    target: Target = None,
    layer: str | None = None,
    *,
    upsample: bool = True,
) -> torch.Tensor:
    """Grad-CAM (Selvaraju et al. 2017) of `layer` (default: the last conv layer).

    The layer's channels weighted by the spatial mean of the target's gradient, summed, ReLU'd,
    then bilinearly upsampled to the input size: `(N, H, W)` (or the layer's `(N, h, w)` with
    `upsample=False`). The default layer is :func:`convlens.models.default_layer` for the images'
    shape (LeNet-5's C5 is 1x1 and would give a constant map). Equals Captum's
    ``LayerGradCam(model, layer).attribute(x, target, relu_attributions=True)`` followed by
    ``LayerAttribution.interpolate(..., "bilinear")``.
    """
    images = model_input(model, images)
    require_hooks(model, "Grad-CAM")
    with evaluating(model):
        layer = layer or default_layer(model, _shape(images))
        cam = _layer_cam(model, images, target, layer)
    if upsample:
        cam = F.interpolate(cam, size=tuple(images.shape[2:]), mode="bilinear")
    return cam[:, 0]


def guided_grad_cam(
    model: nn.Module, images: torch.Tensor, target: Target = None, layer: str | None = None
) -> torch.Tensor:
    """Guided Grad-CAM: guided backprop times the Grad-CAM map (nearest-upsampled), `(N, C, H, W)`.

    Equals Captum's ``GuidedGradCam(model, layer).attribute(x, target)``.
    """
    images = model_input(model, images)
    require_hooks(model, "guided Grad-CAM")
    with evaluating(model):
        layer = layer or default_layer(model, _shape(images))
        cam = _layer_cam(model, images, target, layer)
        with _guided_relus(model):
            guided = _input_grad(model, images, target)
    return guided * F.interpolate(cam, size=tuple(images.shape[2:]), mode="nearest")


def _shape(images: torch.Tensor) -> tuple[int, int, int]:
    c, h, w = (int(v) for v in images.shape[1:])
    return c, h, w
