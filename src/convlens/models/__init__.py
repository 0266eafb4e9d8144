"""The model zoo: a registry of classic CNNs and one small interface that works on any model.

Build by name with :func:`create`; list with :func:`names`; describe with :func:`info`. The
inspection tools reach inside any ``nn.Module`` through :func:`conv_layers`,
:func:`forward_features`, :func:`classifier` and :func:`default_layer`.

One module per family, each read top to bottom: ``lenet``, ``alexnet``, ``vgg``, ``googlenet``,
``resnet`` (ImageNet), ``cifar_resnet`` (He et al. section 4.2); ``external`` wraps torchvision and
timm; ``tables`` holds the architectures' numbers.
"""

from __future__ import annotations

# Importing the family modules registers their builders, in this order (the listing order).
# isort: off
from convlens.models import lenet, alexnet, vgg, googlenet, resnet, cifar_resnet  # noqa: F401
from convlens.models import experiment_nets  # noqa: F401

# isort: on
from convlens.models.info import ModelInfo
from convlens.models.interface import (
    ConvNet,
    classifier,
    conv_layers,
    default_layer,
    forward_features,
    reset_classifier,
)
from convlens.models.registry import (
    check_options,
    create,
    families,
    info,
    names,
    num_parameters,
    register_model,
    torchvision_names,
)
from convlens.models.weights import load_weights, read_state_dict

__all__ = [
    "ConvNet",
    "ModelInfo",
    "check_options",
    "classifier",
    "conv_layers",
    "create",
    "default_layer",
    "families",
    "forward_features",
    "info",
    "load_weights",
    "names",
    "num_parameters",
    "read_state_dict",
    "register_model",
    "reset_classifier",
    "torchvision_names",
]
