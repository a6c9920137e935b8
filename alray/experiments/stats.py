"""The statistics of the experiments: pure functions on arrays (no I/O, no plotting).

Over seeds, a mean carries a Student-t interval (df = n - 1; with 5 seeds t = 2.78, so
1.96 standard errors would claim too much). Paired comparisons come as a t-test and an
exact sign-flip permutation test side by side: with few seeds the t-test leans on a
normality it cannot check, while the sign-flip test assumes only that, under "no
difference", each seed's difference is as likely negative as positive; its smallest
possible p-value is 2 / 2^n (0.25 with 3 seeds, 0.0625 with 5), which says plainly how
much a handful of seeds can show. Several p-values in one table are Holm-corrected.

A "labels to reach" is censored when the curve never gets there: it is only known to
exceed the horizon, and anything computed from it is a bound (``censored_mean``).
"""
from __future__ import annotations

import itertools
import warnings

import numpy as np

EXACT_FLIPS = 16  # up to 2^16 sign patterns enumerated; more seeds: seeded Monte Carlo
N_FLIPS = 100_000

# kinds of a per-seed value (``censored_mean``)
EXACT, AT_MOST, AT_LEAST, UNDEFINED = "exact", "at most", "at least", "undefined"


def mean_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t ``level`` interval of ``values`` ``(n,)``: ``(mean, low, high)``.

    NaN values are left out (callers that must not drop anything check first); fewer
    than two values give no interval (NaN bounds), never a zero-width one from one value.
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return (np.nan, np.nan, np.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return (mean, np.nan, np.nan)
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return (mean, mean - half, mean + half)


def censored_mean(values, kinds, level: float = 0.95) -> dict:
    """Mean over seeds of values some of which are only bounds.

    ``values`` ``(n,)``; ``kinds`` ``(n,)`` of EXACT, AT_MOST (the true value is <= the
    number: e.g. a saving whose variant never reached the target), AT_LEAST or UNDEFINED
    (no value: left out, and counted). Returns ``mean``, ``low``, ``high``, ``kind`` and
    ``n`` (values used): all exact -> the mean and its t-interval (NaN bounds for one
    value); some AT_MOST (none AT_LEAST) -> the mean of the bounds, itself an upper bound,
    without an interval; the mirror for AT_LEAST; both -> nothing can be said (NaN,
    UNDEFINED); nothing defined -> NaN, UNDEFINED.
    """
    x = np.asarray(values, dtype=np.float64)
    k = np.asarray(kinds, dtype=object)
    if x.shape != k.shape:
        raise ValueError(f"censored_mean: values {x.shape} and kinds {k.shape} differ")
    used = k != UNDEFINED
    present = set(k[used].tolist())
    if not used.any() or {AT_MOST, AT_LEAST} <= present:
        return {"mean": np.nan, "low": np.nan, "high": np.nan, "kind": UNDEFINED,
                "n": int(used.sum())}
    if np.isnan(x[used]).any():
        raise ValueError("censored_mean: a defined value is NaN; mark it UNDEFINED")
    if present == {EXACT}:
        mean, low, high = mean_interval(x[used], level)
        kind = EXACT
    else:
        mean, low, high = float(x[used].mean()), np.nan, np.nan
        kind = AT_MOST if AT_MOST in present else AT_LEAST
    return {"mean": mean, "low": low, "high": high, "kind": kind, "n": int(used.sum())}


# --- learning curves -------------------------------------------------------------------
def labels_to_reach(labelled, accuracy, target: float) -> float:
    """Labelled-set size at which the curve first reaches ``target``, interpolated
    linearly between the two steps around the crossing (``labelled``, ``accuracy``:
    ``(steps,)``, labelled increasing). The first point if it already meets the target;
    NaN if the curve never does (censored at ``labelled[-1]``)."""
    x, y = np.asarray(labelled, np.float64), np.asarray(accuracy, np.float64)
    hit = np.flatnonzero(y >= target - 1e-12)
    if len(hit) == 0:
        return np.nan
    i = int(hit[0])
    if i == 0:
        return float(x[0])
    # y[i-1] < target <= y[i]: the segment rises through the target
    return float(x[i - 1] + (target - y[i - 1]) / (y[i] - y[i - 1]) * (x[i] - x[i - 1]))


def normalised_auc(labelled, accuracy) -> float:
    """Area under the learning curve (trapezoid) over its labelled range divided by that
    range: the curve's mean accuracy, comparable across runs of the same length."""
    x, y = np.asarray(labelled, np.float64), np.asarray(accuracy, np.float64)
    if len(x) < 2 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def isotonic(values, weights=None) -> np.ndarray:
    """The non-decreasing sequence closest to ``values`` ``(n,)`` in weighted least
    squares (pool-adjacent-violators): each block of violators becomes its weighted mean.
    Used to smooth the pooled passive curve, whose ups and downs are noise."""
    y = np.asarray(values, np.float64)
    w = np.ones_like(y) if weights is None else np.asarray(weights, np.float64)
    means, sizes, counts = [], [], []
    for value, weight in zip(y, w):
        means.append(value)
        sizes.append(weight)
        counts.append(1)
        while len(means) > 1 and means[-2] > means[-1]:  # merge the violating pair
            total = sizes[-2] + sizes[-1]
            merged = (means[-2] * sizes[-2] + means[-1] * sizes[-1]) / total
            count = counts[-2] + counts[-1]
            del means[-1], sizes[-1], counts[-1]
            means[-1], sizes[-1], counts[-1] = merged, total, count
    return np.repeat(means, counts)


def saving(mine: float, theirs: float, first: float, horizon: float) -> tuple[float, str]:
    """The share of labels saved, ``1 - mine / theirs``, and its kind.

    ``theirs``: the baseline's labels to the target (known); ``mine``: the variant's (NaN:
    never reached by ``horizon``); ``first``: the first labelled size of the curves. The
    baseline already at the target at ``first`` -> UNDEFINED (nothing to save); the
    variant never there -> at most ``1 - horizon / theirs``; the variant there at its
    first point -> at least ``1 - first / theirs`` (it may have needed fewer).
    """
    if np.isnan(theirs) or theirs <= first + 1e-9:
        return np.nan, UNDEFINED
    if np.isnan(mine):
        return 1 - horizon / theirs, AT_MOST
    if mine <= first + 1e-9:
        return 1 - mine / theirs, AT_LEAST
    return 1 - mine / theirs, EXACT


# --- paired tests ----------------------------------------------------------------------
def paired_t_test(a, b) -> float:
    """Two-sided p of the paired t-test of ``a`` against ``b`` (both ``(n,)``, paired by
    position); NaN with fewer than two pairs or constant differences (no t statistic)."""
    from scipy import stats

    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if len(d) < 2 or np.ptp(d) <= 1e-12:
        return np.nan
    return float(stats.ttest_1samp(d, 0.0).pvalue)


def sign_flip_test(a, b, seed: int = 0) -> float:
    """Two-sided p of the paired permutation test of ``a`` against ``b`` (``(n,)`` each):
    the share of the 2^n sign patterns of the differences whose mean is at least as far
    from zero as the observed one (exact up to ``EXACT_FLIPS`` pairs; beyond, ``N_FLIPS``
    seeded random patterns plus the observed one). NaN without pairs; 1.0 when every
    difference is zero."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    n = len(d)
    if n == 0:
        return np.nan
    if n <= EXACT_FLIPS:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))  # (2^n, n)
    else:
        rng = np.random.default_rng(seed)
        signs = np.vstack([np.ones(n), rng.choice((1.0, -1.0), (N_FLIPS, n))])
    observed = abs(d.mean())
    flipped = np.abs(signs @ d) / n  # (patterns,)
    return float(np.mean(flipped >= observed - 1e-12 * max(1.0, observed)))


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjustment of ``p_values`` ``(m,)`` (family-wise error over the
    m tests); NaN entries stay NaN and do not count as tests."""
    p = np.asarray(p_values, np.float64)
    out = np.full_like(p, np.nan)
    finite = np.flatnonzero(~np.isnan(p))
    m = len(finite)
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


# --- rank correlation --------------------------------------------------------------------
def rowwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``(m,)`` Spearman rho of each row pair of ``(m, n)`` arrays (average ranks); NaN
    for a constant row."""
    from scipy.stats import rankdata

    ra, rb = rankdata(a, axis=1), rankdata(b, axis=1)
    ra -= ra.mean(axis=1, keepdims=True)
    rb -= rb.mean(axis=1, keepdims=True)
    den = np.sqrt((ra * ra).sum(axis=1) * (rb * rb).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (ra * rb).sum(axis=1) / den, np.nan)


def spearman_interval(y, x, resamples: np.ndarray, level: float = 0.95) -> dict:
    """Spearman rho of ``y`` against ``x`` (both ``(n,)``), scipy's p-value, and the
    percentile bootstrap ``level`` interval over ``resamples`` ``(n_boot, n)`` (indices
    drawn with replacement by the caller). A constant input gives NaN (never patched)."""
    from scipy.stats import spearmanr

    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    if len(y) != len(x) or len(y) < 3:
        raise ValueError(f"spearman needs two (n,) arrays, n >= 3; got {len(y)}, {len(x)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConstantInputWarning: the NaN says it
        rho, p = spearmanr(y, x)
    boot = rowwise_spearman(y[resamples], x[resamples])
    tail = 100 * (1 - level) / 2
    low, high = (np.nanpercentile(boot, [tail, 100 - tail]) if np.isfinite(boot).any()
                 else (np.nan, np.nan))
    return {"rho": float(rho), "p_value": float(p), "low": float(low), "high": float(high)}


def one_sample_t_test(values, mean: float = 0.0) -> float:
    """Two-sided p of a one-sample t-test of ``values`` ``(n,)`` (NaN left out) against
    ``mean``; NaN with fewer than two values."""
    from scipy.stats import ttest_1samp

    x = np.asarray(values, np.float64)
    x = x[np.isfinite(x)]
    return float(ttest_1samp(x, mean).pvalue) if len(x) >= 2 else np.nan
