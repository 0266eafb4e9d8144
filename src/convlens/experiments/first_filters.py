"""First filters: oriented edges and opposing colours, whatever the architecture.

Three networks with 5x5 or larger first-layer filters, trained on CIFAR-10: LeNet-5 (six 5x5
filters, no padding on 32x32 inputs), ``stemnet`` with 32 5x5 filters at stride 1, and ``stemnet``
with 32 7x7 filters at stride 2. Their first-layer filters are measured against the same filters
before training (the very initial weights of each run: same seed, same builder).

The two measures, per filter ``w`` of shape (3, k, k):

- **orientation selectivity**: remove each colour channel's mean, take the 2-D power spectrum of
  each channel (zero-padded to 16x16) and add the channels; split the non-zero frequencies into 8
  orientation bands of 22.5 degrees by the angle of (fy, fx); the measure is the largest band's
  share of the energy. 1: all energy in one orientation (an oriented edge or grating); about
  1/8 for a filter with no preferred orientation.
- **colour opponency**: the largest negative cosine similarity between two colour channels' weights
  (R-G, R-B, G-B), 0 when no pair is negatively aligned. 1: one channel is the negative of another
  (red against green); 0 for a filter that treats the channels alike (a grey-level filter).

Decision rule (fixed before any run): a filter counts as oriented (opponent) when its measure
exceeds the 95th percentile of the same measure over the untrained filters of that network, drawn
from 20 initialisations; the claim holds for a network when at least 20 % of its trained filters
count (four times the 5 % expected of untrained ones), and holds overall when it holds for every
network.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from convlens.experiments.common import (
    Context,
    Experiment,
    Findings,
    Picture,
    Plan,
    RunSpec,
    Table,
    Verdict,
    initial_model,
    last,
    small_config,
    tiny,
)
from convlens.render.experiment import filter_rows_figure, measure_strips_figure, png

BANDS = 8  # orientation bands of 180 / 8 = 22.5 degrees
FFT_SIZE = 16
UNTRAINED_DRAWS = 20
PERCENTILE = 95.0
SHARE = 0.20  # fraction of trained filters above the untrained percentile for "held"


def orientation_selectivity(
    w: np.ndarray, *, bands: int = BANDS, size: int = FFT_SIZE
) -> np.ndarray:
    """Largest orientation band's share of each filter's spectral energy (module docstring).

    Args:
        w: filters ``(F, C, k, k)``.

    Returns:
        ``(F,)`` values in [1 / bands, 1]; 0 for a filter with no energy off DC.
    """
    w = np.asarray(w, dtype=np.float64)
    w = w - w.mean(axis=(2, 3), keepdims=True)  # no DC: a flat colour has no orientation
    power = (np.abs(np.fft.fft2(w, s=(size, size))) ** 2).sum(axis=1)  # (F, size, size)
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.fftfreq(size)[None, :]
    angle = np.mod(np.arctan2(fy, fx), np.pi)  # (size, size) in [0, pi)
    # band b covers angles centred on b * pi / bands; the DC term belongs to none
    band = np.floor(np.mod(angle + np.pi / (2 * bands), np.pi) / (np.pi / bands)).astype(int)
    off_dc = ~((fy == 0) & (fx == 0))
    energy = np.stack([(power * ((band == b) & off_dc)).sum(axis=(1, 2)) for b in range(bands)], 1)
    total = energy.sum(1)  # (F,)
    return np.where(total > 0, energy.max(1) / np.where(total > 0, total, 1.0), 0.0)


def colour_opponency(w: np.ndarray) -> np.ndarray:
    """Largest negative cosine between two colour channels of each filter (module docstring).

    Args:
        w: filters ``(F, 3, k, k)``.

    Returns:
        ``(F,)`` values in [0, 1].
    """
    w = np.asarray(w, dtype=np.float64).reshape(len(w), w.shape[1], -1)  # (F, 3, k*k)
    unit = w / (np.linalg.norm(w, axis=2, keepdims=True) + 1e-12)
    cos = np.einsum("fcp,fdp->fcd", unit, unit)  # (F, 3, 3)
    pairs = [cos[:, i, j] for i in range(w.shape[1]) for j in range(i + 1, w.shape[1])]
    return np.clip(-np.min(np.stack(pairs, 1), axis=1), 0.0, 1.0)


def first_conv(model: nn.Module) -> nn.Conv2d:
    """The first ``nn.Conv2d`` of `model` (registration order)."""
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


def untrained_filters(model: str, options: dict[str, Any], seed: int) -> np.ndarray:
    """First-layer filters of `model` as built with `seed` (what :func:`convlens.train.fit` starts from)."""
    return first_conv(initial_model(model, options, seed)).weight.detach().numpy()


def plan(budget: str, data: str) -> Plan:
    """The three runs at `budget`."""
    if budget == "paper":
        config = small_config(epochs=30, batch_size=128, augment="crop,flip", crop_padding=4)
        note = "Paper-like budget: all 50,000 training images, 30 epochs, batch 128, SGD 0.05 cosine, crops and flips."
    else:
        config = small_config(epochs=4, limit_train=10_000, limit_test=1000, augment="flip")
        note = (
            "Small budget (a 2-core CPU in minutes): 10,000 training and 1,000 test images, "
            "4 epochs, batch 64, SGD 0.05 with a cosine schedule, flips."
        )
        if budget == "tiny":
            config, note = tiny(config), "Tiny budget (tests only): 256 images, one epoch."
    runs = [
        RunSpec("lenet5", "LeNet-5, 6 filters 5x5", "lenet5", {"padding": 0}, config),
        RunSpec(
            "stem5",
            "stemnet, 32 filters 5x5",
            "stemnet",
            {"kernel": 5, "stride": 1, "width": 32},
            config,
        ),
        RunSpec(
            "stem7",
            "stemnet, 32 filters 7x7 /2",
            "stemnet",
            {"kernel": 7, "stride": 2, "width": 32},
            config,
        ),
    ]
    return Plan(runs=runs, budget_note=note)


def analyse(ctx: Context) -> Findings:
    """Both measures on trained and untrained filters, per network, and the verdicts."""
    rows, values, thresholds, filter_rows = [], {}, {}, []
    verdicts_o, verdicts_c = [], []
    for spec in ctx.plan.runs:
        run = ctx.runs[spec.name]
        trained = first_conv(run.model).weight.detach().numpy()  # (F, 3, k, k)
        options = dict(run.model_options)
        start = untrained_filters(spec.model, options, spec.config.seed)
        draws = np.concatenate(
            [untrained_filters(spec.model, options, 10_000 + d) for d in range(UNTRAINED_DRAWS)]
        )
        o_t, c_t = orientation_selectivity(trained), colour_opponency(trained)
        o_u, c_u = orientation_selectivity(draws), colour_opponency(draws)
        o_cut, c_cut = np.percentile(o_u, PERCENTILE), np.percentile(c_u, PERCENTILE)
        share_o, share_c = float((o_t > o_cut).mean()), float((c_t > c_cut).mean())
        rows.append(
            [
                spec.label,
                len(trained),
                100 * last(run, "test_acc"),
                float(np.median(o_t)),
                float(np.median(o_u)),
                100 * share_o,
                float(np.median(c_t)),
                float(np.median(c_u)),
                100 * share_c,
            ]
        )
        values[f"{spec.name} trained"] = {"orientation selectivity": o_t, "colour opponency": c_t}
        values[f"{spec.name} untrained"] = {"orientation selectivity": o_u, "colour opponency": c_u}
        thresholds[f"{spec.name} untrained"] = {
            "orientation selectivity": float(o_cut),
            "colour opponency": float(c_cut),
        }
        filter_rows += [(f"{spec.name} trained", trained), (f"{spec.name} untrained", start)]
        verdicts_o.append((spec.label, share_o))
        verdicts_c.append((spec.label, share_c))
    table = Table(
        "First-layer filters: trained against untrained",
        [
            "network",
            "filters",
            "test acc. %",
            "orientation sel. (median, trained)",
            "(median, untrained)",
            "% oriented",
            "colour opp. (median, trained)",
            "(median, untrained)",
            "% opponent",
        ],
        rows,
        f"% oriented / % opponent: trained filters above the {PERCENTILE:.0f}th percentile of the "
        f"untrained filters' measure ({UNTRAINED_DRAWS} initialisations); about 5 % by chance.",
    )

    def verdict(what: str, shares: list[tuple[str, float]]) -> Verdict:
        listed = "; ".join(f"{label} {100 * s:.0f} %" for label, s in shares)
        return Verdict(
            f"First-layer filters become {what} in every network.",
            all(s >= SHARE for _, s in shares),
            f"Rule: in each network at least {100 * SHARE:.0f} % of the trained filters are above the "
            f"untrained {PERCENTILE:.0f}th percentile. Measured: {listed}.",
        )

    verdicts = [
        verdict("oriented (edges, gratings)", verdicts_o),
        verdict("colour-opponent", verdicts_c),
    ]
    pictures = [
        Picture(
            png(filter_rows_figure(filter_rows, max_filters=32)),
            "First-layer filters of each network after training and before (its initial weights). "
            "Colour: 0.5 + 0.5 w / max|w| per row, so mid-grey is zero and opposing colours show as such.",
            "first-layer filters",
        ),
        Picture(
            png(
                measure_strips_figure(
                    values, ["orientation selectivity", "colour opponency"], thresholds
                )
            ),
            "Each dot a filter (blue trained, grey untrained over 20 initialisations); black bar the "
            "median, red dotted bar the untrained 95th percentile.",
            "orientation selectivity and colour opponency",
        ),
    ]
    return Findings([table], verdicts, pictures)


EXPERIMENT = Experiment(
    name="first-filters",
    title="First-layer filters: oriented edges and opposing colours",
    claim=(
        "Whatever the architecture, the first layer of a CNN trained on natural images learns "
        "oriented edge detectors and colour-opponent blobs."
    ),
    source="Krizhevsky et al. 2012, Fig. 3; Zeiler & Fergus 2014; Yosinski et al. 2014",
    default_data="cifar10",
    data_choices=("cifar10",),
    plan=plan,
    analyse=analyse,
)
