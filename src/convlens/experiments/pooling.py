"""Pooling: max pooling against average pooling against a stride-2 convolution, under noise.

Three LeNet-5s (ReLU) differ only in S2 and S4: 2x2 max pooling, 2x2 average pooling, or a
learned 2x2 convolution of stride 2. Each arm is trained clean with n paired seeds.

**The test (the claim's):** zero-mean Gaussian noise is added to the *activations* at the inputs
of both subsampling layers (S2 and S4), not clipped, with a standard deviation of σ times that
layer's own activation standard deviation (measured on the clean test images, per network), so
every arm receives noise of the same relative size. Each (network, σ) is measured with 3 noise
seeds, the same draws for every arm.

**A second, labelled test:** zero-mean Gaussian noise on the pixels (values in [0, 1], σ in those
units), not clipped, then normalised as in training.

**The measure:** the relative drop, ``1 - acc(σ) / acc(0)`` averaged over the noisy levels (the
normalised area between the clean line and the accuracy-vs-σ curve), so the arm that starts
higher is not penalised for having more to lose. Verdicts pair the arms by training seed (the noise
seeds are averaged within each).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens.data import load
from convlens.experiments import stats
from convlens.experiments.common import (
    TINY_NOTE,
    TINY_SEEDS,
    Context,
    Experiment,
    Findings,
    Picture,
    Plan,
    Table,
    compare,
    seeded_runs,
    small_config,
    tiny,
)
from convlens.render.experiment import intervals_figure, noise_figure, png
from convlens.train import Run

NOISE_SEEDS = (1234, 1235, 1236)
SEEDS = 5
POOL_LAYERS = ("pool1", "pool2")  # S2 and S4 in all three arms
ACTIVATION_NOISE = (0.0, 0.25, 0.5, 1.0, 1.5, 2.0)  # x the layer's activation std
PIXEL_NOISE = (0.0, 0.2, 0.4)  # pixel values in [0, 1]


def plan(
    budget: str,
    data: str,
    *,
    noise: Sequence[float] = ACTIVATION_NOISE,
    pixel_noise: Sequence[float] = PIXEL_NOISE,
    seeds: int = SEEDS,
) -> Plan:
    """The three arms times `seeds` runs at `budget`."""
    if budget == "paper":
        config = small_config(epochs=12, schedule="onecycle")
        note = (
            "Paper-like budget: the full training set, 12 epochs, batch 64, SGD 0.05 one-cycle, "
            f"no augmentation; {seeds} seeds per arm."
        )
    else:
        config = small_config(epochs=3, limit_train=4000, limit_test=1000)
        note = (
            "Small budget (a 2-core CPU in about 20 minutes): 4,000 training and 1,000 test images, "
            f"3 epochs, batch 64, SGD 0.05 with a cosine schedule, trained clean; {seeds} paired "
            f"training seeds per arm x {len(NOISE_SEEDS)} noise seeds."
        )
        if budget == "tiny":
            config, note, seeds = tiny(config), TINY_NOTE, TINY_SEEDS
    arms: list[tuple[str, str, str, dict[str, Any], Any]] = [
        ("max", "max pooling", "lenet5", {"pool": "max"}, config),
        ("avg", "average pooling", "lenet5", {"pool": "avg"}, config),
        ("strided", "stride-2 convolution", "lenet5_strided", {}, config),
    ]
    return Plan(
        runs=seeded_runs(arms, seeds),
        budget_note=note,
        params={
            "noise": sorted({0.0, *(float(s) for s in noise)}),
            "pixel_noise": sorted({0.0, *(float(s) for s in pixel_noise)}),
            "seeds": seeds,
        },
    )


def _normalise(run: Run, images: torch.Tensor) -> torch.Tensor:
    m = torch.tensor(run.data.mean).view(1, -1, 1, 1)
    s = torch.tensor(run.data.std).view(1, -1, 1, 1)
    return (images.float() / 255.0 - m) / s  # (N, C, H, W)


@torch.inference_mode()
def activation_std(
    run: Run, images: torch.Tensor, layers: Sequence[str] = POOL_LAYERS
) -> dict[str, float]:
    """Standard deviation of the input of each of `layers` over clean uint8 `images` ``(N,C,H,W)``."""
    model = run.model.eval()
    found: dict[str, float] = {}
    handles = [
        model.get_submodule(name).register_forward_pre_hook(
            lambda m, args, name=name: found.__setitem__(name, float(args[0].float().std()))
        )
        for name in layers
    ]
    try:
        model(_normalise(run, images))
    finally:
        for h in handles:
            h.remove()
    return found


@torch.inference_mode()
def noisy_accuracy(
    run: Run,
    images: torch.Tensor,
    labels: torch.Tensor,
    sigma: float,
    *,
    seed: int,
    where: str = "activations",
    scale: dict[str, float] | None = None,
    batch_size: int = 1000,
) -> float:
    """Accuracy of `run`'s model on uint8 `images` ``(N, C, H, W)`` with zero-mean Gaussian noise.

    Args:
        where: ``activations``: noise of std ``sigma * scale[layer]`` added to the input of each
            pooling layer (S2, S4), not clipped; ``pixels``: noise of std `sigma` added to the
            pixel values in [0, 1], not clipped.
        scale: per pooling layer, its clean activation std (:func:`activation_std`).
        seed: the noise generator's seed: every model sees the same draws.
    """
    gen = torch.Generator().manual_seed(seed)
    model = run.model.eval()
    handles: list[Any] = []
    if where == "activations" and sigma > 0:
        scale = scale or activation_std(run, images)

        def add_noise(
            m: nn.Module, args: tuple[torch.Tensor, ...], name: str
        ) -> tuple[torch.Tensor]:
            x = args[0]  # (B, C, H, W) the pooling layer's input
            return (x + sigma * scale[name] * torch.randn(x.shape, generator=gen),)

        handles = [
            model.get_submodule(name).register_forward_pre_hook(
                lambda m, args, name=name: add_noise(m, args, name)
            )
            for name in POOL_LAYERS
        ]
    correct = 0
    try:
        for i in range(0, len(images), batch_size):
            x = images[i : i + batch_size].float() / 255.0  # (B, C, H, W) in [0, 1]
            if where == "pixels" and sigma > 0:
                x = x + sigma * torch.randn(x.shape, generator=gen)
            m = torch.tensor(run.data.mean).view(1, -1, 1, 1)
            s = torch.tensor(run.data.std).view(1, -1, 1, 1)
            logits = model((x - m) / s)  # (B, classes)
            correct += int((logits.argmax(1) == labels[i : i + batch_size]).sum())
    finally:
        for h in handles:
            h.remove()
    return correct / max(len(images), 1)


def relative_drop(acc: Sequence[float] | np.ndarray) -> float:
    """``1 - mean(acc[1:]) / acc[0]``: the fraction of clean accuracy lost, over the noisy levels."""
    a = np.asarray(acc, dtype=np.float64)
    if len(a) < 2 or a[0] <= 0:
        return 0.0
    return float(1.0 - a[1:].mean() / a[0])


def _curves(
    ctx: Context, images: torch.Tensor, labels: torch.Tensor, where: str, levels: list[float]
) -> dict[str, np.ndarray]:
    """Per arm: accuracy ``(n_seeds, n_noise_seeds, levels)``."""
    out = {}
    for arm in ctx.arms:
        per_seed = []
        for run in ctx.arm_runs(arm):
            scale = activation_std(run, images) if where == "activations" else None
            per_seed.append(
                [
                    [
                        noisy_accuracy(run, images, labels, s, seed=ns, where=where, scale=scale)
                        for s in levels
                    ]
                    for ns in NOISE_SEEDS
                ]
            )
        out[arm] = np.array(per_seed)
    return out


PREDICTION = (
    "Boureau, Ponce & LeCun (2010, A theoretical analysis of feature pooling) show that max "
    "pooling separates classes better than averaging when features are sparse and pools large; "
    "they make no claim of robustness to dense additive noise. For zero-mean noise of std σ on "
    "each of 4 inputs, averaging divides the noise's std by 2, while the max of 4 noisy values "
    "is biased upwards by about 1.03 σ: elementary statistics predicts that average pooling "
    "suffers less from this noise, not more."
)


def analyse(ctx: Context) -> Findings:
    """Accuracy against activation noise (and pixel noise) per arm, and the verdicts."""
    levels: list[float] = ctx.plan.params["noise"]
    pixel: list[float] = ctx.plan.params.get("pixel_noise", list(PIXEL_NOISE))
    first = ctx.plan.runs[0]
    test = load(ctx.data, split="test", root=ctx.data_root)
    images, labels = test.head(first.config.limit_test)
    n = len(ctx.seeds)
    act = _curves(ctx, images, labels, "activations", levels)
    pix = _curves(ctx, images, labels, "pixels", pixel)
    tables: list[Table] = []
    drops: dict[str, np.ndarray] = {}
    pdrops: dict[str, np.ndarray] = {}
    for title, curves, lv, unit, store in (
        ("activation noise at S2 and S4 (σ × the layer's activation std)", act, levels, "σ", drops),
        (
            "pixel noise (second test; σ in pixel values of [0, 1], not clipped)",
            pix,
            pixel,
            "σ",
            pdrops,
        ),
    ):
        rows = []
        for arm in ctx.arms:
            acc = curves[arm]  # (seeds, noise seeds, levels)
            mean_acc = acc.mean(1)  # (seeds, levels): noise seeds averaged
            rel = np.array([relative_drop(a) for a in mean_acc])  # (seeds,)
            store[arm] = rel
            ri = stats.t_interval(100 * rel)
            rows.append(
                [
                    ctx.label(arm),
                    *(float(100 * v) for v in mean_acc.mean(0)),
                    float(ri.mean),
                    float(ri.half) if ri.n > 1 else float("nan"),
                ]
            )
        tables.append(
            Table(
                f"Test accuracy (%) on {len(images):,} test images with {title}, mean over {n} "
                f"training seeds x {len(NOISE_SEEDS)} noise seeds",
                ["subsampling", *(f"{unit} = {s:g}" for s in lv), "relative drop %", "± (95 %)"],
                rows,
                "Relative drop: 1 − mean accuracy over the noisy levels / clean accuracy, per "
                "training seed (noise seeds averaged); ±: half-width of its 95 % Student-t interval "
                "over the training seeds.",
            )
        )
    verdicts = [
        compare(
            "Max pooling is more robust to noisy activations than average pooling: it loses a "
            "smaller share of its accuracy.",
            100 * drops["max"],
            100 * drops["avg"],
            a_label="max",
            b_label="average",
            measure="relative drop under activation noise (% of clean accuracy)",
            unit="points",
            lower_is_better=True,
            prediction=PREDICTION,
            meaning="The notes' 'max pooling discards noisy activations' is a claim about which "
            "value is kept, not about noise: with zero-mean noise on every value, keeping the "
            "largest keeps the largest noise too.",
        ),
        compare(
            "Max pooling is more robust to noisy activations than a learned stride-2 convolution.",
            100 * drops["max"],
            100 * drops["strided"],
            a_label="max",
            b_label="stride-2 conv.",
            measure="relative drop under activation noise (% of clean accuracy)",
            unit="points",
            lower_is_better=True,
            prediction="A learned 2x2 stride-2 convolution is a weighted sum; how much it "
            "averages noise away depends on its learned weights, so theory predicts no order.",
            meaning="Robustness belongs to what the layer computes, not to the word 'pooling'.",
        ),
        compare(
            "(Pixel noise, the second test) max pooling loses a smaller share of its accuracy "
            "than average pooling.",
            100 * pdrops["max"],
            100 * pdrops["avg"],
            a_label="max",
            b_label="average",
            measure="relative drop under pixel noise (% of clean accuracy)",
            unit="points",
            lower_is_better=True,
            prediction="Pixel noise passes through C1 before any pooling; it is not the claim's "
            "test, and the papers predict nothing specific.",
            meaning="A second view of robustness; the claim is decided by the activation test.",
        ),
    ]
    pictures = [
        Picture(
            png(
                noise_figure(
                    levels,
                    {ctx.label(a): act[a].mean(1) for a in ctx.arms},
                    xlabel="activation noise σ (x each pooling input's std)",
                )
            ),
            "Test accuracy against zero-mean noise added to the activations at S2 and S4, scaled to "
            f"each layer's std: mean over {n} training seeds (noise seeds averaged) with its 95 % "
            "interval. Full y-axis. The networks were trained on clean images only.",
            "accuracy against activation noise",
        ),
        Picture(
            png(
                noise_figure(
                    pixel,
                    {ctx.label(a): pix[a].mean(1) for a in ctx.arms},
                    xlabel="pixel noise σ (pixel values in [0, 1], not clipped)",
                )
            ),
            "The second test: zero-mean Gaussian noise on the pixels, not clipped. Mean over "
            f"{n} training seeds with its 95 % interval; full y-axis.",
            "accuracy against pixel noise",
        ),
        Picture(
            png(
                intervals_figure(
                    [
                        {"label": lab, **v.interval.to_dict()}
                        for lab, v in zip(
                            (
                                "max vs average (activations)",
                                "max vs strided (activations)",
                                "max vs average (pixels)",
                            ),
                            verdicts,
                            strict=True,
                        )
                        if v.interval is not None
                    ]
                )
            ),
            "The paired differences of relative drop (positive: max pooling loses less) with "
            "their 95 % intervals over the training seeds.",
            "paired differences",
        ),
    ]
    return Findings(tables, verdicts, pictures)


EXPERIMENT = Experiment(
    name="pooling",
    title="Max pooling, average pooling and strided convolution under noise",
    claim=(
        "Max pooling keeps the strongest activation of each window and discards the rest, so it "
        "discards noisy activations: a max-pooling network should be the most robust to noise."
    ),
    source="the notes' pooling section; Boureau, Ponce & LeCun 2010 (theory of feature pooling); "
    "LeCun et al. 1998 (LeNet-5's subsampling)",
    default_data="mnist",
    data_choices=("mnist", "fashion-mnist", "sample"),
    plan=plan,
    analyse=analyse,
    settings={"noise": ACTIVATION_NOISE, "pixel_noise": PIXEL_NOISE, "seeds": SEEDS},
)
