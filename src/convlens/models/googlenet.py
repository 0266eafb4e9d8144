"""GoogLeNet, Inception v1 (Szegedy et al. 2015), with torchvision's parameter names.

A stem of convolutions and poolings, nine inception modules (table
:data:`~convlens.models.tables.GOOGLENET_INCEPTIONS`), global average pooling, dropout and one
linear layer. An inception module runs four branches side by side on the same input and
concatenates them along the depth: a 1x1 convolution; 1x1 then 3x3; 1x1 then "5x5"; 3x3 max
pooling then 1x1. The 1x1 convolutions before the larger ones reduce the depth, which is what
makes the module cheap. Every convolution is followed by batch norm (torchvision's reading; the
2015 paper predates it) and ReLU.

Faithful to torchvision so its state dicts load strictly: the "5x5" branch uses a 3x3 kernel (a
known slip in the reference weights, kept); ``paper_5x5=True`` uses the paper's 5x5 instead.
``transform_input=True`` re-normalises an ImageNet-normalised input to the [-1, 1] range that
torchvision's pretrained weights expect (as torchvision does when it loads them).

Auxiliary classifiers (after 4a and 4d, the paper's deep-supervision heads) are built with
``aux_logits=True``. ``forward`` always returns the main logits only, so every tool and the
training loop treat GoogLeNet like any classifier; :meth:`GoogLeNet.forward_train` returns
``GoogLeNetOutputs(logits, aux_logits2, aux_logits1)`` in training mode for a loop that adds the
auxiliary losses (the paper weighs them by 0.3).

``small_input=True`` replaces the 7x7/2 stem convolution by 3x3/1 and drops the first max pooling,
so 32x32 images keep 16x16 maps into inception 3 (instead of 4x4).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from convlens.errors import ConvlensError
from convlens.models.interface import ConvNet
from convlens.models.registry import register_model
from convlens.models.tables import GOOGLENET_INCEPTIONS, PAPERS, InceptionRow


class GoogLeNetOutputs(NamedTuple):
    """The three outputs of training mode with auxiliary classifiers (torchvision's order)."""

    logits: torch.Tensor
    aux_logits2: torch.Tensor | None
    aux_logits1: torch.Tensor | None


class BasicConv2d(nn.Module):
    """Convolution (no bias), batch norm (eps 1e-3, as torchvision), ReLU."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(
            in_channels, out_channels, kernel_size, stride=stride, padding=padding, bias=False
        )
        self.bn = nn.BatchNorm2d(out_channels, eps=0.001)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


class Inception(nn.Module):
    """Four parallel branches concatenated along the depth."""

    def __init__(self, row: InceptionRow, *, paper_5x5: bool = False) -> None:
        super().__init__()
        k5 = 5 if paper_5x5 else 3  # torchvision's weights have 3x3 here
        self.branch1 = BasicConv2d(row.in_channels, row.ch1x1, 1)
        self.branch2 = nn.Sequential(
            BasicConv2d(row.in_channels, row.ch3x3red, 1),  # reduce the depth first
            BasicConv2d(row.ch3x3red, row.ch3x3, 3, padding=1),
        )
        self.branch3 = nn.Sequential(
            BasicConv2d(row.in_channels, row.ch5x5red, 1),
            BasicConv2d(row.ch5x5red, row.ch5x5, k5, padding=k5 // 2),
        )
        self.branch4 = nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            BasicConv2d(row.in_channels, row.pool_proj, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # N x (ch1x1 + ch3x3 + ch5x5 + pool_proj) x H x W: the branches keep the map size
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(nn.Module):
    """Auxiliary classifier: 4x4 average pooling, 1x1 conv 128, FC 1024, dropout, FC N."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.7) -> None:
        super().__init__()
        self.conv = BasicConv2d(in_channels, 128, 1)
        self.fc1 = nn.Linear(2048, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(p=dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.adaptive_avg_pool2d(x, (4, 4))  # N x 512 x 4 x 4 (528 for aux2)
        x = torch.flatten(self.conv(x), 1)  # N x 2048
        x = self.dropout(F.relu(self.fc1(x)))  # N x 1024
        return self.fc2(x)  # N x num_classes


class GoogLeNet(ConvNet):
    """GoogLeNet (Inception v1)."""

    def __init__(
        self,
        *,
        num_classes: int = 1000,
        in_channels: int = 3,
        aux_logits: bool = False,
        transform_input: bool = False,
        dropout: float = 0.2,
        dropout_aux: float = 0.7,
        paper_5x5: bool = False,
        small_input: bool = False,
    ) -> None:
        super().__init__()
        self.aux_logits = aux_logits
        self.transform_input = transform_input
        rows = GOOGLENET_INCEPTIONS
        if small_input:
            self.conv1 = BasicConv2d(in_channels, 64, 3, padding=1)
            self.maxpool1: nn.Module = nn.Identity()
        else:
            self.conv1 = BasicConv2d(in_channels, 64, 7, stride=2, padding=3)
            self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = BasicConv2d(64, 64, 1)
        self.conv3 = BasicConv2d(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception3a = Inception(rows["inception3a"], paper_5x5=paper_5x5)
        self.inception3b = Inception(rows["inception3b"], paper_5x5=paper_5x5)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = Inception(rows["inception4a"], paper_5x5=paper_5x5)
        # Auxiliary heads registered where they branch off, so named_modules() is in forward order.
        self.aux1 = InceptionAux(512, num_classes, dropout_aux) if aux_logits else None
        self.inception4b = Inception(rows["inception4b"], paper_5x5=paper_5x5)
        self.inception4c = Inception(rows["inception4c"], paper_5x5=paper_5x5)
        self.inception4d = Inception(rows["inception4d"], paper_5x5=paper_5x5)
        self.aux2 = InceptionAux(528, num_classes, dropout_aux) if aux_logits else None
        self.inception4e = Inception(rows["inception4e"], paper_5x5=paper_5x5)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)
        self.inception5a = Inception(rows["inception5a"], paper_5x5=paper_5x5)
        self.inception5b = Inception(rows["inception5b"], paper_5x5=paper_5x5)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(1024, num_classes)
        # torchvision's init_weights=True: truncated normal, std 0.01.
        for m in self.modules():
            if isinstance(m, nn.Conv2d | nn.Linear):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _transform_input(self, x: torch.Tensor) -> torch.Tensor:
        if not self.transform_input:
            return x
        # ImageNet-normalised -> (x - 0.5) / 0.5 per channel, as torchvision's pretrained weights expect
        mean = x.new_tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
        std = x.new_tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
        return x * (std / 0.5) + (mean - 0.5) / 0.5

    def _features(
        self, x: torch.Tensor, with_aux: bool
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        x = self._transform_input(x)  # N x 3 x 224 x 224
        x = self.maxpool1(self.conv1(x))  # N x 64 x 56 x 56
        x = self.conv3(self.conv2(x))  # N x 192 x 56 x 56
        x = self.maxpool2(x)  # N x 192 x 28 x 28
        x = self.inception3b(self.inception3a(x))  # N x 480 x 28 x 28
        x = self.maxpool3(x)  # N x 480 x 14 x 14
        x = self.inception4a(x)  # N x 512 x 14 x 14
        aux1 = self.aux1(x) if with_aux and self.aux1 is not None else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # N x 528 x 14 x 14
        aux2 = self.aux2(x) if with_aux and self.aux2 is not None else None
        x = self.inception4e(x)  # N x 832 x 14 x 14
        x = self.maxpool4(x)  # N x 832 x 7 x 7
        x = self.inception5b(self.inception5a(x))  # N x 1024 x 7 x 7
        return torch.flatten(self.avgpool(x), 1), aux1, aux2  # N x 1024

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, 3, 224, 224) -> (N, 1024)``, the globally pooled inception 5b."""
        return self._features(x, with_aux=False)[0]

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Dropout then ``fc``: ``(N, 1024) -> (N, num_classes)``."""
        return self.fc(self.dropout(features))

    def forward_train(self, x: torch.Tensor) -> GoogLeNetOutputs:
        """Main and auxiliary logits (the auxiliary ones only in training mode with `aux_logits`)."""
        feats, aux1, aux2 = self._features(x, with_aux=self.training and self.aux_logits)
        return GoogLeNetOutputs(self.forward_head(feats), aux2, aux1)

    def get_classifier(self) -> nn.Module:
        """The final linear layer, ``fc``."""
        return self.fc


@register_model(
    "googlenet",
    family="googlenet",
    paper=PAPERS["googlenet"].authors,
    title=PAPERS["googlenet"].title,
    input_size=(3, 224, 224),
    num_classes=1000,
    description="Inception v1: 9 inception modules (1x1, 3x3, 5x5, pool branches), optional aux heads",
)
def googlenet(
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    aux_logits: bool = False,
    transform_input: bool = False,
    dropout: float = 0.2,
    dropout_aux: float = 0.7,
    paper_5x5: bool = False,
    small_input: bool = False,
) -> GoogLeNet:
    """GoogLeNet.

    Args:
        num_classes: outputs.
        in_channels: image channels.
        aux_logits: build the two auxiliary classifiers (see :meth:`GoogLeNet.forward_train`).
        transform_input: re-normalise inputs as torchvision's pretrained weights expect (3 channels).
        dropout: before ``fc``.
        dropout_aux: in the auxiliary classifiers.
        paper_5x5: 5x5 kernels in the "5x5" branches (the paper) instead of torchvision's 3x3.
        small_input: 3x3/1 stem convolution and no first max pooling (32x32 images).
    """
    if transform_input and in_channels != 3:
        raise ConvlensError("googlenet: transform_input needs 3 input channels (RGB)")
    return GoogLeNet(
        num_classes=num_classes,
        in_channels=in_channels,
        aux_logits=aux_logits,
        transform_input=transform_input,
        dropout=dropout,
        dropout_aux=dropout_aux,
        paper_5x5=paper_5x5,
        small_input=small_input,
    )
