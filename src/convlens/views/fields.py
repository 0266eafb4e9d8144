"""What one unit can see: its theoretical receptive field (clipped to the image) and the layer's
effective receptive field (Luo et al. 2016) moved to the unit."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from convlens.errors import ConvlensError
from convlens.subjects import Subject
from convlens.views import defaults

if TYPE_CHECKING:
    from convlens.anatomy.erf import EffectiveRF
    from convlens.anatomy.fields import RF


@dataclass(frozen=True)
class UnitFieldsView:
    """The receptive fields of unit (row, col) of a layer.

    Attributes:
        layer, unit: the layer (resolved default) and the unit ``(row, col)`` (default: the centre).
        map_size: ``(H', W')`` of the layer's map.
        rf: the layer's theoretical field (size, jump, start).
        box: ``(top, left, bottom, right)`` of the unit's field, NOT clipped (may reach into padding).
        clipped_box: the same clipped to the image.
        covers_image: whether the field covers the whole image.
        erf: the layer's effective field (of its centre unit), None when not asked for.
        erf_shift: ``(rows, cols)`` from the centre unit's field to this unit's.
    """

    layer: str
    unit: tuple[int, int]
    map_size: tuple[int, int]
    rf: RF
    box: tuple[int, int, int, int]
    clipped_box: tuple[int, int, int, int]
    covers_image: bool
    erf: EffectiveRF | None
    erf_shift: tuple[float, float] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (the ERF map is left to the encoder)."""
        return {
            "layer": self.layer,
            "unit": list(self.unit),
            "map_size": list(self.map_size),
            "box": list(self.box),
            "clipped_box": list(self.clipped_box),
            "covers_image": self.covers_image,
            "rf": self.rf.to_dict(),
        }


def unit_fields_view(
    subject: Subject,
    layer: str | None = None,
    row: int | None = None,
    col: int | None = None,
    *,
    samples: int | None = None,
    seed: int = 0,
    erf: bool = True,
) -> UnitFieldsView:
    """The theoretical and effective receptive field of unit (`row`, `col`) of `layer`.

    Args:
        layer: default :func:`defaults.default_layer`.
        row, col: default the centre unit of the layer's map.
        samples: random inputs averaged by the effective field; default :data:`defaults.ERF_SAMPLES`.
        erf: False: only the theoretical field (no gradients computed).

    Raises:
        ConvlensError: the layer has no map, or the unit is outside it.
    """
    from convlens.anatomy import effective_receptive_field
    from convlens.anatomy.fields import clip_box
    from convlens.anatomy.trace import trace
    from convlens.models.hooks import get_layer

    layer = layer or defaults.default_layer(subject)
    c, h, w = subject.image_shape
    get_layer(subject.model, layer)  # a clear error for a wrong name
    calls = [k for k in trace(subject.model, (c, h, w), warn=False).calls if k.name == layer]
    shape = calls[-1].output_shape if calls else None
    if shape is None or len(shape) != 4:
        raise ConvlensError(f"layer {layer!r} outputs {shape}, not feature maps")
    mh, mw = int(shape[-2]), int(shape[-1])
    row = mh // 2 if row is None else row
    col = mw // 2 if col is None else col
    if not (0 <= row < mh and 0 <= col < mw):
        raise ConvlensError(f"layer {layer!r} has a {mh} x {mw} map; no unit ({row}, {col})")
    rf = calls[-1].rf
    if rf is None:
        raise ConvlensError(f"layer {layer!r} has no receptive field on the input (flat output)")
    box = rf.box(row, col)
    clipped = clip_box(box, (h, w))
    e, shift = None, None
    if erf:
        e = effective_receptive_field(
            subject.model, layer, subject.image_shape,
            n=defaults.ERF_SAMPLES if samples is None else samples, seed=seed,
        )  # fmt: skip
        cy, cx = rf.center(row, col)
        # The layers are convolutions: shifting the input by one jump shifts the field by one jump
        # (away from the borders), so the centre unit's field moves to the clicked unit.
        shift = (cy - e.center[0], cx - e.center[1])
    return UnitFieldsView(
        layer=layer,
        unit=(row, col),
        map_size=(mh, mw),
        rf=rf,
        box=box,
        clipped_box=clipped,
        covers_image=tuple(clipped) == (0, 0, h, w),
        erf=e,
        erf_shift=shift,
    )
