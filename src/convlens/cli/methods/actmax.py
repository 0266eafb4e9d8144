"""`convlens visualize RUN_DIR actmax`: the image each channel of a layer wants to see.

Options: `--layer` (default: the last convolution; the model's output for `--objective logit`),
`--channels 0-63` (default: the first 64), `--steps`, `--size` (default: the run's image size),
`--objective channel|neuron|logit|negative`, `--precision auto|bf16|fp32`, `--simple` (the Keras example: plain pixels, 20 steps of
normalised gradient ascent), `--seed`, `--device`. Writes `actmax_<layer>_<objective>[_simple].png`
and, with `--save-data`, the images as `.npy` (float32 `(K, C, S, S)` in [0, 1]) and a `.json` with
the channels and the objective each image reached.

For colour data sets the colours are decorrelated with the data set's own colour covariance
(computed from up to 2,000 test images), or Lucid's ImageNet matrix when the data cannot be loaded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from convlens.cli.visualize import VisualizeRequest, console, method
from convlens.errors import ConvlensError
from convlens.fileio import atomic_open, atomic_write_json
from convlens.render.common import save_figure

DEFAULT_CHANNELS = 64


def _color_matrix(req: VisualizeRequest) -> torch.Tensor | None:
    """The data set's colour square root for 3-channel runs; None (ImageNet's) if the data is missing."""
    from convlens.inspect.param import color_correlation_sqrt

    try:
        ds = req.dataset("test")
    except ConvlensError as e:
        console.print(f"[yellow]note:[/] colours decorrelated with ImageNet's statistics ({e})")
        return None
    return color_correlation_sqrt(ds.head(2000)[0])


@method(
    "actmax",
    help="Activation maximisation: synthesise the image each channel of --layer wants to see "
    "(--channels --steps --size --objective --simple).",
)
def run_actmax(req: VisualizeRequest) -> list[Path]:
    from convlens.inspect.actmax import OBJECTIVES, activation_maximization, output_channels
    from convlens.models import default_layer
    from convlens.render.actmax import actmax_figure

    run = req.subject
    model = run.model
    # None: the method's rule (the centre neuron of an affine first layer, else the channel mean)
    objective = req.objective
    if objective is not None and objective not in OBJECTIVES:
        raise ConvlensError(
            f"--objective {objective!r} is not one of {', '.join(OBJECTIVES)}"
        )  # fmt: skip
    c, h, _ = run.image_shape
    size = req.size if req.size is not None else h
    if size < 1:
        raise ConvlensError(f"--size must be a positive number of pixels, not {size}")
    # logit without --layer: the model's output, the class scores
    layer = req.layer or (None if objective == "logit" else default_layer(model, (c, size, size)))
    if req.steps is not None and req.steps < 0:
        raise ConvlensError(f"--steps must be >= 0, not {req.steps}")
    n = output_channels(model, layer, (c, size, size), device=req.device)
    channels = req.parsed_channels(list(range(min(n, DEFAULT_CHANNELS))))
    bad = [ch for ch in channels if not 0 <= ch < n]
    if bad:
        raise ConvlensError(
            f"--channels: {bad[0]} is out of range; {layer or 'the output'} has {n} channels (0-{n - 1})"
        )
    cm = _color_matrix(req) if c == 3 and not req.simple else None

    what = "classes" if layer is None else f"channels of {layer}"
    mode = "simple (Keras example)" if req.simple else "readable (Fourier, transforms)"
    console.print(
        f"actmax: {len(channels)} {what}, objective {objective or 'default'}, {size}x{size}, {mode}"
    )
    res = activation_maximization(
        model, layer, channels, size=size, steps=req.steps, objective=objective,
        mean=run.preprocess.mean, std=run.preprocess.std, in_channels=c, seed=req.seed, color_matrix=cm,
        simple=req.simple, device=req.device, progress=True, precision=req.precision,
    )  # fmt: skip
    steps = res.history.shape[0]
    objective = res.objective  # the one that ran
    names = run.classes if layer is None else None
    title = f"{run.name} {layer or 'output'}: {objective}, {steps} steps" + (
        ", Keras-style" if req.simple else ""
    )
    fig = actmax_figure(
        res.images,
        labels=[names[i] if names and i < len(names) else str(i) for i in channels],
        values=res.values,
        stretch=req.simple,
        title=title,
    )
    stem = f"actmax_{(layer or 'output').replace('.', '_')}_{objective}" + (
        "_simple" if req.simple else ""
    )
    paths = [save_figure(fig, req.out / f"{stem}.png")]
    if req.save_data:
        npy = req.out / f"{stem}.npy"
        with atomic_open(npy, "wb") as f:
            np.save(f, res.images.numpy().astype(np.float32))
        meta = req.out / f"{stem}.json"
        atomic_write_json(
            meta,
            {
                "layer": layer, "objective": objective, "simple": req.simple, "steps": steps,
                "size": size, "seed": req.seed, "channels": channels, "precision": req.precision,
                "values": [float(v) for v in res.values],
            },
        )  # fmt: skip
        paths += [npy, meta]
    return paths
