"""`convlens visualize` runners for attributions: occlusion, saliency, guided-backprop, gradcam,
guided-gradcam.

Query images come from `--image` files (any size and mode: converted to the model's channels and
resized to its input, with a note for each conversion, see :mod:`convlens.subjects.images`) or else
the first test images of the run's data set. `--target` picks the class explained (default: each
image's predicted class, the arg-max of the logits). Each runner asks
:func:`convlens.views.attribution_view` and writes `<method>.png` (heat map over each image) into
`--out`; with `--save-data` also the raw map as `<method>.npy` and `<method>.json`: what the view
resolved (target, layer, occlusion window, stride and path) and each image's top-5 predictions.

Occlusion uses `--window`/`--stride` in pixels of the model's input; by default the window is about
a seventh of the image side (4 px for 28x28, 32 px for 224x224) and the stride half the window
(:mod:`convlens.views.defaults`). Occluded pixels take the value 0 in normalised units, i.e. the
training set's mean colour.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from convlens.cli.visualize import VisualizeRequest, console, method
from convlens.errors import ConvlensError
from convlens.fileio import atomic_open, atomic_write_json
from convlens.render.common import save_figure

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from convlens.views import AttributionView


def _save_npy(path: Path, array: torch.Tensor | np.ndarray) -> Path:
    a = array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)
    with atomic_open(path, "wb") as f:
        np.save(f, a)
    return path


def _attribute(
    req: VisualizeRequest, name: str
) -> tuple[torch.Tensor, list[str], list[str], AttributionView]:
    """The query images, their names, figure titles and the attribution view of method `name`."""
    from convlens.views import attribution_view

    imgs, names = req.query_images()
    k = len(req.subject.classes)
    if req.target is not None and not 0 <= req.target < k:
        raise ConvlensError(
            f"--target {req.target} is out of range: the model has {k} classes (0-{k - 1})"
        )
    a = attribution_view(
        req.subject, imgs, name, target=req.target, layer=req.layer, window=req.window,
        stride=req.stride, progress=name == "occlusion",
    )  # fmt: skip
    which = "target" if a.target_given else "predicted"
    titles = [
        f"{n}\n{which}: {req.subject.class_name(int(t))} (p={float(p):.2f})"
        for n, t, p in zip(names, a.targets, a.target_probs, strict=True)
    ]
    return imgs, names, titles, a


def _write(
    req: VisualizeRequest,
    fig_path: Path,
    fig: Figure,
    imgs: torch.Tensor,
    names: list[str],
    a: AttributionView,
) -> list[Path]:
    """The figure; with --save-data the maps (.npy) and what the view resolved (.json)."""
    from convlens.views import prediction_view

    paths = [save_figure(fig, fig_path)]
    if not req.save_data:
        return paths
    paths.append(_save_npy(fig_path.with_suffix(".npy"), a.maps))
    images = [
        {
            "name": n,
            "target": int(a.targets[i]),
            "target_p": float(a.target_probs[i]),
            **prediction_view(req.subject, imgs[i]).to_dict(),
        }
        for i, n in enumerate(names)
    ]
    meta = fig_path.with_suffix(".json")
    atomic_write_json(
        meta,
        {
            "method": a.method, "layer": a.layer, "window": a.window, "stride": a.stride,
            "path": a.path, "target_given": a.target_given, "images": images,
            "maps": fig_path.with_suffix(".npy").name,
        },
    )  # fmt: skip
    paths.append(meta)
    return paths


@method(
    "occlusion",
    help="Occlusion heat map (Zeiler & Fergus), exact and incremental; --window --stride.",
)
def run_occlusion(req: VisualizeRequest) -> list[Path]:
    from convlens.render.attribution import occlusion_figure

    imgs, names, titles, a = _attribute(req, "occlusion")
    console.print(
        f"occlusion: window {a.window} px, stride {a.stride} px, baseline = data mean, "
        f"{a.path} path"
    )
    assert a.prob_drop is not None and a.rows is not None and a.cols is not None
    fig = occlusion_figure(imgs, a.maps, a.prob_drop, a.rows, a.cols, titles=titles)
    paths = _write(req, req.out / "occlusion.png", fig, imgs, names, a)
    if req.save_data:
        paths.append(_save_npy(req.out / "occlusion_prob_drop.npy", a.prob_drop))
    return paths


@method("saliency", help="Gradient saliency map (Simonyan et al. 2013).")
def run_saliency(req: VisualizeRequest) -> list[Path]:
    from convlens.render.attribution import attribution_figure

    imgs, names, titles, a = _attribute(req, "saliency")
    fig = attribution_figure(imgs, a.maps, method="saliency |dy/dx|", titles=titles)
    return _write(req, req.out / "saliency.png", fig, imgs, names, a)


@method("guided-backprop", help="Guided backpropagation (Springenberg et al. 2015).")
def run_guided_backprop(req: VisualizeRequest) -> list[Path]:
    from convlens.render.attribution import attribution_figure

    imgs, names, titles, a = _attribute(req, "guided_backprop")
    fig = attribution_figure(
        imgs, a.maps, method="guided backprop", titles=titles, signed_image=True
    )
    return _write(req, req.out / "guided_backprop.png", fig, imgs, names, a)


@method("gradcam", help="Grad-CAM (Selvaraju et al. 2017) of --layer (default: last conv).")
def run_gradcam(req: VisualizeRequest) -> list[Path]:
    from convlens.render.attribution import attribution_figure

    imgs, names, titles, a = _attribute(req, "gradcam")
    fig = attribution_figure(imgs, a.maps, method=f"Grad-CAM {a.layer}", titles=titles)
    return _write(req, req.out / "gradcam.png", fig, imgs, names, a)


@method("guided-gradcam", help="Guided Grad-CAM: guided backprop times Grad-CAM of --layer.")
def run_guided_gradcam(req: VisualizeRequest) -> list[Path]:
    from convlens.render.attribution import attribution_figure

    imgs, names, titles, a = _attribute(req, "guided_gradcam")
    fig = attribution_figure(
        imgs, a.maps, method=f"guided Grad-CAM {a.layer}", titles=titles, signed_image=True
    )
    return _write(req, req.out / "guided_gradcam.png", fig, imgs, names, a)
