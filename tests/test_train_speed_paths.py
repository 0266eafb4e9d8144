"""The faster training paths compute what the plain ones compute.

Oracle: PyTorch's reference for-loop SGD/AdamW (``foreach=False``) for the fused optimisers; the
training loop calls the model's own ``forward``. Speed is never asserted here.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from convlens import models
from convlens.train import recipe
from convlens.train.runtime import Runtime
from convlens.train.setup import optimizer


def _grads(model: nn.Module, out: torch.Tensor, g: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    out.backward(g)
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_forward_still_calls_the_layers_so_hooks_see_them() -> None:
    model = models.create("lenet5", in_channels=1)
    seen: list[tuple[int, ...]] = []
    handle = model.act1.register_forward_hook(lambda m, i, o: seen.append(tuple(o.shape)))
    try:
        model(torch.randn(2, 1, 28, 28))
    finally:
        handle.remove()
    assert seen == [(2, 6, 28, 28)]  # ReLU before pooling, as the architecture reads


def test_runtime_trains_the_models_own_forward_on_one_cpu_process() -> None:
    rt = Runtime(device=torch.device("cpu"))
    lenet = models.create("lenet5", in_channels=1)
    assert rt.prepare(lenet) is lenet  # what the loop calls is the module a reader sees


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_fused_optimizer_steps_like_the_reference_loop(name: str) -> None:
    torch.manual_seed(0)
    model = models.create("lenet5", in_channels=1)
    cfg = recipe("lenet5", "fashion-mnist", optimizer=name, lr=0.05)
    fused = optimizer(model, cfg)
    assert all(g["fused"] for g in fused.param_groups)
    twin = models.create("lenet5", in_channels=1)
    twin.load_state_dict(model.state_dict())
    reference = optimizer(twin, cfg)
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
