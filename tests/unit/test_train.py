"""fit / fine_tune / evaluate / predict in plain torch (no Ray)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score

from alray.config import ModelConfig, TrainConfig
from alray.model import FusionNet, load_checkpoint, load_train_state, save_checkpoint
from alray.pool.arrays import PostArrays
from alray.train import (
    Trainer, adaptive_batch_size, classification_metrics, epoch_batches, evaluate,
    fine_tune, fit, predict_loss, predict_probs, set_train_mode)

CFG = ModelConfig(modality_dims={"image": 12, "text": 8},
                  branch_widths={"image": (16, 8), "text": (8,)},
                  fused_widths=(16,), n_classes=3)
FAST = TrainConfig(epochs=3, batch_size=64, seed=4)




def make_data(n=300, seed=0, config=CFG, absent=0.3, signal=1.5) -> PostArrays:
    """Class-dependent Gaussian embeddings with missing modalities."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, config.n_classes, n)
    feats, pres = {}, {}
    for m, dim in config.modality_dims.items():
        pres[m] = rng.random(n) >= absent
        x = rng.normal(size=(n, dim))
        x[:, :config.n_classes] += signal * np.eye(config.n_classes)[labels]
        feats[m] = (x * pres[m][:, None]).astype(np.float32)
    first = config.modalities[0]
    pres[first] |= ~np.any(np.stack(list(pres.values())), axis=0)
    return PostArrays(ids=np.arange(n), features=feats, present=pres, labels=labels)


def build(config=CFG, seed=0) -> FusionNet:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return FusionNet(config)


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("n, expected", [
    (100, 100), (511, 511), (512, 512), (1023, 1023), (1024, 512),
    (2000, 666), (2047, 682), (100000, 512)])
def test_adaptive_batch_size_table(n, expected):
    # e.g. 2000 = 3 * 512 + 464 -> 512 + 464 // 3 = 666; 100000 = 195 * 512 + 160 -> 512
    assert adaptive_batch_size(n, 512) == expected


def test_adaptive_batch_size_rejects_empty():
    with pytest.raises(ValueError, match="needs n >= 1 rows, got 0"):
        adaptive_batch_size(0, 512)
    with pytest.raises(ValueError, match="batch size must be >= 1, got 0"):
        adaptive_batch_size(10, 0)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(1, 50000), b=st.integers(1, 1024))
def test_epoch_batches_cover_every_row(n, b):
    sizes = epoch_batches(n, b, adaptive=True)
    assert sum(sizes) == n
    assert max(sizes) - min(sizes) <= 1
    assert min(sizes) >= min(n, b)  # never a batch smaller than b (unless n < b)
    fixed = epoch_batches(n, b, adaptive=False)
    assert sum(fixed) == n and all(s == b for s in fixed[:-1])


def test_fit_is_bitwise_reproducible_and_leaves_global_rng_alone():
    data = make_data()
    state = torch.random.get_rng_state()
    a, b = build(), build()
    fit(a, data, FAST)
    fit(b, data, FAST)
    assert torch.equal(state, torch.random.get_rng_state())
    wa, wb = weights(a), weights(b)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = build()
    fit(c, data, FAST.replace(seed=5))
    assert not torch.equal(wa["fused_head.weight"], c.state_dict()["fused_head.weight"])


def test_fit_rejects_unlabelled_rows():
    data = make_data(n=50)
    data.labels[3] = -1
    with pytest.raises(ValueError, match="unlabelled"):
        fit(build(), data, FAST)


@pytest.mark.parametrize("heads", ["multi", "fused"])
def test_toy_fit_reduces_loss_and_learns(heads):
    cfg = CFG.replace(heads=heads)
    data = make_data(n=400, signal=2.5)
    model = build(cfg)
    seen = []
    history = fit(model, data, FAST.replace(epochs=12, lr=1e-2),
                  progress=lambda e, n, loss: seen.append((e, n)))
    assert seen == [(e, 12) for e in range(1, 13)]
    assert history[-1]["loss"] < history[0]["loss"]
    assert set(history[0]["heads"]) == set(model.head_names)
    held_out = make_data(n=400, seed=7, signal=2.5)
    assert evaluate(model, held_out)["fused"]["accuracy"] > 0.75  # chance: 1/3
    assert not model.training


def test_frozen_batchnorm_keeps_statistics_and_unfrozen_changes_them():
    data = make_data(n=200)
    trainer = Trainer.create(build(), FAST)
    fit(trainer, data, FAST)
    model = trainer.model
    stats = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    before = weights(model)
    new = make_data(n=120, seed=9, signal=3.0)
    fine_tune(trainer, new, FAST.replace(freeze_batchnorm=True), step_seed=1)
    after = model.state_dict()
    assert all(torch.equal(stats[k], after[k]) for k in stats)
    assert not torch.equal(before["fused_head.weight"], after["fused_head.weight"])
    fine_tune(trainer, new, FAST, step_seed=2)
    assert all(not torch.equal(stats[k], model.state_dict()[k])
               for k in stats if "running_mean" in k)


