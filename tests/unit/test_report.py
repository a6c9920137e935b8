"""The report's statistics: golden numbers on hand-built curves, and properties."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from alray.experiments.report import (
    labels_to_reach, mean_interval, normalised_auc, seed_results, summarise,
    summary_markdown)


def test_t_interval_golden_and_wider_than_normal():
    values = [0.50, 0.52, 0.49, 0.53, 0.51]
    mean, low, high = mean_interval(values)
    assert mean == pytest.approx(0.51)
    # s = 0.01581, t_{4, 0.975} = 2.776: half-width 0.01963
    assert high - mean == pytest.approx(2.7764 * 0.015811 / np.sqrt(5), rel=1e-3)
    assert (high - mean) > 1.96 * np.std(values, ddof=1) / np.sqrt(5)
    assert mean_interval([0.7]) [0] == 0.7 and np.isnan(mean_interval([0.7])[1])
    assert np.isnan(mean_interval([np.nan, np.nan])[0])


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1), min_size=2, max_size=12))
def test_interval_contains_the_mean_and_matches_scipy(values):
    mean, low, high = mean_interval(values)
    assert low <= mean + 1e-12 and mean <= high + 1e-12
    if np.std(values) > 1e-9:
        lo, hi = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values),
                                  scale=stats.sem(values))
        assert (low, high) == pytest.approx((lo, hi), rel=1e-9, abs=1e-12)


def test_labels_to_reach_and_auc():
    labelled = [2000, 2020, 2040, 2060]
    acc = [0.40, 0.45, 0.44, 0.50]
    assert labels_to_reach(labelled, acc, 0.45) == 2020
    assert labels_to_reach(labelled, acc, 0.46) == 2060
    assert np.isnan(labels_to_reach(labelled, acc, 0.51))
    # trapezoid: (0.425 + 0.445 + 0.47) * 20 / 60
    assert normalised_auc(labelled, acc) == pytest.approx((0.425 + 0.445 + 0.47) / 3)


def _curves():
    """Two seeds; margin reaches random's final accuracy 2 steps early in both."""
    rows = []
    for seed, shift in ((0, 0.0), (1, 0.01)):
        for step in range(5):
            labelled = 100 + 10 * step
            rows.append(("random", seed, step, labelled, 0.40 + 0.05 * step + shift))
            rows.append(("margin", seed, step, labelled, 0.40 + 0.10 * min(step, 3) + shift))
    return pd.DataFrame(rows, columns=["variant", "seed", "step", "labelled", "accuracy"])


def test_savings_are_paired_per_seed():
    per_seed = seed_results(_curves())
    margin = per_seed[per_seed.variant == "margin"].set_index("seed")
    # random's final = 0.60 (+shift); margin gets there at step 2 (labelled 120) vs 140
    assert margin.loc[0, "labels_100"] == 120 and margin.loc[1, "labels_100"] == 120
    assert margin.loc[0, "saving_100"] == pytest.approx(1 - 120 / 140)
    summary = summarise(per_seed).set_index("variant")
    assert summary.loc["margin", "saving_100"] == pytest.approx(1 - 120 / 140)
    assert summary.loc["margin", "auc"] > summary.loc["random", "auc"]
    assert np.isnan(summary.loc["random", "auc_p_value"])
    table = summary_markdown(summary.reset_index())
    assert "| margin | 2 |" in table and "14.3" in table
