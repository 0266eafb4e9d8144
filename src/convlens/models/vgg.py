"""VGG (Simonyan & Zisserman 2015): stacks of 3x3 convolutions, described as data.

Each network is a row of :data:`~convlens.models.tables.VGG_CONFIGS` (the paper's table 1: widths of
3x3 convolutions with padding 1, ``"M"`` for 2x2 max pooling) fed to one :func:`make_layers`. Then
torchvision's adaptive 7x7 average pooling and three fully connected layers 4096/4096/N with ReLU
and dropout 0.5. ``_bn`` variants put batch norm after every convolution. Parameter names are
torchvision's, so its state dicts load strictly; VGG-16 has 138,357,544 parameters.

At 32x32 the five poolings leave a 1x1 map, which the adaptive pooling repeats to 7x7, so the
networks work as they are (28x28 does not: the fifth pooling gets a 1x1 map). ``small_input=True``
is the common CIFAR reading instead: 1x1 pooling and a 512/512/N classifier (about 15M parameters
for VGG-16 instead of 138M), and poolings that round up, so 28x28 inputs work too.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from convlens.models.interface import ConvNet
from convlens.models.registry import register_model
from convlens.models.tables import PAPERS, VGG_CONFIGS, VGGRow


def make_layers(
    config: Sequence[VGGRow], in_channels: int, *, batch_norm: bool, ceil_mode: bool = False
) -> nn.Sequential:
    """The convolutional part from a table row: ``[64, "M", 128, ...]``.

    `ceil_mode` rounds odd map sizes up at each pooling (28 -> 14 -> 7 -> 4 -> 2 -> 1), so that
    28x28 inputs do not vanish at the fifth pooling.
    """
    layers: list[nn.Module] = []
    for v in config:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=ceil_mode))  # halves
            continue
        conv = nn.Conv2d(in_channels, v, kernel_size=3, padding=1)  # keeps the map size
        layers += [conv, nn.BatchNorm2d(v), nn.ReLU()] if batch_norm else [conv, nn.ReLU()]
        in_channels = v
    return nn.Sequential(*layers)


class VGG(ConvNet):
    """VGG with torchvision's parameter names (``features.*``, ``classifier.{0,3,6}``)."""

    def __init__(
        self,
        features: nn.Sequential,
        *,
        num_classes: int = 1000,
        dropout: float = 0.5,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        self.features = features
        pooled, hidden = (1, 512) if small_input else (7, 4096)
        self.avgpool = nn.AdaptiveAvgPool2d((pooled, pooled))
        self.classifier = nn.Sequential(
            nn.Linear(512 * pooled * pooled, hidden),  # FC-4096
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden),  # FC-4096
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes),  # FC-N
        )
        # torchvision's initialisation (the paper's was staged training of shallower nets).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 224, 224) -> (N, 4096)``, the second FC layer's activations."""
        x = self.features(x)  # N x 512 x 7 x 7
        x = torch.flatten(self.avgpool(x), 1)  # N x 25088
        return self.classifier[:-1](x)  # N x 4096

    def get_classifier(self) -> nn.Module:
        """The last linear layer, ``classifier[6]``."""
        return self.classifier[-1]


def _builder(arch: str, batch_norm: bool) -> Callable[..., VGG]:
    def build(
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        small_input: bool = False,
        dropout: float = 0.5,
    ) -> VGG:
        features = make_layers(
            VGG_CONFIGS[arch], in_channels, batch_norm=batch_norm, ceil_mode=small_input
        )
        return VGG(features, num_classes=num_classes, dropout=dropout, small_input=small_input)

    build.__name__ = arch + ("_bn" if batch_norm else "")
    build.__doc__ = (
        f"{arch.upper()}{' with batch norm' if batch_norm else ''}.\n\nArgs:\n"
        "    num_classes: outputs.\n    in_channels: image channels.\n"
        "    small_input: 1x1 pooling, a 512/512/N classifier, rounding-up poolings (28x28/32x32).\n"
        "    dropout: before the second and third FC layers."
    )
    return build


for _arch, _config in VGG_CONFIGS.items():
    _convs = sum(1 for v in _config if v != "M")
    for _bn in (False, True):
        register_model(
            _arch + ("_bn" if _bn else ""),
            family="vgg",
            paper=PAPERS["vgg"].authors,
            title=PAPERS["vgg"].title,
            input_size=(3, 224, 224),
            num_classes=1000,
            description=f"{_convs} 3x3 conv layers"
            + (" with batch norm (Ioffe & Szegedy 2015)" if _bn else "")
            + ", 5 max pools, FC 4096/4096/N",
        )(_builder(_arch, _bn))
