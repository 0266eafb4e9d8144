"""Top-activating images and patches.

Oracles: a brute-force arg-max per channel over the full activation tensor (torchvision's
`create_feature_extractor`, NumPy sort), and autograd: every input pixel whose gradient reaches the
arg-max unit lies inside the receptive-field box used for the crop.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from torch import nn
from torchvision.models import resnet18
from torchvision.models.feature_extraction import create_feature_extractor

from convlens import models
from convlens.data import normalize
from convlens.errors import ConvlensError
from convlens.inspect import crop_patches, top_patches

MEAN, STD = (0.5,), (0.25,)


@pytest.fixture(scope="module")
def lenet() -> nn.Module:
    torch.manual_seed(0)
    return models.create("lenet5", in_channels=1).eval()


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 256, (150, 1, 28, 28), dtype=torch.uint8, generator=g)


def layer_output(model: nn.Module, layer: str, x: torch.Tensor) -> torch.Tensor:
    """Intermediate output without hooks: FX for torchvision models; child by child for LeNet-5
    (whose flatten check is data-dependent control flow that FX cannot trace)."""
    if isinstance(model, models.ConvNet):
        for name, child in model.named_children():
            x = child(x)
            if name == layer:
                return x
        raise AssertionError(layer)
    return _extractor(model, layer)(x)[layer]


@functools.cache
def _extractor(model: nn.Module, layer: str) -> nn.Module:
    return create_feature_extractor(model, [layer])  # FX tracing is slow: once per (model, layer)


def brute_force(acts: torch.Tensor, channels: list[int], n: int) -> tuple[np.ndarray, ...]:
    """`acts` (N, C, H, W): per channel, sort all images by their maximum, in NumPy."""
    a = acts[:, channels].flatten(2).double().numpy()  # (N, K, HW)
    best, arg = a.max(2), a.argmax(2)  # (N, K)
    order = np.argsort(-best, axis=0, kind="stable")[:n].T  # (K, n)
    values = np.take_along_axis(best.T, order, 1)
    pos = np.take_along_axis(arg.T, order, 1)
    return order, values, pos


@pytest.mark.parametrize("layer", ["conv1", "pool1", "conv2", "act2"])
def test_top_patches_equal_brute_force(lenet: nn.Module, images: torch.Tensor, layer: str) -> None:
    channels = [5, 0, 3]
    top = top_patches(lenet, layer, images, channels, n=6, mean=MEAN, std=STD, batch_size=32)
    with torch.no_grad():
        acts = layer_output(lenet, layer, normalize(images, MEAN, STD))
    order, values, pos = brute_force(acts, channels, 6)
    w = acts.shape[-1]
    assert top.channels == channels and top.map_size == tuple(acts.shape[-2:])
    np.testing.assert_array_equal(top.indices.numpy(), order)
    np.testing.assert_allclose(top.values.numpy(), values, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(top.positions[..., 0].numpy(), pos // w)
    np.testing.assert_array_equal(top.positions[..., 1].numpy(), pos % w)


def test_top_patches_default_layer_and_channel_count(
    lenet: nn.Module, images: torch.Tensor
) -> None:
    # The default is the last conv with a map (C3, 10x10), not C5, whose map is 1x1.
    top = top_patches(lenet, None, images, 4, n=2, mean=MEAN, std=STD)
    assert top.layer == "conv2" and top.channels == [0, 1, 2, 3] and top.map_size == (10, 10)
    assert top.values.shape == (4, 2) and (top.values[:, 0] >= top.values[:, 1]).all()
    assert top.rf_size == (14, 14)  # 5x5 conv, 2x2 pool, 5x5 conv: 5 + 1 + 4 * 2
    top = top_patches(lenet, "conv3", images, 4, n=2, mean=MEAN, std=STD)
    # conv3 of LeNet-5 on 28x28 sees 28 + 4 = 32 pixels: the padded input (textbook 32x32 LeNet).
    assert top.rf_size == (32, 32)


def _gradient_support(
    model: nn.Module, layer: str, x: torch.Tensor, c: int, i: int, j: int
) -> torch.Tensor:
    """Boolean (H, W): the input pixels whose gradient reaches unit (c, i, j) of `layer`."""
    x = x.clone().requires_grad_(True)
    out = layer_output(model, layer, x)
    out[0, c, i, j].backward()
    assert x.grad is not None
    return x.grad[0].abs().sum(0) > 0


@pytest.mark.parametrize(
    ("name", "layer", "shape"),
    [
        ("lenet", "conv2", (1, 28, 28)),
        ("lenet", "pool2", (1, 28, 28)),
        ("resnet18", "layer2.0.conv1", (3, 64, 64)),
        ("resnet18", "layer2", (3, 64, 64)),
    ],
)
def test_crop_contains_every_pixel_the_unit_sees(
    name: str, layer: str, shape: tuple[int, int, int]
) -> None:
    torch.manual_seed(0)
    model = (
        models.create("lenet5", in_channels=1) if name == "lenet" else resnet18(num_classes=10)
    ).eval()
    # Linear units (no ReLU zeroing) would make the support the whole field; keep ReLUs but use
    # positive inputs and a seed where units are active so the support is large and meaningful.
    g = torch.Generator().manual_seed(1)
    imgs = torch.randint(0, 256, (12, *shape), dtype=torch.uint8, generator=g)
    mean, std = (0.5,) * shape[0], (0.25,) * shape[0]
    top = top_patches(model, layer, imgs, [0, 1], n=3, mean=mean, std=std)
    h, w = shape[1:]
    checked = 0
    for a in range(2):
        for b in range(3):
            idx = int(top.indices[a, b])
            i, j = (int(v) for v in top.positions[a, b])
            support = _gradient_support(
                model, layer, normalize(imgs[idx : idx + 1], mean, std), top.channels[a], i, j
            )
            t, left, btm, r = (int(v) for v in top.boxes[a, b])
            inside = torch.zeros(h, w, dtype=torch.bool)
            inside[max(t, 0) : min(btm, h), max(left, 0) : min(r, w)] = True
            assert support.any()
            assert not (support & ~inside).any(), (
                f"gradient reaches pixels outside the box {top.boxes[a, b]}"
            )
            checked += int(support.sum())
    assert checked > 0


def test_crop_patches_cut_the_clipped_box_and_pad(lenet: nn.Module, images: torch.Tensor) -> None:
    top = top_patches(lenet, "conv2", images, [1], n=4, mean=MEAN, std=STD)
    crops = crop_patches(images, top, fill=128)  # (1, 4, 1, 14, 14)
    assert crops.shape == (1, 4, 1, *top.rf_size) and top.rf_size == (14, 14)
    for b in range(4):
        t, left, btm, r = (int(v) for v in top.boxes[0, b])
        img = images[int(top.indices[0, b])]
        padded = torch.full((1, 28 + 28, 28 + 28), 128, dtype=torch.uint8)
        padded[:, 14:42, 14:42] = img  # the image with a 14-pixel border of fill on every side
        np.testing.assert_array_equal(
            crops[0, b].numpy(), padded[:, t + 14 : btm + 14, left + 14 : r + 14].numpy()
        )


def test_top_patches_errors(lenet: nn.Module, images: torch.Tensor) -> None:
    with pytest.raises(ConvlensError, match=r"has 6 channels \(0-5\); no channel 6"):
        top_patches(lenet, "conv1", images, [6], n=2, mean=MEAN, std=STD)
    with pytest.raises(ConvlensError, match="no layer named 'conv9'"):
        top_patches(lenet, "conv9", images, 2, n=2, mean=MEAN, std=STD)


def test_top_patches_flat_layer_sees_whole_image(lenet: nn.Module, images: torch.Tensor) -> None:
    top = top_patches(lenet, "fc1", images, 2, n=3, mean=MEAN, std=STD)
    assert top.map_size == (1, 1)
    assert top.boxes[0, 0].tolist() == [0, 0, 28, 28]
