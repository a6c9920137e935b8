"""Scoring on Ray Data: same query as the in-process path; corrupt shards; the CLI."""
from __future__ import annotations

import os

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from alray.cli import main
from alray.config import ComputeConfig, ScoreConfig
from alray.errors import AlrayError
from alray.pool import io
from alray.pool.schema import QUERY_COLUMNS
from alray.scoring.pipeline import score_pool, write_query
from tests.conftest import make_pool_table, write_pool
from tests.unit.test_scorer import build_checkpoint

STRATS = ("margin", "entropy", "bald")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture
def pool3(tmp_path):
    tables = [make_pool_table(80, seed=10 + i, first_id=500 * i) for i in range(3)]
    return write_pool(tmp_path / "pool", tables)


LOCAL = ComputeConfig(local=True, score_batch_size=32)
RAY = ComputeConfig(score_batch_size=32, score_actors=1, score_cpus_per_actor=0.5)


def _config(**kw):
    base = dict(strategies=STRATS, query_size=15, mc_samples=4)
    base.update(kw)
    return ScoreConfig(**base)


def test_ray_path_equals_local_path(ray_session, pool3, checkpoint):
    exclude = list(range(0, 40)) + [500, 1001]
    local = score_pool(pool3, checkpoint, _config(), exclude_ids=exclude, compute=LOCAL)
    remote = score_pool(pool3, checkpoint, _config(), exclude_ids=exclude, compute=RAY)
    for name in STRATS:
        a, b = local[name], remote[name]
        assert b.num_rows == 15
        assert a.column("id").to_pylist() == b.column("id").to_pylist(), name
        np.testing.assert_allclose(a.column("score").to_numpy(), b.column("score").to_numpy(),
                                   rtol=1e-4, atol=1e-7)
        assert a.column("predicted_class").to_pylist() == b.column("predicted_class").to_pylist()
        assert not set(b.column("id").to_pylist()) & set(exclude)


def test_ray_path_equals_local_path_on_a_candidate_subset(ray_session, pool3, checkpoint):
    cfg = _config(candidates=50)
    local = score_pool(pool3, checkpoint, cfg, exclude_ids=[0, 1, 2], step=2,
                       compute=LOCAL.replace(score_batch_size=17))
    remote = score_pool(pool3, checkpoint, cfg, exclude_ids=[0, 1, 2], step=2,
                        compute=RAY.replace(score_batch_size=17))
    for name in STRATS:
        assert local[name].column("id").to_pylist() == remote[name].column("id").to_pylist()


def test_actors_need_no_checkpoint_on_disk(ray_session, pool3, checkpoint, tmp_path):
    """On a cluster only the driver sees the checkpoint: the model travels in memory."""
    import shutil

    from alray.model import load_model, model_state

    copy = shutil.copytree(checkpoint, tmp_path / "gone")
    state = model_state(load_model(copy)[0])
    shutil.rmtree(copy)
    remote = score_pool(pool3, state, _config(), compute=RAY)
    local = score_pool(pool3, checkpoint, _config(), compute=LOCAL)
    for name in STRATS:
        assert remote[name].column("id").to_pylist() == local[name].column("id").to_pylist()


def test_ray_path_object_store_exclude(ray_session, pool3, checkpoint, monkeypatch):
    from alray.scoring import pipeline
    monkeypatch.setattr(pipeline, "PUT_THRESHOLD", 5)  # force ray.put of the ids
    exclude = list(range(0, 60))
    local = score_pool(pool3, checkpoint, _config(strategies=("margin",)),
                       exclude_ids=exclude, compute=LOCAL)
    remote = score_pool(pool3, checkpoint, _config(strategies=("margin",)),
                        exclude_ids=exclude, compute=RAY)
    assert local["margin"].column("id").to_pylist() == remote["margin"].column("id").to_pylist()


def _corrupt_embedding_pages(path):
    """Garble the image embedding's pages; the footer (and the id column) stay valid."""
    meta = pq.ParquetFile(path).metadata
    col = meta.row_group(0).column(1)
    assert col.path_in_schema.startswith("image_emb")
    start = col.data_page_offset
    with open(path, "r+b") as f:
        f.seek(start)
        f.write(os.urandom(64))


