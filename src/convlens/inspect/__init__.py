"""What a network's layers look for: one function per method, tensors in, tensors or arrays out.

Plotting lives in :mod:`convlens.render`; the CLI runners in :mod:`convlens.cli.methods`.
Each method module adds its names below (imports, then `__all__`).
"""

from __future__ import annotations

from convlens.inspect.activations import activations
from convlens.inspect.actmax import ActMaxResult, activation_maximization
from convlens.inspect.attribution import grad_cam, guided_backprop, guided_grad_cam, saliency
from convlens.inspect.features import extract_features
from convlens.inspect.filters import filters
from convlens.inspect.neighbors import Neighbors, neighbors
from convlens.inspect.occlusion import OcclusionResult, occlusion
from convlens.inspect.top_patches import TopPatches, crop_patches, top_patches
from convlens.inspect.tsne import TSNEMap, tsne, tsne_grid

__all__ = [
    "ActMaxResult",
    "Neighbors",
    "OcclusionResult",
    "TSNEMap",
    "TopPatches",
    "activation_maximization",
    "activations",
    "crop_patches",
    "extract_features",
    "filters",
    "grad_cam",
    "guided_backprop",
    "guided_grad_cam",
    "neighbors",
    "occlusion",
    "saliency",
    "top_patches",
    "tsne",
    "tsne_grid",
]
