"""Occlusion sensitivity (Zeiler & Fergus 2014): one function, two paths behind it.

Slide a window over the image, replace what it covers with a baseline value, and record how much the
target class's score drops. Two forms come out of the same model evaluations:

* the **grid** of drops, one per window position, as Zeiler & Fergus draw it, for the target's logit
  and for its softmax probability: `(N, gh, gw)`;
* the **per-pixel attribution** that averages, for each pixel, the logit drops of all windows
  covering it: `(N, C, H, W)`. This is exactly Captum's ``Occlusion(model).attribute(x,
  sliding_window_shapes=(C, wh, ww), strides=(C, sh, sw), baselines=b, target=t)``, including its
  conventions: the first window sits at the top-left corner, windows step by `stride` until the
  image is covered, and the last window in each direction is cut off by the border when the stride
  does not divide `size - window` (so there are `ceil((size - window) / stride) + 1` positions).

The occluded copies are evaluated by one of two paths, and ``result.method`` says which ran:

* ``"plain"`` (:mod:`.plain`): whole copies through the model, a batch at a time. The reference.
* ``"incremental"`` (:mod:`.incremental`): the KRYPTON engine, which runs the model once on the
  clean image and then recomputes, in each layer, only the rectangle a window can change.

**Contract**: the incremental path equals the plain path to 1e-4 of the largest attribution (float
rounding: other summation orders, BatchNorm folded into convolutions). Tests hold both to Captum
and to each other on LeNet-5, ResNet-18 and VGG-16.

**Which path** (``method="auto"``, :func:`choose_method`): on a GPU always plain, since batched
whole copies keep a GPU busy and the engine's many small gathers do not (it measured slower than
Captum there); on a CPU the engine when the window covers at most a quarter of the image (its
rectangles stay small in the early, expensive layers), plain otherwise, and plain for a model
torch.fx cannot trace. ``method="plain"`` or ``"incremental"`` forces a path.

**TF32 on CUDA**: both paths run with TF32 matrix products and cuDNN convolutions switched off (set
for the call and restored after it): TF32 rounds inputs to 10-bit mantissas, which would swamp the
small logit differences occlusion measures. Even in float32, GPU kernels sum in other orders, so on
CUDA the two paths (and Captum) agree to 1e-3 of the largest attribution rather than 1e-4.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from convlens.errors import ConvlensError
from convlens.inspect.attribution import Target, model_input, resolve_targets
from convlens.inspect.occlusion.incremental import IncrementalOcclusion
from convlens.inspect.occlusion.plain import occluded_outputs
from convlens.models.hooks import evaluating
from convlens.progress import progress_bar

__all__ = ["Method", "OcclusionResult", "choose_method", "occlusion", "occlusion_positions"]

Method = Literal["plain", "incremental"]
# The engine's rectangles stay small in the early layers only while a window covers at most this
# fraction of the image; beyond it, nearly every layer is computed in full anyway.
_INCREMENTAL_MAX_WINDOW_FRACTION = 0.25
# Copies per forward pass on the plain path: on a CPU larger batches leave the cache (Captum's best
# perturbations_per_eval of 1/16/64 was 16 in every benchmark pilot); a GPU needs many to be busy.
_PLAIN_BATCH = {"cpu": 16, "cuda": 256}


@dataclass
class OcclusionResult:
    """What :func:`occlusion` measured.

    Attributes:
        attribution: `(N, C, H, W)` per-pixel mean logit drop over the windows covering the pixel
            (Captum's ``Occlusion``); equal across channels, since a window covers all channels.
        logit_drop: `(N, gh, gw)` target logit of the clean image minus that of the occluded one,
            per window position (row-major grid).
        prob_drop: `(N, gh, gw)` the same for the target's softmax probability.
        target: `(N,)` the class each image was explained for.
        logits: `(N, K)` clean logits.
        rows: `(gh, 2)` `[start, stop)` rows of each grid row's window.
        cols: `(gw, 2)` `[start, stop)` columns of each grid column's window.
        method: which path computed it, "plain" or "incremental" (see :func:`choose_method`).
    """

    attribution: torch.Tensor
    logit_drop: torch.Tensor
    prob_drop: torch.Tensor
    target: torch.Tensor
    logits: torch.Tensor
    rows: np.ndarray
    cols: np.ndarray
    method: Method

    @property
    def probs(self) -> torch.Tensor:
        """`(N, K)` clean class probabilities."""
        return self.logits.softmax(dim=1)


def occlusion_positions(size: int, window: int, stride: int) -> np.ndarray:
    """`(n, 2)` `[start, stop)` ranges of the windows along one axis, as Captum places them."""
    if window > size:
        raise ConvlensError(f"occlusion window {window} is larger than the image side {size}")
    if window < 1 or stride < 1:
        raise ConvlensError(
            f"occlusion window and stride must be positive (got {window}, {stride})"
        )
    if stride > window and window < size:
        raise ConvlensError(
            f"occlusion stride {stride} is larger than the window {window}: some pixels would never "
            "be occluded; use a stride <= the window"
        )
    n = math.ceil((size - window) / stride) + 1
    starts = np.arange(n, dtype=np.int64) * stride
    return np.stack([starts, np.minimum(starts + window, size)], axis=1)


def choose_method(
    device: torch.device | str, image_size: tuple[int, int], window: tuple[int, int]
) -> Method:
    """The path ``method="auto"`` takes: plain on CUDA; on CPU incremental for small windows.

    Args:
        device: where the model runs.
        image_size: `(H, W)` of the images.
        window: `(height, width)` of the occluding window.
    """
    if torch.device(device).type != "cpu":
        return "plain"
    fraction = (window[0] * window[1]) / (image_size[0] * image_size[1])
    return "incremental" if fraction <= _INCREMENTAL_MAX_WINDOW_FRACTION else "plain"


def _pair(v: int | tuple[int, int], what: str) -> tuple[int, int]:
    if isinstance(v, int):
        return v, v
    if len(v) != 2:
        raise ConvlensError(f"{what} must be an int or (height, width), got {v!r}")
    return int(v[0]), int(v[1])


@contextmanager
def tf32_off() -> Iterator[None]:
    """Full float32 matrix products and convolutions on CUDA for the block, then as they were."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = matmul
        torch.backends.cudnn.allow_tf32 = cudnn


def occlusion(
    model: nn.Module,
    images: torch.Tensor,
    target: Target = None,
    window: int | tuple[int, int] = 8,
    stride: int | tuple[int, int] = 4,
    baseline: float | torch.Tensor = 0.0,
    *,
    method: Literal["auto", "plain", "incremental"] = "auto",
    batch_size: int | None = None,
    progress: bool = False,
) -> OcclusionResult:
    """Occlusion maps of `images` for `target`.

    The model is run in eval mode (its own training flags are restored afterwards) and without
    gradients. Example::

        res = occlusion(model, x, window=16, stride=8)   # x: (N, C, H, W) normalised floats
        res.prob_drop[0]     # (gh, gw) Zeiler-Fergus grid for the predicted class of image 0
        res.attribution[0]   # (C, H, W) equals Captum's Occlusion
        res.method           # "incremental" or "plain": the path that ran

    Args:
        model: a classifier returning `(N, K)` scores; any `nn.Module`.
        images: `(N, C, H, W)` model inputs (already normalised).
        target: one class for all images, one per image, or None for each image's predicted class.
        window: occluding window side, or (height, width), in pixels.
        stride: step between window positions, or (height, width); at most the window.
        baseline: value the occluded pixels take: a number, or a tensor broadcastable to
            `(N, C, H, W)` (e.g. the per-channel mean of the normalised data, `(C, 1, 1)`).
        method: "auto" (:func:`choose_method`), or force "plain" or "incremental" (a model the
            engine cannot trace then runs plain, with a warning).
        batch_size: occluded copies evaluated together (default: the engine sizes batches to keep
            each one's largest tensor near 24 MB; the plain path takes 16 on CPU, 256 on a GPU).
        progress: show a Rich progress bar on stderr.

    Returns:
        An :class:`OcclusionResult`.
    """
    images = model_input(model, images)  # the check every method makes: InputError if wrong
    if method not in ("auto", "plain", "incremental"):
        raise ConvlensError(
            f"occlusion method must be 'auto', 'plain' or 'incremental', not {method!r}"
        )
    N, C, H, W = images.shape
    wh, ww = _pair(window, "window")
    sh, sw = _pair(stride, "stride")
    rows = occlusion_positions(H, wh, sh)
    cols = occlusion_positions(W, ww, sw)
    gh, gw = len(rows), len(cols)
    base = torch.as_tensor(baseline, dtype=images.dtype, device=images.device)
    try:
        base = base.expand(N, C, H, W)
    except RuntimeError:
        raise ConvlensError(
            f"baseline of shape {tuple(base.shape)} does not broadcast to the images {tuple(images.shape)}"
        ) from None
    chosen: Method = choose_method(images.device, (H, W), (wh, ww)) if method == "auto" else method
    cuda = images.device.type == "cuda"

    with evaluating(model), torch.inference_mode(), tf32_off() if cuda else nullcontext():
        engine = None
        if chosen == "incremental":
            engine = IncrementalOcclusion(model, (C, H, W), rows, cols)
            if engine.gm is None:
                warnings.warn(
                    f"occlusion: {engine.unsupported[0]}; every occluded copy is computed in full",
                    stacklevel=2,
                )
                engine, chosen = None, "plain"
        clean = model(images)  # (N, K)
        if not isinstance(clean, torch.Tensor) or clean.dim() != 2 or clean.shape[0] != N:
            raise ConvlensError("occlusion needs a model that returns (N, classes) scores")
        tgt = resolve_targets(target, clean)
        occluded = torch.empty(N, gh * gw, dtype=clean.dtype, device=clean.device)  # target logits
        occluded_p = torch.empty_like(occluded)  # target probabilities
        with progress_bar(N * gh * gw, "occlusion", enabled=progress) as advance:
            for n in range(N):
                x, b = images[n : n + 1], base[n : n + 1]  # (1, C, H, W) each

                def fill(batches: Iterator[tuple[np.ndarray, torch.Tensor]], n: int = n) -> None:
                    for flat, out in batches:  # (P,) window indices, (P, K) outputs
                        at = torch.as_tensor(flat, device=out.device)
                        occluded[n, at] = out[:, tgt[n]]
                        occluded_p[n, at] = out.softmax(1)[:, tgt[n]]
                        advance(len(flat))

                if engine is not None:
                    try:
                        fill(_incremental_outputs(engine, x, b, gh * gw, batch_size, first=n == 0))
                        continue
                    except ConvlensError:
                        raise
                    except Exception as e:  # a graph the engine mis-planned (a ViT): the docs
                        # promise the plain path, which every model runs; this image starts over
                        warnings.warn(
                            f"occlusion: the incremental path failed on {type(model).__name__} "
                            f"({type(e).__name__}: {e}); every occluded copy is computed in full",
                            stacklevel=2,
                        )
                        engine, chosen = None, "plain"
                fill(
                    occluded_outputs(
                        model,
                        x,
                        b,
                        rows,
                        cols,
                        batch_size or _PLAIN_BATCH["cuda" if cuda else "cpu"],
                    )
                )
        ar = torch.arange(N, device=clean.device)
        logit_drop = (clean[ar, tgt][:, None] - occluded).reshape(N, gh, gw)
        prob_drop = (clean.softmax(1)[ar, tgt][:, None] - occluded_p).reshape(N, gh, gw)
        attribution = _per_pixel(logit_drop, rows, cols, H, W)  # (N, H, W)
    # Cloned outside inference mode: callers get ordinary tensors they may modify in place.
    return OcclusionResult(
        attribution=attribution[:, None].expand(N, C, H, W).clone(),
        logit_drop=logit_drop.clone(),
        prob_drop=prob_drop.clone(),
        target=tgt.clone(),
        logits=clean.clone(),
        rows=rows,
        cols=cols,
        method=chosen,
    )


def _incremental_outputs(
    engine: IncrementalOcclusion,
    image: torch.Tensor,
    baseline: torch.Tensor,
    n_windows: int,
    batch_size: int | None,
    first: bool,
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """The engine's outputs for every occluded copy of one image: `(P,)` indices, `(P, K)` outputs."""
    cache, _ = engine.clean_pass(image)
    if first and engine.unsupported:
        warnings.warn(
            "occlusion: recomputed in full (not incrementally) for these ops: "
            + ", ".join(engine.unsupported),
            stacklevel=4,
        )
    # Batches whose largest tensor stays near 24 MB: bigger ones are mmap'd afresh (page faults on
    # every allocation) and run slower on CPU.
    per_patch = engine.bytes_per_patch(cache)
    bs = batch_size or int(np.clip((24 << 20) // per_patch, 16, 512))
    padded: dict[tuple[object, ...], torch.Tensor] = {}  # padded clean tensors, per image
    gw = len(engine.cols)
    for patches in engine.iter_batches(n_windows, bs):  # (P, 2) grid rows and columns
        yield (
            patches[:, 0] * gw + patches[:, 1],
            engine.run(cache, image, baseline, patches, padded),
        )


def _per_pixel(
    drop: torch.Tensor, rows: np.ndarray, cols: np.ndarray, H: int, W: int
) -> torch.Tensor:
    """Mean of the drops of the windows covering each pixel: `(N, gh, gw)` -> `(N, H, W)`.

    Windows are separable, so the sum over windows covering (y, x) is `R^T D C` with `R` the
    `(gh, H)` row-coverage indicator and `C` the `(gw, W)` column one; the counts are `outer(R.sum(0),
    C.sum(0))`.
    """
    dev, dt = drop.device, drop.dtype
    ys, xs = np.arange(H), np.arange(W)
    R = torch.as_tensor((ys >= rows[:, :1]) & (ys < rows[:, 1:]), dtype=dt, device=dev)  # (gh, H)
    Cm = torch.as_tensor((xs >= cols[:, :1]) & (xs < cols[:, 1:]), dtype=dt, device=dev)  # (gw, W)
    total = R.T @ drop @ Cm  # (N, H, W)
    count = R.sum(0)[:, None] * Cm.sum(0)[None, :]
    return total / count
