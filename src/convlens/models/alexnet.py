"""AlexNet: the paper's network (Krizhevsky et al. 2012) and torchvision's one-tower variant.

``alexnet``: five convolutions 96/256/384/384/256 on a 3x227x227 input, conv1 11x11 at stride 4,
overlapping 3x3/2 max pooling after conv1, conv2 and conv5, three fully connected layers
4096/4096/N with ReLU and dropout 0.5. Local response normalisation (after the ReLU of conv1 and
conv2) and the two-tower split (conv2, conv4 and conv5 see only the maps of their own GPU:
``groups=2``) are options, off by default; ``alexnet(lrn=True, two_towers=True)`` is the paper's
network exactly, 60,965,224 parameters for 1000 classes (62,378,344 as one tower).

``alexnet_owt`` ("one weird trick", Krizhevsky 2014) is torchvision's ``alexnet``: 64/192/384/256/256
filters, no LRN; same parameter names, so torchvision's state dicts load strictly.

Both end the features with torchvision's adaptive 6x6 average pooling, which is the identity at
the paper's input size and lets other sizes reach the classifier. ``small_input=True`` replaces
conv1 by 5x5 at stride 1 with padding 2, so 28x28 and 32x32 images (which an 11x11/4 stem shrinks
to nothing by the third pooling) go through.
"""

from __future__ import annotations

import torch
from torch import nn

from convlens.models.interface import ConvNet
from convlens.models.registry import register_model
from convlens.models.tables import ALEXNET_LRN, ALEXNET_OWT, ALEXNET_PAPER, PAPERS, AlexConv


def make_features(
    table: tuple[AlexConv, ...],
    in_channels: int,
    *,
    lrn: bool,
    two_towers: bool,
    small_input: bool,
) -> nn.Sequential:
    """The convolutional part from a table of :class:`~convlens.models.tables.AlexConv` rows."""
    layers: list[nn.Module] = []
    for i, row in enumerate(table):
        kernel, stride, padding = row.kernel, row.stride, row.padding
        if i == 0 and small_input:
            kernel, stride, padding = 5, 1, 2
        groups = row.tower_groups if two_towers else 1
        layers += [
            nn.Conv2d(
                in_channels, row.filters, kernel, stride=stride, padding=padding, groups=groups
            ),
            nn.ReLU(),
        ]
        if row.lrn and lrn:
            layers.append(nn.LocalResponseNorm(**ALEXNET_LRN))  # type: ignore[arg-type]
        if row.pool:
            layers.append(nn.MaxPool2d(kernel_size=3, stride=2))  # overlapping: 3 > 2
        in_channels = row.filters
    return nn.Sequential(*layers)


class AlexNet(ConvNet):
    """AlexNet with torchvision's parameter names (``features.*``, ``classifier.{1,4,6}``)."""

    def __init__(
        self,
        features: nn.Sequential,
        *,
        num_classes: int = 1000,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        self.features = features
        depth = [m for m in features if isinstance(m, nn.Conv2d)][-1].out_channels
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(p=dropout),
            nn.Linear(depth * 6 * 6, 4096),  # FC6
            nn.ReLU(),
            nn.Dropout(p=dropout),
            nn.Linear(4096, 4096),  # FC7
            nn.ReLU(),
            nn.Linear(4096, num_classes),  # FC8
        )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 227, 227) -> (N, 4096)``, the FC7 activations (the paper's feature vector)."""
        x = self.features(x)  # N x 256 x 6 x 6
        x = torch.flatten(self.avgpool(x), 1)  # N x 9216
        return self.classifier[:-1](x)  # N x 4096

    def get_classifier(self) -> nn.Module:
        """FC8, ``classifier[6]``."""
        return self.classifier[-1]


@register_model(
    "alexnet",
    family="alexnet",
    paper=PAPERS["alexnet"].authors,
    title=PAPERS["alexnet"].title,
    input_size=(3, 227, 227),
    num_classes=1000,
    description="conv 96/256/384/384/256, conv1 11x11/4, overlapping max pool, FC 4096/4096/N",
)
def alexnet(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    lrn: bool = False,
    two_towers: bool = False,
    small_input: bool = False,
    dropout: float = 0.5,
) -> AlexNet:
    """The paper's AlexNet.

    Args:
        num_classes: outputs.
        in_channels: image channels.
        lrn: local response normalisation after the ReLUs of conv1 and conv2 (paper's constants).
        two_towers: the paper's two-GPU split, ``groups=2`` in conv2, conv4 and conv5.
        small_input: conv1 5x5 at stride 1, for 28x28/32x32 images.
        dropout: before FC6 and FC7.
    """
    features = make_features(
        ALEXNET_PAPER, in_channels, lrn=lrn, two_towers=two_towers, small_input=small_input
    )
    return AlexNet(features, num_classes=num_classes, dropout=dropout)


@register_model(
    "alexnet_owt",
    family="alexnet",
    paper=PAPERS["alexnet_owt"].authors,
    title=PAPERS["alexnet_owt"].title,
    input_size=(3, 224, 224),
    num_classes=1000,
    description="torchvision's alexnet: one tower, conv 64/192/384/256/256, no LRN",
)
def alexnet_owt(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    small_input: bool = False,
    dropout: float = 0.5,
) -> AlexNet:
    """AlexNet as in torchvision (loads its state dicts strictly).

    Args:
        num_classes: outputs.
        in_channels: image channels.
        small_input: conv1 5x5 at stride 1, for 28x28/32x32 images.
        dropout: before FC6 and FC7.
    """
    features = make_features(
        ALEXNET_OWT, in_channels, lrn=False, two_towers=False, small_input=small_input
    )
    return AlexNet(features, num_classes=num_classes, dropout=dropout)
