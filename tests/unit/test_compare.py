"""alray.experiments.compare on small hand-made curves whose answers are worked by hand."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from alray.experiments.compare import (
    POOLED, add_pooled, baseline_plan, compare_sweep, paired_comparisons, reference_of,
    seed_results, summarise)
from alray.experiments.stats import AT_LEAST, AT_MOST, EXACT, UNDEFINED

X = (2000, 2500, 3000)  # labelled at steps 0, 1, 2


def _curves(arms: dict[str, list[list[float]]]) -> pd.DataFrame:
    """variant -> one accuracy curve per seed (seed = position)."""
    rows = [(variant, seed, step, X[step], acc)
            for variant, per_seed in arms.items() for seed, curve in enumerate(per_seed)
            for step, acc in enumerate(curve)]
    return pd.DataFrame(rows, columns=["variant", "seed", "step", "labelled", "accuracy"])


CENSORED = _curves({
    "random": [[0.40, 0.50, 0.49]] * 3,
    # seed 0 never reaches random's final 0.49; seeds 1 and 2 do, early
    "margin": [[0.40, 0.44, 0.48], [0.40, 0.58, 0.60], [0.40, 0.58, 0.60]],
})


def test_a_seed_that_never_reaches_is_censored_not_dropped():
    per_seed = seed_results(CENSORED).set_index(["variant", "seed"])
    # random reaches 0.49 between 2000 (0.40) and 2500 (0.50): 2000 + 0.9 * 500 = 2450
    # margin (seeds 1, 2): 2000 + 0.09 / 0.18 * 500 = 2250 -> saving 1 - 2250/2450
    assert per_seed.loc[("margin", 1), "labels_100"] == pytest.approx(2250)
    assert per_seed.loc[("margin", 1), "saving_100"] == pytest.approx(1 - 2250 / 2450)
    # seed 0: not by 3,000 -> the saving is at most 1 - 3000/2450
    assert np.isnan(per_seed.loc[("margin", 0), "labels_100"])
    assert per_seed.loc[("margin", 0), "saving_100_kind"] == AT_MOST
    assert per_seed.loc[("margin", 0), "saving_100"] == pytest.approx(1 - 3000 / 2450)
    summary = summarise(per_seed.reset_index()).set_index("variant")
    m = summary.loc["margin"]
    assert m["seeds"] == 3 and m["reached_100"] == 2 and m["saving_100_n"] == 3
    bound = (2 * (1 - 2250 / 2450) + (1 - 3000 / 2450)) / 3  # -2.0%, though 2 seeds say +8.2%
    assert m["saving_100_kind"] == AT_MOST and m["saving_100"] == pytest.approx(bound)
    assert bound < 0 < 1 - 2250 / 2450
    assert np.isnan(m["saving_100_low"])
    # labels: censored at the horizon, so their mean is a lower bound
    assert m["labels_100_kind"] == AT_LEAST
    assert m["labels_100"] == pytest.approx((2250 * 2 + 3000) / 3)
    # 95% target 0.4655 is reached by every seed: an exact mean with an interval
    assert m["reached_95"] == 3 and m["saving_95_kind"] == EXACT
    assert np.isfinite(m["saving_95_low"])
    # the random baseline is not compared with itself
    assert summary.loc["random", "role"] == "baseline"
    assert summary.loc["random", "saving_100_kind"] == UNDEFINED


def test_targets_met_at_step_zero_are_undefined_and_one_seed_has_no_interval():
    curves = _curves({"random": [[0.50, 0.45, 0.48]], "margin": [[0.50, 0.47, 0.55]]})
    per_seed = seed_results(curves).set_index("variant")
    # random's final 0.48: every share is met at step 0 (0.50) -> nothing to save
    for p in (95, 98, 99, 100):
        assert per_seed.loc["margin", f"saving_{p}_kind"] == UNDEFINED
        assert np.isnan(per_seed.loc["margin", f"saving_{p}"])
    summary = summarise(per_seed.reset_index()).set_index("variant")
    assert summary.loc["margin", "saving_100_kind"] == UNDEFINED
    # one seed: a value, no interval
    assert summary.loc["margin", "final"] == 0.55 and np.isnan(summary.loc["margin", "final_low"])


def test_one_plain_random_baseline_class_balance_is_a_variant():
    variants = ["margin class_balance=0.0", "margin class_balance=0.05",
                "random class_balance=0.0", "random class_balance=0.05"]
    arms, base = baseline_plan(variants)
    assert arms == {"random class_balance=0.0": ("random class_balance=0.0",)}
    # before: margin with balance was paired with random with balance (not passive)
    assert base["margin class_balance=0.05"] == "random class_balance=0.0"
    assert base["random class_balance=0.05"] == "random class_balance=0.0"
    # learner options must match; no plain random arm: no baseline, never a fallback
    arms, base = baseline_plan(["bald freeze_batchnorm=True", "random freeze_batchnorm=False",
                                "random freeze_batchnorm=True"])
    assert base["bald freeze_batchnorm=True"] == "random freeze_batchnorm=True"
    assert baseline_plan(["margin", "random class_balance=0.05"])[1]["margin"] is None


def test_random_arms_that_differ_only_in_sampling_are_pooled_per_seed():
    curves = _curves({"random sampling=top": [[0.40, 0.50, 0.50], [0.40, 0.46, 0.52]],
                      "random sampling=softmax": [[0.40, 0.46, 0.48], [0.40, 0.50, 0.50]],
                      "margin sampling=softmax": [[0.40, 0.55, 0.60], [0.40, 0.55, 0.60]]})
    arms, base = baseline_plan(curves["variant"].unique())
    assert arms == {POOLED: ("random sampling=softmax", "random sampling=top")}
    assert base["margin sampling=softmax"] == POOLED
    pooled = add_pooled(curves, arms)
    pooled = pooled[pooled["variant"] == POOLED].set_index(["seed", "step"])["accuracy"]
    assert pooled[(0, 1)] == pytest.approx(0.48) and pooled[(1, 2)] == pytest.approx(0.51)
    result = compare_sweep(curves)
    per_seed = result["per_seed"].set_index(["variant", "seed"])
    # seed 0: pooled [0.40, 0.48, 0.49], target 0.49 at 3000; margin at 2000 + 0.09/0.15*500
    assert per_seed.loc[("margin sampling=softmax", 0), "saving_100"] == pytest.approx(
        1 - 2300 / 3000)
    roles = result["summary"].set_index("variant")["role"]
    assert roles["random sampling=top"] == "pooled into the baseline"
    assert list(result["vs_random"]["variant"]) == ["margin sampling=softmax"]


def test_smoothed_passive_curve():
    curves = _curves({"random": [[0.40, 0.50, 0.46], [0.40, 0.48, 0.50]],
                      "margin": [[0.40, 0.49, 0.52], [0.40, 0.45, 0.47]]})
    result = compare_sweep(curves)
    passive = result["passive"]["random"]
    # mean (0.40, 0.49, 0.48) -> isotonic (0.40, 0.485, 0.485): plateau 0.485 at 2500
    np.testing.assert_allclose(passive["fit"], [0.40, 0.485, 0.485])
    assert passive["final"] == pytest.approx(0.485)
    assert passive["labels"][100] == pytest.approx(2500)
    per_seed = result["per_seed"].set_index(["variant", "seed"])
    # margin seed 0 reaches 0.485 at 2000 + 0.085/0.09 * 500; seed 1 (0.45 -> 0.47) never
    # does: censored at 3,000, at most 1 - 3000/2500
    assert per_seed.loc[("margin", 0), "smooth_saving_100"] == pytest.approx(
        1 - (2000 + 0.085 / 0.09 * 500) / 2500)
    assert per_seed.loc[("margin", 1), "smooth_saving_100_kind"] == AT_MOST
    assert per_seed.loc[("margin", 1), "smooth_saving_100"] == pytest.approx(1 - 3000 / 2500)
    # random's own seeds are measured against it too (its role is baseline)
    assert per_seed.loc[("random", 1), "smooth_saving_100_kind"] == EXACT


def test_paired_comparisons_against_random_and_a_reference_with_holm():
    seeds = range(5)
    auc = {"random": [0.50, 0.51, 0.49, 0.50, 0.52],
           "margin": [0.53, 0.54, 0.52, 0.52, 0.55],
           "entropy": [0.52, 0.55, 0.51, 0.53, 0.54]}
    per_seed = pd.DataFrame([{"variant": v, "seed": s, "auc": a[s]} for v, a in auc.items()
                             for s in seeds])
    vs_random = paired_comparisons(per_seed, {"margin": "random", "entropy": "random"})
    vs_random = vs_random.set_index("variant")
    # every seed ahead: the exact sign-flip p is its floor 2/32; Holm over 2 rows: 2 x
    # the smaller p, then max(that, 1 x the next): 0.125 for both
    assert vs_random.loc["margin", "p_flip"] == pytest.approx(2 / 32)
    assert vs_random.loc["margin", "ahead"] == 5
    assert vs_random.loc["margin", "diff"] == pytest.approx(0.028)
    assert vs_random.loc["entropy", "p_flip"] == pytest.approx(2 / 32)
    assert vs_random["holm_flip"].tolist() == pytest.approx([4 / 32, 4 / 32])
    ps = vs_random["p_t"].to_numpy()
    assert vs_random["holm_t"].min() == pytest.approx(2 * ps.min())
    vs_margin = paired_comparisons(
        per_seed, {v: reference_of(v, auc, "margin") for v in ("margin", "entropy")})
    assert vs_margin["variant"].tolist() == ["entropy"]
    # entropy - margin = (-0.01, 0.01, -0.01, 0.01, -0.01): mean -0.002
    row = vs_margin.iloc[0]
    assert row["against"] == "margin" and row["diff"] == pytest.approx(-0.002)
    assert row["ahead"] == 2 and row["p_flip"] > 0.5


def test_reference_of():
    variants = ["margin class_balance=0.0", "margin class_balance=0.05",
                "entropy class_balance=0.05", "bald"]
    # the reference is plain margin: does this variant (option) beat it?
    assert reference_of("entropy class_balance=0.05", variants) == "margin class_balance=0.0"
    assert reference_of("margin class_balance=0.05", variants) == "margin class_balance=0.0"
    assert reference_of("bald", variants) == "margin class_balance=0.0"
    assert reference_of("margin class_balance=0.0", variants) is None  # itself
    assert reference_of("bald", variants, "margin class_balance=0.05") == \
        "margin class_balance=0.05"  # a named reference is taken as it is
    assert reference_of("bald", ["margin", "bald"]) == "margin"
    # a learner option is shared: frozen batch norm is compared with frozen margin
    frozen = ["margin freeze_batchnorm=True", "margin freeze_batchnorm=False",
              "bald freeze_batchnorm=True"]
    assert reference_of("bald freeze_batchnorm=True", frozen) == "margin freeze_batchnorm=True"


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.floats(0.3, 0.7), min_size=4, max_size=4), min_size=1, max_size=4),
       st.lists(st.floats(0.0, 0.1), min_size=4, max_size=4))
def test_a_curve_never_below_random_never_loses_labels(random_curves, lift):
    """Pointwise at or above random in every seed: every saving is >= 0 (or n/a), never
    censored; the same curve as random saves exactly 0 or n/a."""
    xs = (2000, 2500, 3000, 3500)
    rows = []
    for seed, curve in enumerate(random_curves):
        for step, acc in enumerate(curve):
            rows.append(("random", seed, step, xs[step], acc))
            rows.append(("margin", seed, step, xs[step], acc + lift[step]))
            rows.append(("entropy", seed, step, xs[step], acc))
    per_seed = seed_results(pd.DataFrame(rows, columns=["variant", "seed", "step", "labelled",
                                                        "accuracy"]))
    for p in (95, 98, 99, 100):
        margin = per_seed[per_seed["variant"] == "margin"]
        assert AT_MOST not in set(margin[f"saving_{p}_kind"])
        assert (margin[f"saving_{p}"].dropna() >= -1e-9).all()
        same = per_seed[per_seed["variant"] == "entropy"]
        assert set(same[f"saving_{p}_kind"]) <= {EXACT, UNDEFINED}
        np.testing.assert_allclose(same[f"saving_{p}"].dropna(), 0.0, atol=1e-12)
