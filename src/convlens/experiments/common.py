"""What every experiment is made of: its runs, its tables, its verdicts, and the page that shows them.

An experiment is a :class:`Experiment`: a claim from the notes, a :meth:`~Experiment.plan` (which
networks to train, on what, for how long, at each budget) and an :meth:`~Experiment.analyse` that
turns the finished run directories into :class:`Table` s, :class:`Verdict` s and figures. Nothing
here trains or inspects by itself: training is :func:`convlens.train.fit`, the numbers come from
:mod:`convlens.anatomy`, :mod:`convlens.train` and :mod:`convlens.inspect`, the page from
:mod:`convlens.render.experiment`. The runner (:mod:`~convlens.experiments.runner`) ties them together.

Budgets: ``small`` fits a 2-core CPU in minutes (fewer images and epochs, said on the page);
``paper`` is the papers' recipe, meant for a GPU; ``tiny`` (a few hundred images, one epoch) only
checks that everything runs, for tests.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from convlens import models
from convlens.errors import ConvlensError
from convlens.experiments.stats import HELD, SMOKE, STATUSES, Interval
from convlens.train import Run, TrainConfig

BUDGETS = ("small", "paper", "tiny")


@dataclass(frozen=True)
class RunSpec:
    """One network to train: its directory name under ``runs/``, label, model and recipe.

    `arm` names what the run stands for (``three3x3``) and `seed` which repeat it is; runs of
    different arms with the same seed are a pair (same data order and initialisation stream).
    Old experiment directories without them read as one seed: arm = name, seed = the config's.
    """

    name: str
    label: str
    model: str
    options: dict[str, Any]
    config: TrainConfig
    arm: str = ""
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what ``experiment.json`` lists)."""
        return {
            "name": self.name,
            "label": self.label,
            "model": self.model,
            "options": dict(self.options),
            "train": self.config.to_dict(),
            "arm": self.arm or self.name,
            "seed": self.seed,
        }


def seeded_runs(
    arms: list[tuple[str, str, str, dict[str, Any], TrainConfig]], seeds: int
) -> list[RunSpec]:
    """One run per arm and seed (``NAME-sS``), seed-major so that a pair finishes together.

    Args:
        arms: ``(name, label, model, options, config)`` per arm.
        seeds: n; seed s trains every arm with ``config.seed = s``.
    """
    return [
        RunSpec(f"{name}-s{s}", label, model, options, config.replace(seed=s), name, s)
        for s in range(seeds)
        for name, label, model, options, config in arms
    ]


@dataclass(frozen=True)
class Plan:
    """What an experiment trains at one budget, and how the page says so."""

    runs: list[RunSpec]
    budget_note: str  # one or two sentences: images, epochs, recipe, seeds
    params: dict[str, Any] = field(default_factory=dict)  # experiment settings (depths, noise ...)


@dataclass
class Table:
    """A table of measured numbers; `rows` hold plain values (formatted by the page)."""

    title: str
    headers: list[str]
    rows: list[list[Any]]
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {"title": self.title, "headers": self.headers, "rows": self.rows, "note": self.note}

    def column(self, header: str) -> list[Any]:
        """The values of one column."""
        i = self.headers.index(header)
        return [r[i] for r in self.rows]


@dataclass(frozen=True)
class Verdict:
    """A claim, its status, the measured numbers that decide it, and the interval that did.

    `status` is one of :data:`~convlens.experiments.stats.STATUSES`: ``held``, ``contradicted``,
    ``inconclusive`` (the interval does not decide) or the smoke test's "decides nothing".
    """

    claim: str
    status: str
    evidence: str
    interval: Interval | None = None
    rule: str = ""  # how the interval decides (superiority, non-inferiority with its margin)
    prediction: str = ""  # what the papers predict at this budget, stated before the result
    meaning: str = ""  # what the result means for a student

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown verdict status {self.status!r}")

    @property
    def held(self) -> bool:
        """Whether the claim held (False for contradicted, inconclusive and smoke tests)."""
        return self.status == HELD

    def smoke(self) -> Verdict:
        """The same claim at the tiny budget: no decision."""
        return Verdict(
            self.claim,
            SMOKE,
            self.evidence,
            self.interval,
            self.rule,
            self.prediction,
            "A smoke test: one epoch on 256 images shows that the code runs; it decides nothing.",
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "claim": self.claim,
            "held": self.held,
            "status": self.status,
            "evidence": self.evidence,
            "rule": self.rule,
            "prediction": self.prediction,
            "meaning": self.meaning,
            "interval": None if self.interval is None else self.interval.to_dict(),
        }


@dataclass
class Picture:
    """A figure of the page: PNG bytes and a caption."""

    png: bytes
    caption: str
    alt: str = ""


