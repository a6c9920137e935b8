"""alray.experiments.stats: golden numbers worked by hand, and properties."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from alray.experiments import stats
from alray.experiments.stats import (
    AT_LEAST, AT_MOST, EXACT, UNDEFINED, censored_mean, holm, isotonic, labels_to_reach,
    mean_interval, normalised_auc, paired_t_test, saving, sign_flip_test)


def test_t_interval_golden_and_wider_than_normal():
    values = [0.50, 0.52, 0.49, 0.53, 0.51]
    mean, low, high = mean_interval(values)
    assert mean == pytest.approx(0.51)
    # s = 0.01581, t_{4, 0.975} = 2.776: half-width 0.01963
    assert high - mean == pytest.approx(2.7764 * 0.015811 / np.sqrt(5), rel=1e-3)
    assert (high - mean) > 1.96 * np.std(values, ddof=1) / np.sqrt(5)
    assert mean_interval([0.7])[0] == 0.7 and np.isnan(mean_interval([0.7])[1])
    assert np.isnan(mean_interval([np.nan, np.nan])[0])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=12))
def test_interval_contains_the_mean_and_matches_scipy(values):
    mean, low, high = mean_interval(values)
    assert low <= mean + 1e-12 and mean <= high + 1e-12
    if np.std(values) > 1e-9:
        lo, hi = sps.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                                scale=sps.sem(values))
        assert (low, high) == pytest.approx((lo, hi), rel=1e-9, abs=1e-12)


def test_labels_to_reach_interpolates_between_steps():
    labelled = [2000, 2020, 2040, 2060]
    acc = [0.40, 0.45, 0.44, 0.50]
    assert labels_to_reach(labelled, acc, 0.45) == 2020
    assert labels_to_reach(labelled, acc, 0.425) == pytest.approx(2010)  # halfway up
    # 0.46 first crossed between 2040 (0.44) and 2060 (0.50): a third of the way
    assert labels_to_reach(labelled, acc, 0.46) == pytest.approx(2040 + 20 / 3)
    assert labels_to_reach(labelled, acc, 0.30) == 2000  # met at the first point
    assert np.isnan(labels_to_reach(labelled, acc, 0.51))  # censored
    # trapezoid: (0.425 + 0.445 + 0.47) * 20 / 60
    assert normalised_auc(labelled, acc) == pytest.approx((0.425 + 0.445 + 0.47) / 3)


def test_saving_and_its_kind():
    assert saving(2250, 2450, 2000, 3000) == (pytest.approx(1 - 2250 / 2450), EXACT)
    # never reached by 3,000: the saving is at most 1 - 3000/2280 = -31.6% (the case)
    value, kind = saving(np.nan, 2280, 2000, 3000)
    assert kind == AT_MOST and value == pytest.approx(-0.3158, abs=1e-4)
    assert saving(2000, 2400, 2000, 3000) == (pytest.approx(1 - 2000 / 2400), AT_LEAST)
    assert saving(2000, 2000, 2000, 3000)[1] == UNDEFINED  # random met it at step 0
    assert saving(np.nan, np.nan, 2000, 3000)[1] == UNDEFINED


def test_censored_mean_never_drops_a_censored_seed():
    # two seeds saved 10% and 13% (mean 11.5%); the third never got there: <= -31.6%
    r = censored_mean([0.10, 0.13, -0.316], [EXACT, EXACT, AT_MOST])
    assert r["kind"] == AT_MOST and r["n"] == 3
    assert r["mean"] == pytest.approx((0.23 - 0.316) / 3) and r["mean"] < 0  # sign flips
    assert np.isnan(r["low"]) and np.isnan(r["high"])
    assert censored_mean([0.2, 0.3], [AT_LEAST, EXACT])["kind"] == AT_LEAST
    assert censored_mean([0.2, 0.3], [AT_LEAST, AT_MOST])["kind"] == UNDEFINED
    r = censored_mean([np.nan, 0.3], [UNDEFINED, EXACT])  # one value: no interval
    assert (r["mean"], r["kind"], r["n"]) == (0.3, EXACT, 1) and np.isnan(r["low"])
    assert censored_mean([np.nan], [UNDEFINED])["kind"] == UNDEFINED
    r = censored_mean([0.1, 0.2, 0.3], [EXACT] * 3)
    assert (r["low"], r["high"]) == pytest.approx(mean_interval([0.1, 0.2, 0.3])[1:])
    with pytest.raises(ValueError, match="UNDEFINED"):
        censored_mean([np.nan], [EXACT])


def test_isotonic_golden():
    np.testing.assert_allclose(isotonic([1, 3, 2, 4]), [1, 2.5, 2.5, 4])
    np.testing.assert_allclose(isotonic([1, 3, 2, 4], [1, 1, 3, 1]), [1, 2.25, 2.25, 4])
    np.testing.assert_allclose(isotonic([3, 2, 1]), [2, 2, 2])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=20),
       st.integers(0, 2 ** 31 - 1))
def test_isotonic_properties(values, seed):
    w = np.random.default_rng(seed).uniform(0.5, 2, len(values))
    fit = isotonic(values, w)
    assert np.all(np.diff(fit) >= -1e-12)  # non-decreasing
    assert np.sum(w * fit) == pytest.approx(np.sum(w * np.asarray(values)), abs=1e-9)
    np.testing.assert_allclose(isotonic(np.sort(values)), np.sort(values))
    # no non-decreasing sequence is closer: the brute check against a few of them
    err = np.sum(w * (np.asarray(values) - fit) ** 2)
    for other in (np.sort(values), np.full(len(values), np.average(values, weights=w))):
        assert err <= np.sum(w * (np.asarray(values) - other) ** 2) + 1e-12


def test_sign_flip_exact_golden():
    assert sign_flip_test([1, 2, 3], [0, 0, 0]) == pytest.approx(2 / 8)  # the floor with 3
    assert sign_flip_test([1, 2, 3, 4, 5], [0] * 5) == pytest.approx(2 / 32)
    # d = (3, 1, -1), mean 1: sums of +-3 +-1 +-1 at least 3 in size: 6 of 8
    assert sign_flip_test([3, 1, -1], [0, 0, 0]) == pytest.approx(6 / 8)
    assert sign_flip_test([1, -1], [0, 0]) == 1.0
    assert sign_flip_test([0.5, 0.5], [0.5, 0.5]) == 1.0
    assert np.isnan(sign_flip_test([], []))


def test_sign_flip_monte_carlo_agrees_with_exact(monkeypatch):
    d = np.random.default_rng(3).normal(0.3, 1.0, 12)
    exact = sign_flip_test(d, np.zeros(12))
    monkeypatch.setattr(stats, "EXACT_FLIPS", 8)
    approx = sign_flip_test(d, np.zeros(12), seed=1)
    assert approx == pytest.approx(exact, abs=0.01)
    assert sign_flip_test(d, np.zeros(12), seed=1) == approx  # seeded


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(-10**6, 10**6).map(lambda i: i / 10**6), min_size=1,
                max_size=8))
def test_sign_flip_is_symmetric_and_a_probability(d):
    # differences on a 1e-6 grid: ties are exact or clearly apart, never within the
    # float tolerance, where the mean (here) and the sum (brute force) would round apart
    p = sign_flip_test(d, np.zeros(len(d)))
    assert 2 / 2 ** len(d) - 1e-12 <= p <= 1.0
    assert sign_flip_test(-np.asarray(d), np.zeros(len(d))) == pytest.approx(p)
    brute = np.mean([abs(np.dot(s, d)) >= abs(np.sum(d)) - 1e-12 * max(1, abs(np.sum(d)))
                     for s in itertools.product((1, -1), repeat=len(d))])
    assert p == pytest.approx(brute)


def test_paired_t_test_matches_scipy_and_refuses_constant_differences():
    a, b = [0.52, 0.55, 0.51, 0.56], [0.50, 0.52, 0.51, 0.53]
    assert paired_t_test(a, b) == pytest.approx(sps.ttest_rel(a, b).pvalue)
    assert np.isnan(paired_t_test([0.6, 0.7], [0.5, 0.6]))  # constant difference
    assert np.isnan(paired_t_test([0.6], [0.5]))


def test_holm_golden():
    # sorted 0.01, 0.03, 0.04: x3 = 0.03, x2 = 0.06, x1 = 0.04 -> kept monotone: 0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])
    assert holm([]).shape == (0,)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=1, max_size=10))
def test_holm_properties(p):
    adjusted = holm(p)
    assert np.all(adjusted >= np.asarray(p) - 1e-12) and np.all(adjusted <= 1.0)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adjusted[order]) >= -1e-12)  # order kept
    assert adjusted.min() == pytest.approx(min(1.0, len(p) * min(p)))


def test_experiments_import_one_way():
    """stats and plots are leaves (no alray import, no I/O module); the computations never
    import their writers (correlation -> correlation_report, compare -> report)."""
    import ast
    import pathlib

    here = pathlib.Path(stats.__file__).parent

    def imports(name):
        tree = ast.parse((here / f"{name}.py").read_text())
        found = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                found.add(node.module)
            elif isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
        return found

    assert not {m for m in imports("stats") if m.startswith("alray")}
    assert not {m for m in imports("plots") if m.startswith("alray")}
    assert "alray.experiments.correlation_report" not in imports("correlation")
    assert "alray.experiments.report" not in imports("compare")
    assert not {m for m in imports("stats") | imports("compare") if "matplotlib" in m}
