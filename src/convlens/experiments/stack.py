"""Stack: three 3x3 convolutions against one 7x7 with the same C channels (Simonyan & Zisserman 2015).

The two ``stacknet`` networks differ only in their block (C -> C channels on a 16x16 map): three
3x3 convolutions with a ReLU after each, or one 7x7 convolution and one ReLU. The notes' arithmetic:
27C^2 against 49C^2 weights (no biases in the block), the same 7x7 receptive field, three
non-linearities against one. Parameters, MACs and the theoretical field come from
:func:`convlens.summary` of the block alone; the field is measured again by brute force on the
trained weights: the input pixels on which the centre unit's gradient is non-zero
(:func:`convlens.anatomy.effective_receptive_field`, whose map is zero outside the field).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from convlens.anatomy import effective_receptive_field, summary
from convlens.experiments.common import (
    Context,
    Experiment,
    Findings,
    Picture,
    Plan,
    RunSpec,
    Table,
    Verdict,
    error_curves,
    image_shape,
    last,
    seconds_per_epoch,
    small_config,
    tiny,
    train_images_per_s,
)
from convlens.render.experiment import error_curves_figure, png


def plan(budget: str, data: str, *, width: int = 32) -> Plan:
    """The two runs at `budget`."""
    if budget == "paper":
        config = small_config(
            epochs=30, batch_size=128, lr=0.05, augment="crop,flip", crop_padding=4
        )
        note = "Paper-like budget: the full training set, 30 epochs, batch 128, SGD 0.05 cosine, crops and flips."
    else:
        config = small_config(epochs=6, limit_train=10_000, limit_test=2000, augment="flip")
        note = (
            "Small budget (a 2-core CPU in minutes): 10,000 training and 2,000 test images, "
            "6 epochs, batch 64, SGD 0.05 with a cosine schedule, flips."
        )
        if budget == "tiny":
            config, note = tiny(config), "Tiny budget (tests only): 256 images, one epoch."
    runs = [
        RunSpec("three3x3", "three 3x3", "stacknet", {"kernel": 3, "width": int(width)}, config),
        RunSpec("one7x7", "one 7x7", "stacknet", {"kernel": 7, "width": int(width)}, config),
    ]
    return Plan(runs=runs, budget_note=note, params={"width": int(width)})


def brute_force_field(block: nn.Module, layer: str, channels: int, side: int = 16) -> int:
    """Side of the square of input pixels the centre unit of `layer` depends on, measured.

    The support of the mean |gradient| map over random inputs through the block's own (trained)
    weights: a pixel outside the field has a gradient of exactly zero.
    """
    erf = effective_receptive_field(block, layer, (channels, side, side), n=16, weights="model")
    support = erf.map > 0  # (side, side)
    rows = np.flatnonzero(support.any(1))
    cols = np.flatnonzero(support.any(0))
    return int(max(rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1))


def analyse(ctx: Context) -> Findings:
    """The block's arithmetic against the formulas, and the trained networks side by side."""
    c = ctx.plan.params["width"]
    rows = []
    found: dict[str, dict[str, float]] = {}
    for spec in ctx.plan.runs:
        run = ctx.runs[spec.name]
        block = run.model.get_submodule("block")
        s = summary(block, (c, 16, 16), warn=False)
        convs = [r for r in s.layers if r.type == "Conv2d"]
        k = spec.options["kernel"]
        formula = (27 if k == 3 else 49) * c * c
        relus = sum(isinstance(m, nn.ReLU) for m in block.modules())
        rf_summary = convs[-1].rf.size[0] if convs[-1].rf is not None else -1
        last_conv = next(r.name for r in reversed(s.layers) if r.type == "Conv2d")
        rf_measured = brute_force_field(block, last_conv, c)
        whole = summary(run.model, image_shape(run), warn=False)
        found[spec.name] = {
            "params": s.totals["params"],
            "formula": formula,
            "rf_summary": rf_summary,
            "rf_measured": rf_measured,
            "acc": last(run, "test_acc"),
            "macs": s.totals["macs"],
        }
        rows.append(
            [
                spec.label,
                s.totals["params"],
                f"{27 if k == 3 else 49}C² = {formula:,}",
                s.totals["macs"],
                rf_summary,
                rf_measured,
                relus,
                whole.totals["params"],
                100 * last(run, "train_acc"),
                100 * last(run, "test_acc"),
                seconds_per_epoch(run),
                train_images_per_s(run),
            ]
        )
    table = Table(
        f"The block (C = {c} channels in and out, on a 16x16 map) and the whole networks",
        [
            "block",
            "block parameters (summary)",
            "formula",
            "block MACs",
            "RF (summary)",
            "RF (brute force, trained)",
            "non-linearities",
            "network parameters",
            "train acc. %",
            "test acc. %",
            "s / epoch",
            "train images / s (fastest epoch)",
        ],
        rows,
        "RF: side of the receptive field of the block's last convolution, in pixels of the block's "
        "input, from convlens.summary and from the non-zero input gradient of its centre unit with "
        "the trained weights. Seconds per epoch (mean, with the test pass) and images per second (the "
        "fastest epoch) depend on what else the machine runs.",
    )
    a, b = found["three3x3"], found["one7x7"]
    verdicts = [
        Verdict(
            "Three 3x3 convolutions have 27C² weights, one 7x7 has 49C² (45 % fewer for the stack).",
            a["params"] == a["formula"] and b["params"] == b["formula"],
            f"Rule: the summary's counts equal the formulas exactly. C = {c}: "
            f"{a['params']:,} = {a['formula']:,} and {b['params']:,} = {b['formula']:,}; "
            f"MACs {a['macs']:,} against {b['macs']:,}.",
        ),
        Verdict(
            "Both see a 7x7 window of the block's input.",
            a["rf_summary"] == b["rf_summary"] == a["rf_measured"] == b["rf_measured"] == 7,
            f"Rule: all four receptive fields are 7. Summary {a['rf_summary']} and {b['rf_summary']}; "
            f"brute force on the trained weights {a['rf_measured']} and {b['rf_measured']}.",
        ),
        Verdict(
            "The stack (three non-linearities) is at least as accurate as the single 7x7 layer.",
            a["acc"] >= b["acc"],
            f"Rule: test accuracy of three 3x3 >= one 7x7. Measured {100 * a['acc']:.2f} % "
            f"against {100 * b['acc']:.2f} % (one seed; differences of a point or two are noise "
            "at this budget).",
        ),
    ]
    picture = Picture(
        png(error_curves_figure(error_curves(ctx))),
        "Training error (running over each epoch) and test error against epochs.",
        "error curves of the two networks",
    )
    return Findings([table], verdicts, [picture])


EXPERIMENT = Experiment(
    name="stack",
    title="Three 3x3 convolutions against one 7x7",
    claim=(
        "A stack of three 3x3 convolutions sees the same 7x7 window as one 7x7 convolution, with "
        "27C² instead of 49C² weights and three non-linearities instead of one, which makes it "
        "more discriminative."
    ),
    source="Simonyan & Zisserman 2015, Very deep convolutional networks, section 2.3",
    default_data="cifar10",
    plan=plan,
    analyse=analyse,
    settings={"width": 32},
)