@dataclass
class Findings:
    """What :meth:`Experiment.analyse` returns."""

    tables: list[Table]
    verdicts: list[Verdict]
    pictures: list[Picture] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def table(self, title_start: str) -> Table:
        """The first table whose title starts with `title_start`."""
        for t in self.tables:
            if t.title.startswith(title_start):
                return t
        raise KeyError(title_start)


@dataclass
class Context:
    """What an analysis reads: the experiment directory, its plan and its finished runs."""

    out: Path
    name: str
    budget: str
    data: str
    plan: Plan
    runs: dict[str, Run]  # RunSpec.name -> the loaded run
    data_root: str | None = None

    def spec(self, name: str) -> RunSpec:
        """The :class:`RunSpec` called `name`."""
        return next(s for s in self.plan.runs if s.name == name)

    @property
    def arms(self) -> list[str]:
        """The arms in plan order (each once)."""
        return list(dict.fromkeys(s.arm or s.name for s in self.plan.runs))

    @property
    def seeds(self) -> list[int]:
        """The seeds every arm was trained with, ascending."""
        return sorted({s.seed for s in self.plan.runs})

    def label(self, arm: str) -> str:
        """The page's label of `arm`."""
        return next(s.label for s in self.plan.runs if (s.arm or s.name) == arm)

    def specs(self, arm: str) -> list[RunSpec]:
        """The runs of `arm`, by seed."""
        return sorted((s for s in self.plan.runs if (s.arm or s.name) == arm), key=lambda s: s.seed)

    def arm_runs(self, arm: str) -> list[Run]:
        """The loaded runs of `arm`, by seed (pairs line up across arms)."""
        return [self.runs[s.name] for s in self.specs(arm)]

    def per_seed(self, arm: str, measure: Callable[[RunSpec, Run], float]) -> np.ndarray:
        """``(n_seeds,)``: `measure` of each run of `arm`, by seed."""
        return np.array([measure(s, self.runs[s.name]) for s in self.specs(arm)], dtype=np.float64)

    @property
    def smoke(self) -> bool:
        """Whether this is the tiny budget (a smoke test that decides nothing)."""
        return self.budget == "tiny"


@dataclass(frozen=True)
class Experiment:
    """One of the notes' claims as an experiment.

    Attributes:
        name: the command-line name (``stack``).
        title: the page's heading.
        claim: the claim in the notes' words.
        source: where the claim comes from (paper, section).
        default_data: the data set used when none is given.
        data_choices: the data sets it accepts (None: any).
        plan: ``(budget, data, **settings) -> Plan``.
        analyse: ``Context -> Findings``.
        settings: the experiment's own settings and their defaults (``depths`` ...).
    """

    name: str
    title: str
    claim: str
    source: str
    default_data: str
    plan: Callable[..., Plan]
    analyse: Callable[[Context], Findings]
    data_choices: tuple[str, ...] | None = None
    settings: dict[str, Any] = field(default_factory=dict)

    def check_data(self, data: str) -> None:
        """Raise a :class:`ConvlensError` for a data set this experiment cannot use."""
        if self.data_choices is not None and data not in self.data_choices:
            raise ConvlensError(
                f"experiment {self.name} runs on {' or '.join(self.data_choices)}, not {data!r}"
            )


def check_budget(budget: str) -> str:
    """Return `budget` if it is one of :data:`BUDGETS`; raise a :class:`ConvlensError` otherwise."""
    if budget not in BUDGETS:
        raise ConvlensError(f"unknown budget {budget!r}; choose small or paper (or tiny for tests)")
    return budget


def error_pct(acc: float | None) -> float:
    """Accuracy fraction -> error in percent (NaN for None)."""
    return float("nan") if acc is None else 100.0 * (1.0 - acc)


def last(run: Run, key: str) -> float:
    """The last epoch's value of a metric (NaN when the run has no history)."""
    return float(run.history[-1][key]) if run.history else float("nan")


def initial_model(model: str, options: dict[str, Any], seed: int) -> nn.Module:
    """The network `fit` started from: built with the run's options after seeding with its seed.

    :func:`convlens.train.fit` seeds torch with the config's seed and then creates the model, so
    this gives the very initial weights of a run (the global RNG is left untouched).
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return models.create(model, **options)


def image_shape(run: Run) -> tuple[int, int, int]:
    """``(C, H, W)`` of the run's images."""
    c, h, w = run.data.image_shape
    return int(c), int(h), int(w)


