"""Views: one function per thing a user looks at, computed once for every face.

Each view takes a :class:`~convlens.subjects.Subject` and options, resolves every default once
(:mod:`convlens.views.defaults`; None means "choose for me") and returns a frozen dataclass that
records what it chose. The CLI writes files from these results, the report HTML, the web app JSON;
none of them calls :mod:`convlens.inspect` itself or re-derives a default.

==========================  ================================================================
view                        what it answers
==========================  ================================================================
:func:`network_view`        every layer's shape, parameters, MACs, receptive field, kernel/
                            stride/padding; the blocks; the default layer and every default
:func:`prediction_view`     one image's top classes (from the logits), its label, right/wrong
:func:`predictions_view`    the same for a batch (confusion matrices, galleries)
:func:`activations_view`    every layer's output for one image, with min and max
:func:`attribution_view`    Grad-CAM, guided Grad-CAM, saliency, guided backprop, occlusion
:func:`layer_view`          a layer's filters, synthesised images and top data-set patches
:func:`synthesis_view`      the image each channel of a layer (or each class) wants to see
:func:`neighbours_view`     nearest images in feature space beside pixel space, with distances
:func:`embedding_view`      a t-SNE map of the features, with labels and predictions
:func:`unit_fields_view`    one unit's theoretical (clipped) and effective receptive field
==========================  ================================================================
"""

from __future__ import annotations

from convlens.views.attribution import METHODS, AttributionView, attribution_view
from convlens.views.common import ImageIndex, evenly, probabilities, top_k
from convlens.views.fields import UnitFieldsView, unit_fields_view
from convlens.views.layer import LayerView, Patch, layer_view
from convlens.views.neighbours import (
    EmbeddingView,
    Neighbour,
    NeighboursView,
    embedding_view,
    neighbours_view,
    pixel_search,
)
from convlens.views.network import Block, NetworkView, network_view
from convlens.views.prediction import (
    ActivationsView,
    ClassScore,
    LayerMap,
    PredictionsView,
    PredictionView,
    activations_view,
    prediction_view,
    predictions_view,
)
from convlens.views.synthesis import OBJECTIVES, SynthesisView, synthesis_view

__all__ = [
    "METHODS",
    "OBJECTIVES",
    "ActivationsView",
    "AttributionView",
    "Block",
    "ClassScore",
    "EmbeddingView",
    "ImageIndex",
    "LayerMap",
    "LayerView",
    "Neighbour",
    "NeighboursView",
    "NetworkView",
    "Patch",
    "PredictionView",
    "PredictionsView",
    "SynthesisView",
    "UnitFieldsView",
    "activations_view",
    "attribution_view",
    "embedding_view",
    "evenly",
    "layer_view",
    "neighbours_view",
    "network_view",
    "pixel_search",
    "prediction_view",
    "predictions_view",
    "probabilities",
    "synthesis_view",
    "top_k",
    "unit_fields_view",
]
