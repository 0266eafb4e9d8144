"""LeNet-5 (LeCun et al. 1998), in its modern reading.

CONV-POOL-CONV-POOL-FC-FC: C1 6 maps 5x5, S2 2x2/2, C3 16 maps 5x5, S4 2x2/2, C5 120 maps 5x5
(a convolution that sees the whole 5x5 map, so a 1x1 output), F6 84 units, output. The paper's
input is 32x32 (the 28x28 MNIST digits padded); here C1 pads by 2 so a 28x28 image reaches C1 as a
32x32 one, and ``padding=0`` takes a 32x32 input (CIFAR) as the paper does.

Differences from the paper, on purpose: every C3 map sees every S2 map (the paper's sparse
connection table is dropped), the output is a linear layer (not RBF units), subsampling has no
trainable coefficient. That gives the commonly quoted 61,706 parameters for 1 channel and 10
classes. Defaults are ReLU and max pooling, which train faster and reach a higher accuracy than
the paper's tanh and average subsampling in a few epochs (both available as options).
"""

from __future__ import annotations

import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.models.interface import ConvNet
from convlens.models.registry import register_model
from convlens.models.tables import PAPERS


def _activation(name: str) -> nn.Module:
    if name == "relu":
        return nn.ReLU()
    if name == "tanh":
        return nn.Tanh()
    raise ConvlensError(f"lenet5: activation must be 'relu' or 'tanh', not {name!r}")


def _pool(name: str) -> nn.Module:
    if name == "max":
        return nn.MaxPool2d(2, stride=2)
    if name == "avg":
        return nn.AvgPool2d(2, stride=2)
    raise ConvlensError(f"lenet5: pool must be 'max' or 'avg', not {name!r}")


class LeNet5(ConvNet):
    """LeNet-5: three convolutions, two subsamplings, two fully connected layers."""

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_channels: int = 1,
        pool: str = "max",
        activation: str = "relu",
        padding: int = 2,
    ) -> None:
        super().__init__()
        self.padding = padding
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=padding)  # C1
        self.act1 = _activation(activation)
        self.pool1 = _pool(pool)  # S2
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)  # C3
        self.act2 = _activation(activation)
        self.pool2 = _pool(pool)  # S4
        self.conv3 = nn.Conv2d(16, 120, kernel_size=5)  # C5
        self.act3 = _activation(activation)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(120, 84)  # F6
        self.act4 = _activation(activation)
        self.fc2 = nn.Linear(84, num_classes)  # output

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, 28, 28) -> (N, 84)``, the F6 activations."""
        x = self.pool1(self.act1(self.conv1(x)))  # N x 6 x 14 x 14
        x = self.pool2(self.act2(self.conv2(x)))  # N x 16 x 5 x 5
        x = self.act3(self.conv3(x))  # N x 120 x 1 x 1
        if x.shape[-2:] != (1, 1):
            raise self._input_size_error(x.shape[-2:])
        x = self.flatten(x)  # N x 120
        return self.act4(self.fc1(x))  # N x 84

    def _input_size_error(self, c5_map: tuple[int, ...] | torch.Size) -> ConvlensError:
        side = 32 - 2 * self.padding
        return ConvlensError(
            f"lenet5 (padding={self.padding}) takes {side}x{side} inputs: this input leaves C5 "
            f"with {c5_map[0]}x{c5_map[1]} maps instead of 1x1; create it with padding=2 "
            "for 28x28 inputs or padding=0 for 32x32 inputs"
        )

    def get_classifier(self) -> nn.Module:
        """The output layer, ``fc2``."""
        return self.fc2


_LENET = PAPERS["lenet"]


@register_model(
    "lenet5",
    family="lenet",
    paper=_LENET.authors,
    title=_LENET.title,
    input_size=(1, 28, 28),
    num_classes=10,
    description="C1 6@5x5, S2, C3 16@5x5, S4, C5 120, F6 84, output; 28x28 input padded to 32x32",
)
def lenet5(
    *,
    num_classes: int = 10,
    in_channels: int = 1,
    pool: str = "max",
    activation: str = "relu",
    padding: int = 2,
) -> LeNet5:
    """LeNet-5.

    Args:
        num_classes: outputs.
        in_channels: image channels.
        pool: ``"max"`` (default) or ``"avg"`` (the paper's subsampling) for S2 and S4.
        activation: ``"relu"`` (default, trains best) or ``"tanh"`` (the paper's squashing).
        padding: of C1; 2 for 28x28 inputs (as if 32x32), 0 for 32x32 inputs.
    """
    if padding not in (0, 2):
        raise ConvlensError(f"lenet5: padding must be 2 (28x28 inputs) or 0 (32x32), not {padding}")
    return LeNet5(
        num_classes=num_classes,
        in_channels=in_channels,
        pool=pool,
        activation=activation,
        padding=padding,
    )
