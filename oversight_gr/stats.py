"""Statistics over seeds: intervals and comparisons that hold at the 3-5 seeds RL runs afford.

scipy.stats does the work underneath. What each function reports, and when it is valid:

* :func:`mean_interval`: the mean with a two-sided confidence interval. Below
  :data:`BOOTSTRAP_MIN_N` values it is the Student-t interval ``mean +- t(n-1) s / sqrt(n)``,
  exact for normally distributed values at any n >= 2 (and the usual choice at n = 3-5, where a
  percentile bootstrap covers far less than its nominal level: with 3 values it cannot reach
  outside their range). From :data:`BOOTSTRAP_MIN_N` values on it is the BCa bootstrap
  (``scipy.stats.bootstrap``), which needs no normality but enough values to estimate its
  corrections. With one value, or with values all equal, the interval is that value's
  ``[nan, nan]`` / ``[v, v]``.
* :func:`welch_interval`: the difference of two means with Welch's t interval (unequal
  variances), for comparing two methods' seeds.
* :func:`iqm`: the interquartile mean (mean of the middle 50%, ``scipy.stats.trim_mean(x,
  0.25)``), rliable's robust aggregate; at n <= 4 it is the mean of the middle values.
* :func:`probability_of_improvement`: ``P(X > Y)`` for a run X of one method and a run Y of
  another (ties count one half), the Mann-Whitney form ``U / (n m)`` (rliable's "probability
  of improvement"). Its interval is the stratified bootstrap (each method's seeds resampled on
  their own), computed exactly by enumerating every resample when that is small (n = m = 5:
  126 x 126 weighted resamples) and by ``scipy.stats.bootstrap`` otherwise. At n = 3-5 that
  percentile interval is too narrow, so the exact Mann-Whitney test's p-value of
  ``P(X > Y) = 1/2`` is reported beside it: it is valid at any n (with 3 seeds against 3 its
  smallest two-sided value is 0.1).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from scipy import stats as _st

__all__ = [
    "BOOTSTRAP_MIN_N",
    "Interval",
    "Improvement",
    "mean_interval",
    "t_interval",
    "bootstrap_interval",
    "welch_interval",
    "iqm",
    "probability_of_improvement",
    "METHOD_NOTE",
    "VERDICTS",
    "MIN_SEEDS",
    "Summary",
    "summary_of",
    "summary_from_t_interval",
    "summary_interval",
    "welch_summary_interval",
    "verdict_above",
    "verdict_within",
    "verdict_equivalent",
    "combine_verdicts",
]

#: from this many values on, :func:`mean_interval` uses the BCa bootstrap instead of Student t
BOOTSTRAP_MIN_N = 20
#: one sentence for reports: how the intervals were made
METHOD_NOTE = (
    "Intervals are 95% confidence intervals over seeds: Student t (valid at 3-5 seeds for "
    f"normally distributed returns) below {BOOTSTRAP_MIN_N} seeds, BCa bootstrap "
    "(scipy.stats.bootstrap) from there on. P(routing > X) is the probability that a routing "
    "run beats a run of X (Mann-Whitney U / nm, ties count 1/2) with a stratified-bootstrap "
    "interval (exact enumeration at small n; too narrow at 3-5 seeds) and the exact "
    "Mann-Whitney p-value of P = 1/2."
)


class Interval(NamedTuple):
    """A point estimate with a two-sided interval; ``method`` says how it was made."""

    mean: float
    lo: float
    hi: float
    n: int
    method: str


class Improvement(NamedTuple):
    """``P(X > Y)`` with its interval and the exact Mann-Whitney p-value of ``P = 1/2``."""

    p: float
    lo: float
    hi: float
    p_value: float
    n_x: int
    n_y: int
    method: str


def _finite(values: Sequence[float | None]) -> np.ndarray:
    return np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)


def _check_level(level: float) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level!r}")


def t_interval(values: Sequence[float | None], level: float = 0.95) -> Interval:
    """Student-t interval of the mean (None and non-finite values are dropped)."""
    _check_level(level)
    x = _finite(values)
    n = int(x.size)
    if n == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "t")
    mean = float(x.mean())
    if n == 1:
        return Interval(mean, math.nan, math.nan, 1, "t")
    sd = float(x.std(ddof=1))
    if sd == 0.0:
        return Interval(mean, mean, mean, n, "t")
    return summary_interval(Summary(mean, sd, n), level)


def bootstrap_interval(values: Sequence[float | None], level: float = 0.95,
                       n_resamples: int = 9999, seed: int = 0) -> Interval:
    """BCa bootstrap interval of the mean (``scipy.stats.bootstrap``); needs at least
    :data:`BOOTSTRAP_MIN_N` values (fewer: use :func:`t_interval`)."""
    _check_level(level)
    x = _finite(values)
    if x.size < BOOTSTRAP_MIN_N:
        raise ValueError(f"bootstrap_interval needs at least {BOOTSTRAP_MIN_N} values, got "
                         f"{x.size}; use t_interval below that")
    mean = float(x.mean())
    if float(x.std()) == 0.0:
        return Interval(mean, mean, mean, int(x.size), "bca")
    res = _st.bootstrap((x,), np.mean, confidence_level=level, n_resamples=n_resamples,
                        method="BCa", rng=np.random.default_rng(seed))
    ci = res.confidence_interval
    return Interval(mean, float(ci.low), float(ci.high), int(x.size), "bca")


def mean_interval(values: Sequence[float | None], level: float = 0.95) -> Interval:
    """The mean and its interval: Student t below :data:`BOOTSTRAP_MIN_N` values, BCa from
    there on (see the module docstring)."""
    x = _finite(values)
    if x.size >= BOOTSTRAP_MIN_N:
        return bootstrap_interval(x, level)
    return t_interval(x, level)


def welch_interval(x: Sequence[float], y: Sequence[float], level: float = 0.95) -> Interval:
    """``mean(x) - mean(y)`` with Welch's t interval (nan bounds with fewer than 2 each)."""
    _check_level(level)
    a, b = _finite(x), _finite(y)
    if a.size == 0 or b.size == 0:
        return Interval(math.nan, math.nan, math.nan, 0, "welch")
    diff = float(a.mean() - b.mean())
    n = int(min(a.size, b.size))
    if a.size < 2 or b.size < 2:
        return Interval(diff, math.nan, math.nan, n, "welch")
    if float(a.std()) == 0.0 and float(b.std()) == 0.0:
        return Interval(diff, diff, diff, n, "welch")
    ci = _st.ttest_ind(a, b, equal_var=False).confidence_interval(level)
    return Interval(diff, float(ci.low), float(ci.high), n, "welch")


