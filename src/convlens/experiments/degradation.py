"""Degradation: a deeper plain network trains worse; a residual one does not (He et al. 2016).

Four networks, one recipe: ``plain{d}`` and ``resnet{d}`` for a shallow and a deep depth ``d``
(default 20 and 56; any pair of 6n + 2 depths the registry holds). They have exactly the same
parameters (option-A shortcuts have none), so they differ only in the shortcuts.

Training error is the fraction of training images misclassified during each epoch (running over the
epoch, with the recipe's augmentation), as in the paper's figures; test error is measured at the
end of each epoch.
"""

from __future__ import annotations

from collections.abc import Sequence

from convlens.anatomy import summary
from convlens.errors import ConvlensError
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
    error_pct,
    image_shape,
    last,
    seconds_per_epoch,
    small_config,
    tiny,
)
from convlens.models import names
from convlens.render.experiment import error_curves_figure, png
from convlens.train import TrainConfig


def _depths(depths: Sequence[int]) -> tuple[int, int]:
    ds = tuple(int(d) for d in depths)
    if len(ds) != 2 or ds[0] >= ds[1]:
        raise ConvlensError(
            f"degradation takes two depths, shallow then deep (e.g. 20,56), not {ds}"
        )
    for d in ds:
        if f"plain{d}" not in names():
            raise ConvlensError(
                f"no plain{d}/resnet{d} in the registry; depths: 20, 32, 44, 56, 110"
            )
    return ds[0], ds[1]


def plan(budget: str, data: str, *, depths: Sequence[int] = (20, 56)) -> Plan:
    """The four runs at `budget`."""
    shallow, deep = _depths(depths)
    if budget == "paper":
        # He et al. 2016, section 4.2: SGD 0.1, momentum 0.9, weight decay 1e-4, batch 128,
        # lr / 10 at 32k and 48k of 64k iterations (50 % and 75 % of 164 epochs), crop + flip.
        config = TrainConfig(
            epochs=164,
            batch_size=128,
            lr=0.1,
            optimizer="sgd",
            momentum=0.9,
            nesterov=False,
            weight_decay=1e-4,
            schedule="step",
            warmup=0.0,
            augment="crop,flip",
            crop_padding=4,
        )
        note = (
            "Paper budget: He et al.'s recipe (164 epochs of the full training set, batch 128, "
            "SGD 0.1 divided by 10 at 50 % and 75 %, weight decay 1e-4, 4-pixel crops and flips). "
            "Meant for a GPU: four runs of 164 epochs."
        )
    else:
        config = small_config(
            epochs=3, limit_train=2000, limit_test=500, augment="crop,flip", crop_padding=4
        )
        note = (
            "Small budget (a 2-core CPU in minutes): 2,000 training and 500 test images, 3 epochs, "
            "batch 64, SGD 0.05 with a cosine schedule, crops and flips. The paper trains 164 "
            "epochs on 50,000 images; at this budget the curves show the start of training only."
        )
        if budget == "tiny":
            config, note = tiny(config), "Tiny budget (tests only): 256 images, one epoch."
    runs = [
        RunSpec(f"{kind}{d}", f"{kind}-{d}", f"{kind}{d}", {}, config)
        for d in (shallow, deep)
        for kind in ("plain", "resnet")
    ]
    return Plan(runs=runs, budget_note=note, params={"depths": [shallow, deep]})


def analyse(ctx: Context) -> Findings:
    """Errors per run, the curves, and the three verdicts."""
    shallow, deep = ctx.plan.params["depths"]
    rows = []
    train_err: dict[str, float] = {}
    for spec in ctx.plan.runs:
        run = ctx.runs[spec.name]
        hist = run.history
        s = summary(run.model, image_shape(run), warn=False)
        train_err[spec.name] = error_pct(last(run, "train_acc"))
        rows.append(
            [
                spec.label,
                s.totals["params"],
                train_err[spec.name],
                error_pct(last(run, "test_acc")),
                min(error_pct(r["test_acc"]) for r in hist),
                seconds_per_epoch(run),
            ]
        )
    table = Table(
        "Errors after the last epoch",
        [
            "network",
            "parameters",
            "training error %",
            "test error %",
            "best test error %",
            "s / epoch",
        ],
        rows,
        "Parameters from convlens.summary: a plain network and its residual twin have the same.",
    )
    ps, pd, rs, rd = (
        train_err[n]
        for n in (f"plain{shallow}", f"plain{deep}", f"resnet{shallow}", f"resnet{deep}")
    )
    verdicts = [
        Verdict(
            f"The deeper plain network ({deep} layers) has a higher training error than the "
            f"shallower one ({shallow}): depth makes optimisation harder (degradation).",
            pd > ps,
            f"Rule: training error of plain-{deep} > plain-{shallow} after the last epoch. "
            f"Measured {pd:.2f} % against {ps:.2f} %.",
        ),
        Verdict(
            f"The residual networks do not degrade: resnet-{deep} trains at least as well as "
            f"resnet-{shallow}.",
            rd <= rs,
            f"Rule: training error of resnet-{deep} <= resnet-{shallow}. "
            f"Measured {rd:.2f} % against {rs:.2f} %.",
        ),
        Verdict(
            f"At {deep} layers the shortcuts help: resnet-{deep} has a lower training error than "
            f"plain-{deep}.",
            rd < pd,
            f"Rule: training error of resnet-{deep} < plain-{deep}. Measured {rd:.2f} % against {pd:.2f} %.",
        ),
    ]
    picture = Picture(
        png(error_curves_figure(error_curves(ctx))),
        "Training error (left; running over each epoch, with augmentation) and test error (right) "
        "against epochs. Dashed: plain networks; solid: residual networks (He et al. 2016, Fig. 1 and 6).",
        "training and test error curves",
    )
    return Findings([table], verdicts, [picture])


EXPERIMENT = Experiment(
    name="degradation",
    title="Degradation: deeper plain networks train worse, residual ones do not",
    claim=(
        "Adding layers to a plain network raises its training error (so it is an optimisation "
        "problem, not over-fitting); with identity shortcuts the deeper network trains at least "
        "as well as the shallower one."
    ),
    source="He, Zhang, Ren & Sun 2016, Deep residual learning for image recognition, section 4.2, Fig. 1 and 6",
    default_data="cifar10",
    plan=plan,
    analyse=analyse,
    settings={"depths": (20, 56)},
)
