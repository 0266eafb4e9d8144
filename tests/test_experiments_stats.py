"""The verdict logic of the experiments against scipy.stats (the oracle for the t interval).

The intervals must equal scipy's paired t-test confidence interval; the three-way verdicts follow
from where the interval lies with respect to 0 (superiority) or -margin (non-inferiority).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sp

from convlens.experiments import stats
from convlens.experiments.common import Verdict, compare


def test_paired_interval_equals_scipy_ttest_rel() -> None:
    rng = np.random.default_rng(3)
    for n in (2, 3, 5, 12):
        a, b = rng.normal(60, 2, n), rng.normal(59, 2, n)
        iv = stats.paired(a, b)
        ci = sp.ttest_rel(a, b).confidence_interval(0.95)
        assert iv.n == n
        assert iv.mean == pytest.approx(float(np.mean(a - b)), abs=1e-12)
        assert iv.lo == pytest.approx(ci.low, rel=1e-10)
        assert iv.hi == pytest.approx(ci.high, rel=1e-10)


def test_one_sample_interval_equals_scipy_t_interval() -> None:
    x = np.array([1.2, 0.4, 2.2, 1.9, 0.7])
    iv = stats.t_interval(x)
    lo, hi = sp.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=sp.sem(x))
    assert (iv.lo, iv.hi) == (pytest.approx(lo), pytest.approx(hi))
    mean, half = stats.mean_band(np.stack([x, x + 1], 1))  # (5 seeds, 2 points)
    assert mean == pytest.approx([x.mean(), x.mean() + 1])
    assert half == pytest.approx([hi - iv.mean] * 2)


def _iv(lo: float, hi: float, n: int = 5) -> stats.Interval:
    return stats.Interval((lo + hi) / 2, lo, hi, n, 1.0)


def test_superiority_three_ways() -> None:
    assert stats.superiority(_iv(0.2, 1.5)) == stats.HELD
    assert stats.superiority(_iv(-1.5, -0.2)) == stats.CONTRADICTED
    assert stats.superiority(_iv(-0.5, 1.5)) == stats.INCONCLUSIVE  # contains 0
    assert stats.superiority(stats.t_interval([1.0])) == stats.INCONCLUSIVE  # n = 1: no interval


def test_non_inferiority_interval_straddling_the_margin_is_inconclusive() -> None:
    margin = 1.0
    assert stats.non_inferiority(_iv(-0.8, 0.5), margin) == stats.HELD  # above -1: held
    assert stats.non_inferiority(_iv(-3.0, -1.2), margin) == stats.CONTRADICTED
    assert stats.non_inferiority(_iv(-1.5, -0.2), margin) == stats.INCONCLUSIVE  # straddles -1
    # the same interval is contradicted as a superiority claim: the margin is what differs
    assert stats.superiority(_iv(-1.5, -0.2)) == stats.CONTRADICTED
    with pytest.raises(ValueError):
        stats.non_inferiority(_iv(0, 1), -1.0)


def test_compare_decides_by_scipy_interval() -> None:
    # seeds where A is better by ~1 point, with noise: interval from scipy decides
    a = np.array([61.0, 62.5, 60.2, 63.1, 61.7])
    b = np.array([60.1, 61.0, 59.9, 61.8, 60.0])
    ci = sp.ttest_rel(a, b).confidence_interval()
    v = compare("A beats B", a, b, a_label="A", b_label="B", measure="acc", unit="points")
    assert v.status == (stats.HELD if ci.low > 0 else stats.INCONCLUSIVE)
    assert v.status == stats.HELD and v.interval is not None
    # lower is better: errors; B - A tested
    w = compare("A errs less", 100 - a, 100 - b, a_label="A", b_label="B", measure="err",
                unit="points", lower_is_better=True)  # fmt: skip
    assert w.status == stats.HELD and w.interval is not None
    assert w.interval.lo == pytest.approx(ci.low)
    # straddling a non-inferiority margin
    c = np.array([60.0, 61.0, 59.0, 60.5, 59.5])
    d = c + np.array([0.5, 1.6, -0.1, 1.2, 0.9])  # B better by ~0.8 ± 0.8
    ci2 = sp.ttest_rel(c, d).confidence_interval()
    assert ci2.low < -1.0 < ci2.high
    u = compare("A at least as good", c, d, a_label="A", b_label="B", measure="acc",
                unit="points", margin=1.0)  # fmt: skip
    assert u.status == stats.INCONCLUSIVE
    assert "margin of 1" in u.rule


def test_smoke_verdicts_decide_nothing() -> None:
    v = Verdict("x", stats.HELD, "e", _iv(1, 2)).smoke()
    assert v.status == stats.SMOKE and not v.held
    with pytest.raises(ValueError):
        Verdict("x", "did not hold", "e")
    assert math.isnan(stats.t_interval([]).mean)
