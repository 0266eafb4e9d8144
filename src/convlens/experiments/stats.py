"""The statistics every experiment decides by: paired seeds, a 95 % interval, three-way verdicts.

Each arm of an experiment is trained with the same n seeds; seed s gives every arm the same data
order, the same augmentation draws and the same initialisation stream (``TrainConfig.seed``), so
arm A's and arm B's results under seed s form a pair. A claim about A against B is decided by the
paired differences ``d_s = m(A, s) - m(B, s)`` (oriented so that positive favours the claim):

- the interval is Student's t on the n differences: ``mean(d) ± t_{0.975, n-1} · sd(d) / √n``
  (a 95 % two-sided interval, the one :func:`scipy.stats.ttest_rel` reports);
- **superiority** ("A is better than B"): *held* when the interval lies above 0, *contradicted*
  when it lies below 0, *inconclusive* when it contains 0;
- **non-inferiority** ("A is at least as good as B", margin δ): *held* when the interval lies
  above -δ, *contradicted* when it lies below -δ (A is worse by more than the margin), otherwise
  *inconclusive*. The margin is stated with the claim, fixed before any run.

Fewer than two pairs give no interval and decide nothing (*inconclusive*). At the tiny budget
(a smoke test) the runner replaces every status by :data:`SMOKE`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats as _scipy_stats

HELD = "held"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
SMOKE = "smoke test: decides nothing"
STATUSES = (HELD, CONTRADICTED, INCONCLUSIVE, SMOKE)
LEVEL = 0.95
METHOD = "Student t on the paired differences (95 %, two-sided)"


@dataclass(frozen=True)
class Interval:
    """A mean with its 95 % Student-t interval over n paired values (or one arm's n values).

    ``lo``/``hi`` are NaN when n < 2 (no spread to estimate).
    """

    mean: float
    lo: float
    hi: float
    n: int
    sd: float

    @property
    def half(self) -> float:
        """Half-width of the interval (NaN when n < 2)."""
        return (self.hi - self.lo) / 2

    def text(self, unit: str = "", digits: int = 2) -> str:
        """``"1.23 [0.45, 2.01] points (n = 5)"``."""
        u = f" {unit}" if unit else ""
        if math.isnan(self.lo):
            return f"{self.mean:.{digits}f}{u} (n = {self.n}: no interval)"
        return f"{self.mean:+.{digits}f} [{self.lo:+.{digits}f}, {self.hi:+.{digits}f}]{u} (n = {self.n})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN as None)."""
        return {
            k: (None if isinstance(v, float) and math.isnan(v) else v)
            for k, v in (
                ("mean", self.mean),
                ("lo", self.lo),
                ("hi", self.hi),
                ("n", self.n),
                ("sd", self.sd),
                ("level", LEVEL),
                ("method", METHOD),
            )
        }


def t_interval(values: Sequence[float] | np.ndarray, level: float = LEVEL) -> Interval:
    """Mean of `values` and its two-sided Student-t interval at `level`.

    Args:
        values: ``(n,)`` numbers (e.g. paired differences, one per seed).
        level: coverage, 0.95 for a 95 % interval.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    n = int(x.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Interval(mean, math.nan, math.nan, n, math.nan)
    sd = float(x.std(ddof=1))
    half = float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1)) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, sd)


def paired(
    a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray, level: float = LEVEL
) -> Interval:
    """The interval of the mean paired difference ``a - b`` (one pair per seed)."""
    xa, xb = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if xa.shape != xb.shape:
        raise ValueError(f"paired values need the same seeds: {xa.shape} against {xb.shape}")
    return t_interval(xa - xb, level)


def superiority(iv: Interval) -> str:
    """Status of "the difference is positive" (module docstring): decided by the interval."""
    if iv.n < 2 or math.isnan(iv.lo):
        return INCONCLUSIVE
    if iv.lo > 0:
        return HELD
    if iv.hi < 0:
        return CONTRADICTED
    return INCONCLUSIVE


def non_inferiority(iv: Interval, margin: float) -> str:
    """Status of "the difference is above -margin" (module docstring): decided by the interval."""
    if margin < 0:
        raise ValueError(f"a non-inferiority margin is not negative, not {margin}")
    if iv.n < 2 or math.isnan(iv.lo):
        return INCONCLUSIVE
    if iv.lo > -margin:
        return HELD
    if iv.hi < -margin:
        return CONTRADICTED
    return INCONCLUSIVE


def exact(true: bool) -> str:
    """Status of a claim that is arithmetic, not sampled (a parameter count): held or contradicted."""
    return HELD if true else CONTRADICTED


def mean_band(rows: Sequence[Sequence[float]] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column: the mean over rows (seeds) and the half-width of its 95 % t interval.

    Args:
        rows: ``(n_seeds, n_points)``.

    Returns:
        ``(mean (n_points,), half (n_points,))``; the half-width is 0 with one row.
    """
    x = np.asarray(rows, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    mean = x.mean(0)
    n = x.shape[0]
    if n < 2:
        return mean, np.zeros_like(mean)
    half = _scipy_stats.t.ppf(0.5 + LEVEL / 2, n - 1) * x.std(0, ddof=1) / math.sqrt(n)
    return mean, half


def proportion(k: int, n: int, level: float = LEVEL) -> Interval:
    """A share ``k / n`` with its exact (Clopper-Pearson) interval; ``sd`` is NaN (unused)."""
    if n <= 0:
        return Interval(math.nan, math.nan, math.nan, 0, math.nan)
    ci = _scipy_stats.binomtest(int(k), int(n)).proportion_ci(level, method="exact")
    return Interval(k / n, float(ci.low), float(ci.high), int(n), math.nan)


def above(iv: Interval, chance: float, floor: float) -> str:
    """Status of "the share is above `chance`": held when the interval lies above `chance`,
    contradicted when it lies below `floor` (>= chance: at most a trace above it), else inconclusive.
    """
    if iv.n < 1 or math.isnan(iv.lo):
        return INCONCLUSIVE
    if iv.lo > chance:
        return HELD
    if iv.hi < floor:
        return CONTRADICTED
    return INCONCLUSIVE
