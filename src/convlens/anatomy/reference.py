"""A NumPy reference of the layers of a CNN, forward and backward, written from the definitions.

Nothing here is clever: every function loops over the output positions and, at each one, multiplies
the filter with the receptive input and sums (or takes the max, or the mean). It is slow on purpose,
so that it can be read next to the formulas of a course and trusted as the oracle for the arithmetic
that :mod:`convlens.anatomy.explain` prints; ``tests/test_reference.py`` checks every function
against torch (forward) and torch autograd (backward) to 1e-5.

Shapes follow PyTorch: images (N, C, H, W), conv weights (F, C / groups, kh, kw), linear weights
(out, in). An output size is ``floor((W - K_eff + 2P) / S) + 1`` with ``K_eff = D (K - 1) + 1``:
PyTorch floors, so when the windows do not tile the padded input the last rows and columns are
never read.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

Array = NDArray[np.float64]
Pair = int | tuple[int, int]


def _pair(v: Pair) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (int(v[0]), int(v[1]))


def output_size(
    size: int, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1
) -> int:
    """Units along one axis: ``floor((size + 2 padding - dilation (kernel - 1) - 1) / stride) + 1``."""
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _pad(x: Array, padding: tuple[int, int], value: float = 0.0) -> Array:
    ph, pw = padding
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


def _windows(
    h: int, w: int, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int]
) -> tuple[int, int, list[tuple[int, int, slice, slice]]]:
    """Output size and, per output position (i, j), the rows/cols it reads of the padded input."""
    oh = (h - dilation[0] * (kernel[0] - 1) - 1) // stride[0] + 1
    ow = (w - dilation[1] * (kernel[1] - 1) - 1) // stride[1] + 1
    if oh < 1 or ow < 1:
        raise ValueError(f"a {kernel[0]}x{kernel[1]} window does not fit a {h}x{w} input")
    positions = []
    for i in range(oh):
        for j in range(ow):
            r0, c0 = i * stride[0], j * stride[1]
            rows = slice(r0, r0 + dilation[0] * (kernel[0] - 1) + 1, dilation[0])
            cols = slice(c0, c0 + dilation[1] * (kernel[1] - 1) + 1, dilation[1])
            positions.append((i, j, rows, cols))
    return oh, ow, positions


# -- convolution ------------------------------------------------------------------------------


def conv2d_forward(
    x: Array,
    w: Array,
    b: Array | None = None,
    stride: Pair = 1,
    padding: Pair = 0,
    dilation: Pair = 1,
    groups: int = 1,
) -> Array:
    """y[n, f, i, j] = b[f] + sum over (c, u, v) of w[f, c, u, v] * x_padded[n, c, i S + u D, j S + v D]."""
    n = x.shape[0]
    f, cg, kh, kw = w.shape
    xp = _pad(x, _pair(padding))  # (N, C, H + 2P, W + 2P)
    oh, ow, positions = _windows(xp.shape[2], xp.shape[3], (kh, kw), _pair(stride), _pair(dilation))
    fg = f // groups  # filters per group; group g reads channels g*cg .. (g+1)*cg - 1
    y = np.zeros((n, f, oh, ow))
    for i, j, rows, cols in positions:
        for g in range(groups):
            patch = xp[:, g * cg : (g + 1) * cg, rows, cols]  # (N, cg, kh, kw): the receptive input
            filters = w[g * fg : (g + 1) * fg]  # (fg, cg, kh, kw)
            # multiply each filter with the patch and sum: (N, fg)
            y[:, g * fg : (g + 1) * fg, i, j] = np.einsum("nchw,fchw->nf", patch, filters)
    if b is not None:
        y += b[None, :, None, None]
    return y


def conv2d_backward(
    dy: Array,
    x: Array,
    w: Array,
    stride: Pair = 1,
    padding: Pair = 0,
    dilation: Pair = 1,
    groups: int = 1,
) -> tuple[Array, Array, Array]:
    """Gradients (dx, dw, db) of a loss given dy = dL/dy, by the chain rule at each output position.

    Each output y[n, f, i, j] received w[f] times its patch: so its gradient flows back as
    dy * w[f] into that patch of dx, and as dy * patch into dw[f]; db[f] sums dy over n, i, j.
    """
    f, cg, kh, kw = w.shape
    ph, pw = _pair(padding)
    xp = _pad(x, (ph, pw))
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    _, _, positions = _windows(xp.shape[2], xp.shape[3], (kh, kw), _pair(stride), _pair(dilation))
    fg = f // groups
    for i, j, rows, cols in positions:
        for g in range(groups):
            ch, fs = slice(g * cg, (g + 1) * cg), slice(g * fg, (g + 1) * fg)
            d = dy[:, fs, i, j]  # (N, fg)
            dxp[:, ch, rows, cols] += np.einsum("nf,fchw->nchw", d, w[fs])
            dw[fs] += np.einsum("nf,nchw->fchw", d, xp[:, ch, rows, cols])
    dx = dxp[:, :, ph : ph + x.shape[2], pw : pw + x.shape[3]]
    db = dy.sum(axis=(0, 2, 3))
    return dx, dw, db


@dataclass(frozen=True)
class Neuron:
    """One output neuron of a convolution computed by hand (see :func:`conv2d_neuron`).

    Attributes:
        patch: (C, kh, kw) the receptive input the filter is laid on (padding zeros included).
        weights: (C, kh, kw) the filter.
        products: patch * weights, element by element.
        bias: the filter's bias (0 when it has none).
        value: products.sum() + bias.
        rows, cols: the input rows and columns read (unpadded coordinates; negative = padding).
    """

    patch: Array
    weights: Array
    products: Array
    bias: float
    value: float
    rows: range
    cols: range


def conv2d_neuron(
    x: Array,
    w: Array,
    b: Array | None,
    f: int,
    i: int,
    j: int,
    stride: Pair = 1,
    padding: Pair = 0,
) -> Neuron:
    """Output neuron (filter f, row i, col j) of the convolution of one image x (C, H, W) by w."""
    (sh, sw), (ph, pw) = _pair(stride), _pair(padding)
    _, kh, kw = w.shape[1:]
    xp = _pad(x[None], (ph, pw))[0]  # (C, H + 2P, W + 2P)
    patch = xp[:, i * sh : i * sh + kh, j * sw : j * sw + kw]
    if patch.shape[1:] != (kh, kw):
        raise ValueError(f"neuron ({i}, {j}) lies outside the output")
    products = patch * w[f]
    bias = float(b[f]) if b is not None else 0.0
    return Neuron(
        patch=patch,
        weights=w[f],
        products=products,
        bias=bias,
        value=float(products.sum()) + bias,
        rows=range(i * sh - ph, i * sh - ph + kh),
        cols=range(j * sw - pw, j * sw - pw + kw),
    )


# -- pooling ----------------------------------------------------------------------------------


def max_pool2d_forward(
    x: Array, kernel: Pair, stride: Pair | None = None, padding: Pair = 0
) -> Array:
    """y[n, c, i, j] = the max of the window at (i, j); padding is -inf, so it never wins."""
    k = _pair(kernel)
    xp = _pad(x, _pair(padding), -np.inf)
    oh, ow, positions = _windows(xp.shape[2], xp.shape[3], k, _pair(stride or kernel), (1, 1))
    y = np.zeros((*x.shape[:2], oh, ow))
    for i, j, rows, cols in positions:
        y[:, :, i, j] = xp[:, :, rows, cols].max(axis=(2, 3))
    return y


def max_pool2d_backward(
    dy: Array, x: Array, kernel: Pair, stride: Pair | None = None, padding: Pair = 0
) -> Array:
    """dx: each window's gradient goes to its (first) maximum, the one input that made the output."""
    k = _pair(kernel)
    ph, pw = _pair(padding)
    xp = _pad(x, (ph, pw), -np.inf)
    dxp = np.zeros_like(xp)
    _, _, positions = _windows(xp.shape[2], xp.shape[3], k, _pair(stride or kernel), (1, 1))
    n, c = x.shape[:2]
    for i, j, rows, cols in positions:
        window = xp[:, :, rows, cols].reshape(n, c, -1)  # (N, C, kh * kw)
        first_max = window.argmax(axis=2)  # PyTorch too keeps the first maximum in scan order
        u, v = np.unravel_index(first_max, k)
        for a in range(n):
            for ch in range(c):
                dxp[a, ch, rows.start + u[a, ch], cols.start + v[a, ch]] += dy[a, ch, i, j]
    return dxp[:, :, ph : ph + x.shape[2], pw : pw + x.shape[3]]


