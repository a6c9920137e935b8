"""BatchScorer and the in-process scoring path (no Ray)."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pytest

from alray.acquisition import compute_scores
from alray.config import ComputeConfig, ModelConfig, PoolConfig, ScoreConfig, TrainConfig
from alray.errors import CheckpointError, ConfigError, LabelsError, PoolExhaustedError
from alray.pool import io
from alray.pool.arrays import arrays_from_table
from alray.scoring.pipeline import score_pool, write_query
from alray.scoring.scorer import BatchScorer
from alray.pool.schema import QUERY_COLUMNS
from tests.conftest import make_pool_table, write_pool

DIMS = {"image": 8, "text": 4}
LOCAL = ComputeConfig(local=True)


def state_of(checkpoint):
    from alray.model import load_model, model_state
    return model_state(load_model(checkpoint)[0])


def build_checkpoint(path, dims=DIMS, seed=0):
    import torch

    from alray.model import FusionNet, save_checkpoint
    from alray.train import fit
    torch.manual_seed(seed)
    cfg = ModelConfig(modality_dims=dict(dims),
                      branch_widths={m: (8,) for m in dims}, fused_widths=(8,),
                      n_classes=5)
    model = FusionNet(cfg)
    data = arrays_from_table(make_pool_table(200, dims["image"], dims["text"], seed=99),
                             PoolConfig(), dims)
    fit(model, data, TrainConfig(epochs=2, batch_size=64, seed=seed))
    model.eval()
    return str(save_checkpoint(path, model, cfg))


def reference_query(pool_uri, checkpoint, score: ScoreConfig, exclude=()):
    """Brute force: score every row at once, drop excluded ids, sort everything."""
    import torch

    from alray.model import MCDropout, load_checkpoint
    from alray.scoring.outputs import mask_seed
    model, _, _ = load_checkpoint(checkpoint)
    data = arrays_from_table(io.read_table(pool_uri), PoolConfig(), DIMS)
    keep = ~np.isin(data.ids, np.asarray(list(exclude), dtype=np.int64))
    data = data.take(keep)
    from alray.model import as_tensors
    with torch.inference_mode():
        feats, pres = as_tensors(data.features, data.present)
        probs = torch.softmax(model(feats, pres).logits[score.head], 1).numpy()
        mc = MCDropout(model, score.mc_samples, mask_seed(score.seed, 0))
        stats = mc.statistics(feats, pres, score.head)
    inputs = {"probs": probs.astype(np.float64),
              "mc_mean_probs": stats["mean_probs"].numpy().astype(np.float64),
              "mc_mean_entropy": stats["mean_entropy"].numpy().astype(np.float64),
              "labels": data.labels, "ids": data.ids, "seed": score.seed}
    out = {}
    for name in score.strategies:
        s = compute_scores(name, inputs)
        order = np.lexsort((data.ids, -s))[:score.query_size]
        out[name] = (data.ids[order], s[order], probs.argmax(1)[order],
                     probs.max(1)[order])
    return out


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def pool3(tmp_path_factory):
    tables = [make_pool_table(60, seed=i, first_id=1000 * i + 7) for i in range(3)]
    return write_pool(tmp_path_factory.mktemp("pool") / "pool", tables)


STRATS = ("margin", "entropy", "bald", "random", "ideal_loss")


def test_local_path_matches_brute_force(pool3, checkpoint):
    score = ScoreConfig(strategies=STRATS, query_size=10, mc_samples=4)
    exclude = [7, 8, 1010, 2020, 2007]
    tables = score_pool(pool3, checkpoint, score, exclude_ids=exclude,
                        compute=LOCAL.replace(score_batch_size=16))
    ref = reference_query(pool3, checkpoint, score, exclude)
    assert list(tables) == list(STRATS)
    for name, table in tables.items():
        assert table.column_names == ["id", "score", "rank", "predicted_class",
                                      "predicted_prob", "strategy", "least_sure_head"]
        assert table.num_rows == 10
        ids = table.column("id").to_numpy()
        scores = table.column("score").to_numpy()
        assert not set(ids) & set(exclude)
        assert np.all(np.diff(scores) <= 0), name
        assert table.column("rank").to_pylist() == list(range(1, 11))
        assert set(table.column("strategy").to_pylist()) == {name}
        ref_ids, ref_scores, ref_cls, ref_prob = ref[name]
        np.testing.assert_array_equal(ids, ref_ids, err_msg=name)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(table.column("predicted_class").to_numpy(), ref_cls)
        # the predicted class's own probability: at least 1/classes, as brute force
        prob = table.column("predicted_prob").to_numpy()
        assert np.all(prob >= 1 / 5 - 1e-9)
        np.testing.assert_allclose(prob, ref_prob, rtol=1e-5, atol=1e-6)


def test_batch_size_does_not_change_query(pool3, checkpoint):
    results = []
    for b in (7, 1000):
        score = ScoreConfig(strategies=("margin", "bald"), query_size=12, mc_samples=4)
        tables = score_pool(pool3, checkpoint, score, compute=LOCAL.replace(score_batch_size=b))
        results.append({k: t.column("id").to_pylist() for k, t in tables.items()})
    assert results[0] == results[1]


@pytest.mark.parametrize("options", [{}, {"candidates": 90}, {"sampling": "softmax"}],
                         ids=["top", "candidates", "softmax"])
def test_random_alone_runs_the_model_on_its_query_only_and_gives_the_same_query(
        pool3, checkpoint, options):
    # random alone takes the model-free path; beside margin, the one-pass path
    alone = ScoreConfig(strategies=("random",), query_size=10, **options)
    both = alone.replace(strategies=("random", "margin"))
    compute = LOCAL.replace(score_batch_size=16)
    with_margin = score_pool(pool3, checkpoint, both, compute=compute)["random"]
    assert with_margin.num_rows == 10
    only = score_pool(pool3, checkpoint, alone, compute=compute)["random"]
    # the same rows, ranks and classes; the probability to float32 rounding (torch's
    # kernels round differently for a batch of other rows)
    assert only.drop_columns(["predicted_prob"]).equals(with_margin.drop_columns(["predicted_prob"]))
    np.testing.assert_allclose(only.column("predicted_prob").to_numpy(),
                               with_margin.column("predicted_prob").to_numpy(), rtol=1e-6)
    scorer = BatchScorer(state_of(checkpoint), alone.to_dict(), PoolConfig().to_dict(), DIMS)
    assert scorer.model_free
    assert not BatchScorer(state_of(checkpoint), both.to_dict(), PoolConfig().to_dict(),
                           DIMS).model_free


def test_query_size_too_large(pool3, checkpoint):
    score = ScoreConfig(strategies=("margin",), query_size=178)
    with pytest.raises(PoolExhaustedError) as info:
        score_pool(pool3, checkpoint, score, exclude_ids=[7, 8, 9, 123456], compute=LOCAL)
    assert "178" in str(info.value) and "177" in str(info.value)
    # exactly the candidates left is fine
    tables = score_pool(pool3, checkpoint, score.replace(query_size=177),
                        exclude_ids=[7, 8, 9, 123456], compute=LOCAL)
    assert tables["margin"].num_rows == 177


def test_unknown_strategy(pool3, checkpoint):
    with pytest.raises(ConfigError, match="nope"):
        score_pool(pool3, checkpoint, ScoreConfig(strategies=("margin", "nope")),
                   compute=LOCAL)


def test_dims_mismatch(tmp_path, checkpoint):
    pool = write_pool(tmp_path / "p", [make_pool_table(30, image_dim=6)])
    with pytest.raises(CheckpointError, match="dim"):
        score_pool(pool, checkpoint, ScoreConfig(), compute=LOCAL)


def test_oracle_on_unlabelled_pool(tmp_path, checkpoint):
    pool = write_pool(tmp_path / "p", [make_pool_table(30, labelled=False)])
    with pytest.raises(LabelsError, match="ideal_loss"):
        score_pool(pool, checkpoint, ScoreConfig(strategies=("margin", "ideal_loss")),
                   compute=LOCAL)
    # non-oracle strategies are fine on an unlabelled pool
    tables = score_pool(pool, checkpoint, ScoreConfig(strategies=("margin",), query_size=5),
                        compute=LOCAL)
    assert tables["margin"].num_rows == 5


def test_batch_scorer_output_and_empty_schema(pool3, checkpoint):
    score = ScoreConfig(strategies=("margin", "entropy"), query_size=3)
    table = io.read_table(pool3)
    ids = table.column("id").to_numpy()
    scorer = BatchScorer(state_of(checkpoint), score.to_dict(), PoolConfig().to_dict(), DIMS,
                         exclude=np.sort(ids[:5]), num_threads=1)
    out = scorer(table.slice(0, 20))
    assert out.column_names == ["strategy", "id", "score", "predicted_class",
                                "predicted_prob", "least_sure_head"]
    assert out.num_rows == 6
    assert not set(out.column("id").to_pylist()) & set(ids[:5].tolist())
    empty = scorer(table.slice(0, 5))  # all excluded
    assert empty.num_rows == 0 and empty.schema == out.schema


def test_write_query(tmp_path, pool3, checkpoint):
    score = ScoreConfig(strategies=("margin", "entropy"), query_size=4)
    tables = score_pool(pool3, checkpoint, score, compute=LOCAL)
    out = tmp_path / "q" / "query.parquet"
    write_query(tables, str(out), step=3)
    written = io.read_table(str(out))
    assert tuple(written.column_names) == QUERY_COLUMNS
    assert written.num_rows == 8
    assert set(written.column("step").to_pylist()) == {3}
    assert written.schema.field("id").type == pa.int64()


@pytest.mark.parametrize("files,actors", [(1, 1), (256, 1), (257, 2), (1000, 4), (10**6, 32)])
def test_footer_reader_actors_follow_the_file_count(monkeypatch, files, actors):
    from alray.scoring.pipeline import FOOTER_ACTORS_ENV, footer_readers

    monkeypatch.delenv(FOOTER_ACTORS_ENV, raising=False)
    with footer_readers(files):
        assert os.environ[FOOTER_ACTORS_ENV] == str(actors)
    assert FOOTER_ACTORS_ENV not in os.environ  # restored for everything else


def test_footer_reader_actors_set_by_the_user_win(monkeypatch):
    from alray.scoring.pipeline import FOOTER_ACTORS_ENV, footer_readers

    monkeypatch.setenv(FOOTER_ACTORS_ENV, "7")
    with footer_readers(10_000):
        assert os.environ[FOOTER_ACTORS_ENV] == "7"
    assert os.environ[FOOTER_ACTORS_ENV] == "7"


def test_bald_masks_are_new_each_step_and_fixed_within_it(pool3, checkpoint):
    """A long run averages over many MC committees (one per step), yet a step's query
    does not depend on the batch size."""
    score = ScoreConfig(strategies=("bald",), query_size=12, mc_samples=4)

    def bald(step, batch):
        table = score_pool(pool3, checkpoint, score, step=step,
                           compute=LOCAL.replace(score_batch_size=batch))["bald"]
        return table.column("id").to_pylist(), table.column("score").to_numpy()
    ids_a, scores_a = bald(3, 7)
    ids_b, scores_b = bald(3, 1000)
    assert ids_a == ids_b
    np.testing.assert_allclose(scores_a, scores_b, rtol=1e-5)
    _, other = bald(4, 7)
    assert not np.allclose(np.sort(other), np.sort(scores_a))
