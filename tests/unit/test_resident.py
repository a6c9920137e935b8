"""The resident pool without Ray: parts, memory arithmetic, and ResidentPart's query
equal to the streaming path's for every strategy (actors called in this process)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from alray.config import ComputeConfig, PoolConfig, ScoreConfig
from alray.pool import io
from alray.scoring.merge import QueryMerger
from alray.scoring.pipeline import score_pool
from alray.scoring.plan import plan_scoring
from alray.scoring.resident import ResidentPart, fit_problem, part_bytes, plan_parts
from tests.conftest import make_pool_table, write_pool
from tests.unit.test_scorer import DIMS, build_checkpoint

LOCAL = ComputeConfig(local=True, score_batch_size=23)
ALL = ("random", "least_confident", "margin", "entropy", "qbc_least_confident",
       "qbc_margin", "qbc_entropy", "bald", "ideal_loss", "reverse_ideal_loss",
       "head_disagreement")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def pool3(tmp_path_factory):
    tables = [make_pool_table(n, seed=i, first_id=1000 * i + 7)
              for i, n in enumerate((70, 45, 90))]
    return write_pool(tmp_path_factory.mktemp("pool") / "pool", tables)


def resident_query(pool, model, score, exclude=None, step=0, carry=True, n_parts=3,
                   batch_size=17, dtype="float32"):
    """What ResidentPool.score does, with the parts called in this process."""
    plan = plan_scoring(pool, model, score, PoolConfig(), exclude, step, carry=carry)
    merger = QueryMerger(plan.score, plan.carry)
    for part in plan_parts(io.pool_shards(pool), n_parts):
        actor = ResidentPart(part, PoolConfig().to_dict(), DIMS, dtype)
        merger.absorb(actor.score(plan.scorer_args(), batch_size))
        assert actor.info()["loads"] == 1
    return merger.queries(plan.id_type)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        assert x.column("id").to_pylist() == y.column("id").to_pylist(), name
        # ids exactly; scores to float32 rounding: the two paths batch rows differently,
        # and power sampling's log of a small margin magnifies a last-bit difference
        # (seen: 1.5e-5 on -1.3157 in a loaded full run)
        np.testing.assert_allclose(x.column("score").to_numpy(), y.column("score").to_numpy(),
                                   rtol=1e-4, atol=1e-6)
        assert x.column_names == y.column_names
        for column in x.column_names:
            if column != "score" and column != "predicted_prob":
                assert x.column(column).equals(y.column(column)), (name, column)


@pytest.mark.parametrize("shards, n_parts", [((70, 45, 90), 3), ((10,), 4), ((5, 5), 7),
                                             ((100, 1, 33), 2), ((3,), 1)])
def test_parts_cover_every_row_once_and_are_balanced(tmp_path, shards, n_parts):
    tables = [make_pool_table(n, seed=i, first_id=1000 * i) for i, n in enumerate(shards)]
    pool = write_pool(tmp_path / "pool", tables)
    parts = plan_parts(io.pool_shards(pool), n_parts)
    sizes = [sum(p.stop - p.start for p in part) for part in parts]
    assert len(parts) == min(n_parts, sum(shards))
    assert sum(sizes) == sum(shards) and max(sizes) - min(sizes) <= 1
    covered = {}
    for part in parts:
        for p in part:
            covered.setdefault(p.shard.path, []).append((p.start, p.stop))
    for ranges in covered.values():  # contiguous, no overlap
        ranges.sort()
        assert ranges[0][0] == 0 and all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))


def test_memory_arithmetic_and_the_refusal_message():
    dims = {"image": 1024, "text": 300}
    assert part_bytes(1000, dims, "float32") == 1000 * (1324 * 4 + 2 + 16)
    assert part_bytes(1000, dims, "float16") == 1000 * (1324 * 2 + 2 + 16)
    loc = io.locate("/nowhere.parquet")
    from alray.scoring.resident import Piece
    parts = [[Piece(loc, 0, 125_000)], [Piece(loc, 125_000, 250_000)]]
    assert fit_problem(parts, dims, "float32", 2 * 2**30, 1) is None
    problem = fit_problem(parts, dims, "float32", 2**30, 1)
    assert "needs 1,267 MiB on a node" in problem and "1,024 MiB allowed" in problem
    assert fit_problem(parts, dims, "float32", 2**30, 2) is None  # one part a node


@pytest.mark.parametrize("kw", [
    {},
    {"sampling": "softmax", "sampling_beta": 3.0},
    {"sampling": "power", "strategies": ("random", "entropy", "bald", "ideal_loss")},
    {"class_balance": 0.2},
    {"candidates": 60},
    {"candidates": 60, "class_balance": 0.3, "sampling": "softmax"},
], ids=["top", "softmax", "power", "balance", "candidates", "all"])
def test_resident_query_equals_streaming_for_every_strategy(pool3, checkpoint, kw):
    kw = {"strategies": ALL, **kw}
    score = ScoreConfig(query_size=12, mc_samples=5, seed=3, **kw)
    exclude = [7, 8, 1010, 2020, 2007]
    for step in (1, 2):
        want = score_pool(pool3, checkpoint, score, exclude_ids=exclude, step=step,
                          compute=LOCAL, carry=True)
        got = resident_query(pool3, checkpoint, score, exclude, step)
        assert_same(want, got)


def test_random_alone_and_no_carry(pool3, checkpoint):
    score = ScoreConfig(strategies=("random",), query_size=9)
    assert_same(score_pool(pool3, checkpoint, score, compute=LOCAL),
                resident_query(pool3, checkpoint, score, carry=False, n_parts=2))


def test_float16_holds_half_and_rounds_only(pool3, checkpoint):
    score = ScoreConfig(strategies=("margin",), query_size=10)
    part = plan_parts(io.pool_shards(pool3), 1)[0]
    f32 = ResidentPart(part, PoolConfig().to_dict(), DIMS, "float32")
    f16 = ResidentPart(part, PoolConfig().to_dict(), DIMS, "float16")
    f32.load(), f16.load()
    rows = 205
    assert f32.info()["bytes"] == part_bytes(rows, DIMS, "float32")
    assert f16.info()["bytes"] == part_bytes(rows, DIMS, "float16")
    got = resident_query(pool3, checkpoint, score, dtype="float16")["margin"]
    assert got.num_rows == 10
    carried = got.column("image_emb").type
    assert carried == pa.list_(pa.float32(), DIMS["image"])


def test_a_bad_row_names_its_shard(tmp_path, checkpoint):
    table = make_pool_table(30, seed=1)
    image = table.column("image_emb").combine_chunks()
    values = image.values.to_numpy().copy()
    values[5 * DIMS["image"]] = np.nan
    bad = pa.FixedSizeListArray.from_arrays(pa.array(values), DIMS["image"])
    pool = write_pool(tmp_path / "pool", [table.set_column(1, "image_emb", bad)])
    part = plan_parts(io.pool_shards(pool), 1)[0]
    from alray.errors import PoolSchemaError
    with pytest.raises(PoolSchemaError, match=r"part-00000.parquet.*row 5 \(id 5\)"):
        ResidentPart(part, PoolConfig().to_dict(), DIMS).load()


def test_resident_settings_are_checked_all_at_once():
    from alray.errors import ConfigError
    from alray.scoring.resident import check_compute

    check_compute(ComputeConfig(resident_dtype="float16", resident_memory_mb=10))
    with pytest.raises(ConfigError) as caught:
        check_compute(ComputeConfig(resident_dtype="bf16", resident_memory_mb=0))
    assert len(caught.value.problems) == 2 and "bf16" in str(caught.value)


def test_shown_columns_come_with_the_resident_query(tmp_path, checkpoint):
    from tests.unit.test_show_columns import check_rows, with_fields

    pool = write_pool(tmp_path / "pool", [
        with_fields(make_pool_table(70, seed=1)),
        with_fields(make_pool_table(50, seed=4, first_id=70, labelled=False), large=True)])
    columns = PoolConfig(show_columns=("url", "title"))
    score = ScoreConfig(strategies=("margin", "random"), query_size=9)
    want = score_pool(pool, checkpoint, score, columns, compute=LOCAL)
    plan = plan_scoring(pool, checkpoint, score, columns)
    merger = QueryMerger(plan.score, plan.carries)
    for part in plan_parts(io.pool_shards(pool), 2):
        merger.absorb(ResidentPart(part, columns.to_dict(), DIMS).score(
            plan.scorer_args(), 16))
    got = merger.queries(plan.id_type)
    assert_same(want, got)
    for table in got.values():
        check_rows(table)


def test_forward_seconds_times_the_passes_alone(pool3, checkpoint):
    from alray.scoring.resident import forward_seconds

    score = ScoreConfig(strategies=("bald",), query_size=5, mc_samples=3)
    part = ResidentPart(plan_parts(io.pool_shards(pool3), 1)[0], PoolConfig().to_dict(), DIMS)
    args = plan_scoring(pool3, checkpoint, score).scorer_args()
    assert forward_seconds(part, args, 50) > 0 and part.info()["loads"] == 1
