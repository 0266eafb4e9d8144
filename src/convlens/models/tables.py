"""The architectures' numbers, as data: each family module reads its table from here.

Keeping the tables apart from the code lets a reader compare them with the papers line by line.
"""

from __future__ import annotations

from typing import Final, Literal, NamedTuple

# ---------------------------------------------------------------------------------------------
# AlexNet. One row per convolution: (filters, kernel, stride, padding, groups in the two-tower
# split, then what follows the ReLU: LRN and/or 3x3/2 max pooling).
# ---------------------------------------------------------------------------------------------


class AlexConv(NamedTuple):
    filters: int
    kernel: int
    stride: int
    padding: int
    tower_groups: int  # 2 where the paper's two GPUs saw only their own half of the maps
    lrn: bool  # local response normalisation after the ReLU (paper only)
    pool: bool  # overlapping 3x3 max pooling at stride 2


# Krizhevsky, Sutskever & Hinton 2012, section 3.5 and figure 2 (input 3x227x227).
ALEXNET_PAPER: Final = (
    AlexConv(96, 11, 4, 0, 1, lrn=True, pool=True),  # 96x55x55 -> 96x27x27
    AlexConv(256, 5, 1, 2, 2, lrn=True, pool=True),  # 256x27x27 -> 256x13x13
    AlexConv(384, 3, 1, 1, 1, lrn=False, pool=False),  # conv3 sees both towers
    AlexConv(384, 3, 1, 1, 2, lrn=False, pool=False),
    AlexConv(256, 3, 1, 1, 2, lrn=False, pool=True),  # 256x13x13 -> 256x6x6
)

# Krizhevsky 2014, "One weird trick": torchvision's `alexnet` (64/192/384/256/256, no LRN).
ALEXNET_OWT: Final = (
    AlexConv(64, 11, 4, 2, 1, lrn=False, pool=True),
    AlexConv(192, 5, 1, 2, 1, lrn=False, pool=True),
    AlexConv(384, 3, 1, 1, 1, lrn=False, pool=False),
    AlexConv(256, 3, 1, 1, 1, lrn=False, pool=False),
    AlexConv(256, 3, 1, 1, 1, lrn=False, pool=True),
)

# Paper's LRN (section 3.3): b = a / (k + alpha * sum a^2)^beta over n = 5 adjacent maps, k = 2,
# alpha = 1e-4, beta = 0.75. PyTorch's LocalResponseNorm divides alpha by n, hence alpha * n here.
ALEXNET_LRN: Final = {"size": 5, "alpha": 1e-4 * 5, "beta": 0.75, "k": 2.0}

# ---------------------------------------------------------------------------------------------
# VGG (Simonyan & Zisserman 2015, table 1): 3x3 convolutions (padding 1) by width, "M" = 2x2 max
# pooling at stride 2. Columns A, B, D, E of the paper are VGG-11, -13, -16, -19.
# ---------------------------------------------------------------------------------------------

VGGRow = int | Literal["M"]

# fmt: off
VGG_CONFIGS: Final[dict[str, list[VGGRow]]] = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [
        64, 64, "M",
        128, 128, "M",
        256, 256, 256, 256, "M",
        512, 512, 512, 512, "M",
        512, 512, 512, 512, "M",
    ],
}
# fmt: on

# ---------------------------------------------------------------------------------------------
# GoogLeNet (Szegedy et al. 2015, table 1). One row per inception module: input depth, #1x1,
# #3x3 reduce, #3x3, #5x5 reduce, #5x5, pool proj. A max pool 3x3/2 follows 3b and 4e (2x2/2 in
# torchvision after 4e).
# ---------------------------------------------------------------------------------------------


class InceptionRow(NamedTuple):
    in_channels: int
    ch1x1: int
    ch3x3red: int
    ch3x3: int
    ch5x5red: int
    ch5x5: int
    pool_proj: int


GOOGLENET_INCEPTIONS: Final[dict[str, InceptionRow]] = {
    "inception3a": InceptionRow(192, 64, 96, 128, 16, 32, 32),  # -> 256 x 28 x 28
    "inception3b": InceptionRow(256, 128, 128, 192, 32, 96, 64),  # -> 480 x 28 x 28
    "inception4a": InceptionRow(480, 192, 96, 208, 16, 48, 64),  # -> 512 x 14 x 14
    "inception4b": InceptionRow(512, 160, 112, 224, 24, 64, 64),  # -> 512 x 14 x 14
    "inception4c": InceptionRow(512, 128, 128, 256, 24, 64, 64),  # -> 512 x 14 x 14
    "inception4d": InceptionRow(512, 112, 144, 288, 32, 64, 64),  # -> 528 x 14 x 14
    "inception4e": InceptionRow(528, 256, 160, 320, 32, 128, 128),  # -> 832 x 14 x 14
    "inception5a": InceptionRow(832, 256, 160, 320, 32, 128, 128),  # -> 832 x 7 x 7
    "inception5b": InceptionRow(832, 384, 192, 384, 48, 128, 128),  # -> 1024 x 7 x 7
}

# ---------------------------------------------------------------------------------------------
# ResNet on ImageNet (He et al. 2016, table 1): blocks per stage, and the block type.
# ---------------------------------------------------------------------------------------------

RESNET_IMAGENET: Final[
    dict[str, tuple[Literal["basic", "bottleneck"], tuple[int, int, int, int]]]
] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}

# ResNet on CIFAR-10 (He et al. 2016, section 4.2): depth 6n + 2, three stages of n basic blocks
# with 16, 32 and 64 filters on 32x32, 16x16 and 8x8 maps.
CIFAR_RESNET_DEPTHS: Final = (20, 32, 44, 56, 110)
CIFAR_RESNET_WIDTHS: Final = (16, 32, 64)

# ---------------------------------------------------------------------------------------------
# Papers, for `info()` and `convlens models`.
# ---------------------------------------------------------------------------------------------


class Paper(NamedTuple):
    authors: str
    title: str


PAPERS: Final[dict[str, Paper]] = {
    "lenet": Paper("LeCun et al. 1998", "Gradient-based learning applied to document recognition"),
    "alexnet": Paper(
        "Krizhevsky et al. 2012", "ImageNet classification with deep convolutional neural networks"
    ),
    "alexnet_owt": Paper(
        "Krizhevsky 2014", "One weird trick for parallelizing convolutional neural networks"
    ),
    "vgg": Paper(
        "Simonyan & Zisserman 2015",
        "Very deep convolutional networks for large-scale image recognition",
    ),
    "googlenet": Paper("Szegedy et al. 2015", "Going deeper with convolutions"),
    "resnet": Paper("He et al. 2016", "Deep residual learning for image recognition"),
    "bn": Paper(
        "Ioffe & Szegedy 2015",
        "Batch normalization: accelerating deep network training by reducing internal covariate shift",
    ),
}
