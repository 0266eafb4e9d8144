"""Every default of every view, in one place.

A view calls these with what the user left as None ("choose for me") and records what they chose in
its result, so the CLI, the report and the web app never re-derive a default (and never drift apart).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from convlens.errors import ConvlensError

if TYPE_CHECKING:
    from convlens.subjects import Subject

# Activation maximisation: gradient-ascent steps for a layer grid. A network above BIG_NETWORK_MACS
# multiply-accumulates per image (an ImageNet model; ResNet-20 on CIFAR-10 has 41 M, ResNet-18 at
# 224 1.8 G) gets fewer, so a layer grid stays within a couple of minutes on a 2-core CPU.
# `convlens visualize actmax` runs the full-quality schedule of :mod:`convlens.inspect.actmax`.
ACTMAX_STEPS = 64
BIG_NETWORK_MACS = 500_000_000
BIG_NETWORK_ACTMAX_STEPS = 16
BIG_NETWORK_ACTMAX_CHANNELS = 8

# `convlens visualize actmax` (:func:`convlens.views.synthesis_view`): the first 64 channels, the
# method's full schedule (None steps), the data set's own colours from up to 2,000 test images.
SYNTHESIS_CHANNELS = 64
COLOUR_IMAGES = 2_000
COLOURS = ("data", "imagenet")  # "data": the data set's colour covariance; "imagenet": Lucid's

CHANNELS = 16  # channels of a layer grid shown by default (8 for a big network)
PATCHES = 6  # top data-set patches per channel
IMAGES_LIMIT = 2_000  # images searched for top patches when there is no index (evenly spread)
EMBEDDING_LIMIT = 2_000  # points of a t-SNE map computed on the fly (an index holds up to 50,000)
NEIGHBOURS_K = 8  # neighbours per query
METRIC = "cosine"  # feature-space distance of the neighbours
TOP = 5  # classes in a prediction
ERF_SAMPLES = 32  # random inputs averaged by the effective receptive field
BATCH_SIZE = 256  # inference batch of the views that sweep images


def default_layer(subject: Subject) -> str:
    """The layer every view looks at unless told: :func:`convlens.models.default_layer` (the last
    convolution whose map is larger than 1x1) for the subject's input shape."""
    from convlens.models import default_layer as rule

    return rule(subject.model, subject.image_shape)


def occlusion_window(side: int) -> int:
    """Occlusion window for an image side: about a seventh of it (4 px at 28, 32 px at 224), >= 2."""
    return max(2, round(side / 7))


def occlusion_stride(window: int) -> int:
    """Occlusion stride for a window: half of it (so every pixel is covered by about 4 windows)."""
    return max(1, window // 2)


def actmax_steps(macs: int | None) -> int:
    """Gradient-ascent steps of a layer grid for a network of `macs` multiply-accumulates."""
    return (
        BIG_NETWORK_ACTMAX_STEPS if macs is not None and macs > BIG_NETWORK_MACS else ACTMAX_STEPS
    )


def channels(available: int, macs: int | None) -> list[int]:
    """The channels a layer grid shows by default: the first :data:`CHANNELS` (fewer for a big net)."""
    n = BIG_NETWORK_ACTMAX_CHANNELS if macs is not None and macs > BIG_NETWORK_MACS else CHANNELS
    return list(range(min(n, available)))


def actmax_size(subject: Subject) -> int:
    """Side of the synthesised images: the model's input height."""
    return subject.image_shape[1]


def synthesis_layer(subject: Subject, objective: str | None, size: int) -> str | None:
    """The layer a synthesised image maximises unless told: the model's output (None) for the
    ``logit`` objective, else :func:`convlens.models.default_layer` at the synthesised size."""
    from convlens.models import default_layer as rule

    if objective == "logit":
        return None
    return rule(subject.model, (subject.image_shape[0], size, size))


def synthesis_steps(simple: bool) -> int:
    """Gradient-ascent steps of a synthesised image unless told: the method's full schedule
    (256 readable, 20 for the Keras-style simple ascent; :mod:`convlens.inspect.actmax`)."""
    from convlens.inspect.actmax import DEFAULT_STEPS, SIMPLE_STEPS

    return SIMPLE_STEPS if simple else DEFAULT_STEPS


def as_dict(
    subject: Subject, macs: int | None = None, layer: str | bool | None = True
) -> dict[str, Any]:
    """The defaults of `subject` as JSON (what ``GET /api/subjects/{name}`` gives the page).

    `layer`: the default layer when already known (True: work it out, one forward pass).
    """
    side = min(subject.image_shape[1:])
    window = occlusion_window(side)
    if layer is True:
        try:
            layer = default_layer(subject)
        except ConvlensError:  # a model without a conv layer has no default layer
            layer = None
    return {
        "layer": layer or None,
        "occlusion_window": window,
        "occlusion_stride": occlusion_stride(window),
        "actmax_steps": actmax_steps(macs),
        "actmax_size": actmax_size(subject),
        "channels": CHANNELS,
        "patches": PATCHES,
        "images_limit": IMAGES_LIMIT,
        "embedding_limit": EMBEDDING_LIMIT,
        "k": NEIGHBOURS_K,
        "metric": METRIC,
        "top": TOP,
        # a layer grid's synthesised images maximise one of these (None: the method's rule)
        "objectives": ["channel", "neuron"],
        "objective": None,
    }
