"""LeNet-5's C1 and C3 blocks in C (``convlens.models.lenet_kernels``) against PyTorch's layers.

Oracle: ``relu(max_pool2d(conv2d(x, w, b, padding)))`` with PyTorch's kernels and autograd, for the
output and the weight, bias (and for C3 input) gradients; ties checked bit for bit with small integers in float32
(every sum exact). Where no C compiler exists the kernel must decline, and the model still trains.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlens import models, native
from convlens.models import lenet_kernels
from convlens.models.lenet_kernels import conv_pool_relu


def _needs_kernels() -> None:
    if native.compiler() is None:
        pytest.skip("no C compiler on this machine")
    assert lenet_kernels.load() is not None, "a C compiler exists but the kernels did not build"


def _reference(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    return F.max_pool2d(F.conv2d(x, conv.weight, conv.bias, padding=conv.padding), 2).relu()


@pytest.mark.parametrize(("side", "padding", "channels"), [(28, 2, 6), (32, 0, 6), (20, 1, 16)])
def test_block_matches_pytorch_output_and_gradients(side: int, padding: int, channels: int) -> None:
    _needs_kernels()
    torch.manual_seed(0)
    conv = nn.Conv2d(1, channels, 5, padding=padding)
    x = torch.randn(9, 1, side, side).contiguous(memory_format=torch.channels_last)
    x[:3, :, : side // 2] = 0  # zero backgrounds, as in MNIST: tied windows hold the bias
    got = conv_pool_relu(x, conv, nn.MaxPool2d(2))
    assert got is not None and got.is_contiguous(memory_format=torch.channels_last)
    ref = _reference(x, conv)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(ref)
    ref_grads = torch.autograd.grad(ref, (conv.weight, conv.bias), g)
    got_grads = torch.autograd.grad(got, (conv.weight, conv.bias), g)
    for a, b in zip(got_grads, ref_grads, strict=True):  # sums of ~10^3 terms: float32 rounding
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_ties_route_the_gradient_to_the_first_maximum_bit_for_bit() -> None:
    """Small integers: every product and sum is exact in float32, so whole windows tie."""
    _needs_kernels()
    torch.manual_seed(1)
    conv = nn.Conv2d(1, 6, 5, padding=2)
    with torch.no_grad():
        conv.weight.copy_(torch.randint(-2, 3, conv.weight.shape))
        conv.bias.copy_(torch.randint(-1, 3, conv.bias.shape))
    x = torch.randint(0, 2, (8, 1, 28, 28)).float()
    x[:, :, :14] = 1.0
    got = conv_pool_relu(x, conv, nn.MaxPool2d(2))
    assert got is not None
    ref = _reference(x, conv)
    assert torch.equal(got, ref)
    g = torch.randint(-3, 4, ref.shape).float()
    for a, b in zip(
        torch.autograd.grad(got, (conv.weight, conv.bias), g),
        torch.autograd.grad(ref, (conv.weight, conv.bias), g),
        strict=True,
    ):
        assert torch.equal(a, b)


def test_gradients_are_deterministic_for_a_thread_count() -> None:
    """The threads' partial sums are added in a fixed order: resumed training repeats itself."""
    _needs_kernels()
    torch.manual_seed(2)
    for conv, x in (
        (nn.Conv2d(1, 6, 5, padding=2), torch.randn(64, 1, 28, 28)),
        (nn.Conv2d(6, 16, 5), torch.randn(64, 6, 14, 14).requires_grad_()),
    ):
        runs = []
        for _ in range(3):
            out = conv_pool_relu(x, conv, nn.MaxPool2d(2))
            assert out is not None
            wrt = (conv.weight, conv.bias, *([x] if x.requires_grad else []))
            runs.append(torch.autograd.grad(out.square().sum(), wrt))
        for other in runs[1:]:
            assert all(torch.equal(a, b) for a, b in zip(runs[0], other, strict=True))


