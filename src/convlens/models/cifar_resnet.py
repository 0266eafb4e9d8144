"""The CIFAR-10 residual networks of He et al. 2016 (section 4.2) and their plain twins.

A 3x3 convolution with 16 filters, then three stages of n basic blocks (two 3x3 convolutions each)
with 16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps, global average pooling and a linear
layer: depth 6n + 2 (ResNet-20: n = 3, 269,722 parameters for 3 channels and 10 classes).

Shortcuts are the paper's option A: the identity, and where a stage halves the map and doubles the
depth, the input subsampled at stride 2 with the new channels filled by zeros (no parameters, so
``plainN`` and ``resnetN`` have exactly the same parameters). Option B (a 1x1 projection with batch
norm where shapes change) is available as ``shortcut="B"``. The plain networks are the same stacks
without any shortcut, the paper's evidence that depth alone makes optimisation harder.

Weights are initialised as in the paper (He et al. 2015): Kaiming normal for convolutions.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ConvlensError
from convlens.models.interface import ConvNet
from convlens.models.registry import register_model
from convlens.models.tables import CIFAR_RESNET_DEPTHS, CIFAR_RESNET_WIDTHS, PAPERS


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by `stride` and zero-pad the channels up to `out_channels`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]  # N x C x H/2 x W/2
        # Split the new channels evenly before and after the old ones (as the reference code does).
        before = self.extra // 2
        return F.pad(x, (0, 0, 0, 0, before, self.extra - before))  # N x 2C x H/2 x W/2


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm; ``relu(F(x) + shortcut(x))``, or ``relu(F(x))`` if plain."""

    def __init__(
        self, in_channels: int, out_channels: int, stride: int, *, shortcut: str | None
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module | None
        if shortcut is None:  # plain network: no shortcut at all
            self.shortcut = None
        elif stride == 1 and in_channels == out_channels:
            self.shortcut = nn.Identity()
        elif shortcut == "A":
            self.shortcut = PadShortcut(in_channels, out_channels, stride)
        else:  # option B: projection
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.shortcut is not None:
            out = out + self.shortcut(x)
        return self.relu(out)


class CifarResNet(ConvNet):
    """ResNet (or plain network) of depth 6n + 2 for 32x32 images."""

    def __init__(
        self,
        depth: int,
        *,
        num_classes: int = 10,
        in_channels: int = 3,
        shortcut: str | None = "A",
    ) -> None:
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ConvlensError(f"CIFAR ResNet depth must be 6n + 2, not {depth}")
        n = (depth - 2) // 6
        w1, w2, w3 = CIFAR_RESNET_WIDTHS
        self.conv1 = nn.Conv2d(in_channels, w1, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w1)
        self.relu = nn.ReLU()
        self.layer1 = self._make_stage(w1, w1, n, 1, shortcut)  # N x 16 x 32 x 32
        self.layer2 = self._make_stage(w1, w2, n, 2, shortcut)  # N x 32 x 16 x 16
        self.layer3 = self._make_stage(w2, w3, n, 2, shortcut)  # N x 64 x 8 x 8
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(w3, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _make_stage(
        in_channels: int, out_channels: int, blocks: int, stride: int, shortcut: str | None
    ) -> nn.Sequential:
        layers = [BasicBlock(in_channels, out_channels, stride, shortcut=shortcut)]
        layers += [
            BasicBlock(out_channels, out_channels, 1, shortcut=shortcut) for _ in range(blocks - 1)
        ]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, 32, 32) -> (N, 64)``, the globally pooled last stage."""
        x = self.relu(self.bn1(self.conv1(x)))  # N x 16 x 32 x 32
        x = self.layer3(self.layer2(self.layer1(x)))  # N x 64 x 8 x 8
        return torch.flatten(self.avgpool(x), 1)  # N x 64

    def get_classifier(self) -> nn.Module:
        """The final linear layer, ``fc``."""
        return self.fc


_RESNET = PAPERS["resnet"]


def _builder(depth: int, plain: bool) -> Callable[..., CifarResNet]:
    def build(*, num_classes: int = 10, in_channels: int = 3, shortcut: str = "A") -> CifarResNet:
        if shortcut not in ("A", "B"):
            raise ConvlensError(
                f"shortcut must be 'A' (zero padding) or 'B' (projection), not {shortcut!r}"
            )
        return CifarResNet(
            depth,
            num_classes=num_classes,
            in_channels=in_channels,
            shortcut=None if plain else shortcut,
        )

    kind = "plain" if plain else "resnet"
    build.__name__ = f"{kind}{depth}"
    build.__doc__ = (
        f"{'Plain network' if plain else 'ResNet'}-{depth} for CIFAR-10 ({(depth - 2) // 6} blocks "
        "per stage).\n\nArgs:\n    num_classes: outputs.\n    in_channels: image channels.\n"
        "    shortcut: 'A' zero-padding identity (paper), 'B' 1x1 projection"
        + (" (ignored: plain networks have none)." if plain else ".")
    )
    return build


for _depth in CIFAR_RESNET_DEPTHS:
    for _plain in (False, True):
        _name = f"{'plain' if _plain else 'resnet'}{_depth}"
        register_model(
            _name,
            family="resnet-cifar" if not _plain else "plain-cifar",
            paper=_RESNET.authors,
            title=_RESNET.title,
            input_size=(3, 32, 32),
            num_classes=10,
            description=(
                f"{_depth} layers, 3 stages of {(_depth - 2) // 6} basic blocks (16/32/64 filters), "
                + ("no shortcuts" if _plain else "option-A identity shortcuts")
            ),
        )(_builder(_depth, _plain))
