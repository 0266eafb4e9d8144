"""ResNet on ImageNet (He et al. 2016): ResNet-18/34 (basic blocks) and -50/101/152 (bottlenecks).

A 7x7/2 convolution with 64 filters and a 3x3/2 max pooling, then four stages of blocks with
64/128/256/512 base filters, the first block of stages 2-4 at stride 2, global average pooling and
a linear layer. A basic block is two 3x3 convolutions; a bottleneck is a 1x1 convolution that
projects the depth down (to the base width), a 3x3 convolution at that depth, and a 1x1 that
projects it back up 4 times wider, which keeps deep networks cheap. Where a block changes the
shape, the shortcut is a 1x1 projection with batch norm (option B); elsewhere it is the identity.

Parameter names are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``,
``fc``), so its state dicts load strictly; the stride-2 convolution of a bottleneck is the 3x3 one
(torchvision's "ResNet v1.5"). ResNet-50 has 25,557,032 parameters.

``small_input=True`` replaces the stem by a 3x3 convolution at stride 1 and drops the max pooling,
the usual reading for 32x32 images (layer4 then works on 4x4 maps instead of 1x1).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, TypeVar

import torch
from torch import nn

from convlens.models.interface import ConvNet
from convlens.models.registry import register_model
from convlens.models.tables import PAPERS, RESNET_IMAGENET


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """3x3 convolution with padding 1, no bias (batch norm follows)."""
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> nn.Conv2d:
    """1x1 convolution, no bias: mixes channels, projects the depth down or up."""
    return nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``."""

    expansion = 1

    def __init__(
        self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU()  # after the addition: the block's output
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        # The shortcut runs last, as it is registered last: conv_layers() lists forward order.
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 down, 3x3, 1x1 up (x4): ``relu(bn3(conv3(...)) + shortcut(x))``."""

    expansion = 4

    def __init__(
        self, in_channels: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = conv1x1(in_channels, planes)  # project the depth down
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = conv3x3(planes, planes, stride)  # the spatial work, on the thin tensor
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu2 = nn.ReLU()
        self.conv3 = conv1x1(planes, planes * self.expansion)  # project back up
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU()
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]
B = TypeVar("B", bound=Callable[..., nn.Module])


class ResNet(ConvNet):
    """ResNet for ImageNet-sized images, with torchvision's parameter names."""

    def __init__(
        self,
        block: Block,
        layers: tuple[int, int, int, int],
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        self.in_planes = 64
        if small_input:  # 32x32 stays 32x32 into layer1
            self.conv1 = conv3x3(in_channels, 64)
        else:  # 224x224 -> 112x112
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU()
        # 112x112 -> 56x56; nothing for small inputs
        self.maxpool = nn.Identity() if small_input else nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)
        # Initialisation as torchvision (He et al. 2015 for convolutions).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, block: Block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.in_planes, planes * block.expansion, stride),
                nn.BatchNorm2d(planes * block.expansion),
            )
        layers: list[nn.Module] = [block(self.in_planes, planes, stride, downsample)]
        self.in_planes = planes * block.expansion
        layers += [block(self.in_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 224, 224) -> (N, 512 * expansion)``, the globally pooled last stage."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # N x 64 x 56 x 56
        x = self.layer1(x)  # N x 64e x 56 x 56  (e = block.expansion)
        x = self.layer2(x)  # N x 128e x 28 x 28
        x = self.layer3(x)  # N x 256e x 14 x 14
        x = self.layer4(x)  # N x 512e x 7 x 7
        return torch.flatten(self.avgpool(x), 1)  # N x 512e

    def get_classifier(self) -> nn.Module:
        """The final linear layer, ``fc``."""
        return self.fc


_BLOCKS: dict[Literal["basic", "bottleneck"], Block] = {
    "basic": BasicBlock,
    "bottleneck": Bottleneck,
}


def _resnet(arch: str, *, num_classes: int, in_channels: int, small_input: bool) -> ResNet:
    kind, layers = RESNET_IMAGENET[arch]
    return ResNet(
        _BLOCKS[kind],
        layers,
        num_classes=num_classes,
        in_channels=in_channels,
        small_input=small_input,
    )


def _register(arch: str) -> Callable[[B], B]:
    kind, layers = RESNET_IMAGENET[arch]
    return register_model(
        arch,
        family="resnet",
        paper=PAPERS["resnet"].authors,
        title=PAPERS["resnet"].title,
        input_size=(3, 224, 224),
        num_classes=1000,
        description=f"{kind} blocks {'/'.join(map(str, layers))} in 4 stages (64-512 filters), "
        "7x7/2 stem + max pool",
    )


@_register("resnet18")
def resnet18(*, num_classes: int = 1000, in_channels: int = 3, small_input: bool = False) -> ResNet:
    """ResNet-18 (basic blocks 2/2/2/2). `small_input`: 3x3/1 stem, no max pool (32x32 images)."""
    return _resnet(
        "resnet18", num_classes=num_classes, in_channels=in_channels, small_input=small_input
    )


@_register("resnet34")
def resnet34(*, num_classes: int = 1000, in_channels: int = 3, small_input: bool = False) -> ResNet:
    """ResNet-34 (basic blocks 3/4/6/3). `small_input`: 3x3/1 stem, no max pool (32x32 images)."""
    return _resnet(
        "resnet34", num_classes=num_classes, in_channels=in_channels, small_input=small_input
    )


@_register("resnet50")
def resnet50(*, num_classes: int = 1000, in_channels: int = 3, small_input: bool = False) -> ResNet:
    """ResNet-50 (bottlenecks 3/4/6/3). `small_input`: 3x3/1 stem, no max pool (32x32 images)."""
    return _resnet(
        "resnet50", num_classes=num_classes, in_channels=in_channels, small_input=small_input
    )


@_register("resnet101")
def resnet101(
    *, num_classes: int = 1000, in_channels: int = 3, small_input: bool = False
) -> ResNet:
    """ResNet-101 (bottlenecks 3/4/23/3). `small_input`: 3x3/1 stem, no max pool (32x32 images)."""
    return _resnet(
        "resnet101", num_classes=num_classes, in_channels=in_channels, small_input=small_input
    )


@_register("resnet152")
def resnet152(
    *, num_classes: int = 1000, in_channels: int = 3, small_input: bool = False
) -> ResNet:
    """ResNet-152 (bottlenecks 3/8/36/3). `small_input`: 3x3/1 stem, no max pool (32x32 images)."""
    return _resnet(
        "resnet152", num_classes=num_classes, in_channels=in_channels, small_input=small_input
    )
