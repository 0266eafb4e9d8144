"""What the registry knows of one architecture: :class:`ModelInfo`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn


@dataclass(frozen=True)
class ModelInfo:
    """What the registry knows of one architecture.

    Attributes:
        name: the registry name (``resnet20``).
        family: the family it belongs to (``resnet-cifar``), one module per family.
        paper: authors and year (``He et al. 2016``).
        title: the paper's title.
        input_size: the paper's input, ``(C, H, W)``.
        num_classes: the paper's number of classes (the parameter counts of the papers use it).
        description: one sentence on what the network is.
        options: the builder's options and their defaults (``num_classes``/``in_channels`` excluded).
    """

    name: str
    family: str
    paper: str
    title: str
    input_size: tuple[int, int, int]
    num_classes: int
    description: str
    options: dict[str, Any] = field(default_factory=dict)
    builder: Callable[..., nn.Module] | None = field(default=None, repr=False, compare=False)
