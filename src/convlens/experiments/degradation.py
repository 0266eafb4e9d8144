"""Degradation: a deeper plain network trains worse; a residual one does not (He et al. 2016).

Four arms, one recipe: ``plain{d}`` and ``resnet{d}`` for a shallow and a deep depth ``d``
(default 20 and 56; any pair of 6n + 2 depths the registry holds), each trained with n paired
seeds. A plain network and its residual twin have exactly the same parameters (option-A shortcuts
have none), so they differ only in the shortcuts.

**Measures.** The verdicts use the *training error of the final model on a fixed training subset*
(the images it was trained on), in eval mode, without augmentation: a property of the trained
weights, not a running average over changing weights. The curves are the running training loss
and error logged at the end of every epoch; every arm takes the same number of steps per epoch
(same images, batch size and epochs), so the curves are compared at matched steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convlens.anatomy import summary
from convlens.errors import ConvlensError
from convlens.experiments import stats
from convlens.experiments.common import (
    EVAL_TRAIN,
    TINY_NOTE,
    TINY_SEEDS,
    Context,
    Experiment,
    Findings,
    Picture,
    Plan,
    Table,
    compare,
    error_curves,
    error_pct,
    image_shape,
    last,
    seconds_per_epoch,
    seeded_runs,
    small_config,
    tiny,
)
from convlens.models import names
from convlens.render.experiment import error_curves_figure, intervals_figure, png
from convlens.train import TrainConfig, evaluate

SEEDS = 5
MARGIN = 2.0  # points of training error: the non-inferiority margin of the residual claim


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


def plan(budget: str, data: str, *, depths: Sequence[int] = (20, 56), seeds: int = SEEDS) -> Plan:
    """The four arms times `seeds` runs at `budget`."""
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
            "SGD 0.1 divided by 10 at 50 % and 75 %, weight decay 1e-4, 4-pixel crops and flips), "
            f"{seeds} seeds per arm. Meant for a GPU."
        )
    else:
        config = small_config(
            epochs=4, limit_train=1000, limit_test=500, augment="crop,flip", crop_padding=4
        )
        note = (
            "Small budget (a 2-core CPU in about 20 minutes): 1,000 training and 500 test images, "
            "4 epochs of 16 steps (64 steps, 0.1 % of He et al.'s 64k), batch 64, SGD 0.05 with a "
            f"cosine schedule, crops and flips; {seeds} paired seeds per arm."
        )
        if budget == "tiny":
            config, note, seeds = tiny(config), TINY_NOTE, TINY_SEEDS
    arms: list[tuple[str, str, str, dict[str, Any], TrainConfig]] = [
        (f"{kind}{d}", f"{kind}-{d}", f"{kind}{d}", {}, config)
        for d in (shallow, deep)
        for kind in ("plain", "resnet")
    ]
    return Plan(
        runs=seeded_runs(arms, seeds),
        budget_note=note,
        params={"depths": [shallow, deep], "seeds": seeds},
    )


PREDICTION_PLAIN = (
    "He et al.'s Fig. 1 shows plain-56 above plain-20 in training error from the first thousand "
    "iterations on: an optimisation difficulty, visible early, so this budget can show it."
)
PREDICTION_RES = (
    "In He et al.'s Fig. 6 resnet-56 falls below resnet-20 only late in 64k iterations; after "
    "64 steps on 1,000 images the deeper network has barely started, so the paper predicts no "
    "decision at this budget (inconclusive), not a failure."
)


def analyse(ctx: Context) -> Findings:
    """Errors per arm over paired seeds, the curves at matched steps, and the three verdicts."""
    shallow, deep = ctx.plan.params["depths"]
    rows = []
    train_err: dict[str, np.ndarray] = {}
    for arm in ctx.arms:
        specs, runs = ctx.specs(arm), ctx.arm_runs(arm)
        s = summary(runs[0].model, image_shape(runs[0]), warn=False)
        limit = specs[0].config.limit_train or EVAL_TRAIN  # a fixed subset at the paper budget
        err = np.array(
            [
                100 * (1 - evaluate(r, split="train", limit=limit, root=ctx.data_root).accuracy)
                for r in runs
            ]
        )
        train_err[arm] = err
        test = np.array([error_pct(last(r, "test_acc")) for r in runs])
        ei, ti = stats.t_interval(err), stats.t_interval(test)
        rows.append(
            [
                ctx.label(arm),
                s.totals["params"],
                float(ei.mean),
                float(ei.half) if ei.n > 1 else float("nan"),
                float(ti.mean),
                float(ti.half) if ti.n > 1 else float("nan"),
                float(np.mean([seconds_per_epoch(r) for r in runs])),
            ]
        )
    n = len(ctx.seeds)
    table = Table(
        f"Errors of the final models, mean over {n} seeds",
        [
            "network",
            "parameters",
            "training error % (eval mode, fixed subset)",
            "±",
            "test error %",
            "±",
            "s / epoch",
        ],
        rows,
        "Training error: each final model in eval mode, without augmentation, on the training "
        "images it was trained on. ±: half-width of the 95 % Student-t interval of the mean over "
        "the seeds. A plain network and its residual twin have the same parameters "
        "(convlens.summary).",
    )
    p_s, p_d, r_s, r_d = (f"plain{shallow}", f"plain{deep}", f"resnet{shallow}", f"resnet{deep}")
    curves = error_curves(ctx, ("train_loss", "train_acc", "test_acc"))
    matched = _matched_table(ctx, curves, f"plain-{deep}", f"plain-{shallow}")
    verdicts = [
        compare(
            f"The deeper plain network ({deep} layers) has a higher training error than the "
            f"shallower one ({shallow}): depth makes optimisation harder (degradation).",
            train_err[p_d],
            train_err[p_s],
            a_label=f"plain-{deep}",
            b_label=f"plain-{shallow}",
            measure="training error (%, eval mode, fixed subset)",
            unit="points",
            prediction=PREDICTION_PLAIN,
            meaning="More layers can make a plain network harder to train, not only slower: "
            "its training error, not just its test error, is higher.",
        ),
        compare(
            f"The residual networks do not degrade: resnet-{deep} trains at least as well as "
            f"resnet-{shallow}.",
            train_err[r_d],
            train_err[r_s],
            a_label=f"resnet-{deep}",
            b_label=f"resnet-{shallow}",
            measure="training error (%, eval mode, fixed subset)",
            unit="points",
            lower_is_better=True,
            margin=MARGIN,
            prediction=PREDICTION_RES,
            meaning="A claim about long training needs long training: at a budget this short "
            "the honest answer is 'cannot tell yet'.",
        ),
        compare(
            f"At {deep} layers the shortcuts help: resnet-{deep} has a lower training error than "
            f"plain-{deep}.",
            train_err[r_d],
            train_err[p_d],
            a_label=f"resnet-{deep}",
            b_label=f"plain-{deep}",
            measure="training error (%, eval mode, fixed subset)",
            unit="points",
            lower_is_better=True,
            prediction="Same parameters, shortcuts only: He et al. find the residual network "
            "lower from the start of training.",
            meaning="Identity shortcuts let the gradient reach the early layers: the same "
            "network becomes trainable.",
        ),
    ]
    pictures = [
        Picture(
            png(
                error_curves_figure(
                    curves,
                    (
                        ("train_loss", "training loss (running, per epoch)"),
                        ("train_acc", "training error (%), running"),
                        ("test_acc", "test error (%)"),
                    ),
                )
            ),
            "Training loss and error (running over each epoch, train mode with augmentation) and "
            f"test error against epochs, each the mean over {n} seeds with its 95 % interval. "
            "Every arm takes the same steps per epoch, so epochs are matched steps. Colours pair "
            "depths; dashed: plain, solid: residual (He et al. 2016, Fig. 1 and 6).",
            "loss and error curves",
        ),
        Picture(
            png(
                intervals_figure(
                    [
                        {"label": lab, **v.interval.to_dict(), "margin": mg}
                        for lab, v, mg in zip(
                            (
                                f"plain-{deep} − plain-{shallow}",
                                f"resnet-{shallow} − resnet-{deep}",
                                f"plain-{deep} − resnet-{deep}",
                            ),
                            verdicts,
                            (None, MARGIN, None),
                            strict=True,
                        )
                        if v.interval is not None
                    ]
                )
            ),
            "The paired differences of final training error (points; positive favours the claim) "
            f"with their 95 % intervals; the red dotted line is the residual claim's margin "
            f"(−{MARGIN:g} points).",
            "paired differences",
        ),
    ]
    return Findings([table, matched], verdicts, pictures)


def _matched_table(
    ctx: Context, curves: dict[str, dict[str, Any]], deep: str, shallow: str
) -> Table:
    """Per logged epoch (= matched step), the paired difference deep − shallow of running loss/error."""
    d, s = curves[deep], curves[shallow]
    spe = _steps_per_epoch(ctx)
    rows = []
    for k, epoch in enumerate(d["epoch"]):
        li = stats.paired(d["train_loss"][:, k], s["train_loss"][:, k])
        ei = stats.paired(d["train_acc"][:, k], s["train_acc"][:, k])
        rows.append([epoch * spe, li.text("nats", 3), ei.text("points")])
    return Table(
        f"{deep} − {shallow} at matched steps (running training loss and error over each epoch)",
        ["step", "training loss difference [95 %]", "training error difference [95 %]"],
        rows,
        "Positive: the deeper plain network is worse at that step. Paired over seeds, Student t.",
    )


def _steps_per_epoch(ctx: Context) -> int:
    cfg = ctx.plan.runs[0].config
    n = cfg.limit_train or 50_000
    return -(-n // cfg.batch_size)


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
    settings={"depths": (20, 56), "seeds": SEEDS},
)
