"""The small interface every inspection tool goes through, for our models and for any ``nn.Module``.

Our models subclass :class:`ConvNet` and answer timm's interface directly: ``forward_features(x)``
gives the penultimate feature vector ``(N, D)``, ``forward_head(f)`` the logits, ``get_classifier()``
the final layer, and ``forward(x) = forward_head(forward_features(x))``.

The functions below work on ANY module, so every tool works on torchvision and timm models too:

- :func:`conv_layers` — the ``nn.Conv2d`` layers by name, in registration order (which is forward
  order for our models and torchvision's).
- :func:`classifier` — the final layer: ``model.get_classifier()`` when the model has it (ours,
  timm), else the last ``nn.Linear`` (the last ``nn.Conv2d`` for SqueezeNet-like models).
- :func:`forward_features` — ours: ``model.forward_features``; timm: ``forward_head(...,
  pre_logits=True)``; any other module: the flattened INPUT of :func:`classifier`, recorded by a
  forward pre-hook, the forward being stopped there (later layers never run).
- :func:`default_layer` — the one default layer of every tool: the last convolution (outside
  auxiliary branches) whose output map is larger than 1x1.
- :func:`reset_classifier` — a fresh final layer with another number of classes (fine-tuning).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.models.hooks import (
    capture,
    evaluating,
    model_device,
    model_dtype,
    require_hooks,
    truncated_forward,
)


class ConvNet(nn.Module):
    """Base of our classifiers: ``forward(x) = forward_head(forward_features(x))``."""

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The penultimate feature vector, ``(N, C, H, W) -> (N, D)``."""
        raise NotImplementedError

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from the penultimate features, ``(N, D) -> (N, num_classes)``."""
        return self.get_classifier()(features)

    def get_classifier(self) -> nn.Module:
        """The final layer (an ``nn.Linear``)."""
        raise NotImplementedError

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer by a fresh one with `num_classes` outputs (fine-tuning)."""
        reset_classifier(self, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits, ``(N, C, H, W) -> (N, num_classes)``."""
        return self.forward_head(self.forward_features(x))


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """The 2-D convolutions of `model` by qualified name, in registration order.

    Registration order is forward order for sequential-style networks (ours, torchvision's); in
    branching blocks the branches come in the order they were defined.
    """
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def classifier(model: nn.Module) -> nn.Module:
    """The final layer of `model` (the one producing the logits).

    Uses ``model.get_classifier()`` when it exists (ours, timm); otherwise the last ``nn.Linear``
    registered (torchvision's ``fc``, ``classifier[6]``, ``heads.head``, ...), or the last
    ``nn.Conv2d`` when there is no linear layer (SqueezeNet).

    Raises:
        ConvlensError: the model has neither a linear nor a convolutional layer.
    """
    get = getattr(model, "get_classifier", None)
    if callable(get):
        layer = get()
        if isinstance(layer, nn.Module):
            return layer
    linear = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if linear:
        return linear[-1]
    convs = list(conv_layers(model).values())
    if convs:
        return convs[-1]
    require_hooks(model, "a method that reads the features before the classifier")
    raise ConvlensError(f"{type(model).__name__} has no linear or convolutional final layer")


def reset_classifier(model: nn.Module, num_classes: int) -> None:
    """Replace the final layer of any model (see :func:`classifier`) by a fresh one, in place.

    A linear layer keeps its input width; SqueezeNet's 1x1 classifier convolution keeps its input
    depth. Nothing happens when the layer already has `num_classes` outputs.

    Raises:
        ConvlensError: the final layer is neither linear nor convolutional.
    """
    final = classifier(model)
    name = next(n for n, m in model.named_modules() if m is final)
    new: nn.Module
    if isinstance(final, nn.Linear):
        if final.out_features == num_classes:
            return
        new = nn.Linear(final.in_features, num_classes, bias=final.bias is not None)
    elif isinstance(final, nn.Conv2d):
        if final.out_channels == num_classes:
            return
        new = nn.Conv2d(final.in_channels, num_classes, final.kernel_size)  # type: ignore[arg-type]
    else:
        raise ConvlensError(f"cannot resize the classifier of {type(model).__name__} ({name})")
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new.to(final.weight.device))


def forward_features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Penultimate features of `model` on `x`, ``(N, C, H, W) -> (N, D)`` (graph kept).

    Ours: ``model.forward_features(x)``. timm: ``model.forward_head(model.forward_features(x),
    pre_logits=True)``. Any other module: the input of :func:`classifier`, flattened to ``(N, D)``
    (for torchvision's ResNet this is the pooled 2048-vector, for VGG the 4096-vector after FC7),
    the forward stopped there (:func:`~convlens.models.hooks.truncated_forward`).
    Call under ``torch.inference_mode()`` when no gradient is needed.
    """
    if isinstance(model, ConvNet):
        return model.forward_features(x)
    head = getattr(model, "forward_head", None)
    feats = getattr(model, "forward_features", None)
    if callable(head) and callable(feats):  # timm's interface
        return head(feats(x), pre_logits=True).flatten(1)
    return truncated_forward(model, classifier(model), x, at="input").flatten(1)


def default_layer(model: nn.Module, input_shape: Sequence[int] | None = None) -> str:
    """The layer every tool looks at unless told otherwise: the last convolution with a map.

    The rule: the last ``nn.Conv2d`` (in forward order) outside auxiliary branches (names containing
    ``aux``) whose output for an `input_shape` image is larger than 1x1. A 1x1 map (LeNet-5's C5 on 28x28 digits) has no
    *where*: its Grad-CAM is constant, its top patches are whole images, its receptive field the
    whole input. So LeNet-5 gives C3 (``conv2``, 10x10), ResNet-20 ``layer3.2.conv2`` (8x8),
    torchvision's ResNet-18 ``layer4.1.conv2`` (7x7 at 224), VGG-16 ``features.28``, GoogLeNet
    ``inception5b.branch4.1.conv``. The CLI, the report and every method of
    :mod:`convlens.inspect` use this function for their default layer.

    Args:
        model: any module.
        input_shape: ``(C, H, W)`` of one input image. Without it the model is not run and the
            last such convolution is returned whatever its map size.

    Raises:
        ConvlensError: the model has no ``nn.Conv2d``.
    """
    names = [n for n in conv_layers(model) if "aux" not in n.lower()]
    if not names:
        # TorchScript hides its layers' types, and a named layer would not take hooks either
        require_hooks(model, "a method that looks inside a layer")
        raise ConvlensError(f"{type(model).__name__} has no Conv2d layer; pass a layer by name")
    if input_shape is None:
        return names[-1]
    probe = torch.zeros(
        1, *tuple(input_shape), device=model_device(model), dtype=model_dtype(model)
    )
    try:
        with evaluating(model), torch.no_grad(), capture(model, names) as acts:
            model(probe)
    except (RuntimeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ConvlensError(
            f"{type(model).__name__} cannot run on {tuple(input_shape)} images ({first})"
        ) from None
    # `acts` fills in the order the convolutions run: forward order, whatever the registration order
    spatial = [n for n, a in acts.items() if a.dim() == 4 and a.shape[2] * a.shape[3] > 1]
    return spatial[-1] if spatial else names[-1]
