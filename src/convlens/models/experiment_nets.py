"""The small networks of ``convlens experiment``: twins that differ only in the point at issue.

- ``stacknet`` (kernel 3 or 7): a stem, then either three 3x3 convolutions with a ReLU after each
  or one 7x7 convolution and one ReLU, with the same C channels in and out (VGG's argument:
  27C^2 against 49C^2 weights, the same 7x7 receptive field, three non-linearities against one).
- ``sharingnet`` (shared true or false): the first layer a 5x5 convolution, or a
  :class:`~convlens.models.locally_connected.LocallyConnected2d` of the same geometry.
- ``lenet5_strided``: LeNet-5 with its two subsamplings replaced by 2x2 convolutions of stride 2
  (LeNet-5 itself takes ``pool="max"`` or ``pool="avg"``).
- ``stemnet`` (kernel, stride, width): a first layer with large filters, then a small BN body;
  with LeNet-5 the networks whose first-layer filters the first-filters experiment compares.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.models.interface import ConvNet
from convlens.models.lenet import LeNet5
from convlens.models.locally_connected import LocallyConnected2d
from convlens.models.registry import register_model
from convlens.models.tables import PAPERS

_VGG, _LENET = PAPERS["vgg"], PAPERS["lenet"]


class StackNet(ConvNet):
    """Stem 3x3 (C) -> 2x2 max pool -> the block -> 2x2 max pool -> 4x4 average pool -> linear.

    The block is ``kernel=3``: three 3x3 convolutions C -> C, each followed by a ReLU (with
    ``linear=True`` only the last one is: the stack is then one linear map of a 7x7 field), or
    ``kernel=7``: one 7x7 convolution C -> C' and one ReLU, C' = `block_width` (default C; 18 for
    C = 32 gives 49 * 32 * 18 = 28,224 weights, the stack's 27,648 within 2 %). Its convolutions
    have no bias, so their parameters are exactly 27 C^2 and 49 C C'.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        kernel: int = 3,
        width: int = 32,
        linear: bool = False,
        block_width: int | None = None,
    ) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU())
        self.pool1 = nn.MaxPool2d(2)
        layers: list[nn.Module] = []
        out = width
        if kernel == 3:
            if block_width not in (None, width):
                raise ConvlensError("stacknet: block_width applies to kernel=7 only")
            for i in range(3):
                layers.append(nn.Conv2d(width, width, 3, padding=1, bias=False))
                if not linear or i == 2:
                    layers.append(nn.ReLU())
        elif kernel == 7:
            if linear:
                raise ConvlensError("stacknet: linear applies to kernel=3 only")
            out = width if block_width is None else int(block_width)
            if out < 1:
                raise ConvlensError(f"stacknet: block_width must be positive, not {out}")
            layers += [nn.Conv2d(width, out, 7, padding=3, bias=False), nn.ReLU()]
        else:
            raise ConvlensError(
                f"stacknet: kernel must be 3 (three 3x3) or 7 (one 7x7), not {kernel}"
            )
        self.block = nn.Sequential(*layers)
        self.pool2 = nn.MaxPool2d(2)
        self.head_pool = nn.AdaptiveAvgPool2d(4)
        self.fc = nn.Linear(out * 16, num_classes)
        # He init where a ReLU follows; variance-preserving (gain 1) where none does (the linear
        # stack), or three linear layers at gain sqrt(2) would blow the activations up 2.8x
        modules = list(self.modules())
        for i, m in enumerate(modules):
            if isinstance(m, nn.Conv2d):
                followed = i + 1 < len(modules) and isinstance(modules[i + 1], nn.ReLU)
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu" if followed else "linear")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C_in, 32, 32) -> (N, 16 C)``."""
        x = self.pool1(self.stem(x))  # N x C x 16 x 16
        x = self.pool2(self.block(x))  # N x C x 8 x 8
        return self.head_pool(x).flatten(1)  # N x 16C

    def get_classifier(self) -> nn.Module:
        """The linear layer ``fc``."""
        return self.fc


