"""oversight_gr.stats: intervals against scipy's own and against coverage, P(X > Y)."""

import math

import numpy as np
import pytest
from scipy import stats as st

from oversight_gr import stats


def test_t_interval_is_the_student_t_interval_and_covers_at_three_seeds():
    x = [0.52, 0.61, 0.74]
    iv = stats.t_interval(x)
    lo, hi = st.t.interval(0.95, 2, loc=np.mean(x), scale=st.sem(x))
    assert (iv.mean, iv.n, iv.method) == (pytest.approx(np.mean(x)), 3, "t")
    assert (iv.lo, iv.hi) == (pytest.approx(lo), pytest.approx(hi))
    # coverage at n = 3 on normal data: the t interval holds 95%; a percentile bootstrap of
    # 3 values (what plots used before) never reaches outside their range and covers far less
    rng = np.random.default_rng(0)
    samples = rng.normal(0.0, 1.0, size=(4000, 3))
    t_cover = np.mean([(lambda i: i.lo <= 0 <= i.hi)(stats.t_interval(s)) for s in samples[:1000]])
    range_cover = np.mean((samples.min(1) <= 0) & (samples.max(1) >= 0))
    assert 0.93 <= t_cover <= 0.97
    assert range_cover < 0.8  # the most any resampling interval of 3 values could cover


def test_degenerate_inputs():
    assert math.isnan(stats.t_interval([]).mean)
    one = stats.t_interval([0.4])
    assert one.mean == 0.4 and math.isnan(one.lo) and math.isnan(one.hi)
    assert stats.t_interval([0.3, 0.3, 0.3])[:3] == (0.3, 0.3, 0.3)
    assert stats.t_interval([0.1, None, float("nan"), 0.3]).n == 2
    with pytest.raises(ValueError, match="level"):
        stats.t_interval([1, 2], level=1.5)
    with pytest.raises(ValueError, match="at least"):
        stats.bootstrap_interval([1.0, 2.0, 3.0])


def test_mean_interval_switches_to_bca_only_with_enough_values():
    small = list(np.linspace(0, 1, stats.BOOTSTRAP_MIN_N - 1))
    assert stats.mean_interval(small).method == "t"
    rng = np.random.default_rng(1)
    big = rng.exponential(size=60)
    iv = stats.mean_interval(big)
    ref = st.bootstrap((big,), np.mean, method="BCa", n_resamples=9999,
                       rng=np.random.default_rng(0)).confidence_interval
    assert iv.method == "bca" and (iv.lo, iv.hi) == (pytest.approx(ref.low),
                                                      pytest.approx(ref.high))
    assert iv.lo < big.mean() < iv.hi


def test_welch_interval_and_iqm():
    x, y = [0.8, 0.7, 0.75, 0.72], [0.5, 0.6, 0.4]
    iv = stats.welch_interval(x, y)
    ref = st.ttest_ind(x, y, equal_var=False).confidence_interval(0.95)
    assert iv.mean == pytest.approx(np.mean(x) - np.mean(y))
    assert (iv.lo, iv.hi) == (pytest.approx(ref.low), pytest.approx(ref.high))
    assert stats.iqm([0.0, 1.0, 2.0, 100.0]) == pytest.approx(1.5)  # the outer quarters go
    assert stats.iqm([1, 2, 3, 4, 5, 6, 7, 8]) == pytest.approx(4.5)


def test_probability_of_improvement_counts_pairs_and_its_exact_interval():
    x, y = [0.7, 0.75, 0.8], [0.4, 0.75, 0.9]
    imp = stats.probability_of_improvement(x, y)
    # pairs: 0.7 beats 0.4; 0.75 beats 0.4, ties 0.75; 0.8 beats 0.4 and 0.75 -> 4.5 / 9
    assert imp.p == pytest.approx(4.5 / 9)
    assert imp.p == pytest.approx(st.mannwhitneyu(x, y).statistic / 9)
    assert imp.method == "exact stratified bootstrap" and 0 <= imp.lo <= imp.p <= imp.hi <= 1
    # the exact enumeration equals a (large) Monte-Carlo stratified bootstrap
    rng = np.random.default_rng(0)
    xs = np.asarray(x)[rng.integers(0, 3, size=(200_000, 3))]
    ys = np.asarray(y)[rng.integers(0, 3, size=(200_000, 3))]
    mc = ((xs[:, :, None] > ys[:, None, :]) + 0.5 * (xs[:, :, None] == ys[:, None, :])).mean((1, 2))
    assert (imp.lo, imp.hi) == tuple(np.quantile(mc, [0.025, 0.975], method="inverted_cdf"))
    full = stats.probability_of_improvement([1, 2, 3], [-3, -2, -1])
    assert (full.p, full.lo, full.hi) == (1.0, 1.0, 1.0)
    assert full.p_value == pytest.approx(0.1)  # the smallest exact two-sided p at 3 vs 3
    big = stats.probability_of_improvement(np.arange(12.0), np.arange(12.0) - 4)
    assert big.method == "stratified bootstrap" and big.lo < big.p < big.hi
    assert math.isnan(stats.probability_of_improvement([], [1.0]).p)
