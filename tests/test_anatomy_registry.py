"""Across the zoo: the summary's shapes and totals equal a real forward pass (every module's output
shape, recorded by hooks) and `sum(p.numel())`.

One model per family and block type (the other depths are the same code with other numbers; the zoo's
own tests run forward and backward on every one). ImageNet models run at a reduced input (the real
forward is the expensive part); the published totals at 224 are checked in test_anatomy_summary.py.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import convlens.models as models
from convlens.anatomy import summary


def _small_input(name: str) -> tuple[int, int, int]:
    c, h, w = models.info(name).input_size
    if h <= 32:
        return c, h, w
    return (3, 96, 96) if name.startswith("alexnet") else (3, 64, 64)


REPRESENTATIVES = [
    "lenet5",
    "alexnet",
    "alexnet_owt",
    "vgg11_bn",
    "googlenet",
    "resnet18",
    "resnet50",
    "resnet20",
    "plain20",
]


@pytest.mark.parametrize("name", REPRESENTATIVES)
def test_summary_equals_real_forward(name: str) -> None:
    assert name in models.names()
    size = _small_input(name)
    model = models.create(name, num_classes=10, in_channels=size[0]).eval()
    s = summary(model, size, warn=False)
    assert s.totals["params"] == sum(p.numel() for p in model.parameters())

    modules = dict(model.named_modules())
    seen: dict[str, list[tuple[int, ...]]] = {}
    handles = []
    for row_name in {r.name for r in s.layers}:

        def record(_m: nn.Module, _i: object, out: object, row_name: str = row_name) -> None:
            if isinstance(out, torch.Tensor):
                seen.setdefault(row_name, []).append(tuple(out.shape[1:]))

        handles.append(modules[row_name].register_forward_hook(record))
    try:
        with torch.no_grad():
            y = model(torch.zeros(1, *size))
    finally:
        for h in handles:
            h.remove()
    assert s.output_shape == tuple(y.shape[1:]) == (10,)
    for row in s.layers:
        assert seen[row.name][row.call - 1] == row.output_shape, row.label
