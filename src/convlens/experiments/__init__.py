"""The notes' claims, measured: one command trains the networks that differ only in the point at issue.

Each experiment is a module with a plan (which runs, at which budget) and an analysis (tables,
verdicts, figures); :mod:`~convlens.experiments.runner` trains the runs into an experiment
directory, resumably, and writes one self-contained page.

Example::

    from convlens import experiments
    result = experiments.run("stack", out="exp/stack", budget="small")
    for v in result.verdicts:
        print(v.status, v.claim)
    result.findings.table("The block").rows

| name | claim |
| --- | --- |
| ``degradation`` | deeper plain networks train worse; residual ones do not (He et al. 2016) |
| ``stack`` | three 3x3 convolutions against one 7x7: 27C² against 49C², the same 7x7 field |
| ``sharing`` | a convolution against a locally-connected layer of the same geometry |
| ``pooling`` | max pooling against average pooling and a strided convolution, under noise |
| ``first-filters`` | first-layer filters become oriented edges and opposing colours |
"""

from __future__ import annotations

from convlens.experiments import degradation, first_filters, pooling, sharing, stack
from convlens.experiments.common import (
    BUDGETS,
    Experiment,
    Findings,
    Plan,
    RunSpec,
    Table,
    Verdict,
)
from convlens.experiments.runner import ExperimentResult, get, report, run

EXPERIMENTS: dict[str, Experiment] = {
    e.name: e
    for e in (
        degradation.EXPERIMENT,
        stack.EXPERIMENT,
        sharing.EXPERIMENT,
        pooling.EXPERIMENT,
        first_filters.EXPERIMENT,
    )
}

__all__ = [
    "BUDGETS",
    "EXPERIMENTS",
    "Experiment",
    "ExperimentResult",
    "Findings",
    "Plan",
    "RunSpec",
    "Table",
    "Verdict",
    "get",
    "report",
    "run",
]
