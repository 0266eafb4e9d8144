"""The NumPy reference against torch (forward) and torch autograd (backward), to 1e-5.

Hypothesis draws the geometries (kernel, stride, padding, dilation, groups, sizes that do and do not
tile); values are float64 so that the comparison measures the definitions, not rounding.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from convlens.anatomy import reference as ref

TOL = 1e-5
SETTINGS = settings(max_examples=40, deadline=None)


def _t(a: np.ndarray, grad: bool = True) -> torch.Tensor:
    return torch.tensor(a, dtype=torch.float64, requires_grad=grad)


@st.composite
def conv_geometry(draw: st.DrawFn) -> dict[str, int]:
    groups = draw(st.sampled_from([1, 2]))
    k = draw(st.integers(1, 4))
    d = draw(st.integers(1, 2))
    p = draw(st.integers(0, k // 2 + 1))
    s = draw(st.integers(1, 3))
    min_size = max(1, d * (k - 1) + 1 - 2 * p)
    h = draw(st.integers(min_size, min_size + 6))
    w = draw(st.integers(min_size, min_size + 6))
    return {
        "n": draw(st.integers(1, 2)),
        "c": groups * draw(st.integers(1, 2)),
        "f": groups * draw(st.integers(1, 2)),
        "h": h,
        "w": w,
        "k": k,
        "s": s,
        "p": p,
        "d": d,
        "groups": groups,
        "seed": draw(st.integers(0, 2**16)),
    }


@SETTINGS
@given(conv_geometry(), st.booleans())
def test_conv2d_forward_and_backward_match_torch(g: dict[str, int], bias: bool) -> None:
    rng = np.random.default_rng(g["seed"])
    x = rng.standard_normal((g["n"], g["c"], g["h"], g["w"]))
    w = rng.standard_normal((g["f"], g["c"] // g["groups"], g["k"], g["k"]))
    b = rng.standard_normal(g["f"]) if bias else None
    geo = {"stride": g["s"], "padding": g["p"], "dilation": g["d"], "groups": g["groups"]}
    xt, wt = _t(x), _t(w)
    bt = _t(b) if b is not None else None
    yt = F.conv2d(xt, wt, bt, **geo)
    y = ref.conv2d_forward(x, w, b, **geo)
    assert y.shape == tuple(yt.shape)
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=TOL, rtol=TOL)

    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    dx, dw, db = ref.conv2d_backward(dy, x, w, **geo)
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=TOL, rtol=TOL)  # type: ignore[union-attr]
    np.testing.assert_allclose(dw, wt.grad.numpy(), atol=TOL, rtol=TOL)  # type: ignore[union-attr]
    if bt is not None:
        np.testing.assert_allclose(db, bt.grad.numpy(), atol=TOL, rtol=TOL)  # type: ignore[union-attr]
    assert y.shape[2] == ref.output_size(g["h"], g["k"], g["s"], g["p"], g["d"])


@st.composite
def pool_geometry(draw: st.DrawFn) -> dict[str, int]:
    k = draw(st.integers(1, 4))
    p = draw(st.integers(0, k // 2))  # PyTorch: padding at most half the kernel
    s = draw(st.integers(1, 3))
    min_size = max(1, k - 2 * p)
    return {
        "k": k,
        "s": s,
        "p": p,
        "h": draw(st.integers(min_size, min_size + 6)),
        "w": draw(st.integers(min_size, min_size + 6)),
        "seed": draw(st.integers(0, 2**16)),
    }


@SETTINGS
@given(pool_geometry())
def test_max_pool_matches_torch(g: dict[str, int]) -> None:
    rng = np.random.default_rng(g["seed"])
    x = rng.standard_normal((2, 3, g["h"], g["w"]))  # continuous values: no ties
    xt = _t(x)
    yt = F.max_pool2d(xt, g["k"], g["s"], g["p"])
    y = ref.max_pool2d_forward(x, g["k"], g["s"], g["p"])
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=TOL)
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    dx = ref.max_pool2d_backward(dy, x, g["k"], g["s"], g["p"])
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=TOL)  # type: ignore[union-attr]


@SETTINGS
@given(pool_geometry())
def test_avg_pool_matches_torch(g: dict[str, int]) -> None:
    rng = np.random.default_rng(g["seed"])
    x = rng.standard_normal((2, 3, g["h"], g["w"]))
    xt = _t(x)
    yt = F.avg_pool2d(xt, g["k"], g["s"], g["p"])  # count_include_pad=True, as the reference
    y = ref.avg_pool2d_forward(x, g["k"], g["s"], g["p"])
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=TOL)
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    dx = ref.avg_pool2d_backward(dy, x, g["k"], g["s"], g["p"])
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=TOL)  # type: ignore[union-attr]


def test_max_pool_ties_go_to_the_first_maximum_like_torch() -> None:
    x = np.ones((1, 1, 4, 4))
    xt = _t(x)
    F.max_pool2d(xt, 2).sum().backward()
    dx = ref.max_pool2d_backward(np.ones((1, 1, 2, 2)), x, 2)
    np.testing.assert_array_equal(dx, xt.grad.numpy())  # type: ignore[union-attr]


@SETTINGS
@given(st.integers(1, 4), st.integers(1, 7), st.integers(1, 6), st.integers(0, 2**16))
def test_relu_and_linear_match_torch(n: int, d_in: int, d_out: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d_in))
    w = rng.standard_normal((d_out, d_in))
    b = rng.standard_normal(d_out)
    xt, wt, bt = _t(x), _t(w), _t(b)
    yt = F.relu(F.linear(xt, wt, bt))
    h = ref.linear_forward(x, w, b)
    y = ref.relu_forward(h)
    np.testing.assert_allclose(y, yt.detach().numpy(), atol=TOL)
    dy = rng.standard_normal(y.shape)
    yt.backward(torch.tensor(dy))
    dx, dw, db = ref.linear_backward(ref.relu_backward(dy, h), x, w)
    np.testing.assert_allclose(dx, xt.grad.numpy(), atol=TOL)  # type: ignore[union-attr]
    np.testing.assert_allclose(dw, wt.grad.numpy(), atol=TOL)  # type: ignore[union-attr]
    np.testing.assert_allclose(db, bt.grad.numpy(), atol=TOL)  # type: ignore[union-attr]


def test_one_neuron_by_hand_equals_torch_alexnet_conv1() -> None:
    rng = np.random.default_rng(0)
    x = rng.integers(-3, 4, (3, 227, 227)).astype(np.float64)
    w = rng.integers(-2, 3, (4, 3, 11, 11)).astype(np.float64)
    b = rng.integers(-2, 3, 4).astype(np.float64)
    y = F.conv2d(_t(x[None], False), _t(w, False), _t(b, False), stride=4)
    assert tuple(y.shape) == (1, 4, 55, 55)
    for f, i, j in [(0, 0, 0), (3, 54, 54), (2, 10, 31)]:
        neuron = ref.conv2d_neuron(x, w, b, f, i, j, stride=4)
        assert neuron.patch.shape == (3, 11, 11) and neuron.products.size == 363
        assert neuron.value == pytest.approx(float(y[0, f, i, j]), abs=TOL)
        assert neuron.rows == range(4 * i, 4 * i + 11)


def test_output_size_floors_like_torch_when_windows_do_not_tile() -> None:
    # (224 - 11 + 0) / 4 + 1 = 54.25: PyTorch floors to 54
    assert ref.output_size(224, 11, 4, 0) == 54
    assert (
        F.conv2d(torch.zeros(1, 1, 224, 224), torch.zeros(1, 1, 11, 11), stride=4).shape[-1] == 54
    )
    with pytest.raises(ValueError, match="does not fit"):
        ref.conv2d_forward(np.zeros((1, 1, 2, 2)), np.zeros((1, 1, 3, 3)))