def error_curves(
    ctx: Context, keys: tuple[str, ...] = ("train_acc", "test_acc")
) -> dict[str, dict[str, Any]]:
    """Per arm label: epochs (1-based) and, per key, error (%) per epoch as ``(n_seeds, epochs)``.

    Keys ending in ``_acc`` become errors in percent; others (``train_loss``) are copied.
    """
    curves: dict[str, dict[str, Any]] = {}
    for arm in ctx.arms:
        runs = ctx.arm_runs(arm)
        epochs = min(len(r.history) for r in runs)
        entry: dict[str, Any] = {"epoch": list(range(1, epochs + 1))}
        for key in keys:
            rows = [
                [
                    error_pct(h[key]) if key.endswith("_acc") else float(h[key])
                    for h in r.history[:epochs]
                ]
                for r in runs
            ]
            entry[key] = np.array(rows, dtype=np.float64)  # (n_seeds, epochs)
        curves[ctx.label(arm)] = entry
    return curves


def seconds_per_epoch(run: Run) -> float:
    """Mean wall seconds per epoch (training and testing) over the run's epochs."""
    rows = run.history
    return sum(float(r["seconds"]) for r in rows) / len(rows) if rows else float("nan")


def train_images_per_s(run: Run) -> float:
    """Training images per second of the run's fastest epoch.

    The fastest, not the mean: on a shared machine an epoch that another job slowed down says
    more about that job than about the network.
    """
    return max((float(r["images_per_s"]) for r in run.history), default=float("nan"))


def small_config(**changes: Any) -> TrainConfig:
    """The CPU-sized recipe the small budgets start from: SGD + Nesterov, cosine, batch 64."""
    base = TrainConfig(
        epochs=3,
        batch_size=64,
        lr=0.05,
        optimizer="sgd",
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
        schedule="cosine",
        warmup=0.5,
        augment="none",
    )
    return base.replace(**changes)


TINY_SEEDS = 2  # the tiny budget still pairs two seeds, so that the statistics run end to end
TINY_NOTE = (
    "Tiny budget: a smoke test (256 training images, one epoch, two seeds). It checks that "
    "everything runs and decides nothing."
)


def tiny(config: TrainConfig) -> TrainConfig:
    """The tiny budget of a recipe: 256 training and 128 test images, one epoch."""
    return config.replace(epochs=1, limit_train=256, limit_test=128, batch_size=64, warmup=0.0)


def compare(
    claim: str,
    a: np.ndarray,
    b: np.ndarray,
    *,
    a_label: str,
    b_label: str,
    measure: str,
    unit: str,
    margin: float | None = None,
    lower_is_better: bool = False,
    prediction: str = "",
    meaning: str = "",
) -> Verdict:
    """The verdict on "A is better than B" (or, with `margin`, "A is at least as good as B").

    Args:
        claim: the claim in words.
        a, b: ``(n_seeds,)`` the measure per seed; seed s of `a` pairs with seed s of `b`.
        a_label, b_label: the arms' names on the page.
        measure: what was measured (``test accuracy``).
        unit: the difference's unit (``points``).
        lower_is_better: for errors and losses: the difference tested is then ``b - a``.
        margin: None for superiority (the interval must lie above 0); a number δ >= 0 for
            non-inferiority (the interval must lie above -δ).
        prediction: what the papers predict at this budget.
        meaning: what the result means for a student.
    """
    from convlens.experiments import stats

    iv = stats.paired(b, a) if lower_is_better else stats.paired(a, b)
    diff = f"{b_label} − {a_label}" if lower_is_better else f"{a_label} − {b_label}"
    if margin is None:
        status = stats.superiority(iv)
        rule = (
            f"held if the 95 % interval of {diff} lies above 0, contradicted if "
            "it lies below 0, inconclusive if it contains 0"
        )
    else:
        status = stats.non_inferiority(iv, margin)
        rule = (
            f"non-inferiority with a margin of {margin:g} {unit}, fixed before the runs: held if "
            f"the 95 % interval of {diff} lies above −{margin:g}, contradicted if "
            f"it lies below −{margin:g}, inconclusive if it contains −{margin:g}"
        )
    sa, sb = stats.t_interval(a), stats.t_interval(b)
    evidence = (
        f"{measure}, {diff} (positive favours the claim): "
        f"{iv.text(unit)} paired seeds; {a_label} {_mean_pm(sa)}, {b_label} {_mean_pm(sb)} "
        f"({stats.METHOD})."
    )
    return Verdict(claim, status, evidence, iv, rule, prediction, meaning)


def _mean_pm(iv: Any) -> str:
    if iv.n < 2 or iv.lo != iv.lo:
        return f"{iv.mean:.2f}"
    return f"{iv.mean:.2f} ± {iv.half:.2f}"


EVAL_TRAIN = 10_000  # training images evaluated (eval mode) when a budget trains on all of them