def iqm(values: Sequence[float | None]) -> float:
    """Interquartile mean: the mean of the middle 50% of the values."""
    x = _finite(values)
    if x.size == 0:
        return math.nan
    return float(_st.trim_mean(x, 0.25))


def _wins(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """``[n, m]``: 1 where x_i > y_j, 1/2 on ties, 0 otherwise."""
    return (x[:, None] > y[None, :]) + 0.5 * (x[:, None] == y[None, :])


def _resample_weights(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Every bootstrap resample of n values as counts ``[K, n]`` and its probability ``[K]``."""
    counts, probs = [], []
    log_total = n * math.log(n)
    for combo in itertools.combinations_with_replacement(range(n), n):
        c = np.bincount(combo, minlength=n)
        counts.append(c)
        log_p = math.lgamma(n + 1) - sum(math.lgamma(k + 1) for k in c) - log_total
        probs.append(math.exp(log_p))
    return np.asarray(counts, dtype=float), np.asarray(probs)


#: at most this many (x resample, y resample) pairs are enumerated exactly
_EXACT_LIMIT = 250_000


def probability_of_improvement(x: Sequence[float], y: Sequence[float], level: float = 0.95,
                               n_resamples: int = 9999, seed: int = 0) -> Improvement:
    """``P(X > Y)`` over runs X of one method and Y of another (see the module docstring)."""
    _check_level(level)
    a, b = _finite(x), _finite(y)
    if a.size == 0 or b.size == 0:
        return Improvement(math.nan, math.nan, math.nan, math.nan, int(a.size), int(b.size),
                           "none")
    wins = _wins(a, b)
    p = float(wins.mean())
    p_value = float(_st.mannwhitneyu(a, b, alternative="two-sided", method="auto").pvalue)
    n, m = a.size, b.size
    sizes = math.comb(2 * n - 1, n) * math.comb(2 * m - 1, m)
    alpha = (1 - level) / 2
    if n == 1 and m == 1:
        return Improvement(p, math.nan, math.nan, p_value, 1, 1, "none")
    if sizes <= _EXACT_LIMIT:
        wa, pa = _resample_weights(n)
        wb, pb = _resample_weights(m)
        values = (wa @ wins @ wb.T) / (n * m)  # [Ka, Kb] P(X > Y) of every resample pair
        weights = np.outer(pa, pb).ravel()
        order = np.argsort(values.ravel(), kind="stable")
        v, cum = values.ravel()[order], np.cumsum(weights[order])
        lo = float(v[np.searchsorted(cum, alpha - 1e-12)])
        hi = float(v[min(np.searchsorted(cum, 1 - alpha - 1e-12), v.size - 1)])
        method = "exact stratified bootstrap"
    else:
        def stat(xs, ys, axis=-1):
            return np.mean((xs[..., :, None] > ys[..., None, :])
                           + 0.5 * (xs[..., :, None] == ys[..., None, :]), axis=(-2, -1))

        res = _st.bootstrap((a, b), stat, confidence_level=level, n_resamples=n_resamples,
                            method="percentile", vectorized=True,
                            rng=np.random.default_rng(seed))
        lo, hi = float(res.confidence_interval.low), float(res.confidence_interval.high)
        method = "stratified bootstrap"
    return Improvement(p, lo, hi, p_value, int(n), int(m), method)


# -- verdicts on claims -------------------------------------------------------------------------
# A claim is checked on the seeds' summary (mean, sd, n) of each cell it names, so the same rule
# applies to a sweep's records and to a published table of means and Student-t intervals.
#
# * "reproduced": the data support the claim at the stated confidence: the claim's quantity has
#   its whole interval on the claim's side of the margin (for "X above a threshold": the
#   interval's low end above it; for "X within [a, b]": the interval inside it; for "X matches
#   Y": the two one-sided tests of equivalence, i.e. the 90% interval of X - Y inside
#   [-margin, +margin]);
# * "not reproduced": the data contradict it: the whole interval on the other side;
# * "inconclusive": anything else (an interval that straddles the margin), and always when a
#   cell has fewer than MIN_SEEDS seeds: at n = 2 a t interval is valid but so wide that a
#   verdict either way would rest on the margin, not the data.
# A claim "at every level" is reproduced when every level is (an intersection-union test: no
# correction needed), not reproduced when some level contradicts it, inconclusive otherwise.

#: the verdicts a claim can get from data (plus "not measured" where a cell is missing)
VERDICTS = ("reproduced", "not reproduced", "inconclusive")
#: seeds a cell needs before its data may decide a claim either way
MIN_SEEDS = 3


class Summary(NamedTuple):
    """A cell's seeds: mean, sample standard deviation (ddof 1) and count."""

    mean: float
    sd: float
    n: int


def summary_of(values: Sequence[float | None]) -> Summary:
    """:class:`Summary` of the finite values (sd nan below 2 values)."""
    x = _finite(values)
    if x.size == 0:
        return Summary(math.nan, math.nan, 0)
    return Summary(float(x.mean()), float(x.std(ddof=1)) if x.size > 1 else math.nan,
                   int(x.size))


def summary_from_t_interval(mean: float, lo: float, hi: float, n: int,
                            level: float = 0.95) -> Summary:
    """Invert a published Student-t interval ``mean [lo, hi]`` of n seeds into its summary:
    ``sd = (hi - lo) / 2 * sqrt(n) / t(n - 1)`` (exact up to the rounding of lo and hi)."""
    _check_level(level)
    if n < 2 or not (math.isfinite(lo) and math.isfinite(hi)):
        return Summary(float(mean), math.nan, int(n))
    t = float(_st.t.ppf((1 + level) / 2, n - 1))
    return Summary(float(mean), (hi - lo) / 2 * math.sqrt(n) / t, int(n))


def summary_interval(s: Summary, level: float = 0.95) -> Interval:
    """The Student-t interval of a summary's mean (what :func:`t_interval` gives its values)."""
    _check_level(level)
    if s.n < 2 or not math.isfinite(s.sd):
        return Interval(s.mean, math.nan, math.nan, s.n, "t")
    half = float(_st.t.ppf((1 + level) / 2, s.n - 1)) * s.sd / math.sqrt(s.n)
    return Interval(s.mean, s.mean - half, s.mean + half, s.n, "t")


def welch_summary_interval(a: Summary, b: Summary, level: float = 0.95) -> Interval:
    """``a.mean - b.mean`` with Welch's t interval from two summaries (what
    :func:`welch_interval` gives their values); ``n`` is the smaller count."""
    _check_level(level)
    diff = a.mean - b.mean
    n = min(a.n, b.n)
    if a.n < 2 or b.n < 2 or not (math.isfinite(a.sd) and math.isfinite(b.sd)):
        return Interval(diff, math.nan, math.nan, n, "welch")
    va, vb = a.sd ** 2 / a.n, b.sd ** 2 / b.n
    se2 = va + vb
    if se2 == 0.0:
        return Interval(diff, diff, diff, n, "welch")
    df = se2 ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))
    half = float(_st.t.ppf((1 + level) / 2, df)) * math.sqrt(se2)
    return Interval(diff, diff - half, diff + half, n, "welch")


