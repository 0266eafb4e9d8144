"""The effective receptive field against closed forms.

Oracle: for a stack of n linear 3x3 convolutions with every weight 1/9, the gradient of one unit
w.r.t. the input does not depend on the input: it is the n-fold convolution of a 3x3 box, the outer
product of the coefficients of (1 + z + z^2)^n (NumPy's ``convolve``), the discrete Gaussian that
Luo et al. 2016 derive. Its width grows like sqrt(n), while the theoretical field grows like n.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from convlens.anatomy import effective_receptive_field
from convlens.anatomy.erf import mass_radius
from convlens.errors import ConvlensError


def _uniform_stack(depth: int) -> nn.Sequential:
    net = nn.Sequential(*[nn.Conv2d(1, 1, 3, padding=1, bias=False) for _ in range(depth)])
    for conv in net:
        nn.init.constant_(conv.weight, 1 / 9)
    return net


def _box_power(depth: int) -> np.ndarray:
    p = np.array([1.0])
    for _ in range(depth):
        p = np.convolve(p, [1.0, 1.0, 1.0])
    return np.outer(p, p) / np.outer(p, p).sum()


@pytest.mark.parametrize("depth", [1, 4, 7])
def test_linear_stack_map_is_the_binomial_closed_form(depth: int) -> None:
    size = 31
    erf = effective_receptive_field(_uniform_stack(depth), str(depth - 1), (1, size, size), n=3)
    expected = np.zeros((size, size))
    c, r = size // 2, depth  # centre unit 15, field 15 - depth .. 15 + depth
    expected[c - r : c + r + 1, c - r : c + r + 1] = _box_power(depth)
    np.testing.assert_allclose(erf.map, expected, atol=1e-6)
    assert erf.unit == (c, c) and erf.center == (c, c)
    assert erf.theoretical.size == (2 * depth + 1, 2 * depth + 1)
    assert erf.map.sum() == pytest.approx(1.0)


def test_effective_field_grows_like_sqrt_of_depth() -> None:
    r4 = effective_receptive_field(_uniform_stack(4), "3", (1, 65, 65), n=1).radius
    r16 = effective_receptive_field(_uniform_stack(16), "15", (1, 65, 65), n=1).radius
    # theoretical half-widths grow 4 -> 16 (x4); the effective radius about x2 (sqrt 4)
    assert 1.6 < r16 / r4 < 2.5
    assert r16 < 16


def test_mass_radius_by_counting() -> None:
    w = np.zeros((9, 9))
    w[4, 4], w[4, 6], w[0, 0] = 0.90, 0.06, 0.04  # 96 % within distance 2 of the centre
    assert mass_radius(w, (4.0, 4.0), 0.95) == 2.0
    assert mass_radius(w, (4.0, 4.0), 0.90) == 0.0
    assert mass_radius(w, (4.0, 4.0), 1.0) == pytest.approx(np.hypot(4, 4))


def test_nonlinear_net_stays_inside_the_theoretical_field_and_model_is_untouched() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
    )
    net.train()
    before = [p.detach().clone() for p in net.parameters()]
    erf = effective_receptive_field(net, "4", (3, 32, 32), n=8, batch_size=4, seed=1)
    top, left, bottom, right = erf.theoretical.clipped_box(*erf.unit, (32, 32))
    inside = np.zeros_like(erf.map, dtype=bool)
    inside[top:bottom, left:right] = True
    assert erf.map[~inside].sum() == 0 and erf.map[inside].sum() == pytest.approx(1.0)
    assert net.training and all(p.grad is None for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    again = effective_receptive_field(net, "4", (3, 32, 32), n=8, batch_size=8, seed=1)
    np.testing.assert_allclose(erf.map, again.map, rtol=1e-5, atol=1e-9)  # batching changes nothing

    rand = effective_receptive_field(net, "4", (3, 32, 32), n=3, weights="random")
    assert rand.samples == 3 and rand.map.sum() == pytest.approx(1.0)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))


def test_errors() -> None:
    with pytest.raises(ConvlensError, match="no layer named 'conv9'"):
        effective_receptive_field(_uniform_stack(2), "conv9", (1, 8, 8))
    dead = _uniform_stack(2)
    nn.init.zeros_(dead[1].weight)
    with pytest.raises(ConvlensError, match="zero for every sample"):
        effective_receptive_field(dead, "1", (1, 8, 8), n=1)