def avg_pool2d_forward(
    x: Array, kernel: Pair, stride: Pair | None = None, padding: Pair = 0
) -> Array:
    """y = the mean of the window, padding zeros included (PyTorch's ``count_include_pad=True``)."""
    k = _pair(kernel)
    xp = _pad(x, _pair(padding))
    oh, ow, positions = _windows(xp.shape[2], xp.shape[3], k, _pair(stride or kernel), (1, 1))
    y = np.zeros((*x.shape[:2], oh, ow))
    for i, j, rows, cols in positions:
        y[:, :, i, j] = xp[:, :, rows, cols].sum(axis=(2, 3)) / (k[0] * k[1])
    return y


def avg_pool2d_backward(
    dy: Array, x: Array, kernel: Pair, stride: Pair | None = None, padding: Pair = 0
) -> Array:
    """dx: each window spreads its gradient evenly, dy / (kh kw), over its inputs."""
    k = _pair(kernel)
    ph, pw = _pair(padding)
    dxp = np.zeros_like(_pad(x, (ph, pw)))
    _, _, positions = _windows(dxp.shape[2], dxp.shape[3], k, _pair(stride or kernel), (1, 1))
    for i, j, rows, cols in positions:
        dxp[:, :, rows, cols] += dy[:, :, i, j][:, :, None, None] / (k[0] * k[1])
    return dxp[:, :, ph : ph + x.shape[2], pw : pw + x.shape[3]]


# -- activation and fully-connected ---------------------------------------------------------------


def relu_forward(x: Array) -> Array:
    """max(0, x), elementwise."""
    return np.maximum(x, 0.0)


def relu_backward(dy: Array, x: Array) -> Array:
    """The gradient passes where the input was positive (PyTorch: 0 at exactly 0)."""
    return dy * (x > 0)


def linear_forward(x: Array, w: Array, b: Array | None = None) -> Array:
    """y[n, o] = b[o] + sum over k of w[o, k] * x[n, k]: every output neuron sees every input."""
    y = np.zeros((x.shape[0], w.shape[0]))
    for o in range(w.shape[0]):  # one neuron at a time: its weights times the whole input
        y[:, o] = (x * w[o]).sum(axis=1)
    if b is not None:
        y += b
    return y


def linear_backward(dy: Array, x: Array, w: Array) -> tuple[Array, Array, Array]:
    """(dx, dw, db): dx = dy W, dw = dy^T x, db = dy summed over the batch."""
    dx = np.zeros_like(x)
    dw = np.zeros_like(w)
    for o in range(w.shape[0]):
        dx += dy[:, o : o + 1] * w[o]
        dw[o] = (dy[:, o : o + 1] * x).sum(axis=0)
    return dx, dw, dy.sum(axis=0)
