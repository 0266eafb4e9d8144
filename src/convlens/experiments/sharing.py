"""Sharing: a convolution against a locally-connected layer of the same geometry.

``sharingnet`` arms differ only in their first layer: a 5x5 convolution with 16 filters, or a
:class:`~convlens.models.locally_connected.LocallyConnected2d` with 16 filters of 5x5 *per
output position* (24 x 24 positions on a 28x28 image). The notes: sharing divides the parameters
by the number of positions (the summary's ``params_unshared`` is the locally-connected count) and
acts as a prior that a feature useful in one place is useful everywhere.

**Learning rates matched, by a stated rule.** A convolution's weight gathers the gradient of
all 576 positions; a locally-connected weight only its own. At one learning rate the
locally-connected layer moves far less per step (|g|/|w| at initialisation ~19x smaller, measured
on 256 images, seeds 0-2), so it would learn more slowly, which is not the same as generalising
worse. The rule, fixed before the runs: the locally-connected layer is trained with a
learning-rate multiplier of :data:`LC_LR` = 16 (by reparametrisation, see
:class:`~convlens.models.experiment_nets.SharingNet`); the page reports the measured ratio of
relative step sizes at initialisation for every seed. The locally-connected layer at the common
learning rate is kept as a third arm, to show what the mismatch costs.

**Tests.** Test accuracy on the test images, and on the same images shifted by 2 to 4 pixels in
each direction (zero fill; one fixed draw for every network): translation is what sharing buys,
so that is where the locally-connected layer should fall behind. Train accuracy is the trained
model in eval mode on the training images it saw; the gap is train minus test.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from convlens.anatomy import summary
from convlens.data import load
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
    Verdict,
    compare,
    image_shape,
    initial_model,
    last,
    seconds_per_epoch,
    seeded_runs,
    small_config,
    tiny,
)
from convlens.models.experiment_nets import SharingNet
from convlens.models.locally_connected import LocallyConnected2d
from convlens.render.experiment import (
    bars_figure,
    filter_rows_figure,
    intervals_figure,
    png,
    position_map_figure,
)
from convlens.train import Run, evaluate

SEEDS = 5
LC_LR = 16.0  # the locally-connected layer's learning-rate multiplier (module docstring)
SHIFT = (2, 4)  # pixels, both directions, each axis
SHIFT_SEED = 4321


def plan(budget: str, data: str, *, width: int = 16, seeds: int = SEEDS) -> Plan:
    """The three arms times `seeds` runs at `budget`."""
    if budget == "paper":
        config = small_config(epochs=15)
        note = (
            "Paper-like budget: the full training set, 15 epochs, batch 64, SGD 0.05 cosine; "
            f"{seeds} seeds per arm."
        )
    else:
        config = small_config(epochs=3, limit_train=8000, limit_test=2000)
        note = (
            "Small budget (a 2-core CPU in about 20 minutes): 8,000 training and 2,000 test "
            "images, 3 epochs, batch 64, SGD 0.05 with a cosine schedule, no augmentation; "
            f"{seeds} paired seeds per arm."
        )
        if budget == "tiny":
            config, note, seeds = tiny(config), TINY_NOTE, TINY_SEEDS
    w = int(width)
    arms: list[tuple[str, str, str, dict[str, Any], Any]] = [
        ("shared", "convolution", "sharingnet", {"shared": True, "width": w}, config),
        (
            "unshared",
            f"locally connected, layer-1 lr x{LC_LR:g}",
            "sharingnet",
            {"shared": False, "width": w, "layer1_lr": LC_LR},
            config,
        ),
        (
            "unshared_same_lr",
            "locally connected, same lr",
            "sharingnet",
            {"shared": False, "width": w},
            config,
        ),
    ]
    return Plan(
        runs=seeded_runs(arms, seeds), budget_note=note, params={"width": w, "seeds": seeds}
    )


def shifted(images: torch.Tensor, *, seed: int = SHIFT_SEED) -> torch.Tensor:
    """`images` ``(N, C, H, W)`` each moved by 2-4 pixels on each axis (random sign), zero fill."""
    lo, hi = SHIFT
    gen = torch.Generator().manual_seed(seed)
    n, _, h, w = images.shape
    mag = torch.randint(lo, hi + 1, (n, 2), generator=gen)
    sign = torch.randint(0, 2, (n, 2), generator=gen) * 2 - 1
    d = (mag * sign).tolist()  # (N, 2) rows, cols
    padded = F.pad(images, (hi, hi, hi, hi))  # zero: the background
    return torch.stack(
        [padded[i, :, hi - dy : hi - dy + h, hi - dx : hi - dx + w] for i, (dy, dx) in enumerate(d)]
    )


@torch.inference_mode()
def accuracy(run: Run, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy of `run`'s model (eval mode) on uint8 `images` ``(N, C, H, W)``."""
    model = run.model.eval()
    m = torch.tensor(run.data.mean).view(1, -1, 1, 1)
    s = torch.tensor(run.data.std).view(1, -1, 1, 1)
    correct = 0
    for i in range(0, len(images), 1000):
        x = (images[i : i + 1000].float() / 255.0 - m) / s
        correct += int((model(x).argmax(1) == labels[i : i + 1000]).sum())
    return correct / max(len(images), 1)