@pytest.mark.parametrize("use_ray", [True, False])
def test_corrupt_middle_shard_pages(ray_session, pool3, checkpoint, tmp_path, use_ray):
    middle = os.path.join(pool3, "part-00001.parquet")
    _corrupt_embedding_pages(middle)
    out = tmp_path / "query.parquet"
    with pytest.raises(AlrayError, match="part-00001.parquet") as info:
        tables = score_pool(pool3, checkpoint, _config(), compute=RAY if use_ray else LOCAL)
        write_query(tables, str(out))
    assert not out.exists()
    assert "Traceback" not in str(info.value)  # a clean message, not Ray's traceback


def test_garbage_middle_shard(ray_session, pool3, checkpoint, tmp_path):
    middle = os.path.join(pool3, "part-00001.parquet")
    with open(middle, "wb") as f:
        f.write(b"not parquet at all")
    out = tmp_path / "query.parquet"
    result = CliRunner().invoke(main, ["score", "--pool", pool3, "--checkpoint", checkpoint,
                                       "--out", str(out)])
    assert result.exit_code == 2
    assert "part-00001.parquet" in result.output
    assert not out.exists()


def test_cli_score_local(pool3, checkpoint, tmp_path):
    labels = tmp_path / "labels.csv"
    labels.write_text("id,label\n0,1\n1,2\n501,0\n")
    out = tmp_path / "q" / "query.parquet"
    result = CliRunner().invoke(main, [
        "score", "--pool", pool3, "--checkpoint", checkpoint, "--strategy", "margin,bald",
        "--query-size", "7", "--exclude", str(labels), "--out", str(out),
        "--mc-samples", "4", "--score-batch-size", "50", "--local", "--step", "2"])
    assert result.exit_code == 0, result.output
    assert "== margin" in result.output and "== bald" in result.output
    query = io.read_table(str(out))
    assert tuple(query.column_names) == QUERY_COLUMNS
    assert query.num_rows == 14
    assert not {0, 1, 501} & set(query.column("id").to_pylist())
    expected = score_pool(pool3, checkpoint,
                          _config(strategies=("margin", "bald"), query_size=7),
                          exclude_ids=[0, 1, 501], compute=LOCAL)
    assert (query.filter(pc.equal(query.column("strategy"), "margin")).column("id").to_pylist()
            == expected["margin"].column("id").to_pylist())


def test_cli_errors_exit_2(pool3, checkpoint, tmp_path):
    result = CliRunner().invoke(main, ["score", "--pool", pool3, "--checkpoint", checkpoint,
                                       "--strategy", "margin,nope", "--out",
                                       str(tmp_path / "q.parquet"), "--local"])
    assert result.exit_code == 2
    assert "nope" in result.output


@pytest.mark.parametrize("use_ray", [False, True])
def test_scores_out_holds_every_candidate_and_gives_the_same_query(ray_session, pool3,
                                                                    checkpoint, tmp_path,
                                                                    use_ray):
    exclude = list(range(0, 30))
    cfg = _config(strategies=("margin", "entropy"))
    plain = score_pool(pool3, checkpoint, cfg, exclude_ids=exclude, compute=LOCAL)
    out = tmp_path / "scores"
    with_scores = score_pool(pool3, checkpoint, cfg, exclude_ids=exclude,
                             compute=RAY if use_ray else LOCAL,
                             scores_out=str(out))
    scores = io.read_table(str(out))
    assert scores.num_rows == 2 * (240 - 30)  # every candidate, once per strategy
    assert not set(scores.column("id").to_pylist()) & set(exclude)
    for name in ("margin", "entropy"):
        assert plain[name].column("id").to_pylist() == with_scores[name].column("id").to_pylist()
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]


def test_ray_path_reports_progress_while_scoring(ray_session, tmp_path, checkpoint,
                                                 monkeypatch):
    from alray.scoring import pipeline
    monkeypatch.setattr(pipeline, "POLL_S", 0.02)
    pool = write_pool(tmp_path / "pool", [make_pool_table(40, seed=i, first_id=100 * i)
                                          for i in range(12)])
    seen = []
    score_pool(pool, checkpoint, _config(strategies=("bald",), mc_samples=20), compute=RAY,
               progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (480, 480)
    during = [done for done, _ in seen[:-1]]
    assert len(during) > 3 and min(during) < 480  # reported before the end
    assert during == sorted(during) and max(during) <= 480