def test_fixed_batches_with_a_one_row_remainder_train():
    data = make_data(n=129)  # 2 batches of 64 and one of 1 (the ablation)
    history = fit(build(), data, FAST.replace(adaptive_batch=False, epochs=1))
    assert history[0]["n_batches"] == 3 and np.isfinite(history[0]["loss"])
    history = fit(build(), data, FAST.replace(epochs=1))
    assert history[0]["batch_sizes"] == [65, 64]


def test_trainer_state_round_trips_through_a_checkpoint(tmp_path):
    data = make_data(n=100)
    trainer = Trainer.create(build(), FAST)
    fit(trainer, data, FAST)
    save_checkpoint(tmp_path / "ck", trainer.model, CFG, train_state=trainer.state_dict())
    model, _, _ = load_checkpoint(tmp_path / "ck")
    resumed = Trainer.create(model, FAST, state=load_train_state(tmp_path / "ck"))
    fine_tune(trainer, data, FAST, step_seed=3)
    fine_tune(resumed, data, FAST, step_seed=3)
    a, b = weights(trainer.model), weights(resumed.model)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(trainer.loss.log_vars, resumed.loss.log_vars)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_metrics_equal_sklearn(draw):
    c = draw.draw(st.integers(2, 6))
    n = draw.draw(st.integers(1, 60))
    y = np.array(draw.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    p = np.array(draw.draw(st.lists(st.integers(0, c - 1), min_size=n, max_size=n)))
    ours = classification_metrics(y, p, c)
    assert ours["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert ours["macro_f1"] == pytest.approx(f1_score(y, p, average="macro", zero_division=0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "y_pred contains classes not in y_true"
        expected = balanced_accuracy_score(y, p)
    assert ours["balanced_accuracy"] == pytest.approx(expected)


def test_evaluate_masks_modality_heads_and_predict_is_batched():
    data = make_data(n=90)
    model = build()
    fit(model, data, FAST.replace(epochs=1))
    result = evaluate(model, data, batch_size=16)
    assert result["image"]["n"] == int(data.present["image"].sum())
    assert result["fused"]["n"] == 90
    whole = predict_probs(model, data, heads=("fused", "text"))
    parts = predict_probs(model, data, heads=("fused", "text"), batch_size=7)
    assert whole["fused"].shape == (90, 3)
    assert np.allclose(whole["text"], parts["text"], atol=1e-6)
    with pytest.raises(ValueError, match="unknown heads"):
        predict_probs(model, data, heads=("audio",))


def _concordance(score: np.ndarray, truth: np.ndarray) -> float:
    """Share of row pairs ordered the same way by both (ties in truth skipped)."""
    ds = np.sign(score[:, None] - score[None, :])
    dt = np.sign(truth[:, None] - truth[None, :])
    valid = dt != 0
    return float((ds[valid] == dt[valid]).mean())


def test_learning_loss_ranks_better_than_chance():
    cfg = ModelConfig(modality_dims={"x": 6}, branch_widths={"x": (16,)},
                      fused_widths=(16,), n_classes=2, dropout=0.1, heads="fused",
                      learning_loss=True, learning_loss_width=16)
    rng = np.random.default_rng(3)

    def toy(n):  # the label is the sign of x0, flipped with probability falling in |x0|
        x = rng.normal(size=(n, 6)).astype(np.float32)
        flip = rng.random(n) < 0.5 * np.exp(-2 * np.abs(x[:, 0]))
        y = ((x[:, 0] > 0) ^ flip).astype(np.int64)
        return PostArrays(ids=np.arange(n), features={"x": x},
                          present={"x": np.ones(n, bool)}, labels=y)

    train, test = toy(1500), toy(400)
    model = build(cfg)
    history = fit(model, train, TrainConfig(epochs=20, batch_size=128, seed=0))
    assert "ranking_loss" in history[-1]
    logits = torch.log(torch.from_numpy(predict_probs(model, test)["fused"]))
    truth = torch.nn.functional.nll_loss(logits, torch.from_numpy(test.labels),
                                         reduction="none").numpy()
    assert _concordance(predict_loss(model, test), truth) > 0.7  # chance: 0.5; seen ~0.83


def test_frozen_mode_keeps_dropout_on_and_trainer_checks_weighting():
    model = build()
    set_train_mode(model, freeze_batchnorm=True)
    assert all(not b.bn.training and b.dropout.training for _, b in model.block_names())
    trainer = Trainer.create(model, FAST)
    with pytest.raises(ValueError, match="loss weighting"):
        fine_tune(trainer, make_data(n=20), FAST.replace(loss_weighting="equal"), 0)