def _decided(ci: Interval) -> bool:
    return ci.n >= MIN_SEEDS and math.isfinite(ci.lo) and math.isfinite(ci.hi)


def verdict_above(ci: Interval, threshold: float) -> str:
    """The claim "the quantity exceeds ``threshold``" on its (two-sided 95%, i.e. one-sided
    97.5%) interval."""
    if not _decided(ci):
        return "inconclusive"
    if ci.lo > threshold:
        return "reproduced"
    if ci.hi < threshold:
        return "not reproduced"
    return "inconclusive"


def verdict_within(ci: Interval, low: float, high: float) -> str:
    """The claim "the quantity lies in ``[low, high]``"."""
    if not _decided(ci):
        return "inconclusive"
    if low <= ci.lo and ci.hi <= high:
        return "reproduced"
    if ci.hi < low or ci.lo > high:
        return "not reproduced"
    return "inconclusive"


def verdict_equivalent(a: Summary, b: Summary, margin: float) -> tuple[str, Interval]:
    """The claim "a matches b within ``margin``": two one-sided Welch tests at 5% each, i.e.
    the 90% interval of ``a - b`` inside ``[-margin, margin]``; not reproduced when that
    interval lies wholly outside it. Returns the verdict and the 90% interval."""
    ci = welch_summary_interval(a, b, level=0.90)
    return verdict_within(ci, -margin, margin), ci


def combine_verdicts(verdicts: Sequence[str]) -> str:
    """A claim that must hold at every level: reproduced when every level is, not reproduced
    when some level contradicts it, inconclusive otherwise (and for no levels)."""
    verdicts = list(verdicts)
    if verdicts and all(v == "reproduced" for v in verdicts):
        return "reproduced"
    if "not reproduced" in verdicts:
        return "not reproduced"
    return "inconclusive"
