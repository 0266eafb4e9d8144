"""LeNet-5's C1 block in C (``convlens.models.lenet_kernels``) against PyTorch's own layers.

Oracle: ``relu(max_pool2d(conv2d(x, w, b, padding)))`` with PyTorch's kernels and autograd, for the
output and the weight and bias gradients; ties checked bit for bit with small integers in float32
(every sum exact). Where no C compiler exists the kernel must decline, and the model still trains.
"""

from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlens import models
from convlens.models import lenet_kernels
from convlens.models.lenet_kernels import conv_pool_relu


def _needs_kernels() -> None:
    if not (os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")):
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
    conv = nn.Conv2d(1, 6, 5, padding=2)
    x = torch.randn(64, 1, 28, 28)
    runs = []
    for _ in range(3):
        out = conv_pool_relu(x, conv, nn.MaxPool2d(2))
        assert out is not None
        runs.append(torch.autograd.grad(out.square().sum(), (conv.weight, conv.bias)))
    for other in runs[1:]:
        assert all(torch.equal(a, b) for a, b in zip(runs[0], other, strict=True))


@pytest.mark.parametrize(
    "case", ["input needs grad", "three channels", "float64", "stride 2", "avg pool", "3x3"]
)
def test_declines_what_it_does_not_compute(case: str) -> None:
    conv, pool = nn.Conv2d(1, 6, 5, padding=2), nn.MaxPool2d(2)
    x = torch.randn(2, 1, 28, 28)
    if case == "input needs grad":
        x.requires_grad_()
    elif case == "three channels":
        conv, x = nn.Conv2d(3, 6, 5, padding=2), torch.randn(2, 3, 28, 28)
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
