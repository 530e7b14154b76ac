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


def test_summary_intervals_equal_the_intervals_of_the_values():
    from oversight_gr.stats import (summary_from_t_interval, summary_interval, summary_of,
                                    t_interval, welch_interval, welch_summary_interval)

    a, b = [0.61, 0.72, 0.55, 0.70, 0.66], [0.31, 0.52, 0.48]
    for level in (0.9, 0.95):
        got, want = welch_summary_interval(summary_of(a), summary_of(b), level), \
            welch_interval(a, b, level)
        assert (got.mean, got.lo, got.hi) == pytest.approx((want.mean, want.lo, want.hi))
        got, want = summary_interval(summary_of(a), level), t_interval(a, level)
        assert (got.lo, got.hi) == pytest.approx((want.lo, want.hi))
    # a published "mean [lo, hi] (n)" gives back the sd it was made from
    ci = t_interval(a)
    assert summary_from_t_interval(ci.mean, ci.lo, ci.hi, 5).sd == pytest.approx(
        summary_of(a).sd)


def test_verdict_rules():
    from oversight_gr.stats import (Interval, Summary, combine_verdicts, verdict_above,
                                    verdict_equivalent, verdict_within)

    def ci(lo, hi, n=5):
        return Interval((lo + hi) / 2, lo, hi, n, "t")

    assert verdict_above(ci(0.1, 0.2), 0.05) == "reproduced"
    assert verdict_above(ci(-0.1, 0.2), 0.05) == "inconclusive"
    assert verdict_above(ci(-0.1, 0.0), 0.05) == "not reproduced"
    assert verdict_above(ci(0.1, 0.2, n=2), 0.05) == "inconclusive"  # too few seeds
    assert verdict_above(ci(float("nan"), float("nan")), 0.05) == "inconclusive"
    assert verdict_within(ci(0.15, 0.25), 0.1, 0.3) == "reproduced"
    assert verdict_within(ci(0.25, 0.35), 0.1, 0.3) == "inconclusive"
    assert verdict_within(ci(0.31, 0.35), 0.1, 0.3) == "not reproduced"
    # equivalence: two one-sided tests = the 90% interval inside the margin
    same = Summary(0.70, 0.01, 5)
    assert verdict_equivalent(same, Summary(0.71, 0.01, 5), 0.05)[0] == "reproduced"
    assert verdict_equivalent(same, Summary(0.90, 0.01, 5), 0.05)[0] == "not reproduced"
    assert verdict_equivalent(Summary(0.70, 0.3, 5), Summary(0.71, 0.3, 5), 0.05)[0] == \
        "inconclusive"
    assert verdict_equivalent(same, Summary(0.71, 0.01, 5), 0.05)[1].hi < 0.05
    assert combine_verdicts(["reproduced", "reproduced"]) == "reproduced"
    assert combine_verdicts(["reproduced", "inconclusive"]) == "inconclusive"
    assert combine_verdicts(["inconclusive", "not reproduced"]) == "not reproduced"
    assert combine_verdicts([]) == "inconclusive"