class SharingNet(ConvNet):
    """Layer 1 (5x5, `width` filters, shared or not) -> ReLU -> pool -> conv 3x3 -> ReLU -> pool -> linear.

    ``layer1_lr`` (m) is layer 1's learning-rate multiplier, by reparametrisation: the layer holds
    ``v = w / sqrt(m)`` and is fed ``sqrt(m) x``, so it computes the same function from the same
    initial ``w``, while an SGD step moves ``w`` by m times as much (weight decay stays relative).
    :meth:`layer1_weight` gives ``w``.
    """

    def __init__(
        self,
        *,
        num_classes: int,
        in_channels: int,
        shared: bool = True,
        width: int = 16,
        image_size: int = 28,
        layer1_lr: float = 1.0,
    ) -> None:
        super().__init__()
        self.layer1: nn.Module
        if shared:
            self.layer1 = nn.Conv2d(in_channels, width, 5)
        else:
            self.layer1 = LocallyConnected2d(in_channels, width, 5, (image_size, image_size))
        if not layer1_lr > 0:
            raise ConvlensError(f"sharingnet: layer1_lr must be positive, not {layer1_lr}")
        self.layer1_scale = math.sqrt(float(layer1_lr))
        if self.layer1_scale != 1.0:
            with torch.no_grad():
                self.layer1.weight.div_(self.layer1_scale)  # v = w / sqrt(m)
        self.act1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(width, 2 * width, 3)
        self.act2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        side = ((image_size - 4) // 2 - 2) // 2
        self.fc = nn.Linear(2 * width * side * side, num_classes)

    def layer1_weight(self) -> torch.Tensor:
        """Layer 1's effective weights ``w = sqrt(m) v`` (the conv's or the LC layer's own shape)."""
        weight = self.layer1.weight
        assert isinstance(weight, torch.Tensor)
        return weight * self.layer1_scale

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, 28, 28) -> (N, 2 width * 5 * 5)``."""
        if self.layer1_scale != 1.0:
            x = x * self.layer1_scale  # (s x) . v = x . w: the reparametrisation
        x = self.pool1(self.act1(self.layer1(x)))  # N x w x 12 x 12
        x = self.pool2(self.act2(self.conv2(x)))  # N x 2w x 5 x 5
        return x.flatten(1)

    def get_classifier(self) -> nn.Module:
        """The linear layer ``fc``."""
        return self.fc


class StridedLeNet5(LeNet5):
    """LeNet-5 whose S2 and S4 are 2x2 convolutions of stride 2 (learned subsampling, 6 and 16 maps)."""

    def __init__(self, *, num_classes: int, in_channels: int, padding: int = 2) -> None:
        super().__init__(num_classes=num_classes, in_channels=in_channels, padding=padding)
        self.pool1 = nn.Conv2d(6, 6, 2, stride=2)  # S2
        self.pool2 = nn.Conv2d(16, 16, 2, stride=2)  # S4


class StemNet(ConvNet):
    """First layer k x k (stride s, `width` filters) -> BN -> ReLU -> two 3x3 stages -> linear."""

    def __init__(
        self, *, num_classes: int, in_channels: int, kernel: int, stride: int, width: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, width, kernel, stride=stride, padding=kernel // 2)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.body = nn.Sequential(
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * width),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * width, 4 * width, 3, padding=1, bias=False),
            nn.BatchNorm2d(4 * width),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.fc = nn.Linear(4 * width, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W) -> (N, 4 width)``."""
        x = self.relu(self.bn1(self.conv1(x)))  # N x w x H/s x W/s
        return self.body(x).flatten(1)  # N x 4w

    def get_classifier(self) -> nn.Module:
        """The linear layer ``fc``."""
        return self.fc


