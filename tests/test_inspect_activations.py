"""Filters, activations and feature extraction against independent oracles.

Oracles: torchvision's `create_feature_extractor` (FX-traced intermediate outputs), the layer's own
weight parameter, a plain full-batch `forward_features`, and `F.conv2d` for an in-place-ReLU model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet18
from torchvision.models.feature_extraction import create_feature_extractor

from convlens import models
from convlens.data import normalize
from convlens.errors import ConvlensError
from convlens.inspect import activations, extract_features, filters
from convlens.inspect.activations import stage_ends
from convlens.render.layers import activations_figure, filters_figure


@pytest.fixture(scope="module")
def tv_resnet() -> nn.Module:
    torch.manual_seed(0)
    return resnet18(num_classes=10).eval()


@pytest.fixture(scope="module")
def lenet() -> nn.Module:
    torch.manual_seed(0)
    return models.create("lenet5", in_channels=1).eval()


# --- filters -------------------------------------------------------------------------------------


def test_filters_default_is_first_conv(tv_resnet: nn.Module, lenet: nn.Module) -> None:
    w = filters(tv_resnet)
    assert torch.equal(w, tv_resnet.conv1.weight.detach())
    assert w.shape == (64, 3, 7, 7)
    assert torch.equal(filters(lenet), lenet.conv1.weight.detach())
    # A copy: changing it leaves the model alone.
    w.zero_()
    assert tv_resnet.conv1.weight.abs().sum() > 0


def test_filters_named_layer_and_errors(tv_resnet: nn.Module) -> None:
    assert torch.equal(
        filters(tv_resnet, "layer2.0.conv1"), tv_resnet.layer2[0].conv1.weight.detach()
    )
    with pytest.raises(ConvlensError, match=r"no layer named 'layer9'.*layer1"):
        filters(tv_resnet, "layer9")
    with pytest.raises(ConvlensError, match="not a convolution; conv layers: conv1"):
        filters(tv_resnet, "bn1")


def test_filters_figure_colour_uses_one_symmetric_scale(tv_resnet: nn.Module) -> None:
    w = filters(tv_resnet)[:4]
    fig = filters_figure(w, layer="conv1")
    m = w.abs().max().item()
    for i in range(4):
        shown = np.asarray(fig.axes[i].images[0].get_array())
        expected = 0.5 + 0.5 * w[i].numpy().transpose(1, 2, 0) / m
        np.testing.assert_allclose(shown, expected, rtol=1e-6)
    assert shown.min() >= 0 and shown.max() <= 1


def test_filters_figure_single_channel_diverging(lenet: nn.Module) -> None:
    w = filters(lenet, "conv2")  # (16, 6, 5, 5): one column per input channel
    fig = filters_figure(w, layer="conv2")
    ims = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(ims) == 16 * 6
    m = w.abs().max().item()
    assert all(im.get_clim() == pytest.approx((-m, m)) for im in ims)
    assert ims[0].get_cmap().name == "RdBu_r"


# --- activations ---------------------------------------------------------------------------------


def test_activations_match_create_feature_extractor(tv_resnet: nn.Module) -> None:
    torch.manual_seed(1)
    x = torch.randn(1, 3, 64, 64)
    names = ["conv1", "maxpool", "layer1.0.conv2", "layer3", "layer4.1.bn2", "avgpool"]
    ours = activations(tv_resnet, x, names)
    oracle = create_feature_extractor(tv_resnet, return_nodes=names)(x)
    assert list(ours) == names  # forward order
    for n in names:
        expected = oracle[n][0]
        expected = expected if expected.dim() == 3 else expected.reshape(-1, 1, 1)
        torch.testing.assert_close(ours[n][0], expected, rtol=1e-5, atol=1e-5)


def test_activations_default_stages(lenet: nn.Module, tv_resnet: nn.Module) -> None:
    acts = activations(lenet, torch.randn(1, 1, 28, 28))
    assert list(acts) == ["conv1", "pool1", "conv2", "pool2", "conv3"]
    assert acts["conv1"].shape == (1, 6, 28, 28) and acts["pool2"].shape == (1, 16, 5, 5)
    # ResNet-18 has 20 convs and 2 pools: one layer per resolution is shown, in forward order.
    acts = activations(tv_resnet, torch.randn(1, 3, 64, 64))
    sizes = [tuple(a.shape[2:]) for a in acts.values()]
    assert sizes == [(32, 32), (16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]
    assert list(acts)[-1] == "avgpool"


def test_stage_ends_keeps_last_of_each_resolution() -> None:
    shapes = {"a": (4, 8, 8), "b": (4, 8, 8), "c": (8, 4, 4), "d": (8, 4, 4), "e": (8, 2, 2)}
    assert stage_ends(shapes, max_layers=5) == list(shapes)
    assert stage_ends(shapes, max_layers=4) == ["b", "d", "e"]
    assert stage_ends(shapes, max_layers=2) == ["d", "e"]


def test_activations_not_changed_by_later_inplace_relu() -> None:
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3)
    model = nn.Sequential(conv, nn.ReLU(inplace=True), nn.Flatten(), nn.LazyLinear(2)).eval()
    x = torch.randn(1, 1, 8, 8)
    model(x)
    got = activations(model, x, ["0"])["0"][0]
    expected = F.conv2d(x, conv.weight, conv.bias)[0].detach()
    assert (expected < 0).any()  # the ReLU would have zeroed these
    torch.testing.assert_close(got, expected)


def test_activations_unknown_layer_lists_valid(lenet: nn.Module) -> None:
    with pytest.raises(ConvlensError, match=r"no layer named 'conv7'.*conv1"):
        activations(lenet, torch.randn(1, 1, 28, 28), ["conv7"])


def test_activations_keeps_training_mode() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2))
    model.train()
    before = model[1].running_mean.clone()
    activations(model, torch.randn(1, 1, 6, 6) + 3)
    assert model.training and model[1].training
    assert torch.equal(model[1].running_mean, before)  # ran in eval mode: statistics untouched


def test_activations_figure_titles(lenet: nn.Module) -> None:
    img = torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8)
    acts = {k: v[0] for k, v in activations(lenet, torch.randn(1, 1, 28, 28)).items()}
    fig = activations_figure(img, acts, title="Bag", max_channels=8)
    titles = [sf.get_suptitle() for sf in fig.subfigs]
    assert any(t.startswith("conv1  6x28x28") for t in titles)
    assert any(t.startswith("conv3  120x1x1") for t in titles)


# --- extract_features ----------------------------------------------------------------------------


def test_extract_features_streams_to_the_full_batch_result(lenet: nn.Module) -> None:
    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (37, 1, 28, 28), dtype=torch.uint8, generator=g)
    mean, std = (0.3,), (0.35,)
    got = extract_features(lenet, imgs, mean=mean, std=std, batch_size=8)
    with torch.no_grad():
        expected = lenet.forward_features(normalize(imgs, mean, std))  # type: ignore[operator]
    assert got.shape == (37, 84)
    torch.testing.assert_close(got, expected)


def test_extract_features_of_a_layer_and_torchvision(tv_resnet: nn.Module) -> None:
    x = torch.randn(5, 3, 64, 64)
    got = extract_features(tv_resnet, x, batch_size=2, layer="layer3")
    oracle = create_feature_extractor(tv_resnet, return_nodes=["layer3", "flatten"])(x)
    torch.testing.assert_close(got, oracle["layer3"].flatten(1), rtol=1e-5, atol=1e-5)
    pen = extract_features(tv_resnet, x, batch_size=2)
    torch.testing.assert_close(pen, oracle["flatten"], rtol=1e-5, atol=1e-5)
