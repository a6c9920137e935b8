"""The correlation experiment: grouping and statistics on hand-built data (golden
numbers, no Ray), the shipped experiment file, and the smoke size end to end on Ray."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from alray.experiments.correlation import (across_seeds, cut_groups, group_means, group_seed,
                                          sample_candidates, seed_statistics, spearman_stats)
from alray.experiments.files import build_correlation, read_experiment
from alray.errors import ConfigError, EmptyPoolError

CONFIG = Path(__file__).parents[2] / "jobs" / "configs" / "correlation.yaml"


# --- pure parts: golden numbers -------------------------------------------------------
def test_cut_groups_sorts_by_loss_breaks_ties_by_id_and_is_disjoint():
    loss = np.array([0.5, 0.1, 0.9, 0.3, 0.7, 0.2])
    ids = np.array([10, 11, 12, 13, 14, 15])
    # sorted: 11 (0.1), 15 (0.2), 13 (0.3), 10 (0.5), 14 (0.7), 12 (0.9)
    assert cut_groups(loss, ids, 2).tolist() == [1, 0, 2, 1, 2, 0]
    np.testing.assert_allclose(group_means(loss, cut_groups(loss, ids, 2)), [0.15, 0.4, 0.8])
    tied = cut_groups(np.zeros(4), np.array([7, 3, 9, 1]), 2)
    assert tied.tolist() == [1, 0, 1, 0]  # equal losses: lower ids first
    with pytest.raises(ConfigError, match="groups of 4"):
        cut_groups(np.zeros(6), np.arange(6), 4)


def test_sample_candidates_excludes_initial_and_is_seeded():
    ids = np.arange(100, 0, -1)  # pool order must not matter
    labels = np.where(ids % 10 == 0, -1, 1)  # ids 10, 20, ... unlabelled
    initial = np.array([1, 2, 3])
    a = sample_candidates(ids, labels, initial, 50, seed=4)
    assert len(set(a)) == 50 and not set(a) & {1, 2, 3} and not any(a % 10 == 0)
    np.testing.assert_array_equal(a, sample_candidates(ids[::-1], labels[::-1], initial, 50, 4))
    assert set(a) != set(sample_candidates(ids, labels, initial, 50, seed=5))
    with pytest.raises(EmptyPoolError, match="87 labelled posts"):
        sample_candidates(ids, labels, initial, 88, seed=0)


def test_spearman_golden_numbers():
    # d = (-1, 1, -1, 1, 0): rho = 1 - 6 * 4 / (5 * 24) = 0.8; t = 2.3094 on 3 df
    s = spearman_stats(np.arange(1.0, 6.0), np.array([2.0, 1, 4, 3, 5]), seed=0)
    assert s["rho"] == pytest.approx(0.8)
    assert s["p_value"] == pytest.approx(0.104088, abs=1e-6)
    acc = np.array([0.50, 0.52, 0.51, 0.55, 0.53, 0.56, 0.54, 0.58])
    # sum d^2 = 12 over 8 points: rho = 1 - 72 / 504
    s = spearman_stats(acc, np.arange(8.0), seed=0)
    assert s["rho"] == pytest.approx(1 - 72 / 504)
    assert s["p_value"] == pytest.approx(0.0065300, abs=1e-7)
    # the seeded bootstrap interval (regression numbers of alray.seeds' "correlation/
    # bootstrap" stream), mirrored for the reversed x
    assert (s["low"], s["high"]) == pytest.approx((0.3164557, 1.0), abs=1e-6)
    r = spearman_stats(acc, -np.arange(8.0), seed=0)
    assert (r["rho"], r["low"], r["high"]) == pytest.approx((-s["rho"], -1.0, -s["low"]))
    # a constant accuracy has no rank correlation: NaN, never patched
    assert np.isnan(spearman_stats(np.ones(5), np.arange(5.0), seed=0)["rho"])


def test_bootstrap_resamples_agree_with_scipy():
    from scipy.stats import spearmanr

    from alray.experiments.stats import rowwise_spearman

    rng = np.random.default_rng(1)
    y, x = rng.random(30), rng.random(30).round(1)  # ties in x
    draw = rng.integers(0, 30, (20, 30))
    expected = [spearmanr(y[d], x[d])[0] for d in draw]
    np.testing.assert_allclose(rowwise_spearman(y[draw], x[draw]), expected)


def test_seed_and_across_seed_statistics_golden():
    groups = {"accuracy": np.array([0.50, 0.52, 0.51, 0.55, 0.53, 0.56, 0.54, 0.58]),
              "mean_loss": np.arange(8.0), "mean_margin": -np.arange(8.0)}
    rows = seed_statistics(groups, seed=0)
    assert [r["pair"] for r in rows] == ["loss", "margin"]
    assert rows[0]["rho"] == pytest.approx(-rows[1]["rho"])
    # one shared resample draw: the two intervals mirror each other exactly
    assert rows[1]["low"] == pytest.approx(-rows[0]["high"])
    per_seed = ([{"pair": "loss", "rho": r} for r in (-0.2, -0.1, 0.0)]
                + [{"pair": "margin", "rho": r} for r in (0.3, 0.1, 0.2)])
    loss, margin = across_seeds(per_seed)
    # mean -0.1, sd 0.1, t(2, 0.975) = 4.3027: half-width 0.24841
    assert (loss["rho"], loss["low"], loss["high"]) == pytest.approx((-0.1, -0.348414, 0.148414),
                                                                     abs=1e-6)
    assert loss["p_value"] == pytest.approx(0.225403, abs=1e-6)  # t = -1.732 on 2 df
    assert margin["seeds"] == 3 and margin["low"] < margin["rho"] < margin["high"]
    assert len({group_seed(0, g) for g in range(100)} | {group_seed(1, 0)}) == 101


# --- the shipped file and the command's options ---------------------------------------
def test_shipped_config_parses_at_full_and_smoke_size(tmp_path):
    from alray.experiments.correlation import check_sizes

    data = read_experiment(CONFIG)
    assert data["kind"] == "correlation" and data["description"]
    full = data["set"]
    assert (full["initial"], full["candidates"], full["group_size"]) == (2000, 10_000, 100)
    assert len(data["seeds"]) == 5
    check_sizes(full["initial"], full["candidates"], full["group_size"], data["seeds"])
    smoke = build_correlation(data, {"out": str(tmp_path), "smoke": True,
                                     "set": ("train.fine_tune_epochs=1",),
                                     "group_size": 40})
    assert (smoke["initial"], smoke["candidates"], smoke["group_size"]) == (100, 400, 40)
    assert smoke["seeds"] == (0, 1) and smoke["train"].epochs == 20
    assert smoke["model"].n_classes == 10 and smoke["model"].modality_dims["image"] == 64


def test_wrong_kind_and_bad_sizes_are_refused(tmp_path):
    from alray.experiments.correlation import check_sizes

    with pytest.raises(ConfigError, match="kind 'sweep'"):
        build_correlation({"kind": "sweep"}, {"out": str(tmp_path)})
    with pytest.raises(ConfigError, match="kind 'sweep'"):  # a file without kind: a sweep
        build_correlation(read_experiment(CONFIG.parent / "uncertainty.yaml"),
                          {"out": str(tmp_path)})
    with pytest.raises(ConfigError, match="multiple of group_size"):  # before any work
        build_correlation({}, {"out": str(tmp_path), "pool": "nowhere", "val": "nowhere",
                               "candidates": 450})
    with pytest.raises(ConfigError, match="candidates must be an integer"):
        check_sizes(100, "400", 100, [0])
    with pytest.raises(ConfigError, match="multiple of group_size"):
        check_sizes(100, 450, 100, [0])
    with pytest.raises(ConfigError, match="at least 3"):
        check_sizes(100, 200, 100, [0])
    with pytest.raises(ConfigError, match="distinct"):
        check_sizes(100, 400, 100, [0, 0])


# --- end to end on Ray ----------------------------------------------------------------
def test_smoke_correlation_end_to_end(tmp_path, ray_session):
    from alray.experiments.correlation import run_correlation
    from alray.pool.load import sample_labelled_ids

    from alray.experiments.correlation_report import write_outputs

    kwargs = build_correlation(read_experiment(CONFIG), {"out": str(tmp_path), "smoke": True})
    out = Path(kwargs.pop("out"))
    result = run_correlation(**kwargs)
    assert not (out / "summary.md").exists()  # computing writes nothing
    write_outputs(result, out)
    n, size = kwargs["candidates"], kwargs["group_size"]
    n_groups = n // size
    posts = result["posts"]
    for seed in kwargs["seeds"]:
        mine = posts["seed"] == seed
        ids, group = posts["id"][mine], posts["group"][mine]
        initial = result["initial"][seed]
        # the loop's initial set for this seed (paired with a sweep of the same seed)
        np.testing.assert_array_equal(np.sort(initial), np.sort(sample_labelled_ids(
            kwargs["pool_uri"], kwargs["columns"], kwargs["initial"], seed)))
        assert len(ids) == n and len(set(ids)) == n  # every candidate once ...
        assert not set(ids) & set(initial)  # ... none in the initial set
        assert np.bincount(group).tolist() == [size] * n_groups  # disjoint, equal groups
        rows = sorted((g for g in result["groups"] if g["seed"] == seed),
                      key=lambda g: g["group"])
        assert [g["group"] for g in rows] == list(range(n_groups))
        means = [g["mean_loss"] for g in rows]
        assert means == sorted(means)
        # sorted by loss: a group's largest loss is at most the next group's smallest
        assert all(a["max_loss"] <= b["min_loss"] for a, b in zip(rows, rows[1:]))
        assert all(0.0 <= g["accuracy"] <= 1.0 for g in rows)
        margins = posts["margin"][mine]
        assert (margins >= 0).all() and (margins <= 1).all()
    assert len(set(map(tuple, (np.sort(v) for v in result["initial"].values())))) == 2
    assert len(result["per_seed"]) == 2 * len(kwargs["seeds"])
    for row in result["summary"]:
        assert row["seeds"] == len(kwargs["seeds"])
        assert row["low"] <= row["rho"] <= row["high"]
    for name in ("groups.parquet", "posts.parquet", "summary.json", "summary.md",
                 "correlation.png"):
        assert os.path.getsize(out / name) > 0
    assert pq.read_table(out / "groups.parquet").num_rows == len(kwargs["seeds"]) * n_groups
    summary = (out / "summary.md").read_text()
    assert "-0.2518" in summary and "accuracy vs margin" in summary
    assert not [f for f in os.listdir(out) if ".tmp" in f]
