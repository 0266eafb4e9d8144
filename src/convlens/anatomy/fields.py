"""Theoretical receptive fields: which input pixels each unit of each layer can see.

The geometry of one axis, for the units of a feature map, is three integers (the textbook recurrence,
e.g. Araujo et al. 2019, "Computing receptive fields of convolutional neural networks"):

    unit i of the map sees input pixels  lo + i * jump  ...  hi + i * jump   (inclusive)

An input image starts at lo = hi = 0, jump = 1. A convolution or pooling window of size K, stride S,
padding P and dilation D maps (lo, hi, jump) to

    lo' = lo - P * jump
    hi' = hi + (D * (K - 1) - P) * jump
    jump' = jump * S

because output unit 0 reads input units -P ... -P + D (K - 1). The published quantities follow:
size = hi - lo + 1, start = (lo + hi) / 2 (the centre of unit 0's field, in input pixel coordinates;
negative when padding puts the field partly outside the image), jump = the distance in input pixels
between two neighbouring units.

Branches are where single-path tools (torchscan, the recurrence above) stop: a residual add, an
inception concatenation, any elementwise op on two feature maps. A unit after such an op sees the
union of what its inputs see; with equal jumps that union is again an interval per unit, the hull
(lo = min, hi = max). When the paths disagree on the centre or the jump the hull over-approximates,
and :func:`receptive_fields` says so with a warning. Units after a global pooling, a flatten or a
fully-connected layer over spatial positions see the whole input: their RF is the image, with jump 0
(every unit sees the same window).

Padding, as in every receptive-field calculator: the zeros a layer pads its input with are treated as
units that would have seen the pixels beyond that map's edge. So a unit whose window reaches into an
intermediate layer's padding is credited with image pixels it does not actually depend on, at the
border only: a 2x2/2 convolution of a 5-pixel row drops pixel 4 (5 is odd), yet the next 3x3 layer
with padding 1 is said to see it. A box inside the image is exact; one that crosses the border may be
larger than the true dependence, never smaller (``tests/test_anatomy_receptive_field.py`` checks both
against the input gradient).

How the geometry travels through an arbitrary ``nn.Module``: :mod:`convlens.anatomy.trace` runs the
model on the meta device (no data, no arithmetic) under a ``TorchFunctionMode`` that attaches a
:class:`Field` to every tensor it produces, applying the rules of this module to ``conv2d``, the pooling
functions, ``pad``, slicing, reshapes and reductions, and the union to everything elementwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    pass

Box = tuple[
    int, int, int, int
]  # (top, left, bottom, right): rows top..bottom-1, cols left..right-1


@dataclass(frozen=True)
class RF:
    """The receptive field of the units of one layer, relative to the input image.

    Attributes:
        size: (height, width) in input pixels of the window one unit sees (padding included).
        jump: (vertical, horizontal) distance in input pixels between neighbouring units (the
            product of the strides on the way).
        start: centre (row, col) of unit (0, 0)'s window in input pixel coordinates; may be
            negative or fractional (an even-sized window is centred between two pixels).
    """

    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[float, float]

    def box(self, i: int, j: int) -> Box:
        """The input window of output unit (i, j): (top, left, bottom, right), bottom/right exclusive.

        Not clipped to the image: rows and columns outside it are padding (see :meth:`clipped_box`).
        """
        top = round(self.start[0] - (self.size[0] - 1) / 2) + i * self.jump[0]
        left = round(self.start[1] - (self.size[1] - 1) / 2) + j * self.jump[1]
        return top, left, top + self.size[0], left + self.size[1]

    def clipped_box(self, i: int, j: int, image_size: tuple[int, int]) -> Box:
        """:meth:`box` clipped to an image of (height, width) = `image_size`."""
        return clip_box(self.box(i, j), image_size)

    def center(self, i: int, j: int) -> tuple[float, float]:
        """Centre (row, col) of unit (i, j)'s window in input pixel coordinates."""
        return self.start[0] + i * self.jump[0], self.start[1] + j * self.jump[1]

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready ``{"size": [h, w], "jump": [h, w], "start": [h, w]}``."""
        return {
            "size": list(self.size),
            "jump": list(self.jump),
            "start": [int(s) if float(s).is_integer() else s for s in self.start],
        }


def clip_box(box: Box, image_size: tuple[int, int]) -> Box:
    """Clip a (top, left, bottom, right) box to an image of (height, width) = `image_size`."""
    top, left, bottom, right = box
    h, w = image_size
    return max(top, 0), max(left, 0), min(bottom, h), min(right, w)


@dataclass(frozen=True)
class Field:
    """The geometry a tensor carries during a trace (internal; the public form is :class:`RF`).

    Attributes:
        dims: the tensor dimensions of (height, width), counted from the end (-2, -1 for NCHW) so that
            they survive ops that add or drop leading dimensions.
        lo, hi: first and last input pixel (per axis) seen by unit 0, inclusive.
        jump: input pixels between neighbouring units, per axis.
        whole: the units see the whole input (after global pooling, flatten, a linear layer...).
    """

    dims: tuple[int, int]
    lo: tuple[int, int]
    hi: tuple[int, int]
    jump: tuple[int, int]
    whole: bool = False

    @staticmethod
    def image() -> Field:
        """The field of the input image itself: every pixel sees itself."""
        return Field(dims=(-2, -1), lo=(0, 0), hi=(0, 0), jump=(1, 1))

    @staticmethod
    def everything() -> Field:
        """The field of a unit that depends on every input pixel."""
        return Field(dims=(-2, -1), lo=(0, 0), hi=(0, 0), jump=(1, 1), whole=True)

    def window(
        self,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        padding: tuple[int, int],
        dilation: tuple[int, int] = (1, 1),
    ) -> Field:
        """The field after a sliding window (convolution or pooling) over this tensor's H and W."""
        if self.whole or (kernel == stride == (1, 1) and padding == (0, 0)):
            return self  # a 1x1 window at stride 1 (half of ResNet's convolutions) changes nothing
        (lo0, lo1), (hi0, hi1), (j0, j1) = self.lo, self.hi, self.jump
        return Field(
            self.dims,
            (lo0 - padding[0] * j0, lo1 - padding[1] * j1),
            (hi0 + (dilation[0] * (kernel[0] - 1) - padding[0]) * j0,
             hi1 + (dilation[1] * (kernel[1] - 1) - padding[1]) * j1),
            (j0 * stride[0], j1 * stride[1]),
        )  # fmt: skip

    def shift(self, offset: tuple[int, int], step: tuple[int, int] = (1, 1)) -> Field:
        """The field after keeping units offset, offset + step, ... per axis (slicing, padding)."""
        if self.whole:
            return self
        lo = tuple(self.lo[a] + offset[a] * self.jump[a] for a in (0, 1))
        hi = tuple(self.hi[a] + offset[a] * self.jump[a] for a in (0, 1))
        jump = tuple(self.jump[a] * step[a] for a in (0, 1))
        return Field(self.dims, lo, hi, jump)  # type: ignore[arg-type]

    def moved(self, dims: tuple[int, int]) -> Field:
        """The same field on a tensor whose H and W now sit at `dims` (counted from the end)."""
        return Field(dims, self.lo, self.hi, self.jump, self.whole)

    def to_rf(self, input_size: tuple[int, int]) -> RF:
        """The public :class:`RF`; a whole-input field is the image, the same for every unit (jump 0)."""
        if self.whole:
            h, w = input_size
            return RF(size=(h, w), jump=(0, 0), start=((h - 1) / 2, (w - 1) / 2))
        size = (self.hi[0] - self.lo[0] + 1, self.hi[1] - self.lo[1] + 1)
        start = ((self.lo[0] + self.hi[0]) / 2, (self.lo[1] + self.hi[1]) / 2)
        return RF(size=size, jump=self.jump, start=start)


