"""Pooling: max pooling against average pooling against a stride-2 convolution, under noise.

Three LeNet-5s (ReLU) that differ only in S2 and S4: 2x2 max pooling, 2x2 average pooling, or a
learned 2x2 convolution of stride 2. Trained on clean images, each is tested on the same test
images with Gaussian noise added to the pixels (values in [0, 1], noise of standard deviation
sigma, the result clipped to [0, 1], then normalised as in training). The same noise (one seed) is
added for every network. The notes' claim, measured: "max pooling discards noisy activations", so
the max-pooling network should lose the least accuracy as the noise grows.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from convlens.data import load
from convlens.experiments.common import (
    Context,
    Experiment,
    Findings,
    Picture,
    Plan,
    RunSpec,
    Table,
    Verdict,
    small_config,
    tiny,
)
from convlens.render.experiment import noise_figure, png
from convlens.train import Run

NOISE_SEED = 1234


def plan(
    budget: str, data: str, *, noise: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)
) -> Plan:
    """The three runs at `budget`."""
    if budget == "paper":
        # LeNet-5's recipe in convlens (benchmarks/RESULTS.md), without augmentation: trained clean.
        config = small_config(epochs=12, schedule="onecycle")
        note = "Paper-like budget: the full training set, 12 epochs, batch 64, SGD 0.05 one-cycle, no augmentation."
    else:
        config = small_config(epochs=3, limit_train=10_000, limit_test=2000)
        note = (
            "Small budget (a 2-core CPU in minutes): 10,000 training and 2,000 test images, "
            "3 epochs, batch 64, SGD 0.05 with a cosine schedule, no augmentation (trained clean)."
        )
        if budget == "tiny":
            config, note = tiny(config), "Tiny budget (tests only): 256 images, one epoch."
    runs = [
        RunSpec("max", "max pooling", "lenet5", {"pool": "max"}, config),
        RunSpec("avg", "average pooling", "lenet5", {"pool": "avg"}, config),
        RunSpec("strided", "stride-2 convolution", "lenet5_strided", {}, config),
    ]
    levels = sorted({0.0, *(float(s) for s in noise)})
    return Plan(runs=runs, budget_note=note, params={"noise": levels})


@torch.inference_mode()
def noisy_accuracy(
    run: Run,
    images: torch.Tensor,
    labels: torch.Tensor,
    sigma: float,
    *,
    seed: int = NOISE_SEED,
    batch_size: int = 1000,
) -> float:
    """Accuracy of `run`'s model on uint8 `images` ``(N, C, H, W)`` with Gaussian pixel noise.

    The noise is drawn from a generator seeded by `seed`, so every model sees the same noisy images.
    """
    gen = torch.Generator().manual_seed(seed)
    model = run.model.eval()
    correct = 0
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size].float() / 255.0  # (B, C, H, W) in [0, 1]
        noise = torch.randn(x.shape, generator=gen)
        x = (x + sigma * noise).clamp_(0.0, 1.0)
        m = torch.tensor(run.data.mean).view(1, -1, 1, 1)
        s = torch.tensor(run.data.std).view(1, -1, 1, 1)
        logits = model((x - m) / s)  # (B, classes)
        correct += int((logits.argmax(1) == labels[i : i + batch_size]).sum())
    return correct / max(len(images), 1)


def analyse(ctx: Context) -> Findings:
    """Accuracy against noise for the three networks, and the verdicts."""
    levels: list[float] = ctx.plan.params["noise"]
    first = ctx.plan.runs[0]
    test = load(ctx.data, split="test", root=ctx.data_root)
    images, labels = test.head(first.config.limit_test)
    acc: dict[str, list[float]] = {}
    for spec in ctx.plan.runs:
        run = ctx.runs[spec.name]
        acc[spec.name] = [noisy_accuracy(run, images, labels, s) for s in levels]
    rows = [
        [spec.label, *(100 * a for a in acc[spec.name]), 100 * _mean_drop(acc[spec.name])]
        for spec in ctx.plan.runs
    ]
    table = Table(
        f"Test accuracy (%) on {len(images):,} test images with Gaussian noise",
        ["subsampling", *(f"σ = {s:g}" for s in levels), "mean drop (points)"],
        rows,
        "σ: standard deviation of the noise added to pixel values in [0, 1] (then clipped). "
        "Mean drop: clean accuracy minus noisy accuracy, averaged over the noisy levels.",
    )
    drops = {n: _mean_drop(a) for n, a in acc.items()}
    verdicts = [
        Verdict(
            "Max pooling is the most robust to noise: its accuracy drops the least as noise grows.",
            drops["max"] <= min(drops["avg"], drops["strided"]),
            "Rule: mean drop of max pooling <= that of average pooling and of the strided "
            f"convolution. Measured {100 * drops['max']:.2f}, {100 * drops['avg']:.2f} and "
            f"{100 * drops['strided']:.2f} points.",
        ),
        Verdict(
            "Max pooling is more robust to noise than average pooling.",
            drops["max"] <= drops["avg"],
            f"Rule: mean drop of max <= average. Measured {100 * drops['max']:.2f} against "
            f"{100 * drops['avg']:.2f} points.",
        ),
        Verdict(
            "At the strongest noise max pooling is the most accurate.",
            acc["max"][-1] >= max(acc["avg"][-1], acc["strided"][-1]),
            f"Rule: accuracy at σ = {levels[-1]:g}, max >= the others. Measured "
            f"{100 * acc['max'][-1]:.2f} %, {100 * acc['avg'][-1]:.2f} % and "
            f"{100 * acc['strided'][-1]:.2f} %.",
        ),
    ]
    picture = Picture(
        png(noise_figure(levels, {s.label: acc[s.name] for s in ctx.plan.runs})),
        "Test accuracy against the standard deviation of Gaussian pixel noise; the networks were "
        "trained on clean images only.",
        "accuracy against noise",
    )
    return Findings([table], verdicts, [picture])


def _mean_drop(acc: Sequence[float]) -> float:
    """Clean accuracy minus the mean accuracy over the noisy levels (0 when there are none)."""
    noisy = acc[1:]
    return acc[0] - sum(noisy) / len(noisy) if noisy else 0.0


EXPERIMENT = Experiment(
    name="pooling",
    title="Max pooling, average pooling and strided convolution under noise",
    claim=(
        "Max pooling keeps the strongest activation of each window and discards the rest, so it "
        "discards noisy activations: a max-pooling network should be the most robust to noise."
    ),
    source="the notes' pooling section; LeCun et al. 1998 (LeNet-5's subsampling)",
    default_data="mnist",
    data_choices=("mnist", "fashion-mnist", "sample"),
    plan=plan,
    analyse=analyse,
    settings={"noise": (0.0, 0.1, 0.2, 0.3, 0.4, 0.5)},
)
