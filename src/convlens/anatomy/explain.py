"""The arithmetic of one layer, written out as a teacher writes it on the board.

Each ``explain_*`` function checks its numbers, computes them, and returns the lines to print:
the formula, the formula with the numbers put in, and the result. Sizes are given the way the
notes write volumes, width x height x depth (``227x227x3``). The counts come from
:mod:`convlens.anatomy.reference` conventions (PyTorch's: an output size is floored), and
:func:`explain_neuron` recomputes one output neuron with the NumPy reference and compares it with
``torch.nn.functional.conv2d``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from convlens.errors import ConvlensError

if TYPE_CHECKING:
    import numpy as np


def _n(v: int) -> str:
    return f"{v:,}"


@dataclass(frozen=True)
class Volume:
    """A feature volume as the notes write it: width x height x depth."""

    width: int
    height: int
    depth: int

    def __str__(self) -> str:
        return f"{self.width}x{self.height}x{self.depth}"

    @property
    def size(self) -> int:
        """Number of values, W x H x D."""
        return self.width * self.height * self.depth


@dataclass(frozen=True)
class AxisArithmetic:
    """(W - K + 2P) / S + 1 along one axis, and what PyTorch does when it is not an integer."""

    size: int
    kernel: int
    stride: int
    padding: int

    @property
    def span(self) -> int:
        """W - K + 2P: how far the window travels."""
        return self.size - self.kernel + 2 * self.padding

    @property
    def remainder(self) -> int:
        """(W - K + 2P) mod S: padded-input pixels past the last window (0 when the windows tile)."""
        return self.span % self.stride

    @property
    def out(self) -> int:
        """floor((W - K + 2P) / S) + 1."""
        return self.span // self.stride + 1

    def lines(self, axis: str, unit: str) -> list[str]:
        """The formula with the numbers in, and a note on the floor when the windows do not tile."""
        w, k, p, s = self.size, self.kernel, self.padding, self.stride
        head = f"   {axis}: ({w} - {k} + 2x{p}) / {s} + 1 = {self.span} / {s} + 1"
        gaps = []
        if k < s and self.out > 1:  # e.g. ResNet's 1x1 convolutions at stride 2
            gaps = [
                f"      K < S: the windows leave gaps, {s - k} {unit}{'s' if s - k > 1 else ''} of "
                f"every {s} between two windows {'are' if s - k > 1 else 'is'} never read."
            ]
        if self.remainder == 0:
            return [f"{head} = {self.out}", *gaps]
        exact = self.span / s + 1
        last_start = (self.out - 1) * s - p  # in input coordinates (negative: inside the padding)
        first_unseen = last_start + k
        unseen = range(first_unseen, w + p)  # the last `remainder` pixels of the padded input
        real = [u for u in unseen if 0 <= u < w]
        parts = []
        if real:
            span = f"{real[0]}" if len(real) == 1 else f"{real[0]}..{real[-1]}"
            parts.append(f"{_plural(len(real), 'image ' + unit)} ({span})")
        if len(unseen) > len(real):
            parts.append(_plural(len(unseen) - len(real), "padding " + unit))
        verb = "is" if len(unseen) == 1 else "are"
        window = f"{unit}s {last_start}..{first_unseen - 1}" if k > 1 else f"{unit} {last_start}"
        return [
            f"{head} = {exact:g}: not an integer, the windows do not tile the input.",
            f"      {self.span} is not a multiple of {s}; PyTorch floors: "
            f"floor({self.span} / {s}) + 1 = {self.out} positions.",
            f"      The last window covers {window}, so "
            f"{' and '.join(parts)} {verb} never seen (the remainder {self.span} mod {s} = "
            f"{self.remainder}).",
            *gaps,
        ]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def _check_positive(**values: int) -> None:
    for name, v in values.items():
        if v < 1:
            raise ConvlensError(f"--{name} must be a positive integer, not {v}")


def _axes(
    volume: Volume, kernel: int, stride: int, padding: int
) -> tuple[AxisArithmetic, AxisArithmetic]:
    if padding < 0:
        raise ConvlensError(f"--pad must be 0 or more, not {padding}")
    _check_positive(kernel=kernel, stride=stride)
    ax_w = AxisArithmetic(volume.width, kernel, stride, padding)
    ax_h = AxisArithmetic(volume.height, kernel, stride, padding)
    if ax_w.span < 0 or ax_h.span < 0:
        raise ConvlensError(
            f"a {kernel}x{kernel} window does not fit a {volume.width}x{volume.height} input "
            f"with padding {padding}: W - K + 2P = {min(ax_w.span, ax_h.span)} < 0"
        )
    return ax_w, ax_h


def _size_lines(ax_w: AxisArithmetic, ax_h: AxisArithmetic) -> list[str]:
    if (ax_w.size, ax_w.remainder) == (ax_h.size, ax_h.remainder):
        return ax_w.lines("width = height", "pixel")
    return ax_w.lines("width", "column") + ax_h.lines("height", "row")


def explain_conv(volume: Volume, kernel: int, stride: int, padding: int, filters: int) -> list[str]:
    """A convolution layer: output size, neurons, weights per neuron, parameters with and without sharing."""
    _check_positive(filters=filters)
    ax_w, ax_h = _axes(volume, kernel, stride, padding)
    out = Volume(ax_w.out, ax_h.out, filters)
    neurons = out.size
    per_neuron = kernel * kernel * volume.depth
    shared = filters * (per_neuron + 1)
    unshared = neurons * (per_neuron + 1)
    lines = [
        f"Convolution: input {volume} (W x H x D), {filters} filters of {kernel}x{kernel}x{volume.depth}, "
        f"stride S = {stride}, padding P = {padding}",
        "",
        "1. Output size: (W - K + 2P) / S + 1",
        *_size_lines(ax_w, ax_h),
        f"   depth: one activation map per filter = {filters}",
        f"   output volume: {out}",
        "",
        f"2. Neurons: {out.width} x {out.height} x {filters} = {_n(neurons)}",
        "",
        f"3. Weights per neuron: K x K x D = {kernel} x {kernel} x {volume.depth} = {_n(per_neuron)}, "
        f"plus 1 bias = {_n(per_neuron + 1)}",
        "",
        "4. Parameters",
        f"   with sharing (all neurons of a depth slice use one filter): {filters} x {_n(per_neuron + 1)}"
        f" = {_n(shared)}",
        f"   without sharing (every neuron its own weights): {_n(neurons)} x {_n(per_neuron + 1)}"
        f" = {_n(unshared)}",
        f"   sharing divides the count by the {out.width} x {out.height} = "
        f"{_n(out.width * out.height)} positions",
        "",
        f"5. Multiply-adds: {_n(neurons)} neurons x {_n(per_neuron)} weights = {_n(neurons * per_neuron)}",
    ]
    if stride == 1 and kernel % 2 == 1 and padding != (kernel - 1) // 2:
        lines += [
            "",
            f"   (with stride 1, padding P = (K - 1) / 2 = {(kernel - 1) // 2} keeps W unchanged)",
        ]
    return lines


def explain_pool(
    volume: Volume, kernel: int, stride: int, padding: int = 0, kind: str = "max"
) -> list[str]:
    """A pooling layer: output size, neurons, no parameters, what it keeps."""
    if kind not in ("max", "avg"):
        raise ConvlensError(f"pooling kind must be 'max' or 'avg', not {kind!r}")
    if padding > kernel // 2:
        # PyTorch refuses it (MaxPool2d / AvgPool2d): a window could then lie wholly in the padding.
        raise ConvlensError(
            f"pooling padding P = {padding} is more than half the window ({kernel}x{kernel}): "
            f"a window could hold only padding; use --pad {kernel // 2} or less"
        )
    ax_w, ax_h = _axes(volume, kernel, stride, padding)
    out = Volume(ax_w.out, ax_h.out, volume.depth)
    what = "the largest value" if kind == "max" else "the mean"
    lines = [
        f"Pooling ({kind}): input {volume}, window {kernel}x{kernel}, stride S = {stride}, "
        f"padding P = {padding}",
        "",
        "1. Output size: (W - K + 2P) / S + 1",
        *_size_lines(ax_w, ax_h),
        f"   depth: unchanged, each depth slice is pooled on its own = {volume.depth}",
        f"   output volume: {out}",
        "",
        f"2. Neurons: {out.width} x {out.height} x {volume.depth} = {_n(out.size)}",
        "",
        f"3. Parameters: 0 (a fixed function: {what} of each {kernel}x{kernel} window)",
        "",
        f"4. Values: {_n(volume.size)} in, {_n(out.size)} out "
        f"({100 * (1 - out.size / volume.size):.0f}% fewer)",
    ]
    if kernel > stride:
        lines.append(
            f"   the windows overlap ({kernel} > {stride}), as in AlexNet's 3x3 / 2 pooling"
        )
    elif kernel < stride:
        lines.append(f"   the windows leave gaps ({kernel} < {stride}): some inputs are never read")
    return lines


def explain_fc(volume: Volume, units: int) -> list[str]:
    """A fully-connected layer: every neuron sees the whole input volume."""
    _check_positive(units=units)
    per_neuron = volume.size
    shape = (
        f"{volume.width} x {volume.height} x {volume.depth} = "
        if volume.width * volume.height > 1
        else ""
    )
    lines = [
        f"Fully connected: input {volume} = {_n(volume.size)} values, {_n(units)} neurons",
        "",
        f"1. Weights per neuron: every neuron sees the whole input, {shape}{_n(per_neuron)}, "
        f"plus 1 bias = {_n(per_neuron + 1)}",
        "",
        f"2. Parameters: {_n(units)} x {_n(per_neuron + 1)} = {_n(units * (per_neuron + 1))}",
        "   (nothing is shared: there is one position, so sharing would change nothing)",
        "",
        f"3. Multiply-adds: {_n(units)} x {_n(per_neuron)} = {_n(units * per_neuron)}",
    ]
    if volume.width * volume.height > 1:
        lines += [
            "",
            f"4. The same layer as a convolution: {_n(units)} filters of {volume.width}x{volume.height}x"
            f"{volume.depth}, no padding, give a 1x1x{units} output with the same "
            f"{_n(units * (per_neuron + 1))} parameters",
            "   (how a network's FC layers are turned into convolutions to slide over larger images)",
        ]
    return lines


def explain_stack(kernel: int, depth: int, channels: int = 64) -> list[str]:
    """A stack of `depth` KxK convolutions (stride 1) against the one convolution with the same field."""
    _check_positive(kernel=kernel, depth=depth, channels=channels)
    field = 1 + depth * (kernel - 1)
    k2 = kernel * kernel
    stack_w = depth * k2
    one_w = field * field
    c2 = channels * channels
    growth = ", ".join(
        f"layer {i}: {1 + i * (kernel - 1)}x{1 + i * (kernel - 1)}" for i in range(1, depth + 1)
    )
    return [
        f"A stack of {depth} convolutions {kernel}x{kernel} (stride 1) against one {field}x{field} convolution, "
        f"C channels in and out",
        "",
        f"1. Receptive field: each layer widens it by K - 1 = {kernel - 1}: "
        f"1 + {depth} x ({kernel} - 1) = {field}, so the stack sees {field}x{field}",
        f"   {growth}",
        "",
        "2. Weights (biases aside)",
        f"   stack: {depth} layers x ({kernel} x {kernel} x C) x C = {stack_w}C^2",
        f"   one layer: {field} x {field} x C x C = {one_w}C^2",
        f"   with C = {channels}: {_n(stack_w * c2)} against {_n(one_w * c2)} "
        f"({100 * (1 - stack_w / one_w):.0f}% fewer)",
        "",
        f"3. Non-linearities: {depth} ReLUs against 1: the stack computes a more expressive function "
        "of the same window with fewer parameters (Simonyan & Zisserman 2015, VGG)",
    ]


def _matrix(a: np.ndarray) -> list[str]:
    a = a + 0.0  # -0.0 (0 times a negative weight) prints as 0
    width = max(len(f"{v:g}") for v in a.flat)
    return [" ".join(f"{v:>{width}g}" for v in row) for row in a]


def explain_neuron(
    volume: Volume,
    kernel: int,
    stride: int,
    padding: int,
    filters: int,
    *,
    at: tuple[int, int] = (0, 0),
    filter_index: int = 0,
    seed: int = 0,
) -> list[str]:
    """Compute one output neuron by hand with the NumPy reference and compare with torch.

    The input and filter values are small random integers (so every product can be checked by eye
    and the sums are exact); neuron (row, col) = `at` of filter `filter_index`.
    """
    # Imported here, not at the top: `convlens explain` without --show-one needs neither NumPy
    # nor torch, and starts in a fraction of a second.
    import numpy as np
    import torch
    import torch.nn.functional as F

    from convlens.anatomy import reference as ref

    ax_w, ax_h = _axes(volume, kernel, stride, padding)
    i, j = at
    if not (0 <= i < ax_h.out and 0 <= j < ax_w.out and 0 <= filter_index < filters):
        raise ConvlensError(
            f"neuron (row {i}, col {j}, filter {filter_index}) is outside the "
            f"{ax_w.out}x{ax_h.out}x{filters} output"
        )
    rng = np.random.default_rng(seed)
    x = rng.integers(-3, 4, (volume.depth, volume.height, volume.width)).astype(np.float64)
    w = rng.integers(-2, 3, (filters, volume.depth, kernel, kernel)).astype(np.float64)
    b = rng.integers(-2, 3, filters).astype(np.float64)
    neuron = ref.conv2d_neuron(x, w, b, filter_index, i, j, stride=stride, padding=padding)
    expected = F.conv2d(
        torch.from_numpy(x[None]),
        torch.from_numpy(w[filter_index : filter_index + 1]),
        torch.from_numpy(b[filter_index : filter_index + 1]),
        stride=stride,
        padding=padding,
    )[0, 0, i, j].item()
    rows, cols = neuron.rows, neuron.cols
    lines = [
        f"One neuron by hand: filter {filter_index}, output row {i}, column {j} "
        f"(random integer input and weights, seed {seed})",
        f"It sees input rows {rows.start}..{rows.stop - 1} and columns {cols.start}..{cols.stop - 1} "
        f"(first row = i x S - P = {i} x {stride} - {padding}), all {volume.depth} depth slices"
        + (" (negative = zero padding)" if min(rows.start, cols.start) < 0 else ""),
        "",
    ]
    partial = []
    for d in range(volume.depth):
        s = float(neuron.products[d].sum())
        partial.append(s)
        patch, filt = _matrix(neuron.patch[d]), _matrix(neuron.weights[d])
        prod = _matrix(neuron.products[d])
        lines.append(f"depth slice {d}: input patch  x  filter  =  products, summed: {s:g}")
        lines += [f"   {p}   x   {f}   =   {q}" for p, f, q in zip(patch, filt, prod, strict=True)]
        lines.append("")
    total = float(neuron.products.sum())
    n_products = neuron.products.size
    lines += [
        f"sum over the {volume.depth} slices: "
        + " + ".join(f"({s:g})" for s in partial)
        + f" = {total:g}   ({n_products} products in all)",
        f"plus the bias {neuron.bias:g}: {total:g} + ({neuron.bias:g}) = {neuron.value:g}",
        f"torch.nn.functional.conv2d gives {expected:g}: "
        + (
            "the same"
            if abs(expected - neuron.value) < 1e-6
            else f"DIFFERENT (by {expected - neuron.value:g})"
        ),
    ]
    return lines
