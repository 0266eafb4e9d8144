"""`convlens visualize` runners for attributions: occlusion, saliency, guided-backprop, gradcam,
guided-gradcam.

Query images come from `--image` files (any size and mode: converted to the model's channels and
resized to its input, with a note for each conversion, see :mod:`convlens.subjects.images`) or else
the first test images of the run's data set. `--target` picks the class explained (default: each
image's predicted class). Each runner writes `<method>.png` (heat map over each image) into `--out`
and, with `--save-data`, the raw map as `<method>.npy`.

Occlusion uses `--window`/`--stride` in pixels of the model's input; by default the window is about
a seventh of the image side (4 px for 28x28, 32 px for 224x224) and the stride half the window.
Occluded pixels take the value 0 in normalised units, i.e. the training set's mean colour.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from convlens.cli.visualize import VisualizeRequest, console, method
from convlens.errors import ConvlensError
from convlens.fileio import atomic_open
from convlens.render.common import save_figure


def _save_npy(path: Path, array: torch.Tensor | np.ndarray) -> Path:
    a = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    with atomic_open(path, "wb") as f:
        np.save(f, a)
    return path


def _inputs(req: VisualizeRequest) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
    """uint8 images, normalised model inputs on the device, titles, and the targets."""
    imgs, names = req.query_images()
    run = req.subject
    x = run.normalize(imgs).to(req.device)
    with torch.no_grad():
        logits = run.model(x)
    k = logits.shape[1]
    if req.target is not None and not 0 <= req.target < k:
        raise ConvlensError(
            f"--target {req.target} is out of range: the model has {k} classes (0-{k - 1})"
        )
    target = (
        logits.argmax(1) if req.target is None else torch.full_like(logits[:, 0], req.target).long()
    )
    probs = logits.softmax(1)
    classes = run.classes

    def cls(i: int) -> str:
        return classes[i] if i < len(classes) else str(i)

    which = "target" if req.target is not None else "predicted"
    titles = [
        f"{name}\n{which}: {cls(int(t))} (p={float(probs[i, t]):.2f})"
        for i, (name, t) in enumerate(zip(names, target, strict=True))
    ]
    return imgs, x, titles, target


def _write(req: VisualizeRequest, fig_path: Path, fig: object, data: torch.Tensor) -> list[Path]:
    paths = [save_figure(fig, fig_path)]  # type: ignore[arg-type]
    if req.save_data:
        paths.append(_save_npy(fig_path.with_suffix(".npy"), data))
    return paths


def default_window(side: int) -> int:
    """Occlusion window for an image side: about a seventh of it, at least 2 px."""
    return max(2, round(side / 7))


@method(
    "occlusion",
    help="Occlusion heat map (Zeiler & Fergus), exact and incremental; --window --stride.",
)
def run_occlusion(req: VisualizeRequest) -> list[Path]:
    from convlens.inspect.occlusion import occlusion
    from convlens.render.attribution import occlusion_figure

    imgs, x, titles, target = _inputs(req)
    side = min(x.shape[2:])
    window = req.window if req.window is not None else default_window(side)
    stride = req.stride if req.stride is not None else max(1, window // 2)
    if window < 1 or stride < 1:
        raise ConvlensError(f"--window and --stride must be at least 1 (got {window}, {stride})")
    console.print(f"occlusion: window {window} px, stride {stride} px, baseline = data mean")
    res = occlusion(req.subject.model, x, target, window=window, stride=stride, progress=True)
    fig = occlusion_figure(
        imgs, res.attribution[:, 0], res.prob_drop, res.rows, res.cols, titles=titles
    )
    paths = [save_figure(fig, req.out / "occlusion.png")]
    if req.save_data:
        paths.append(_save_npy(req.out / "occlusion.npy", res.attribution[:, 0]))
        paths.append(_save_npy(req.out / "occlusion_prob_drop.npy", res.prob_drop))
    return paths


@method("saliency", help="Gradient saliency map (Simonyan et al. 2013).")
def run_saliency(req: VisualizeRequest) -> list[Path]:
    from convlens.inspect.attribution import saliency
    from convlens.render.attribution import attribution_figure

    imgs, x, titles, target = _inputs(req)
    s = saliency(req.subject.model, x, target)
    fig = attribution_figure(imgs, s, method="saliency |dy/dx|", titles=titles)
    return _write(req, req.out / "saliency.png", fig, s)


@method("guided-backprop", help="Guided backpropagation (Springenberg et al. 2015).")
def run_guided_backprop(req: VisualizeRequest) -> list[Path]:
    from convlens.inspect.attribution import guided_backprop
    from convlens.render.attribution import attribution_figure

    imgs, x, titles, target = _inputs(req)
    g = guided_backprop(req.subject.model, x, target)
    fig = attribution_figure(imgs, g, method="guided backprop", titles=titles, signed_image=True)
    return _write(req, req.out / "guided_backprop.png", fig, g)


@method("gradcam", help="Grad-CAM (Selvaraju et al. 2017) of --layer (default: last conv).")
def run_gradcam(req: VisualizeRequest) -> list[Path]:
    from convlens.inspect.attribution import grad_cam
    from convlens.models import default_layer
    from convlens.render.attribution import attribution_figure

    imgs, x, titles, target = _inputs(req)
    layer = req.layer or default_layer(req.subject.model, tuple(x.shape[1:]))
    cam = grad_cam(req.subject.model, x, target, layer)
    fig = attribution_figure(imgs, cam, method=f"Grad-CAM {layer}", titles=titles)
    return _write(req, req.out / "gradcam.png", fig, cam)


@method("guided-gradcam", help="Guided Grad-CAM: guided backprop times Grad-CAM of --layer.")
def run_guided_gradcam(req: VisualizeRequest) -> list[Path]:
    from convlens.inspect.attribution import guided_grad_cam
    from convlens.models import default_layer
    from convlens.render.attribution import attribution_figure

    imgs, x, titles, target = _inputs(req)
    layer = req.layer or default_layer(req.subject.model, tuple(x.shape[1:]))
    g = guided_grad_cam(req.subject.model, x, target, layer)
    fig = attribution_figure(
        imgs, g, method=f"guided Grad-CAM {layer}", titles=titles, signed_image=True
    )
    return _write(req, req.out / "guided_gradcam.png", fig, g)
