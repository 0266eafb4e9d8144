"""Sharing: a convolution against a locally-connected layer of the same geometry.

Two ``sharingnet`` networks differ only in their first layer: a 5x5 convolution with 16 filters,
or a :class:`~convlens.models.locally_connected.LocallyConnected2d` with 16 filters of 5x5 *per
output position* (24 x 24 positions on a 28x28 image). The notes: sharing divides the parameters
by the number of positions (the summary's ``params_unshared`` is the locally-connected count) and
acts as a prior that a feature useful in one place is useful everywhere, so the shared network
should generalise at least as well. Train accuracy is measured after training on the training
images used (eval mode), so the gap is not blurred by the running average of an epoch.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from convlens.anatomy import summary
from convlens.experiments.common import (
    Context,
    Experiment,
    Findings,
    Picture,
    Plan,
    RunSpec,
    Table,
    Verdict,
    image_shape,
    initial_model,
    last,
    seconds_per_epoch,
    small_config,
    tiny,
)
from convlens.models.locally_connected import LocallyConnected2d
from convlens.render.experiment import filter_rows_figure, png, position_map_figure
from convlens.train import evaluate


def plan(budget: str, data: str, *, width: int = 16) -> Plan:
    """The two runs at `budget`."""
    if budget == "paper":
        config = small_config(epochs=15)
        note = "Paper-like budget: the full training set, 15 epochs, batch 64, SGD 0.05 cosine."
    else:
        config = small_config(epochs=4, limit_test=5000)
        note = (
            "Small budget (a 2-core CPU in minutes): all 60,000 training images and 5,000 test "
            "images, 4 epochs, batch 64, SGD 0.05 with a cosine schedule, no augmentation."
        )
        if budget == "tiny":
            config, note = tiny(config), "Tiny budget (tests only): 256 images, one epoch."
    runs = [
        RunSpec(
            "shared", "convolution", "sharingnet", {"shared": True, "width": int(width)}, config
        ),
        RunSpec(
            "unshared",
            "locally connected",
            "sharingnet",
            {"shared": False, "width": int(width)},
            config,
        ),
    ]
    return Plan(runs=runs, budget_note=note, params={"width": int(width)})


def analyse(ctx: Context) -> Findings:
    """Parameters against the summary, accuracy and gap, and the unshared filters at a few places."""
    rows = []
    found: dict[str, dict[str, float]] = {}
    for spec in ctx.plan.runs:
        run = ctx.runs[spec.name]
        s = summary(run.model, image_shape(run), warn=False)
        layer = s["layer1"]
        limit = spec.config.limit_train
        train = evaluate(run, split="train", limit=limit, root=ctx.data_root)
        test_acc = last(run, "test_acc")
        found[spec.name] = {
            "params": layer.params,
            "unshared": layer.params_unshared,
            "train": train.accuracy,
            "test": test_acc,
            "gap": train.accuracy - test_acc,
        }
        rows.append(
            [
                spec.label,
                layer.params,
                layer.params_unshared,
                s.totals["params"],
                100 * train.accuracy,
                100 * test_acc,
                100 * (train.accuracy - test_acc),
                seconds_per_epoch(run),
            ]
        )
    table = Table(
        "First layer and network",
        [
            "first layer",
            "layer parameters",
            "params_unshared (summary)",
            "network parameters",
            "train acc. %",
            "test acc. %",
            "gap (points)",
            "s / epoch",
        ],
        rows,
        "Train accuracy: the trained model in eval mode on the training images it saw.",
    )
    sh, un = found["shared"], found["unshared"]
    verdicts = [
        Verdict(
            "Without sharing the layer needs params_unshared weights: one filter bank per output position.",
            un["params"] == sh["unshared"] == un["unshared"],
            f"Rule: the locally-connected layer's parameters equal the convolution's "
            f"params_unshared in the summary. {un['params']:,} = {sh['unshared']:,} "
            f"({un['params'] / sh['params']:.0f}x the shared layer's {sh['params']:,}).",
        ),
        Verdict(
            "The shared network generalises at least as well (test accuracy).",
            sh["test"] >= un["test"],
            f"Rule: test accuracy shared >= unshared. Measured {100 * sh['test']:.2f} % against "
            f"{100 * un['test']:.2f} %.",
        ),
        Verdict(
            "The shared network over-fits less (a smaller train/test gap).",
            sh["gap"] <= un["gap"],
            f"Rule: train - test accuracy, shared <= unshared. Measured {100 * sh['gap']:.2f} "
            f"against {100 * un['gap']:.2f} points.",
        ),
    ]
    return Findings([table], verdicts, [_filters_picture(ctx), _change_picture(ctx)])


def _filters_picture(ctx: Context) -> Picture:
    conv = ctx.runs["shared"].model.get_submodule("layer1")
    local = ctx.runs["unshared"].model.get_submodule("layer1")
    assert isinstance(conv, nn.Conv2d) and isinstance(local, LocallyConnected2d)
    oh, ow = local.output_size
    places = [(0, 0), (0, ow - 1), (oh // 2, ow // 2), (oh - 1, 0), (oh - 1, ow - 1)]
    rows = [("convolution (every position)", conv.weight.detach().numpy())]
    rows += [
        (f"locally connected at ({i}, {j})", local.filters_at(i, j).detach().numpy())
        for i, j in places
    ]
    fig = filter_rows_figure(
        rows, title="First-layer filters: one shared set against one set per position"
    )
    spread = _position_spread(local.weight.detach().numpy())
    return Picture(
        png(fig),
        "Each row: the 16 first-layer 5x5 filters (blue negative, red positive; one scale per row). "
        "Top: the convolution's filters, used at every position. Below: the locally-connected "
        "layer's filters at the corners and centre of its 24x24 output. "
        f"Across positions, filter k's weights have a mean cosine similarity of {spread:.2f} "
        "with filter k at the centre: unshared filters learn each place on its own.",
        "first-layer filters, shared and unshared",
    )


def _change_picture(ctx: Context) -> Picture:
    spec, run = ctx.spec("unshared"), ctx.runs["unshared"]
    local = run.model.get_submodule("layer1")
    start = initial_model(spec.model, run.model_options, spec.config.seed).get_submodule("layer1")
    assert isinstance(local, LocallyConnected2d) and isinstance(start, LocallyConnected2d)
    w, w0 = local.weight.detach(), start.weight.detach()  # (L, F, P) each
    change = ((w - w0).norm(dim=(1, 2)) / w0.norm(dim=(1, 2))).reshape(local.output_size).numpy()
    h, wd = change.shape
    border = np.ones_like(change, dtype=bool)
    border[2:-2, 2:-2] = False  # the outer two rows and columns
    centre = change[h // 4 : h - h // 4, wd // 4 : wd - wd // 4]
    return Picture(
        png(position_map_figure(change, "relative change of the filters in training")),
        f"How far training moved the locally-connected layer's filters at each of its {h}x{wd} "
        "positions: |w - w_initial| / |w_initial| of the position's filters. Mean "
        f"{change[border].mean():.3f} on the outer two rows and columns, where the images are "
        f"mostly background, against {centre.mean():.3f} in the central half. Each position "
        "learns only from what appears there; a convolution shares what any position learns.",
        "change of the unshared filters per position",
    )


def _position_spread(weight: np.ndarray) -> float:
    """Mean cosine similarity of each position's filters with the centre position's: (L, F, P) in."""
    centre = weight[len(weight) // 2]  # (F, P)
    num = (weight * centre).sum(-1)
    den = np.linalg.norm(weight, axis=-1) * np.linalg.norm(centre, axis=-1) + 1e-12
    return float((num / den).mean())


EXPERIMENT = Experiment(
    name="sharing",
    title="Parameter sharing: a convolution against a locally-connected layer",
    claim=(
        "Sharing one set of filters across positions divides a layer's parameters by the number "
        "of positions and, as a prior that what is useful in one place is useful in another, "
        "makes the network generalise better."
    ),
    source="LeCun et al. 1998 (weight sharing); the notes' parameter-sharing section",
    default_data="fashion-mnist",
    data_choices=("fashion-mnist", "mnist", "sample"),
    plan=plan,
    analyse=analyse,
    settings={"width": 16},
)