def union(fields: list[Field]) -> tuple[Field, str | None]:
    """The field of a unit computed from units of several paths, and a disagreement note or None.

    The union of intervals with a common jump is the hull ``[min lo, max hi]`` per unit; it is exact
    when the paths' windows overlap or touch, which is the case in every branching classifier
    (ResNet, Inception, DenseNet). Paths with different centres or jumps are reported.
    """
    first = fields[0]
    if len(fields) == 1 or all(f is first or f == first for f in fields):
        return first, None
    if any(f.whole for f in fields):
        return Field.everything(), None
    if any(f.dims != first.dims for f in fields):
        return (
            Field.everything(),
            "paths arrive with their height and width in different dimensions",
        )
    note = None
    jumps = {f.jump for f in fields}
    centres = {(f.lo[0] + f.hi[0], f.lo[1] + f.hi[1]) for f in fields}  # 2 x centre, exact ints
    if len(jumps) > 1:
        note = f"paths disagree on the jump ({', '.join(str(j) for j in sorted(jumps))})"
    elif len(centres) > 1:
        shown = ", ".join(f"({a / 2:g}, {b / 2:g})" for a, b in sorted(centres))
        note = f"paths disagree on the centre of unit (0, 0) ({shown})"
    lo = (min(f.lo[0] for f in fields), min(f.lo[1] for f in fields))
    hi = (max(f.hi[0] for f in fields), max(f.hi[1] for f in fields))
    jump = (max(f.jump[0] for f in fields), max(f.jump[1] for f in fields))
    return Field(first.dims, lo, hi, jump), note


def describe(rf: RF) -> str:
    """Short human form, e.g. ``"11 / 4 @ (5, 5)"`` (size / jump @ centre of unit 0)."""

    def fmt(v: Any) -> str:
        return f"{v:g}" if isinstance(v, float) else str(v)

    if rf.jump == (0, 0):
        return f"whole input ({rf.size[0]}x{rf.size[1]})"
    size = f"{rf.size[0]}x{rf.size[1]}" if rf.size[0] != rf.size[1] else f"{rf.size[0]}"
    jump = f"{rf.jump[0]}x{rf.jump[1]}" if rf.jump[0] != rf.jump[1] else f"{rf.jump[0]}"
    return f"{size} / {jump} @ ({fmt(rf.start[0])}, {fmt(rf.start[1])})"
