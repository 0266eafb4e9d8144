"""What a network's layers look for: one function per method, tensors in, tensors out.

Plotting lives in :mod:`convlens.render`; the CLI runners in :mod:`convlens.cli.methods`.

**What goes in.** Every method takes the model first. Methods about given images take what the
model takes: normalised float images ``(N, C, H, W)`` (``subject.normalize(uint8_images)``),
checked at the boundary by :func:`convlens.validate.check_images`: one unbatched image, uint8
pixels, NaN or infinity give an :class:`~convlens.errors.InputError` that says how to fix the
input. Methods that sweep a data set (features, top patches, neighbours) stream a
:class:`~convlens.data.Dataset` (uint8 in memory, normalised per batch on the device), or uint8
``(N, C, H, W)`` with its ``mean``/``std``, or normalised float images. Activation maximisation
takes no images: it makes them. A method whose layer is optional uses
:func:`convlens.models.default_layer` for the input's shape (the last convolution with a map
larger than 1x1). The model is left as it was: eval mode only inside the call, every hook
removed, parameter gradients untouched.

**What comes out.** One rule: a method with one answer returns it as a tensor (a dict of tensors
by layer for ``activations``); a method that measures several things returns a small dataclass whose
fields are documented with their shapes, always (no flag changes a return type). Attributions keep
Captum's shapes: per-pixel attributions are shaped like the input, maps that pool the channels
are ``(N, H, W)``.

==========================  ==========================================  ==================================
method                      returns                                     why this shape
==========================  ==========================================  ==================================
``filters``                 ``(C_out, C_in/groups, kH, kW)``            the layer's weights themselves
``activations``             ``{layer: (N, C, H', W')}``                 every channel of every image;
                                                                        a flat output is ``(N, D, 1, 1)``
``extract_features``        ``(N, D)``                                  one feature vector per image
``saliency``                ``(N, H, W)``                               max over channels (Simonyan)
``guided_backprop``         ``(N, C, H, W)``                            shaped like the input (Captum)
``grad_cam``                ``(N, H, W)`` (``(N, h, w)`` not upsampled)  channels pooled into one map
``guided_grad_cam``         ``(N, C, H, W)``                            shaped like the input (Captum)
``occlusion``               :class:`OcclusionResult`: ``.attribution``  shaped like the input (Captum),
                            ``(N, C, H, W)``, ``.logit_drop`` and       plus the drop per window
                            ``.prob_drop`` ``(N, gh, gw)``, ...          position (Zeiler & Fergus)
``top_patches``             :class:`TopPatches`: ``.values``,           K channels x n images, and
                            ``.indices`` ``(K, n)``, ``.boxes``         where each unit looks
                            ``(K, n, 4)``, ...
``neighbors``               :class:`Neighbors`: indices and distances   Q queries x k neighbours, in
                            ``(Q, k)`` in feature and pixel space       both spaces
``activation_maximization``  :class:`ActMaxResult`: ``.images``          one synthetic image per channel,
                            ``(K, C, S, S)``, ``.values`` ``(K,)``,     its score, the climb
                            ``.history`` ``(steps, K)``
``tsne``                    :class:`TSNEMap`: ``.coords`` ``(N, 2)``    one point per feature vector
==========================  ==========================================  ==================================

Results of data-set and synthesis methods are on the CPU; attributions stay on the model's device
(without a graph).
"""

from __future__ import annotations

from convlens.inspect.activations import activations
from convlens.inspect.actmax import ActMaxResult, activation_maximization
from convlens.inspect.attribution import grad_cam, guided_backprop, guided_grad_cam, saliency
from convlens.inspect.features import extract_features
from convlens.inspect.filters import filters
from convlens.inspect.neighbors import Neighbors, PixelSearch, neighbors
from convlens.inspect.occlusion import OcclusionResult, occlusion
from convlens.inspect.top_patches import TopPatches, crop_patches, top_patches
from convlens.inspect.tsne import TSNEMap, tsne, tsne_grid

__all__ = [
    "ActMaxResult",
    "Neighbors",
    "OcclusionResult",
    "PixelSearch",
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
