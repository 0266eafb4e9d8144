"""Convolution + residual add + ReLU fused into oneDNN calls (convlens.inspect.fuse).

Oracle: PyTorch's own forward and autograd on the unmodified network (float32): the fused copy must
give the same outputs and the same input gradients, on our ResNet-20 (with and without BatchNorm
folded), torchvision's ResNet-18 (in-place ReLU, `out += identity`, 1x1 downsampling convolutions)
and a functional-style network with strided, dilated, grouped and unpadded convolutions.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from convlens.inspect import activation_maximization
from convlens.inspect.actmax import fold_batchnorm
from convlens.inspect.fuse import FusedBlock, FusedConvReLU, fuse_conv_relu, same_layout, trace_to
from convlens.inspect.hooks import truncated_forward

pytestmark = pytest.mark.skipif(
    not torch.backends.mkldnn.is_available(), reason="the fused kernels are oneDNN's"
)


def frozen(net: nn.Module) -> nn.Module:
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()


class Functional(nn.Module):
    """Fusable patterns written with functions, and convolutions the transposed path cannot take."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 8, 3, padding=1)
        self.b = nn.Conv2d(8, 8, 3, padding=2, dilation=2)  # dilated: autograd's backward
        self.c = nn.Conv2d(8, 8, 3, padding=1, groups=2)  # grouped: its add is not fused
        self.d = nn.Conv2d(8, 16, 3, stride=2, padding=1)  # strided
        self.e = nn.Conv2d(16, 16, 3)  # no padding: the transposed convolution pads by 2
        self.f = nn.Conv2d(16, 16, 1, padding=1)  # padding > kernel - 1: not transposable
        self.scale = nn.Parameter(torch.full((1, 16, 1, 1), 0.5))  # read by the graph (get_attr)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.a(x))
        x = torch.relu(torch.add(self.b(x), x))
        x = (self.c(x) + x).relu()
        x = F.relu(self.d(x), inplace=True)
        x = torch.relu(self.e(x))
        return F.relu(self.f(x)) * self.scale


def check_against_network(
    net: nn.Module, layer: str | None, shape: tuple[int, ...], reference: nn.Module | None = None
) -> nn.Module:
    """The fused copy of `net` up to `layer`: same output and input gradient as `reference`
    (default `net`) run by PyTorch as it is."""
    reference = net if reference is None else reference
    traced = trace_to(net, layer)
    assert traced is not None
    g = torch.Generator().manual_seed(1)
    fused = fuse_conv_relu(traced, torch.randn(2, *shape[1:], generator=g))
    assert fused is not None
    x = torch.randn(*shape, generator=g)

    def run(m: nn.Module, through_hooks: bool) -> tuple[torch.Tensor, torch.Tensor]:
        xi = x.clone().requires_grad_(True)
        out = truncated_forward(m, layer, xi) if through_hooks and layer else m(xi)
        weights = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
        (grad,) = torch.autograd.grad((out * weights).sum(), xi)
        return out.detach(), grad

    want_out, want_grad = run(reference, True)
    got_out, got_grad = run(fused, False)
    torch.testing.assert_close(got_out, want_out, rtol=1e-4, atol=1e-5 * want_out.abs().max())
    torch.testing.assert_close(got_grad, want_grad, rtol=1e-4, atol=1e-5 * want_grad.abs().max())
    return fused


def kinds(net: nn.Module) -> tuple[int, int]:
    return (
        sum(type(m) is FusedConvReLU for m in net.modules()),
        sum(type(m) is FusedBlock for m in net.modules()),
    )


@pytest.mark.parametrize("layer", ["layer3", "layer2.1", "layer1.0.conv2", "layer3.2.relu"])
def test_resnet20_fused_equals_the_network(layer: str, resnet20_bn: nn.Module) -> None:
    net = frozen(resnet20_bn)
    folded = fold_batchnorm(net, layer, (3, 32, 32), torch.device("cpu"), torch.float32)
    fused = check_against_network(folded, layer, (3, 3, 32, 32), reference=net)
    if layer == "layer3":
        # 7 identity-shortcut blocks become FusedBlocks; the stem and the two blocks with an option-A
        # shortcut keep two FusedConvReLUs each (2 x 7 + 1 + 4 = 19 convolutions in all)
        assert kinds(fused) == (1 + 7 * 2 + 4, 7)


def test_batchnorm_is_folded_in_eval_mode_only(resnet20_bn: nn.Module) -> None:
    net = frozen(resnet20_bn)
    fused = check_against_network(net, "layer3", (3, 3, 32, 32))  # BatchNorms folded by the fusion
    assert kinds(fused) == (1 + 7 * 2 + 4, 7)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fused.modules())
    net.layer1.train()  # batch statistics: not an affine map, left to PyTorch
    for m in net.layer1.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.0  # the check's train-mode pass must not move the running statistics
    traced = trace_to(net, "layer1")
    assert traced is not None
    fused = fuse_conv_relu(traced, torch.randn(4, 3, 32, 32))
    assert fused is not None and kinds(fused) == (1, 0)  # only the stem, whose BN is in eval mode
    assert sum(isinstance(m, nn.BatchNorm2d) and m.training for m in fused.modules()) == 6


