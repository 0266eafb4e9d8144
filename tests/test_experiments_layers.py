"""The experiments' building blocks against independent oracles (no training).

- LocallyConnected2d against its NumPy reference definition (a loop over output positions), against
  ``torch.nn.functional.conv2d`` when every position holds the same filters, and its gradients
  against finite differences (``torch.autograd.gradcheck``) and autograd of a loop reference;
- its parameter count against the summary's ``params_unshared`` of the convolution it unshares;
- the stack block's parameters against 27C² / 49C² and its receptive field against 7, from the
  summary and by brute force;
- the first-filters measures on filters whose answer is known by construction.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from convlens import models
from convlens.anatomy import summary
from convlens.errors import ConvlensError
from convlens.experiments.filter_measures import colour_opponency, orientation_index
from convlens.experiments.stack import brute_force_field
from convlens.models.locally_connected import LocallyConnected2d

GEOMETRIES = [
    # (C_in, C_out, k, H, W, stride, padding, bias)
    (1, 4, 5, 12, 12, 1, 0, True),
    (3, 2, 3, 9, 7, 2, 1, True),
    (2, 3, 4, 10, 11, 3, 2, False),
]
# finite differences perturb every weight: small layers keep gradcheck quick
GRAD_GEOMETRIES = [
    (1, 2, 3, 5, 5, 1, 0, True),
    (2, 2, 3, 6, 5, 2, 1, True),
    (2, 3, 2, 5, 6, 1, 1, False),
]


def numpy_locally_connected(
    x: np.ndarray, w: np.ndarray, b: np.ndarray | None, k: int, stride: int, padding: int
) -> np.ndarray:
    """The definition: y[n, o, i, j] = b[o, i, j] + sum w[(i, j), o, c, u, v] x_pad[n, c, i s + u, j s + v]."""
    n, c, h, wd = x.shape
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    oh = (h + 2 * padding - k) // stride + 1
    ow = (wd + 2 * padding - k) // stride + 1
    c_out = w.shape[1]
    y = np.zeros((n, c_out, oh, ow))
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride : i * stride + k, j * stride : j * stride + k]  # N, C, k, k
            filt = w[i * ow + j].reshape(c_out, c, k, k)
            y[:, :, i, j] = np.einsum("ncuv,ocuv->no", patch, filt)
            if b is not None:
                y[:, :, i, j] += b[:, i, j]
    return y


def torch_loop_reference(
    x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, k: int, stride: int, padding: int
) -> torch.Tensor:
    """The same definition in torch (loops, no unfold), so autograd gives the reference gradients."""
    n, c, h, wd = x.shape
    xp = F.pad(x, (padding, padding, padding, padding))
    oh = (h + 2 * padding - k) // stride + 1
    ow = (wd + 2 * padding - k) // stride + 1
    c_out = w.shape[1]
    cols = []
    for i in range(oh):
        for j in range(ow):
            patch = xp[:, :, i * stride : i * stride + k, j * stride : j * stride + k]
            filt = w[i * ow + j].reshape(c_out, c, k, k)
            cols.append((patch[:, None] * filt[None]).sum(dim=(2, 3, 4)))  # N x C_out
    y = torch.stack(cols, dim=-1).reshape(n, c_out, oh, ow)
    return y if b is None else y + b


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_locally_connected_equals_numpy_reference(geometry: tuple) -> None:
    c_in, c_out, k, h, w, s, p, bias = geometry
    torch.manual_seed(0)
    layer = LocallyConnected2d(c_in, c_out, k, (h, w), stride=s, padding=p, bias=bias).double()
    x = torch.randn(3, c_in, h, w, dtype=torch.float64)
    ref = numpy_locally_connected(
        x.numpy(),
        layer.weight.detach().numpy(),
        None if layer.bias is None else layer.bias.detach().numpy(),
        k,
        s,
        p,
    )
    np.testing.assert_allclose(layer(x).detach().numpy(), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("geometry", GRAD_GEOMETRIES)
def test_locally_connected_gradients(geometry: tuple) -> None:
    c_in, c_out, k, h, w, s, p, bias = geometry
    torch.manual_seed(1)
    layer = LocallyConnected2d(c_in, c_out, k, (h, w), stride=s, padding=p, bias=bias).double()
    x = torch.randn(2, c_in, h, w, dtype=torch.float64, requires_grad=True)
    # finite differences against the analytic gradient, for input, weights and bias together
    params = (layer.weight,) if layer.bias is None else (layer.weight, layer.bias)
    assert torch.autograd.gradcheck(lambda xx, *ps: layer(xx), (x, *params), eps=1e-6, atol=1e-6)
    # and against autograd of the loop reference
    g = torch.randn(2, c_out, *layer.output_size, dtype=torch.float64)
    ours = torch.autograd.grad((layer(x) * g).sum(), (x, *params))
    ref = torch.autograd.grad(
        (torch_loop_reference(x, layer.weight, layer.bias, k, s, p) * g).sum(), (x, *params)
    )
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_locally_connected_with_shared_weights_is_a_convolution() -> None:
    torch.manual_seed(2)
    conv = nn.Conv2d(3, 5, 3, stride=2, padding=1)
    local = LocallyConnected2d(3, 5, 3, (9, 9), stride=2, padding=1)
    with torch.no_grad():
        local.weight.copy_(conv.weight.reshape(5, -1).expand_as(local.weight))
        local.bias.copy_(conv.bias.view(5, 1, 1).expand_as(local.bias))  # type: ignore[union-attr]
    x = torch.randn(4, 3, 9, 9)
    torch.testing.assert_close(local(x), conv(x), rtol=1e-5, atol=1e-5)
    assert local.filters_at(1, 2).shape == conv.weight.shape


@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_parameter_count_is_the_summarys_params_unshared(geometry: tuple) -> None:
    c_in, c_out, k, h, w, s, p, bias = geometry
    conv = nn.Conv2d(c_in, c_out, k, stride=s, padding=p, bias=bias)
    local = LocallyConnected2d(c_in, c_out, k, (h, w), stride=s, padding=p, bias=bias)
    unshared = summary(nn.Sequential(conv), (c_in, h, w)).layers[0].params_unshared
    assert sum(q.numel() for q in local.parameters()) == unshared
    with pytest.warns(UserWarning):  # unfold: the summary cannot follow its receptive field
        row = summary(nn.Sequential(local), (c_in, h, w)).layers[0]
    assert row.params == row.params_unshared == unshared


def test_locally_connected_rejects_a_wrong_input_size() -> None:
    from convlens.errors import ConvlensError

    layer = LocallyConnected2d(1, 2, 3, (8, 8))
    with pytest.raises(ConvlensError, match="built for 8x8"):
        layer(torch.zeros(1, 1, 9, 9))
    with pytest.raises(ConvlensError, match="does not fit"):
        LocallyConnected2d(1, 2, 5, (3, 3))


def test_sharingnet_twins_differ_only_in_the_first_layer() -> None:
    shared = models.create("sharingnet", in_channels=1, shared=True)
    local = models.create("sharingnet", in_channels=1, shared=False)
    s, u = summary(shared, (1, 28, 28)), summary(local, (1, 28, 28), warn=False)
    assert s["layer1"].params_unshared == u["layer1"].params == 24 * 24 * 16 * (25 + 1)
    others = lambda m: {k: v.shape for k, v in m.state_dict().items() if "layer1" not in k}  # noqa: E731
    assert others(shared) == others(local)


@pytest.mark.parametrize("c", [8, 32])
def test_stack_block_parameters_and_field(c: int) -> None:
    torch.manual_seed(0)
    for kernel, factor in ((3, 27), (7, 49)):
        block = models.create("stacknet", kernel=kernel, width=c).get_submodule("block")
        s = summary(block, (c, 16, 16))
        assert s.totals["params"] == factor * c * c
        assert s.totals["macs"] == factor * c * c * 16 * 16
        convs = [r for r in s.layers if r.type == "Conv2d"]
        assert convs[-1].rf is not None and convs[-1].rf.size == (7, 7)
        assert brute_force_field(block, convs[-1].name, c) == 7


def test_lenet5_strided_differs_from_lenet5_only_in_subsampling() -> None:
    plain = models.create("lenet5", in_channels=1)
    strided = models.create("lenet5_strided", in_channels=1)
    extra = {k for k in strided.state_dict() if k not in plain.state_dict()}
    assert extra == {"pool1.weight", "pool1.bias", "pool2.weight", "pool2.bias"}
    assert strided(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def _grating(theta: float, k: int = 7) -> np.ndarray:
    v, u = np.mgrid[0:k, 0:k] - (k - 1) / 2
    return np.cos(1.6 * (u * np.cos(theta) + v * np.sin(theta)))


def test_orientation_index_on_known_filters() -> None:
    rng = np.random.default_rng(0)
    gratings = np.stack([np.stack([_grating(t)] * 3) for t in (0.0, np.pi / 4, np.pi / 2)])
    v, u = np.mgrid[0:7, 0:7] - 3
    blob = np.exp(-(u**2 + v**2) / 4.0) - np.exp(
        -(u**2 + v**2) / 12.0
    )  # centre-surround: no orientation
    noise = rng.normal(size=(200, 3, 7, 7))
    o_grating = orientation_index(gratings)
    o_blob = orientation_index(np.stack([np.stack([blob] * 3)]))
    o_noise = orientation_index(noise)
    # a grating stands far above white noise, a centre-surround blob below its median
    assert (o_grating > 0.4).all()
    assert (o_grating > np.percentile(o_noise, 99)).all()
    assert o_blob[0] < np.median(o_noise)
    assert np.median(o_noise) < 0.3
    assert orientation_index(np.ones((1, 3, 5, 5)))[0] == 0.0  # a flat colour: no energy


def test_colour_opponency_on_known_filters() -> None:
    g = _grating(0.3)
    grey = np.stack([g, g, g])[None]
    red_green = np.stack([g, -g, np.zeros_like(g)])[None]
    half = np.stack([g, -0.5 * g + 0.5 * _grating(1.2), g])[None]
    assert colour_opponency(grey)[0] == pytest.approx(0.0, abs=1e-9)
    assert colour_opponency(red_green)[0] == pytest.approx(1.0)
    assert 0.1 < colour_opponency(half)[0] < 0.9


def test_stack_extra_arms_parameters() -> None:
    c = 32
    linear = models.create("stacknet", kernel=3, width=c, linear=True).get_submodule("block")
    narrow = models.create("stacknet", kernel=7, width=c, block_width=18).get_submodule("block")
    assert sum(p.numel() for p in linear.parameters()) == 27 * c * c
    assert sum(isinstance(m, nn.ReLU) for m in linear.modules()) == 1  # after the last 3x3 only
    assert sum(p.numel() for p in narrow.parameters()) == 49 * c * 18
    x = torch.randn(2, c, 16, 16)
    # without ReLUs between them, the three 3x3 convolutions are one linear map: f(2x) = 2 f(x)
    # before the final ReLU
    pre = linear[:3]
    assert torch.allclose(pre(2 * x), 2 * pre(x), atol=1e-4)
    with pytest.raises(ConvlensError):
        models.create("stacknet", kernel=7, linear=True)


def test_sharingnet_lr_multiplier_is_a_reparametrisation() -> None:
    torch.manual_seed(0)
    plain = models.create("sharingnet", in_channels=1, shared=False)
    torch.manual_seed(0)
    fast = models.create("sharingnet", in_channels=1, shared=False, layer1_lr=16.0)
    x = torch.randn(3, 1, 28, 28)
    assert torch.allclose(plain(x), fast(x), atol=1e-5)  # the same function at initialisation
    assert torch.allclose(fast.layer1_weight(), plain.layer1.weight)
    # one SGD step (lr 1, no momentum) moves the effective weights 16x as far
    for m in (plain, fast):
        m.zero_grad()
        F.cross_entropy(m(x), torch.tensor([0, 1, 2])).backward()
    step_plain = plain.layer1.weight.grad
    v, s = fast.layer1.weight, fast.layer1_scale
    step_fast = s * v.grad  # w = s v, v -= lr g_v  =>  w moves by s g_v
    assert torch.allclose(step_fast, 16.0 * step_plain, rtol=1e-4, atol=1e-9)