@pytest.mark.parametrize(
    "case",
    ["input needs grad", "float64", "stride 2", "avg pool", "3x3", "7 channels", "padded C3",
     "8 out channels"],
)  # fmt: skip
def test_declines_what_it_does_not_compute(case: str) -> None:
    conv, pool = nn.Conv2d(1, 6, 5, padding=2), nn.MaxPool2d(2)
    x = torch.randn(2, 1, 28, 28)
    if case == "input needs grad":
        x.requires_grad_()
    elif case == "7 channels":
        conv, x = nn.Conv2d(7, 16, 5), torch.randn(2, 7, 14, 14)
    elif case == "padded C3":
        conv, x = nn.Conv2d(6, 16, 5, padding=1), torch.randn(2, 6, 14, 14)
    elif case == "8 out channels":
        conv, x = nn.Conv2d(6, 8, 5), torch.randn(2, 6, 14, 14)
    elif case == "float64":
        conv, x = conv.double(), x.double()
    elif case == "stride 2":
        conv = nn.Conv2d(1, 6, 5, stride=2, padding=2)
    elif case == "avg pool":
        pool = nn.AvgPool2d(2)  # type: ignore[assignment]
    else:
        conv = nn.Conv2d(1, 6, 3, padding=1)
    assert conv_pool_relu(x, conv, pool) is None


def test_without_a_compiler_lenet_trains_through_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    """`CONVLENS_C_KERNELS=0` (as on a machine without a compiler): the torch path, same values."""
    torch.manual_seed(3)
    model = models.create("lenet5", in_channels=1)
    x = torch.randn(4, 1, 28, 28)
    with_c = model.forward_fused(x)
    monkeypatch.setenv("CONVLENS_C_KERNELS", "0")
    lenet_kernels.load.cache_clear()
    try:
        assert conv_pool_relu(x, model.conv1, model.pool1) is None
        torch.testing.assert_close(model.forward_fused(x), with_c, rtol=1e-5, atol=1e-6)
    finally:
        lenet_kernels.load.cache_clear()


@pytest.mark.parametrize(("side", "channels", "out"), [(14, 6, 16), (13, 3, 32), (10, 1, 64)])
def test_c3_block_matches_pytorch_output_and_all_gradients(
    side: int, channels: int, out: int
) -> None:
    """C3 (several input channels, unpadded): the input's gradient too, which C1 needs."""
    _needs_kernels()
    torch.manual_seed(4)
    conv = nn.Conv2d(channels, out, 5).to(memory_format=torch.channels_last)
    x = torch.randn(9, channels, side, side).relu().contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    got = conv_pool_relu(x, conv, nn.MaxPool2d(2))
    assert got is not None and got.is_contiguous(memory_format=torch.channels_last)
    ref = _reference(x, conv)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(ref)
    wrt = (x, conv.weight, conv.bias)
    for a, b in zip(
        torch.autograd.grad(got, wrt, g), torch.autograd.grad(ref, wrt, g), strict=True
    ):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5 * float(b.abs().max()))


def test_c3_ties_route_every_gradient_to_the_first_maximum_bit_for_bit() -> None:
    _needs_kernels()
    torch.manual_seed(5)
    conv = nn.Conv2d(6, 16, 5)
    with torch.no_grad():
        conv.weight.copy_(torch.randint(-2, 3, conv.weight.shape))
        conv.bias.copy_(torch.randint(-1, 3, conv.bias.shape))
    x = torch.randint(0, 2, (8, 6, 14, 14)).float()
    x[:, :, :7] = 1.0  # a constant region: whole windows tie
    x.requires_grad_()
    got = conv_pool_relu(x, conv, nn.MaxPool2d(2))
    assert got is not None
    ref = _reference(x, conv)
    assert torch.equal(got, ref)
    g = torch.randint(-3, 4, ref.shape).float()
    wrt = (x, conv.weight, conv.bias)
    for a, b in zip(
        torch.autograd.grad(got, wrt, g), torch.autograd.grad(ref, wrt, g), strict=True
    ):
        assert torch.equal(a, b)