def test_torchvision_resnet18_fused_equals_the_network() -> None:
    torch.manual_seed(0)
    net = frozen(torchvision.models.resnet18(num_classes=10))
    folded = fold_batchnorm(net, "layer2", (3, 64, 64), torch.device("cpu"), torch.float32)
    fused = check_against_network(folded, "layer2", (2, 3, 64, 64), reference=net)
    assert kinds(fused)[1] == 3  # layer1.0, layer1.1, layer2.1 (layer2.0 downsamples)


def test_functional_network_fused_equals_the_network_and_leaves_it_alone() -> None:
    torch.manual_seed(0)
    net = frozen(Functional())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fused = check_against_network(net, None, (3, 3, 20, 20))
    assert kinds(fused) == (5, 0)
    fused.to(torch.bfloat16)  # the copy shares no module or tensor with the network
    assert all(v.dtype == torch.float32 for v in net.state_dict().values())
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_fused_add_leaves_its_operand_alone_and_weights_follow_dtype_changes() -> None:
    torch.manual_seed(0)
    net = frozen(Functional())
    fused = fuse_conv_relu(trace_to(net, None), torch.randn(2, 3, 20, 20))  # type: ignore[arg-type]
    assert fused is not None
    conv = next(m for m in fused.modules() if isinstance(m, FusedConvReLU) and m.dilation[0] == 2)
    x, other = torch.rand(2, 8, 12, 12), torch.randn(2, 8, 12, 12)
    kept = other.clone()
    y = conv.fused(x, other)
    assert torch.equal(other, kept)
    torch.testing.assert_close(
        y, F.relu(F.conv2d(x, conv.weight, conv.bias, padding=2, dilation=2) + other)
    )
    # weights reordered for float32 must not survive a conversion to bfloat16 (channels-last, as
    # activation maximisation runs it; NCHW bf16 input is brought to channels-last)
    want = fused(torch.ones(1, 3, 20, 20))
    low = fused.to(torch.bfloat16).to(memory_format=torch.channels_last)
    for layout in (torch.channels_last, torch.contiguous_format):
        x16 = torch.ones(1, 3, 20, 20, dtype=torch.bfloat16).contiguous(memory_format=layout)
        out = low(x16)
        assert out.dtype == torch.bfloat16
        torch.testing.assert_close(out.float(), want, rtol=5e-2, atol=5e-2 * want.abs().max())


def test_same_layout_gives_the_gradient_the_forward_layout() -> None:
    x = torch.randn(2, 4, 6, 6).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    y = same_layout(x)
    grads: list[torch.Tensor] = []
    x.register_hook(grads.append)
    # slicing with a step gives its input an NCHW gradient in PyTorch
    y[:, :, ::2, ::2].sum().backward()
    assert grads[0].is_contiguous(memory_format=torch.channels_last)
    expected = torch.zeros(2, 4, 6, 6)
    expected[:, :, ::2, ::2] = 1
    torch.testing.assert_close(grads[0], expected)


def test_untraceable_network_runs_unfused() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 16, 3, padding=1)
            self.head = nn.Conv2d(16, 16, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = F.relu(self.conv(x))
            if x.mean() > 0:  # data-dependent control flow: torch.fx cannot trace it
                x = x * 2
            return self.head(x)

    net = frozen(Branchy())
    assert trace_to(net, "head") is None
    assert trace_to(net, "conv") is not None  # tracing stops at the layer, before the branch
    res = activation_maximization(
        net, "head", [0, 1], size=16, steps=2, simple=True, precision="bf16"
    )
    assert torch.isfinite(res.images).all()


def test_bf16_actmax_fused_climbs_like_unfused(resnet20_bn: nn.Module) -> None:
    """Under bf16 the fused and the plain runs round differently, so the images are not compared
    bit for bit; both must raise every channel by the same amount within bf16 noise, and the
    reported values (float32, on the plain network) must be the final images' true objectives."""
    net = frozen(resnet20_bn)
    common = dict(
        size=32, steps=10, simple=True, precision="bf16", mean=(0.5,) * 3, std=(0.25,) * 3
    )
    fused = activation_maximization(net, "layer2", list(range(8)), **common)
    plain = activation_maximization(net, "layer2", list(range(8)), fuse=False, **common)
    start = plain.history[0]
    torch.testing.assert_close(fused.history[0], start, rtol=2e-2, atol=2e-2 * start.abs().max())
    gain_fused, gain_plain = fused.values - start, plain.values - start
    assert (gain_plain >= 0).all() and (gain_plain > 0).sum() >= 6  # a dead channel cannot move
    torch.testing.assert_close(gain_fused, gain_plain, rtol=0.1, atol=0.05 * gain_plain.abs().max())
    x = (fused.images - 0.5) / 0.25
    with torch.no_grad():
        true = truncated_forward(net, "layer2", x)[torch.arange(8), torch.arange(8)].mean((1, 2))
    torch.testing.assert_close(fused.values, true, rtol=1e-4, atol=1e-5)