def step_ratio(model: nn.Module, lr_multiplier: float, x: torch.Tensor, y: torch.Tensor) -> float:
    """Layer 1's relative SGD step per unit learning rate, ``m |∂L/∂w| / |w|``, on one batch."""
    model.train()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    v = model.get_submodule("layer1").weight
    assert isinstance(v, torch.Tensor) and v.grad is not None
    scale = float(getattr(model, "layer1_scale", 1.0))
    # w = s v: |dL/dw| = |dL/dv| / s, |w| = s |v|, step of w per unit lr = m |dL/dw|
    g_w, w = float(v.grad.norm()) / scale, scale * float(v.detach().norm())
    return lr_multiplier * g_w / w


def analyse(ctx: Context) -> Findings:
    """Parameters, accuracy (clean and shifted) and gap per arm over paired seeds; the filters."""
    test = load(ctx.data, split="test", root=ctx.data_root)
    first = ctx.plan.runs[0]
    images, labels = test.head(first.config.limit_test)
    moved = shifted(images)
    train_data = load(ctx.data, split="train", root=ctx.data_root)
    bx, by = train_data.head(256)
    rows, found = [], {}
    for arm in ctx.arms:
        specs, runs = ctx.specs(arm), ctx.arm_runs(arm)
        s = summary(runs[0].model, image_shape(runs[0]), warn=False)
        layer = s["layer1"]
        limit = specs[0].config.limit_train or EVAL_TRAIN  # a fixed subset at the paper budget
        train = np.array(
            [
                100 * evaluate(r, split="train", limit=limit, root=ctx.data_root).accuracy
                for r in runs
            ]
        )
        test_acc = np.array([100 * last(r, "test_acc") for r in runs])
        shift_acc = np.array([100 * accuracy(r, moved, labels) for r in runs])
        m = float(specs[0].options.get("layer1_lr", 1.0))
        ratios = []
        for spec, run in zip(specs, runs, strict=True):
            start = initial_model(spec.model, run.model_options, spec.config.seed)
            x = (bx.float() / 255.0 - torch.tensor(run.data.mean).view(1, -1, 1, 1)) / torch.tensor(
                run.data.std
            ).view(1, -1, 1, 1)
            ratios.append(step_ratio(start, m, x, by))
        found[arm] = {
            "params": layer.params,
            "unshared": layer.params_unshared,
            "train": train,
            "test": test_acc,
            "shift": shift_acc,
            "gap": train - test_acc,
            "ratio": float(np.mean(ratios)),
        }
        ti, si, gi = (
            stats.t_interval(test_acc),
            stats.t_interval(shift_acc),
            stats.t_interval(train - test_acc),
        )
        rows.append(
            [
                ctx.label(arm),
                layer.params,
                layer.params_unshared,
                s.totals["params"],
                float(np.mean(ratios)),
                float(train.mean()),
                float(ti.mean),
                float(ti.half) if ti.n > 1 else float("nan"),
                float(si.mean),
                float(si.half) if si.n > 1 else float("nan"),
                float(gi.mean),
                float(gi.half) if gi.n > 1 else float("nan"),
                float(np.mean([seconds_per_epoch(r) for r in runs])),
            ]
        )
    n = len(ctx.seeds)
    table = Table(
        f"First layer and network, mean over {n} seeds ({len(images):,} test images)",
        [
            "first layer",
            "layer parameters",
            "params_unshared (summary)",
            "network parameters",
            "layer-1 step / lr at init",
            "train acc. %",
            "test acc. %",
            "±",
            f"shifted test acc. % ({SHIFT[0]}-{SHIFT[1]} px)",
            "±",
            "gap (points)",
            "±",
            "s / epoch",
        ],
        rows,
        "Layer-1 step / lr at init: m |∂L/∂w| / |w| on 256 training images with the run's initial "
        "weights (m the layer's learning-rate multiplier), mean over seeds: the relative step each "
        "layer takes. Train accuracy: the trained model in eval mode on the training images it saw. "
        "±: half-width of the 95 % Student-t interval of the mean over the seeds.",
    )
    sh, un, same = found["shared"], found["unshared"], found["unshared_same_lr"]
    lc = f"locally connected (lr x{LC_LR:g})"
    verdicts = [
        Verdict(
            "Without sharing the layer needs params_unshared weights: one filter bank per output "
            "position.",
            stats.exact(un["params"] == sh["unshared"] == un["unshared"]),
            f"The locally-connected layer has {un['params']:,} = the convolution's params_unshared "
            f"{sh['unshared']:,} ({un['params'] / sh['params']:.0f}x the shared layer's "
            f"{sh['params']:,}).",
            rule="arithmetic: the counts are equal",
            prediction="exact at any budget",
            meaning="Sharing divides a layer's weights by its number of output positions.",
        ),
        compare(
            "The shared network generalises better (test accuracy), learning rates matched.",
            sh["test"],
            un["test"],
            a_label="convolution",
            b_label=lc,
            measure="test accuracy (%)",
            unit="points",
            prediction="On centred Fashion-MNIST images a locally-connected layer can learn what "
            "each place needs; at a few epochs the difference is expected to be small.",
            meaning="On data where objects sit where they sat in training, sharing is a "
            "saving of weights more than an advantage in accuracy.",
        ),
        compare(
            f"The shared network is more accurate on images shifted by {SHIFT[0]}-{SHIFT[1]} "
            "pixels: translation is what sharing buys.",
            sh["shift"],
            un["shift"],
            a_label="convolution",
            b_label=lc,
            measure="shifted test accuracy (%)",
            unit="points",
            prediction="A convolution's response moves with the image (equivariance); a "
            "locally-connected layer's filters at the new place never saw the feature, so it "
            "should fall further behind here.",
            meaning="Sharing is a prior about translation: it pays where things move.",
        ),
        compare(
            "The shared network over-fits less (a smaller train - test gap).",
            sh["gap"],
            un["gap"],
            a_label="convolution",
            b_label=lc,
            measure="train − test accuracy (points)",
            unit="points",
            lower_is_better=True,
            prediction="With 576x the first-layer weights the locally-connected network can fit "
            "more; at 3 epochs neither has had time to over-fit much.",
            meaning="A gap needs training long enough to memorise; short runs say little.",
        ),
        compare(
            "(Check of the rule) The learning-rate multiplier helps the locally-connected "
            "layer: with it, test accuracy is higher than at the common learning rate.",
            un["test"],
            same["test"],
            a_label=lc,
            b_label="locally connected, same lr",
            measure="test accuracy (%)",
            unit="points",
            prediction="If the slow layer-1 steps held the locally-connected network back, "
            "matching them should raise its accuracy.",
            meaning="Compare networks at their own good learning rates, or speed passes for "
            "capacity.",
        ),
    ]
    pictures = [
        Picture(
            png(
                bars_figure(
                    {
                        "test": {ctx.label(a): found[a]["test"] for a in ctx.arms},
                        f"shifted {SHIFT[0]}-{SHIFT[1]} px": {
                            ctx.label(a): found[a]["shift"] for a in ctx.arms
                        },
                    },
                    ylabel="accuracy (%)",
                    full_axis=True,
                )
            ),
            f"Test accuracy on the test images and on the same images shifted by {SHIFT[0]}-"
            f"{SHIFT[1]} pixels: mean over {n} seeds with its 95 % interval.",
            "accuracy, clean and shifted",
        ),
        Picture(
            png(
                intervals_figure(
                    [
                        {"label": lab, **v.interval.to_dict()}
                        for lab, v in zip(
                            (
                                "conv − LC: test",
                                "conv − LC: shifted",
                                "LC − conv: gap",
                                "LC(lr x16) − LC(same lr)",
                            ),
                            verdicts[1:],
                            strict=True,
                        )
                        if v.interval is not None
                    ]
                )
            ),
            "The paired differences with their 95 % intervals over the seeds (positive favours the "
            "claim).",
            "paired differences",
        ),
        _filters_picture(ctx),
        _change_picture(ctx),
    ]
    return Findings([table], verdicts, pictures)


