"""Models from outside the registry: ``torchvision:<name>`` and ``timm:<name>``.

The models come back exactly as their library builds them (same class, same parameter names), so
their state dicts stay interchangeable; the inspection tools reach them through the functions of
:mod:`convlens.models.interface`, which work on any module.

- Weights are never downloaded: ``weights=None`` always, and ``weights_path=`` loads a local state
  dict file (safetensors or ``torch.load(weights_only=True)``).
- ``num_classes`` and ``in_channels`` are honoured. Without weights the library builds the right
  classifier itself; the first convolution is replaced when ``in_channels`` is not 3. With
  ``weights_path``, the file is loaded into the library's default model (3 channels, its default
  classes; failing that, into the model as asked), then a classifier of another size is replaced
  by a fresh one (the fine-tuning set-up), and a first convolution of another depth is replaced by
  one initialised from the mean of the loaded filters over their input channels, times 3 / C
  (timm's ``adapt_input_conv``), so a grey image sees the same response as the grey RGB image.
- torchvision's ``googlenet`` and ``inception_v3`` are built with ``aux_logits=False`` unless asked,
  so that training mode returns logits like every other classifier.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convlens.errors import ConvlensError, did_you_mean
from convlens.models.info import ModelInfo
from convlens.models.interface import reset_classifier
from convlens.models.weights import read_state_dict

_AUX_BY_DEFAULT = ("googlenet", "inception_v3")


def _torchvision_list() -> list[str]:
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def _check_torchvision(arch: str) -> None:
    available = _torchvision_list()
    if arch not in available:
        raise ConvlensError(
            f"torchvision has no classification model {arch!r}.{did_you_mean(arch, available)} "
            "List them with `convlens models --torchvision`."
        )


def torchvision_info(arch: str) -> ModelInfo:
    """A :class:`ModelInfo` for ``torchvision:<arch>``."""
    _check_torchvision(arch)
    size = 299 if arch == "inception_v3" else 224
    return ModelInfo(
        name=f"torchvision:{arch}",
        family="torchvision",
        paper="torchvision",
        title=f"torchvision.models.{arch}",
        input_size=(3, size, size),
        num_classes=1000,
        description=f"torchvision's {arch}, built with weights=None",
        options={"weights_path": None},
    )


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def _first_conv(model: nn.Module) -> tuple[str, nn.Conv2d]:
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            return name, m
    raise ConvlensError(f"{type(model).__name__} has no Conv2d layer to take {3}-channel input")


def adapt_input_channels(model: nn.Module, in_channels: int) -> None:
    """Replace the first convolution of `model` by one taking `in_channels` channels.

    The new filters are the mean of the old ones over their input channels, times
    ``old_in / in_channels``: the response to a constant-across-channels image is unchanged.
    """
    name, conv = _first_conv(model)
    if conv.in_channels == in_channels:
        return
    if conv.groups != 1:
        raise ConvlensError(
            f"cannot change the input channels of a grouped first convolution ({name})"
        )
    new = nn.Conv2d(
        in_channels,
        conv.out_channels,
        conv.kernel_size,  # type: ignore[arg-type]
        stride=conv.stride,  # type: ignore[arg-type]
        padding=conv.padding,  # type: ignore[arg-type]
        dilation=conv.dilation,  # type: ignore[arg-type]
        bias=conv.bias is not None,
        padding_mode=conv.padding_mode,
        device=conv.weight.device,
        dtype=conv.weight.dtype,
    )
    with torch.no_grad():
        w = conv.weight.mean(dim=1, keepdim=True) * (conv.in_channels / in_channels)
        new.weight.copy_(w.expand_as(new.weight))  # (out, in_channels, kH, kW)
        if conv.bias is not None and new.bias is not None:
            new.bias.copy_(conv.bias)
    parent, child = _parent(model, name)
    setattr(parent, child, new)


def _load_into(model: nn.Module, state: dict[str, torch.Tensor]) -> str | None:
    """Load strictly; return the error message instead of raising."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        return str(e)
    return None


def torchvision_model(
    arch: str,
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    weights_path: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build torchvision's classifier `arch` (never downloading weights).

    Args:
        arch: a name from ``torchvision.models.list_models(module=torchvision.models)``.
        num_classes: outputs.
        in_channels: image channels.
        weights_path: a local state dict file to load (see the module docstring).
        **kwargs: passed to torchvision's builder (e.g. ``dropout=0.2``).

    Raises:
        ConvlensError: unknown architecture, an option torchvision refuses, unloadable weights.
    """
    import torchvision

    _check_torchvision(arch)
    if arch in _AUX_BY_DEFAULT:
        kwargs.setdefault("aux_logits", False)
        if arch == "googlenet":
            kwargs.setdefault("init_weights", True)  # silences torchvision's warning, same init

    def build(**extra: Any) -> nn.Module:
        try:
            return torchvision.models.get_model(arch, weights=None, **kwargs, **extra)
        except TypeError as e:
            raise ConvlensError(f"torchvision's {arch} refused the options {kwargs}: {e}") from None

    if weights_path is None:
        model = build(num_classes=num_classes)
        adapt_input_channels(model, in_channels)
        return model
    state = read_state_dict(weights_path)
    model = build()
    error = _load_into(model, state)
    if error is not None:  # maybe a file saved from a model built as asked
        model = build(num_classes=num_classes)
        adapt_input_channels(model, in_channels)
        if _load_into(model, state) is None:
            return model
        raise ConvlensError(
            f"{weights_path} does not hold weights of torchvision's {arch}:\n{error}"
        )
    adapt_input_channels(model, in_channels)
    reset_classifier(model, num_classes)
    return model


def _timm() -> Any:
    try:
        return importlib.import_module("timm")
    except ImportError:
        raise ConvlensError(
            "timm is not installed; `pip install timm` to use timm:<name> models "
            "(torchvision:<name> works without it)"
        ) from None


def timm_info(arch: str) -> ModelInfo:
    """A :class:`ModelInfo` for ``timm:<arch>``."""
    timm = _timm()
    if not timm.is_model(arch):
        raise ConvlensError(f"timm has no model {arch!r}.{did_you_mean(arch, timm.list_models())}")
    return ModelInfo(
        name=f"timm:{arch}",
        family="timm",
        paper="timm",
        title=f"timm.create_model({arch!r})",
        input_size=(3, 224, 224),
        num_classes=1000,
        description=f"timm's {arch}, built with pretrained=False",
        options={"weights_path": None},
    )


def timm_model(
    arch: str,
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    weights_path: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build timm's `arch` with ``pretrained=False`` (timm adapts classes and channels itself).

    With `weights_path`, the file is loaded strictly into the model as built.

    Raises:
        ConvlensError: timm missing, unknown architecture, refused options, unloadable weights.
    """
    timm = _timm()
    timm_info(arch)
    try:
        model: nn.Module = timm.create_model(
            arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **kwargs
        )
    except TypeError as e:
        raise ConvlensError(f"timm's {arch} refused the options {kwargs}: {e}") from None
    if weights_path is not None:
        error = _load_into(model, read_state_dict(weights_path))
        if error is not None:
            raise ConvlensError(f"{weights_path} does not hold weights of timm's {arch}:\n{error}")
    return model
