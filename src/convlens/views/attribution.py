"""Where the network looks: one attribution method on images, with every choice it made recorded."""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from convlens.errors import ConvlensError
from convlens.subjects import Subject
from convlens.views import defaults
from convlens.views.common import as_batch, logits_of, probabilities

METHODS = ("gradcam", "guided_gradcam", "saliency", "guided_backprop", "occlusion")


@dataclass(frozen=True)
class AttributionView:
    """An attribution of a batch of images, and what it chose.

    Attributes:
        method: one of :data:`METHODS`.
        maps: float32 on the CPU; ``(N, H, W)`` for gradcam, saliency and occlusion (the mean logit
            drop per pixel, Captum's attribution of one channel), ``(N, C, H, W)`` for guided
            backprop and guided Grad-CAM (shaped like the input).
        targets: int64 ``(N,)`` the class each image was explained for.
        target_probs: float64 ``(N,)`` the probability of that class (from the logits).
        predicted: int64 ``(N,)`` the arg-max of the logits.
        target_given: whether the caller chose the target (else: the predicted class).
        layer: the layer of Grad-CAM / guided Grad-CAM (None for the others).
        window, stride: the occlusion window and stride in input pixels (None for the others).
        path: the occlusion path that ran, "plain" or "incremental" (None for the others).
        prob_drop: float32 ``(N, gh, gw)`` occlusion's drop in the target's probability per window.
        rows, cols: ``(gh, 2)``, ``(gw, 2)`` occlusion's window ranges.
    """

    method: str
    maps: torch.Tensor
    targets: torch.Tensor
    target_probs: torch.Tensor
    predicted: torch.Tensor
    target_given: bool
    layer: str | None = None
    window: int | None = None
    stride: int | None = None
    path: str | None = None
    prob_drop: torch.Tensor | None = None
    rows: np.ndarray | None = None
    cols: np.ndarray | None = None

    def heat(self, i: int) -> torch.Tensor:
        """Image `i`'s map as one non-negative ``(H, W)`` heat map (|values| pooled over channels)."""
        m = self.maps[i]
        return m.abs().amax(0) if m.dim() == 3 else m


def attribution_view(
    subject: Subject,
    images: torch.Tensor,
    method: str,
    *,
    target: int | torch.Tensor | None = None,
    layer: str | None = None,
    window: int | None = None,
    stride: int | None = None,
    progress: bool = False,
) -> AttributionView:
    """Attribute the images' class scores to their pixels.

    Args:
        subject: the model.
        images: uint8 ``(C, H, W)`` or ``(N, C, H, W)``.
        method: gradcam, guided_gradcam, saliency, guided_backprop or occlusion (``-`` works as ``_``).
        target: the class to explain: one for all images, ``(N,)`` per image, or None for each image's
            predicted class (the arg-max of the logits).
        layer: the layer of Grad-CAM; default :func:`defaults.default_layer`.
        window: occlusion window in pixels; default :func:`defaults.occlusion_window` of the short side.
        stride: occlusion stride; default :func:`defaults.occlusion_stride` of the window.
        progress: show a progress bar (occlusion).

    Raises:
        ConvlensError: an unknown method, a target outside the model's classes, a bad window.
    """
    from convlens import inspect

    method = method.replace("-", "_")
    if method not in METHODS:
        raise ConvlensError(f"no method {method!r}; choose one of: {', '.join(METHODS)}")
    batch = as_batch(images)
    logits = logits_of(subject, batch)  # (N, K)
    n_classes = logits.shape[1]
    predicted = logits.argmax(1)
    if target is None:
        targets = predicted
    else:
        targets = torch.as_tensor(target).long().reshape(-1).cpu()
        if len(targets) not in (1, len(batch)):
            raise ConvlensError(
                f"{len(targets)} targets for {len(batch)} images: give one or one each"
            )
        targets = targets.expand(len(batch)).clone()
        bad = targets[(targets < 0) | (targets >= n_classes)]
        if len(bad):
            raise ConvlensError(
                f"no class {int(bad[0])}; the model has {n_classes} classes (0-{n_classes - 1})"
            )
    target_probs = probabilities(logits).gather(1, targets[:, None])[:, 0]
    x = subject.normalize(batch)
    t = targets.to(x.device)
    base = AttributionView(
        method=method,
        maps=torch.empty(0),
        targets=targets,
        target_probs=target_probs,
        predicted=predicted,
        target_given=target is not None,
    )
    if method in ("gradcam", "guided_gradcam"):
        layer = layer or defaults.default_layer(subject)
        fn = inspect.grad_cam if method == "gradcam" else inspect.guided_grad_cam
        maps = fn(subject.model, x, t, layer).detach().float().cpu()
        return replace(base, maps=maps, layer=layer)
    if method in ("saliency", "guided_backprop"):
        fn2 = inspect.saliency if method == "saliency" else inspect.guided_backprop
        maps = fn2(subject.model, x, t).detach().float().cpu()
        return replace(base, maps=maps)
    side = min(batch.shape[-2:])
    window = window if window is not None else defaults.occlusion_window(side)
    stride = stride if stride is not None else defaults.occlusion_stride(window)
    res = inspect.occlusion(subject.model, x, t, window=window, stride=stride, progress=progress)
    return replace(
        base,
        maps=res.attribution[:, 0].detach().float().cpu(),
        window=window,
        stride=stride,
        path=res.method,
        prob_drop=res.prob_drop.float().cpu(),
        rows=res.rows,
        cols=res.cols,
    )
