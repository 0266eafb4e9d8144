"""One conv unit computed by hand (`convlens.inspect.unit`), held to two oracles: the value the real
forward pass put at that unit (read by this test's own hook) and an independent NumPy computation
from the layer's input (NumPy's padding modes, a plain loop over input channels and taps).

"Equal" is to float32 rounding: within 1e-5 of the magnitude of the terms summed (|products| + |bias|),
since a sum of hundreds of float32 products that nearly cancel can end near zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from convlens import models
from convlens.errors import ConvlensError, InputError
from convlens.inspect.unit import MAX_SHOWN_CHANNELS, unit_computation

NP_PAD = {"zeros": "constant", "reflect": "reflect", "replicate": "edge", "circular": "wrap"}


def hooked(model: nn.Module, layer: str, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """The layer's input ``(C_in, H, W)`` and output ``(C_out, H', W')`` in one real forward."""
    conv = dict(model.named_modules())[layer]
    seen: dict[str, np.ndarray] = {}

    def hook(_: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> None:
        seen.setdefault("in", args[0][0].detach().double().numpy().copy())
        seen.setdefault("out", out[0].detach().double().numpy().copy())

    h = conv.register_forward_hook(hook)
    with torch.no_grad():
        model.eval()(x)
    h.remove()
    return seen["in"], seen["out"]


def numpy_unit(conv: nn.Conv2d, inp: np.ndarray, channel: int, row: int, col: int) -> Any:
    """The unit by NumPy: pad the whole input, take the dilated window, multiply, sum, add bias."""
    kh, kw = conv.kernel_size
    sh, sw = conv.stride
    dh, dw = conv.dilation
    if conv.padding == "same":
        th, tw = dh * (kh - 1), dw * (kw - 1)
        pads = ((th // 2, th - th // 2), (tw // 2, tw - tw // 2))
    else:
        ph, pw = conv.padding  # type: ignore[misc]
        pads = ((ph, ph), (pw, pw))
    padded = np.pad(inp, ((0, 0), *pads), mode=NP_PAD[conv.padding_mode])
    g = channel // (conv.out_channels // conv.groups)
    cg = conv.in_channels // conv.groups
    w = conv.weight.detach().double().numpy()[channel]
    total = 0.0
    patches = []
    for c in range(cg):
        win = padded[g * cg + c, row * sh : row * sh + dh * (kh - 1) + 1 : dh][:, col * sw :][
            :, : dw * (kw - 1) + 1 : dw
        ]
        patches.append(win)
        total += float((win * w[c]).sum())
    bias = float(conv.bias.detach()[channel]) if conv.bias is not None else 0.0
    return np.stack(patches), total + bias


def check(model: nn.Module, x: torch.Tensor, layer: str, units: list[tuple[int, int, int]]) -> Any:
    conv = dict(model.named_modules())[layer]
    inp, out = hooked(model, layer, x)
    u = None
    for channel, row, col in units:
        u = unit_computation(model, x, layer, channel, row, col)
        patch, by_numpy = numpy_unit(conv, inp, channel, row, col)
        scale = float(np.abs(u.products).sum()) if not u.truncated else float(np.abs(out).max())
        scale = max(scale, abs(u.bias), 1e-6)
        assert u.network_value == pytest.approx(out[channel, row, col], abs=1e-7 * scale + 1e-12)
        assert abs(u.pre_activation - out[channel, row, col]) <= 1e-5 * scale, (channel, row, col)
        assert u.pre_activation == pytest.approx(by_numpy, rel=1e-9, abs=1e-9)
        assert u.equal
        shown = len(u.shown_channels)
        np.testing.assert_array_equal(u.patch, patch[:shown])
        np.testing.assert_allclose(u.products, u.patch * u.kernel)
        assert u.total == pytest.approx(float(np.sum(u.channel_sums)), rel=1e-12, abs=1e-12)
    return u


def test_lenet5_c1_and_c3() -> None:
    torch.manual_seed(0)
    model = models.create("lenet5", in_channels=1)
    x = torch.randn(1, 1, 28, 28)
    # C1 pads by 2: unit (0, 0) reads two rows and columns of zeros.
    u = check(model, x, "conv1", [(0, 0, 0), (3, 14, 9), (5, 27, 27)])
    assert u is not None and u.padded[-2:].all() and not u.padded[0, 0]
    u = unit_computation(model, x, "conv1", 0, 0, 0)
    assert u.padded[:2].all() and (u.patch[0][u.padded] == 0).all()
    assert u.kernel_size == (5, 5) and u.in_channels == [0] and not u.truncated
    # The ReLU that follows: max(0, pre-activation), equal to the network's own.
    (kind, _, value, net) = u.steps[-1]
    assert kind == "ReLU" and value == max(0.0, u.pre_activation) and u.activation == value
    assert net == pytest.approx(value, abs=1e-6)
    # C3: 16 x 6 x 5 x 5 on the pooled 14 x 14 maps, no padding.
    u = check(model, x, "conv2", [(0, 0, 0), (15, 9, 9), (7, 4, 6)])
    assert u is not None and u.in_channels == list(range(6)) and not u.padded.any()


def test_resnet18_stride_2_truncated_channels_batchnorm_and_relu() -> None:
    import torchvision

    torch.manual_seed(1)
    model = torchvision.models.resnet18()
    with torch.no_grad():  # running statistics other than 0 / 1, so that BatchNorm does something
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(1, 3, 32, 32)
    u = check(model, x, "layer2.0.conv1", [(0, 0, 0), (100, 3, 3), (37, 1, 2)])
    assert u is not None and u.stride == (2, 2) and u.padding == (1, 1, 1, 1)
    # 64 input channels: the first 16 in detail, the sum over all 64.
    assert u.truncated and len(u.shown_channels) == MAX_SHOWN_CHANNELS
    assert len(u.channel_sums) == 64 and u.patch.shape == (16, 3, 3)
    # conv -> bn1 -> relu, each step equal to the network's own value at the unit.
    assert [s[:2] for s in u.steps] == [("batchnorm", "layer2.0.bn1"), ("ReLU", "layer2.0.relu")]
    for _, _, value, net in u.steps:
        assert value == pytest.approx(net, rel=1e-5, abs=1e-5)
    # layer4.1.conv2 -> bn2, then `out += identity` changes bn2's output in place: the ReLU after
    # the sum is not this unit's activation, and it is not claimed.
    u = unit_computation(model, x, "layer4.1.conv2", 3, 0, 0)
    assert [s[0] for s in u.steps] == ["batchnorm"] and u.activation is None and u.equal


@pytest.mark.parametrize("mode", ["zeros", "reflect", "replicate", "circular"])
def test_grouped_dilated_strided_conv_with_each_padding_mode(mode: str) -> None:
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2, groups=2, padding_mode=mode),
        nn.ReLU(),
    )
    x = torch.randn(1, 4, 11, 9)
    u = check(model, x, "0", [(0, 0, 0), (4, 5, 4), (2, 0, 4), (5, 2, 1)])
    assert u is not None and u.in_channels == [2, 3]  # channel 5 of 6: group 1 of 2
    u = unit_computation(model, x, "0", 0, 0, 0)
    assert u.padded[0].all() and u.padding_mode == mode
    if mode == "zeros":
        assert (u.patch[:, u.padded] == 0).all()


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
def test_same_padding_rectangular_kernel_and_a_real_depthwise_conv() -> None:
    import torchvision

    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(3, 5, (4, 3), padding="same", bias=False), nn.Tanh())
    x = torch.randn(1, 3, 7, 8)
    u = check(model, x, "0", [(0, 0, 0), (4, 6, 7), (2, 3, 0)])
    assert u is not None and u.padding == (1, 2, 1, 1) and u.bias == 0.0
    assert u.steps[-1][0] == "Tanh" and u.activation == pytest.approx(np.tanh(u.pre_activation))
    # MobileNetV3's depthwise 3 x 3 (groups = channels), stride 2, then BatchNorm and ReLU.
    net = torchvision.models.mobilenet_v3_small()
    x = torch.randn(1, 3, 64, 64)
    u = check(net, x, "features.1.block.0.0", [(0, 0, 0), (15, 7, 9)])
    assert u is not None and u.groups == 16 and u.in_channels == [15]


def test_bad_requests_say_what_is_wrong() -> None:
    model = models.create("lenet5", in_channels=1)
    x = torch.zeros(1, 1, 28, 28)
    with pytest.raises(ConvlensError, match="not a convolution"):
        unit_computation(model, x, "pool1", 0, 0, 0)
    with pytest.raises(ConvlensError, match="no layer named"):
        unit_computation(model, x, "conv9", 0, 0, 0)
    with pytest.raises(InputError, match="6 channels"):
        unit_computation(model, x, "conv1", 6, 0, 0)
    with pytest.raises(InputError, match="28 x 28"):
        unit_computation(model, x, "conv1", 0, 28, 0)
    with pytest.raises(InputError, match="one"):
        unit_computation(model, torch.zeros(2, 1, 28, 28), "conv1", 0, 0, 0)
