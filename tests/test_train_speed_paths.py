"""The faster training paths compute what the plain ones compute.

Oracles: the module-by-module ``LeNet5.forward`` (PyTorch's own ``nn.Conv2d``, ``nn.ReLU``,
``nn.MaxPool2d``) for ``forward_fused``, outputs and every parameter gradient; PyTorch's reference
for-loop SGD/AdamW (``foreach=False``) for the fused optimisers. Speed is never asserted here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convlens import models
from convlens.errors import ConvlensError
from convlens.train import recipe
from convlens.train.loop import _optimizer
from convlens.train.runtime import FusedForward, Runtime


def _grads(model: nn.Module, out: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out.backward(g)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize(
    ("options", "side", "memory_format"),
    [
        ({"in_channels": 1}, 28, torch.contiguous_format),
        ({"in_channels": 1}, 28, torch.channels_last),  # the training layout of the recipe
        ({"in_channels": 3, "padding": 0, "num_classes": 7}, 32, torch.channels_last),
        ({"in_channels": 1, "pool": "avg", "activation": "tanh"}, 28, torch.contiguous_format),
    ],
)
def test_forward_fused_matches_forward_and_its_gradients(
    options: dict[str, object], side: int, memory_format: torch.memory_format
) -> None:
    torch.manual_seed(0)
    model = models.create("lenet5", **options).to(memory_format=memory_format)  # type: ignore[arg-type]
    x = torch.randn(16, model.conv1.in_channels, side, side).contiguous(memory_format=memory_format)
    ref = model(x)
    got = model.forward_fused(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(ref)
    ref_grads = _grads(model, model(x), g)
    got_grads = _grads(model, model.forward_fused(x), g)
    assert got_grads.keys() == ref_grads.keys() == dict(model.named_parameters()).keys()
    for name in ref_grads:
        torch.testing.assert_close(got_grads[name], ref_grads[name], rtol=1e-4, atol=1e-5)


def test_forward_fused_routes_gradients_of_tied_maxima_like_max_pool() -> None:
    """Small integers in float64: every sum is exact, so pooling windows hold exact ties (the
    constant background of Fashion-MNIST gives such ties). ReLU moved after the pooling must still
    send each window's gradient to the first maximum only, bit for bit."""
    torch.manual_seed(1)
    model = models.create("lenet5", in_channels=1).double()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randint(-2, 3, p.shape))
    x = torch.randint(0, 2, (8, 1, 28, 28)).double()
    x[:, :, :14] = 1.0  # a constant region: equal values in whole windows of C1 and C3
    ref = model(x)
    got = model.forward_fused(x)
    assert torch.equal(got, ref)
    g = torch.randint(-3, 4, ref.shape).double()
    ref_grads = _grads(model, model(x), g)
    got_grads = _grads(model, model.forward_fused(x), g)
    for name in ref_grads:
        assert torch.equal(got_grads[name], ref_grads[name]), name
    assert any(bool(v.abs().sum() > 0) for v in ref_grads.values())  # the test exercises something


def test_forward_fused_refuses_a_wrong_input_size_like_forward() -> None:
    model = models.create("lenet5", in_channels=3)  # padding 2: takes 28x28
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(ConvlensError, match="takes 28x28 inputs") as plain:
        model(x)
    with pytest.raises(ConvlensError, match="takes 28x28 inputs") as fused:
        model.forward_fused(x)
    assert str(fused.value) == str(plain.value)


def test_forward_still_calls_the_layers_so_hooks_see_them() -> None:
    model = models.create("lenet5", in_channels=1)
    seen: list[tuple[int, ...]] = []
    handle = model.act1.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    try:
        model(torch.randn(2, 1, 28, 28))
    finally:
        handle.remove()
    assert seen == [(2, 6, 28, 28)]  # ReLU before pooling, as the architecture reads


def test_runtime_trains_through_forward_fused_on_one_cpu_process() -> None:
    rt = Runtime(device=torch.device("cpu"))
    lenet = models.create("lenet5", in_channels=1)
    net = rt.prepare(lenet)
    assert isinstance(net, FusedForward) and net.model is lenet
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(net(x), lenet(x), rtol=1e-5, atol=1e-5)
    resnet = models.create("resnet20", in_channels=1)  # no forward_fused: called as it is
    assert rt.prepare(resnet) is resnet
    assert not isinstance(rt.prepare(models.create("lenet5"), compile=True), FusedForward)


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_optimizer_steps_like_the_reference_loop(name: str) -> None:
    torch.manual_seed(0)
    model = models.create("lenet5", in_channels=1)
    cfg = recipe("lenet5", "fashion-mnist", optimizer=name, lr=0.05)
    fused = _optimizer(model, cfg)
    assert all(g["fused"] for g in fused.param_groups)
    twin = models.create("lenet5", in_channels=1)
    twin.load_state_dict(model.state_dict())
    reference = _optimizer(twin, cfg)
    for g in reference.param_groups:
        g["fused"], g["foreach"] = False, False  # PyTorch's per-tensor Python loop
    for step in range(3):
        x = torch.randn(8, 1, 28, 28)
        for m, opt in ((model, fused), (twin, reference)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
        for (n, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=f"{n} after step {step}")
