"""Acquisition functions and the strategy registry: golden rankings and properties."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from hypothesis.extra import numpy as hnp

from alray.acquisition import (
    ORACLE_NAMES, STRATEGY_NAMES, bald, check_probs, compute_scores, entropy,
    get_strategy, least_confident, margin, needs_of, predicted_loss, random_scores,
    reverse_true_loss, true_loss)
from alray.acquisition.functions import BALD_ROUNDING_TOL
from alray.errors import ConfigError, LabelsError

# the study's example: least confident prefers B, margin prefers A
STUDY = np.array([[0.5, 0.49, 0.01], [0.49, 0.255, 0.255]])


def _probs_strategy(max_rows=20, max_classes=8):
    shapes = st.tuples(st.integers(1, max_rows), st.integers(2, max_classes))
    raw = shapes.flatmap(lambda s: hnp.arrays(np.float64, s, elements=st.floats(0, 1)))
    return raw.map(lambda a: (a + 1e-9) / (a + 1e-9).sum(axis=1, keepdims=True))


def _mc(samples):
    """(n, s, c) MC samples -> (mean probs (n, c), mean entropy (n,))."""
    logs = np.log(np.where(samples > 0, samples, 1.0))
    return samples.mean(axis=1), -(samples * logs).sum(axis=2).mean(axis=1)


def test_study_example_least_confident_and_margin_disagree():
    assert np.argmax(least_confident(STUDY)) == 1
    assert np.argmax(margin(STUDY)) == 0
    np.testing.assert_allclose(least_confident(STUDY), [0.5, 0.51])
    np.testing.assert_allclose(margin(STUDY), [-0.01, -0.235])


def test_golden_entropy_ranking():
    probs = np.array([[1.0, 0.0, 0.0], [0.8, 0.1, 0.1], [0.5, 0.5, 0.0], [1 / 3] * 3])
    scores = entropy(probs)
    assert list(np.argsort(-scores)) == [3, 2, 1, 0]
    np.testing.assert_allclose(scores[[0, 2, 3]], [0.0, np.log(2), np.log(3)])


@settings(max_examples=60, deadline=None)
@given(_probs_strategy())
def test_scores_finite_bounded_and_entropy_max_at_uniform(probs):
    c = probs.shape[1]
    for fn in (least_confident, margin, entropy):
        scores = fn(probs)
        assert scores.shape == (len(probs),) and scores.dtype == np.float64
        assert np.isfinite(scores).all()
    assert (entropy(probs) <= np.log(c) + 1e-9).all()
    uniform = np.full((1, c), 1.0 / c)
    assert entropy(uniform)[0] >= entropy(probs).max() - 1e-9
    assert least_confident(uniform)[0] >= least_confident(probs).max() - 1e-9
    assert margin(uniform)[0] >= margin(probs).max() - 1e-9


@settings(max_examples=40, deadline=None)
@given(_probs_strategy(), st.randoms(use_true_random=False))
def test_invariant_to_class_order(probs, rnd):
    perm = np.array(rnd.sample(range(probs.shape[1]), probs.shape[1]))
    labels = np.arange(len(probs)) % probs.shape[1]
    inverse = np.argsort(perm)  # column perm[j] moves to j, so label y moves to inverse[y]
    for fn in (least_confident, margin, entropy):
        np.testing.assert_allclose(fn(probs[:, perm]), fn(probs), atol=1e-12)
    np.testing.assert_allclose(true_loss(probs[:, perm], inverse[labels]),
                               true_loss(probs, labels), atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float64, st.tuples(st.integers(1, 6), st.integers(1, 5),
                                         st.integers(2, 5)), elements=st.floats(0, 1)))
def test_bald_nonnegative(raw):
    samples = (raw + 1e-6) / (raw + 1e-6).sum(axis=2, keepdims=True)
    scores = bald(*_mc(samples))
    assert (scores >= 0).all() and np.isfinite(scores).all()


def test_bald_zero_when_samples_agree_and_positive_when_they_disagree():
    agree = np.repeat(np.array([[[0.7, 0.2, 0.1]], [[0.3, 0.3, 0.4]]]), 5, axis=1)
    np.testing.assert_allclose(bald(*_mc(agree)), 0.0, atol=1e-12)
    disagree = np.array([[[1.0, 0.0], [0.0, 1.0]]])  # confident, contradicting members
    np.testing.assert_allclose(bald(*_mc(disagree)), np.log(2))


def test_bald_rounding_clipped_but_real_negative_raises():
    mean_probs = np.array([[0.5, 0.5]])
    assert bald(mean_probs, [np.log(2) + BALD_ROUNDING_TOL / 2])[0] == 0.0
    with pytest.raises(ValueError, match="same MC samples"):
        bald(mean_probs, [np.log(2) + 0.1])


@pytest.mark.parametrize("bad, what", [
    (np.array([0.5, 0.5]), "shape"),
    (np.array([[0.5, np.nan]]), "NaN"),
    (np.array([[2.0, -1.0]]), "outside"),
    (np.array([[0.5, 0.4]]), "sum to 1"),
    (np.array([[3.2, 1.1, -0.4]]), "logits"),
])
def test_non_probabilities_rejected(bad, what):
    for fn in (least_confident, margin, entropy):
        with pytest.raises(ValueError, match=f"not probabilities.*{what}"):
            fn(bad)


def test_float32_rows_accepted():
    probs = np.random.default_rng(0).dirichlet(np.ones(7), size=1000).astype(np.float32)
    assert check_probs(probs).dtype == np.float64


def test_true_loss_and_reverse():
    probs = np.array([[0.9, 0.1], [0.2, 0.8], [1.0, 0.0]])
    loss = true_loss(probs, np.array([0, 0, 1]))
    np.testing.assert_allclose(loss[:2], [-np.log(0.9), -np.log(0.2)])
    assert np.isfinite(loss[2]) and loss[2] == loss.max()  # p = 0 clamped, finite
    np.testing.assert_array_equal(reverse_true_loss(probs, np.array([0, 0, 1])), -loss)
    with pytest.raises(ValueError, match="outside"):
        true_loss(probs, np.array([0, 2, 1]))


def test_oracle_without_labels_is_a_labels_error():
    with pytest.raises(LabelsError, match="ideal_loss needs true labels; 2 posts"):
        compute_scores("ideal_loss", {"probs": STUDY, "labels": np.array([-1, -1])})
    assert set(ORACLE_NAMES) == {"ideal_loss", "reverse_ideal_loss"}
    assert get_strategy("ideal_loss").oracle and not get_strategy("margin").oracle


def test_predicted_loss_identity_and_checks():
    np.testing.assert_array_equal(predicted_loss(np.array([[0.3], [-1.0]])), [0.3, -1.0])
    with pytest.raises(ValueError, match="NaN"):
        predicted_loss(np.array([0.1, np.nan]))


def test_random_scores_independent_of_batching_and_seeded():
    for ids in (np.arange(-50, 950, dtype=np.int64), np.array([f"post-{i}" for i in range(1000)],
                                                                dtype=object)):
        whole = random_scores(ids, seed=3)
        parts = np.concatenate([random_scores(ids[a:b], seed=3)
                                for a, b in [(0, 7), (7, 500), (500, 1000)]])
        np.testing.assert_array_equal(whole, parts)
        np.testing.assert_array_equal(random_scores(ids[::-1], 3), whole[::-1])
        other = random_scores(ids, seed=4)
        assert (other != whole).mean() > 0.99
        assert ((whole >= 0) & (whole < 1)).all() and 0.4 < whole.mean() < 0.6
    np.testing.assert_array_equal(random_scores(np.array(["a", "b"]), 1),
                                  random_scores(np.array(["a", "b"], dtype=object), 1))


def test_registry_every_strategy_computes():
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.ones(4), size=30)
    samples = rng.dirichlet(np.ones(4), size=(30, 5))
    mean_probs, mean_entropy = _mc(samples)
    inputs = {"probs": probs, "mc_mean_probs": mean_probs, "mc_mean_entropy": mean_entropy,
              "loss_pred": rng.normal(size=30), "labels": rng.integers(0, 4, 30),
              "ids": np.arange(30), "seed": 0,
              "head_probs": rng.dirichlet(np.ones(4), size=(30, 3)),
              "head_present": np.ones((30, 3), bool)}
    assert len(STRATEGY_NAMES) == 12
    for name in STRATEGY_NAMES:
        scores = compute_scores(name, inputs)
        assert scores.shape == (30,) and np.isfinite(scores).all(), name
    np.testing.assert_array_equal(compute_scores("qbc_margin", inputs), margin(mean_probs))
    with pytest.raises(ValueError, match="needs inputs mc_mean_probs"):
        compute_scores("bald", {"probs": probs})


def test_unknown_strategy_lists_valid_names():
    with pytest.raises(ConfigError, match="unknown strategy 'marginn'.*valid:.*margin"):
        get_strategy("marginn")
    with pytest.raises(ConfigError, match="'x', 'y'"):
        needs_of(["margin", "x", "y"])


def test_needs_union():
    assert needs_of(["margin", "entropy"]) == {"probs"}
    assert needs_of(["bald", "qbc_entropy", "ideal_loss", "random"]) == {
        "mc", "labels", "probs", "ids"}


def test_import_pulls_no_ray_torch_or_pandas():
    code = ("import sys, alray.acquisition; "
            "print(sorted({'ray', 'torch', 'pandas'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"
