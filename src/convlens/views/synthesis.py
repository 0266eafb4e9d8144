"""Synthesised images: what each channel of a layer (or each class) wants to see.

One view for every face: `convlens visualize actmax` writes its files from it, and the layer grid
(:func:`convlens.views.layer_view`: the report and the web app) takes its synthesised images from it
in chunks. The view resolves every default once (:mod:`convlens.views.defaults`), chooses the colour
decorrelation, and calls :func:`convlens.inspect.activation_maximization`; it adds nothing to the
images that method returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from convlens.errors import ConvlensError
from convlens.inspect.actmax import OBJECTIVES, PRECISIONS
from convlens.subjects import Subject
from convlens.views import defaults
from convlens.views.common import Report, images_of, no_report

__all__ = ["OBJECTIVES", "PRECISIONS", "SynthesisView", "synthesis_view"]


@dataclass(frozen=True)
class SynthesisView:
    """Images synthesised by gradient ascent, one per channel, and what was chosen to make them.

    Attributes:
        layer: the layer maximised; None for the model's output (the class scores, ``logit``).
        channels: the channels (class indices for the output), in order.
        objective: the objective that ran: "channel", "neuron", "logit" or "negative".
        steps: gradient-ascent steps that ran; size: the images' side in pixels.
        simple: the Keras-style plain ascent instead of the readable one.
        precision: "auto", "bf16" or "fp32"; seed: image ``k`` is seeded ``seed + channels[k]``.
        images: float32 ``(K, C, S, S)`` pixels in [0, 1].
        values: ``(K,)`` the objective's value on each final image (the model's dtype).
        class_names: the channels' class names when `layer` is None, else None.
        colours: the colour decorrelation used: "data" (the data set's own colour covariance),
            "imagenet" (Lucid's ImageNet matrix) or "none" (not 3 channels, or simple).
        colour_note: which decorrelation was used and why, in a short sentence.
    """

    layer: str | None
    channels: tuple[int, ...]
    objective: str
    steps: int
    size: int
    simple: bool
    precision: str
    seed: int
    images: torch.Tensor
    values: torch.Tensor
    class_names: tuple[str, ...] | None
    colours: str
    colour_note: str

    def to_dict(self) -> dict[str, Any]:
        """The resolved choices and the values, JSON-ready (the images are not included)."""
        return {
            "layer": self.layer,
            "channels": list(self.channels),
            "objective": self.objective,
            "steps": self.steps,
            "size": self.size,
            "simple": self.simple,
            "precision": self.precision,
            "seed": self.seed,
            "values": [float(v) for v in self.values],
            "class_names": list(self.class_names) if self.class_names is not None else None,
            "colours": self.colours,
            "colour_note": self.colour_note,
        }


def synthesis_view(
    subject: Subject,
    layer: str | None = None,
    channels: Sequence[int] | int | None = None,
    *,
    steps: int | None = None,
    size: int | None = None,
    objective: str | None = None,
    simple: bool = False,
    precision: str = "auto",
    seed: int = 0,
    colours: str = "data",
    device: str | torch.device | None = None,
    chunk: int | None = None,
    lock: AbstractContextManager[Any] | None = None,
    report: Report = no_report,
    progress: bool = False,
) -> SynthesisView:
    """Synthesise, for each channel of `layer`, the image that excites it most.

    Args:
        subject: the model (and its images, for the colour statistics).
        layer: the layer; default :func:`defaults.synthesis_layer` (the model's output for the
            ``logit`` objective, else the default layer at `size`).
        channels: a list, or the first N; default the first :data:`defaults.SYNTHESIS_CHANNELS`.
        steps: gradient-ascent steps; default :func:`defaults.synthesis_steps` (the method's full
            schedule).
        size: the images' side; default :func:`defaults.actmax_size` (the model's input height).
        objective: "channel", "neuron", "logit" or "negative"; default the method's rule (the
            centre neuron of an affine layer, else the channel mean; ``logit`` for the output).
        simple: the Keras-style plain gradient ascent (no colour decorrelation).
        precision: "auto", "bf16" or "fp32" (see :func:`convlens.inspect.activation_maximization`).
        seed: image ``k`` draws its start and transforms from ``seed + channels[k]``.
        colours: for 3-channel images, "data" (the colour covariance of up to
            :data:`defaults.COLOUR_IMAGES` of the subject's images; ImageNet's matrix when they
            cannot be loaded, said in `colour_note`) or "imagenet" (the method's default).
        device: where to optimise; default the model's device.
        chunk: channels optimised per call (one `report` step each; the layer grid uses 16 so
            every face gets the same images); default all in one call.
        lock: held around each model computation (the web app lets a prediction run in between).
        report: progress callback ``(done, total, message)``, one step per chunk.
        progress: show progress bars on the terminal.

    Raises:
        ConvlensError: an unknown objective, precision or colours, a size or steps out of range,
            an unknown layer, a channel out of range.
    """
    from convlens.inspect.actmax import activation_maximization, output_channels
    from convlens.models.hooks import get_layer

    if objective is not None and objective not in OBJECTIVES:
        raise ConvlensError(f"objective {objective!r} is not one of {', '.join(OBJECTIVES)}")
    if precision not in PRECISIONS:
        raise ConvlensError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if colours not in defaults.COLOURS:
        raise ConvlensError(f"colours {colours!r} is not one of {', '.join(defaults.COLOURS)}")
    size = defaults.actmax_size(subject) if size is None else int(size)
    if size < 1:
        raise ConvlensError(f"size must be a positive number of pixels, not {size}")
    steps = defaults.synthesis_steps(simple) if steps is None else int(steps)
    if steps < 0:
        raise ConvlensError(f"steps must be >= 0, not {steps}")
    if chunk is not None and chunk < 1:
        raise ConvlensError(f"chunk must be >= 1, not {chunk}")
    guard = lock if lock is not None else nullcontext()
    c = subject.image_shape[0]
    with guard:  # each runs the model on one image
        if layer is None:
            layer = defaults.synthesis_layer(subject, objective, size)
        else:
            get_layer(subject.model, layer)  # an unknown name: an error that lists the layers
        n = output_channels(subject.model, layer, (c, size, size), device=device)
    if channels is None:
        chans = list(range(min(n, defaults.SYNTHESIS_CHANNELS)))
    elif isinstance(channels, int):
        chans = list(range(min(channels, n)))
    else:
        chans = [int(ch) for ch in channels]
    if not chans:
        raise ConvlensError("no channels to synthesise; pass e.g. channels=[0, 1, 2]")
    bad = [ch for ch in chans if not 0 <= ch < n]
    if bad:
        what = "the output" if layer is None else layer
        raise ConvlensError(
            f"channel {bad[0]} is out of range; {what} has {n} channels (0-{n - 1})"
        )
    colour_matrix, used, note = _colours(subject, colours, simple)

    pre = subject.preprocess
    step = chunk or len(chans)
    parts = [chans[i : i + step] for i in range(0, len(chans), step)]
    images, values, ran = [], [], []
    for j, part in enumerate(parts):
        report(j, len(parts), f"activation maximisation, channels {part[0]}-{part[-1]}")
        with guard:
            res = activation_maximization(
                subject.model, layer, part, size=size, steps=steps, objective=objective,
                mean=pre.mean, std=pre.std, in_channels=c, seed=seed, color_matrix=colour_matrix,
                simple=simple, device=device, progress=progress, precision=precision,
            )  # fmt: skip
        images.append(res.images.float())  # (k, C, S, S) in [0, 1]
        values.append(res.values)
        ran.append(res.objective)
    report(len(parts), len(parts), "done")
    return SynthesisView(
        layer=layer, channels=tuple(chans), objective=ran[0], steps=steps, size=size,
        simple=simple, precision=precision, seed=seed, images=torch.cat(images),
        values=torch.cat(values),
        class_names=tuple(subject.class_name(i) for i in chans) if layer is None else None,
        colours=used, colour_note=note,
    )  # fmt: skip


def _colours(subject: Subject, colours: str, simple: bool) -> tuple[torch.Tensor | None, str, str]:
    """``(colour matrix or None for the method's ImageNet one, what was used, why)``."""
    from convlens.inspect.param import color_correlation_sqrt

    c = subject.image_shape[0]
    if c != 3:
        return None, "none", f"no colour decorrelation: the images have {c} channel(s), not 3"
    if simple:
        return None, "none", "no colour decorrelation: the simple ascent moves plain pixels"
    if colours == "imagenet":
        return None, "imagenet", "colours decorrelated with ImageNet's statistics (as asked)"
    try:
        ds = images_of(subject, "test")
    except ConvlensError as e:
        return None, "imagenet", f"colours decorrelated with ImageNet's statistics ({e})"
    sample = ds.head(defaults.COLOUR_IMAGES)[0]  # uint8 (M, 3, H, W)
    return (
        color_correlation_sqrt(sample),
        "data",
        f"colours decorrelated with the covariance of {len(sample):,} of the subject's images",
    )
