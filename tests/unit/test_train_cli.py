"""`alray train`: a passive model from pool labels or an assessors' file."""
from __future__ import annotations

import numpy as np
from click.testing import CliRunner

from alray.cli import main
from alray.model import load_checkpoint
from alray.pool.load import load_rows, sample_labelled_ids
from alray.config import PoolConfig
from tests.conftest import make_pool_table, write_pool


def _pool(tmp_path):
    return write_pool(tmp_path / "pool", [make_pool_table(120, seed=i, first_id=120 * i)
                                          for i in range(2)])


def test_train_from_pool_labels_writes_a_loadable_checkpoint(tmp_path):
    from alray.train import evaluate

    pool = _pool(tmp_path)
    val = write_pool(tmp_path / "val", [make_pool_table(90, seed=7, first_id=9000)])
    out = tmp_path / "ckpt"
    result = CliRunner().invoke(main, ["train", "--pool", pool, "--val", val,
                                       "--labels-from-pool", "--initial", "100", "--classes",
                                       "5", "--epochs", "2", "--out", str(out)])
    assert result.exit_code == 0, result.output
    model, config, extra = load_checkpoint(out)
    assert config.modality_dims == {"image": 8, "text": 4} and config.n_classes == 5
    assert extra["labelled"] == 100
    # the recorded metrics are the saved model's on the --val pool (not the training
    # rows), recomputed here independently
    expected = evaluate(model.eval(), load_rows(val, PoolConfig()))
    recorded = extra["val"]
    assert set(recorded) == set(expected) and expected["fused"]["n"] == 90
    for head, metrics in expected.items():
        assert recorded[head]["n"] == metrics["n"]
        for name in ("accuracy", "macro_f1", "balanced_accuracy"):
            np.testing.assert_allclose(recorded[head][name], metrics[name], err_msg=head)


def test_train_from_labels_csv(tmp_path):
    pool = _pool(tmp_path)
    (tmp_path / "labels.csv").write_text("id,label\n1,0\n2,1\n3,\n150,4\n")
    result = CliRunner().invoke(main, ["train", "--pool", pool, "--labels",
                                       str(tmp_path / "labels.csv"), "--classes", "5",
                                       "--epochs", "1", "--out", str(tmp_path / "c")])
    assert result.exit_code == 0, result.output
    assert load_checkpoint(tmp_path / "c")[2]["labelled"] == 3  # the skipped post is left out


def test_train_needs_exactly_one_label_source(tmp_path):
    pool = _pool(tmp_path)
    result = CliRunner().invoke(main, ["train", "--pool", pool, "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "--labels-from-pool" in result.output


def test_initial_sample_is_seeded_and_too_large_is_refused(tmp_path):
    pool = _pool(tmp_path)
    cfg = PoolConfig()
    a = sample_labelled_ids(pool, cfg, 50, seed=3)
    assert np.array_equal(a, sample_labelled_ids(pool, cfg, 50, seed=3))
    assert not np.array_equal(a, sample_labelled_ids(pool, cfg, 50, seed=4))
    assert len(np.unique(a)) == 50
    rows = load_rows(pool, cfg, ids=a)
    assert sorted(rows.ids.tolist()) == sorted(a.tolist())
    result = CliRunner().invoke(main, ["train", "--pool", pool, "--labels-from-pool",
                                       "--initial", "1000", "--out", str(tmp_path / "c")])
    assert result.exit_code == 2 and "1,000 initial labels asked" in result.output