@register_model(
    "stacknet",
    family="experiment",
    paper=_VGG.authors,
    title=_VGG.title,
    input_size=(3, 32, 32),
    num_classes=10,
    description="stem, then three 3x3 convolutions (kernel=3) or one 7x7 (kernel=7), C channels",
)
def stacknet(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    kernel: int = 3,
    width: int = 32,
    linear: bool = False,
    block_width: int | None = None,
) -> StackNet:
    """The stack experiment's network.

    Args:
        num_classes: outputs.
        in_channels: image channels.
        kernel: 3 for three stacked 3x3 convolutions, 7 for one 7x7.
        width: C, the channels in and out of the block.
        linear: kernel 3 only: no ReLU between the three convolutions (one after the last).
        block_width: kernel 7 only: the 7x7's output channels (default C).
    """
    return StackNet(
        num_classes=num_classes,
        in_channels=in_channels,
        kernel=kernel,
        width=width,
        linear=linear,
        block_width=block_width,
    )


@register_model(
    "sharingnet",
    family="experiment",
    paper=_LENET.authors,
    title=_LENET.title,
    input_size=(1, 28, 28),
    num_classes=10,
    description="first layer a 5x5 convolution (shared=true) or a locally-connected layer (false)",
)
def sharingnet(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    shared: bool = True,
    width: int = 16,
    image_size: int = 28,
    layer1_lr: float = 1.0,
) -> SharingNet:
    """The sharing experiment's network.

    Args:
        num_classes: outputs.
        in_channels: image channels.
        shared: True for a convolution, False for a locally-connected first layer.
        width: filters of the first layer (the second has twice as many).
        image_size: side of the square input (the locally-connected layer owns weights per position).
        layer1_lr: learning-rate multiplier of layer 1 (by reparametrisation; see SharingNet).
    """
    if image_size < 14:
        raise ConvlensError(f"sharingnet: image_size must be at least 14, not {image_size}")
    return SharingNet(
        num_classes=num_classes,
        in_channels=in_channels,
        shared=shared,
        width=width,
        image_size=image_size,
        layer1_lr=layer1_lr,
    )


@register_model(
    "lenet5_strided",
    family="experiment",
    paper=_LENET.authors,
    title=_LENET.title,
    input_size=(1, 28, 28),
    num_classes=10,
    description="LeNet-5 with S2 and S4 as 2x2 convolutions of stride 2 instead of pooling",
)
def lenet5_strided(*, num_classes: int = 10, in_channels: int = 1, padding: int = 2) -> LeNet5:
    """LeNet-5 (ReLU) with learned, strided subsampling.

    Args:
        num_classes: outputs.
        in_channels: image channels.
        padding: of C1; 2 for 28x28 inputs, 0 for 32x32.
    """
    if padding not in (0, 2):
        raise ConvlensError(
            f"lenet5_strided: padding must be 2 (28x28 inputs) or 0 (32x32), not {padding}"
        )
    return StridedLeNet5(num_classes=num_classes, in_channels=in_channels, padding=padding)


@register_model(
    "stemnet",
    family="experiment",
    paper=PAPERS["resnet"].authors,
    title=PAPERS["resnet"].title,
    input_size=(3, 32, 32),
    num_classes=10,
    description="a k x k first layer (default 7x7, stride 2), then two 3x3 BN stages",
)
def stemnet(
    *,
    num_classes: int = 10,
    in_channels: int = 3,
    kernel: int = 7,
    stride: int = 2,
    width: int = 32,
) -> StemNet:
    """A network with large first-layer filters (for the first-filters experiment).

    Args:
        num_classes: outputs.
        in_channels: image channels.
        kernel: side of the first-layer filters (odd, at least 3).
        stride: of the first layer.
        width: first-layer filters.
    """
    if kernel < 3 or kernel % 2 == 0:
        raise ConvlensError(f"stemnet: kernel must be odd and at least 3, not {kernel}")
    return StemNet(
        num_classes=num_classes, in_channels=in_channels, kernel=kernel, stride=stride, width=width
    )
