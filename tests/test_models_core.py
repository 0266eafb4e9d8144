"""The registry, LeNet-5, the CIFAR ResNets and the inspection interface.

Oracles: the published parameter counts (LeCun 1998 modern reading 61,706; He et al. 2016
ResNet-20 269,722 and ResNet-110 "1.7M"), ``sum(p.numel())``, torchvision's feature extractor.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convlens import models
from convlens.errors import ConvlensError
from convlens.models.registry import register_model


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def test_published_parameter_counts_small_nets() -> None:
    assert n_params(models.create("lenet5", in_channels=1)) == 61_706
    assert n_params(models.create("resnet20", in_channels=3)) == 269_722
    assert n_params(models.create("plain20", in_channels=3)) == 269_722  # option A: no params
    assert models.num_parameters("resnet110") == 1_727_962
    # Counting on the meta device gives the same as counting the real model.
    assert models.num_parameters("resnet56") == n_params(models.create("resnet56"))


def test_lenet_layers_read_like_the_paper() -> None:
    m = models.create("lenet5", in_channels=1)
    convs = models.conv_layers(m)
    assert list(convs) == ["conv1", "conv2", "conv3"]
    assert [c.out_channels for c in convs.values()] == [6, 16, 120]
    assert all(c.kernel_size == (5, 5) for c in convs.values())
    assert convs["conv1"].padding == (2, 2)
    assert models.classifier(m) is m.fc2
    assert models.default_layer(m) == "conv3"
    x = torch.randn(3, 1, 28, 28)
    assert models.forward_features(m, x).shape == (3, 84)
    assert m(x).shape == (3, 10)


def test_lenet_options() -> None:
    avg = models.create("lenet5", in_channels=1, pool="avg", activation="tanh")
    assert isinstance(avg.pool1, nn.AvgPool2d) and isinstance(avg.act1, nn.Tanh)
    cifar = models.create("lenet5", in_channels=3, padding=0)
    assert cifar(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConvlensError, match="padding=0 for 32x32"):
        models.create("lenet5", in_channels=3)(torch.randn(2, 3, 32, 32))
    with pytest.raises(ConvlensError, match="pool"):
        models.create("lenet5", pool="min")


def test_cifar_resnet_structure() -> None:
    m = models.create("resnet20", in_channels=1)
    assert [len(getattr(m, f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 3]
    # 19 convolutions + 1 FC = 20 weighted layers, the paper's depth
    assert len(models.conv_layers(m)) + 1 == 20
    assert models.default_layer(m) == "layer3.2.conv2"
    x = torch.randn(2, 1, 28, 28)  # Fashion-MNIST size works too
    assert m(x).shape == (2, 10)
    plain = models.create("plain20")
    assert all(b.shortcut is None for s in (plain.layer1, plain.layer2, plain.layer3) for b in s)
    b = models.create("resnet20", shortcut="B")
    assert n_params(b) > 269_722


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    from convlens.models.cifar_resnet import PadShortcut

    x = torch.randn(2, 16, 8, 8)
    y = PadShortcut(16, 32, 2)(x)
    assert y.shape == (2, 32, 4, 4)
    # The old channels sit in the middle, subsampled; the new ones are zeros (NumPy reference).
    ref = torch.zeros(2, 32, 4, 4)
    ref[:, 8:24] = torch.from_numpy(x.numpy()[:, :, ::2, ::2].copy())
    torch.testing.assert_close(y, ref)


def test_unknown_name_and_option() -> None:
    with pytest.raises(ConvlensError, match="resnet20"):
        models.create("resnt20")
    with pytest.raises(ConvlensError, match="Did you mean: pool"):
        models.create("lenet5", pol="avg")
    with pytest.raises(ConvlensError, match="num_classes"):
        models.create("lenet5", num_classes=0)


def test_string_options_are_converted() -> None:
    m = models.create("lenet5", padding="0")
    assert m.conv1.padding == (0, 0)
    with pytest.raises(ConvlensError, match="takes an integer"):
        models.create("lenet5", padding="two")


def test_registry_refuses_duplicates_and_positional_builders() -> None:
    with pytest.raises(ValueError, match="twice"):

        @register_model(
            "lenet5",
            family="x",
            paper="",
            title="",
            input_size=(1, 1, 1),
            num_classes=1,
            description="",
        )
        def dup(*, num_classes: int, in_channels: int) -> nn.Module:
            return nn.Identity()

    with pytest.raises(TypeError, match="keyword-only"):

        @register_model(
            "_positional",
            family="x",
            paper="",
            title="",
            input_size=(1, 1, 1),
            num_classes=1,
            description="",
        )
        def pos(num_classes: int, in_channels: int) -> nn.Module:
            return nn.Identity()

    assert "_positional" not in models.names()