def _weight(model: nn.Module) -> torch.Tensor:
    """Layer 1's effective weights (``SharingNet.layer1_weight``: the learning-rate reparametrisation undone)."""
    assert isinstance(model, SharingNet)
    return model.layer1_weight()


def _layer1(run: Run) -> tuple[nn.Module, np.ndarray]:
    model = run.model
    w = _weight(model)
    return model.get_submodule("layer1"), w.detach().numpy()


def _filters_picture(ctx: Context) -> Picture:
    conv, wc = _layer1(ctx.arm_runs("shared")[0])
    local, wl = _layer1(ctx.arm_runs("unshared")[0])
    spec, lrun = ctx.specs("unshared")[0], ctx.arm_runs("unshared")[0]
    start = initial_model(spec.model, dict(lrun.model_options), spec.config.seed)
    assert isinstance(conv, nn.Conv2d) and isinstance(local, LocallyConnected2d)
    w0 = _weight(start)
    dw = wl - w0.detach().numpy()  # (L, F, P): what training changed
    oh, ow = local.output_size
    places = [(0, 0), (0, ow - 1), (oh // 2, ow // 2), (oh - 1, 0), (oh - 1, ow - 1)]
    k = local.kernel_size if isinstance(local.kernel_size, int) else local.kernel_size[0]
    f, c = local.out_channels, local.in_channels
    rows = [("convolution (every position)", wc)]
    rows += [
        (f"locally connected at ({i}, {j})", wl[i * ow + j].reshape(f, c, k, k)) for i, j in places
    ]
    spread_w, spread_dw = _position_spread(wl), _position_spread(dw)
    fig = filter_rows_figure(
        rows, title="First-layer filters (seed 0): one shared set against one set per position"
    )
    return Picture(
        png(fig),
        "Each row: the 16 first-layer 5x5 filters (blue negative, red positive; one scale per "
        "row). Top: the convolution's filters, used at every position. Below: the "
        "locally-connected layer's (lr-matched arm, seed 0) at the corners and centre of its "
        f"24x24 output. Mean cosine of filter k at each position with filter k at the centre: "
        f"{spread_w:.2f} for the weights (mostly their independent random initialisations) and "
        f"{spread_dw:.2f} for what training changed (w − w0): "
        + (
            "the changes at different places point the same way, so the positions learned "
            "partly the same features."
            if spread_dw > 0.1
            else "the changes at different places are nearly unrelated: each position learned "
            "on its own."
        ),
        "first-layer filters, shared and unshared",
    )


def _change_picture(ctx: Context) -> Picture:
    spec, run = ctx.specs("unshared")[0], ctx.arm_runs("unshared")[0]
    local, w = _layer1(run)
    start = initial_model(spec.model, dict(run.model_options), spec.config.seed)
    w0 = _weight(start)
    assert isinstance(local, LocallyConnected2d)
    w0n = w0.detach().numpy()  # (L, F, P)
    change = (
        np.linalg.norm((w - w0n).reshape(len(w), -1), axis=1)
        / np.linalg.norm(w0n.reshape(len(w), -1), axis=1)
    ).reshape(local.output_size)
    h, wd = change.shape
    border = np.ones_like(change, dtype=bool)
    border[2:-2, 2:-2] = False  # the outer two rows and columns
    centre = change[h // 4 : h - h // 4, wd // 4 : wd - wd // 4]
    b, cm = float(change[border].mean()), float(centre.mean())
    if abs(b - cm) < 0.05 * max(b, cm):
        reading = "about the same on the border as in the centre (within 5 %)"
    elif b < cm:
        reading = (
            "smaller on the border, where the images are mostly background, than in the centre"
        )
    else:
        reading = "larger on the border than in the centre"
    return Picture(
        png(position_map_figure(change, "relative change of the filters in training")),
        f"How far training moved the locally-connected layer's filters (lr-matched arm, seed 0) at "
        f"each of its {h}x{wd} positions: |w − w0| / |w0|. Mean {b:.3f} on the outer two rows and "
        f"columns against {cm:.3f} in the central half: {reading}.",
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
    settings={"width": 16, "seeds": SEEDS},
)
