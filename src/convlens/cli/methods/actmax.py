"""`convlens visualize RUN_DIR actmax`: the image each channel of a layer wants to see.

Options: `--layer` (default: the last convolution; the model's output for `--objective logit`),
`--channels 0-63` (default: the first 64), `--steps`, `--size` (default: the run's image size),
`--objective channel|neuron|logit|negative`, `--precision auto|bf16|fp32`, `--simple` (the Keras example: plain pixels, 20 steps of
normalised gradient ascent), `--seed`, `--device`. Writes `actmax_<layer>_<objective>[_simple].png`
and, with `--save-data`, the images as `.npy` (float32 `(K, C, S, S)` in [0, 1]) and a `.json` with
the channels and the objective each image reached.

An encoder of :func:`convlens.views.synthesis_view`, which resolves the defaults and chooses the
colours: for colour data sets the data set's own colour covariance (from up to 2,000 of its
images), or Lucid's ImageNet matrix when the data cannot be loaded (printed as a note).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from convlens.cli.visualize import VisualizeRequest, console, method
from convlens.errors import ConvlensError
from convlens.fileio import atomic_open, atomic_write_json
from convlens.render.common import save_figure


@method(
    "actmax",
    help="Activation maximisation: synthesise the image each channel of --layer wants to see "
    "(--channels --steps --size --objective --simple).",
)
def run_actmax(req: VisualizeRequest) -> list[Path]:
    from convlens.render.actmax import actmax_figure
    from convlens.views import OBJECTIVES, synthesis_view

    if req.objective is not None and req.objective not in OBJECTIVES:
        raise ConvlensError(
            f"--objective {req.objective!r} is not one of {', '.join(OBJECTIVES)}"
        )  # fmt: skip
    sub = req.subject
    mode = "simple (Keras example)" if req.simple else "readable (Fourier, transforms)"
    # --channels is parsed here; the view checks it against the layer (None: its default)
    channels = req.parsed_channels([]) or None
    v = synthesis_view(
        sub, req.layer, channels, steps=req.steps, size=req.size, objective=req.objective,
        simple=req.simple, precision=req.precision, seed=req.seed, colours="data",
        device=req.device, progress=True,
    )  # fmt: skip
    if v.colours == "imagenet" and v.colour_note:
        console.print(f"[yellow]note:[/] {v.colour_note}", highlight=False)
    layer, objective = v.layer, v.objective
    what = "classes" if layer is None else f"channels of {layer}"
    console.print(
        f"actmax: {len(v.channels)} {what}, objective {objective}, {v.size}x{v.size}, {mode}",
        highlight=False,
    )
    title = f"{sub.name} {layer or 'output'}: {objective}, {v.steps} steps" + (
        ", Keras-style" if v.simple else ""
    )
    fig = actmax_figure(
        v.images,
        labels=list(v.class_names) if v.class_names is not None else [str(i) for i in v.channels],
        values=v.values,
        stretch=v.simple,
        title=title,
    )
    stem = f"actmax_{(layer or 'output').replace('.', '_')}_{objective}" + (
        "_simple" if v.simple else ""
    )
    paths = [save_figure(fig, req.out / f"{stem}.png")]
    if req.save_data:
        npy = req.out / f"{stem}.npy"
        with atomic_open(npy, "wb") as f:
            np.save(f, v.images.numpy().astype(np.float32))
        meta = req.out / f"{stem}.json"
        atomic_write_json(
            meta,
            {
                "layer": layer, "objective": objective, "simple": v.simple, "steps": v.steps,
                "size": v.size, "seed": v.seed, "channels": list(v.channels),
                "precision": v.precision, "values": [float(x) for x in v.values],
            },
        )  # fmt: skip
        paths += [npy, meta]
    return paths
