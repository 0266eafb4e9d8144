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

import torch
from torch import nn

from convlens import models
from convlens.errors import ConvlensError
from convlens.train import Run, TrainConfig

BUDGETS = ("small", "paper", "tiny")
HELD = "held"
NOT_HELD = "did not hold at this budget"


@dataclass(frozen=True)
class RunSpec:
    """One network to train: its directory name under ``runs/``, label, model and recipe."""

    name: str
    label: str
    model: str
    options: dict[str, Any]
    config: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (what ``experiment.json`` lists)."""
        return {
            "name": self.name,
            "label": self.label,
            "model": self.model,
            "options": dict(self.options),
            "train": self.config.to_dict(),
        }


@dataclass(frozen=True)
class Plan:
    """What an experiment trains at one budget, and how the page says so."""

    runs: list[RunSpec]
    budget_note: str  # one or two sentences: images, epochs, recipe
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
    """A claim, whether it held here, and the measured numbers that decide it."""

    claim: str
    held: bool
    evidence: str

    @property
    def status(self) -> str:
        """``"held"`` or ``"did not hold at this budget"``."""
        return HELD if self.held else NOT_HELD

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "claim": self.claim,
            "held": self.held,
            "status": self.status,
            "evidence": self.evidence,
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


def error_curves(ctx: Context) -> dict[str, dict[str, list[float]]]:
    """Per run label: epochs, training and test error (%) per epoch, from the runs' metrics."""
    curves = {}
    for spec in ctx.plan.runs:
        hist = ctx.runs[spec.name].history
        curves[spec.label] = {
            "epoch": [float(r["epoch"]) for r in hist],
            "train_err": [error_pct(r["train_acc"]) for r in hist],
            "test_err": [error_pct(r["test_acc"]) for r in hist],
        }
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


def tiny(config: TrainConfig) -> TrainConfig:
    """The tiny budget of a recipe: 256 training and 128 test images, one epoch."""
    return config.replace(epochs=1, limit_train=256, limit_test=128, batch_size=64, warmup=0.0)
