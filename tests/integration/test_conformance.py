"""Conformance matrix: every command over pools as real writers make them.

Writers: pandas 2 (committed files, tests/fixtures/pandas2/, written by
tests/fixtures/pandas_pools.py) and the installed pandas (3: text ids as
``large_string``), with the pyarrow engine for pools (fastparquet cannot write list
columns: its "json" encoding is text, not an embedding) and fastparquet for labels files;
pyarrow directly with int32/int64/dictionary/string/large_string ids, int32/int64/
float-with-NaN labels, float32/float64 list/large_list/fixed-size-list embeddings, and
shards of one pool with differing but compatible schemas.

Commands: validate, train (pool labels and a labels file), score, loop with a resume,
the assessor round trip (labels import), the online service's input path and
``online queue``, scoring on Ray Data, and a smoke sweep. CI-sized: 40-post pools, dims
4 and 3, one epoch, in-process (``--local``) except the last test (Ray Data scoring, the
refusal of a NaN from inside an actor, a sweep on Ray Tune). Not covered: the HTTP
service itself (tests/integration/test_serve.py); here its body parser and routed rows.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from alray.cli import main
from tests.fixtures import pandas_pools

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "fixtures", "pandas2")
FAST = ["--epochs", "1", "--classes", "3"]
CANONICAL = (pa.int64(), pa.string())


@pytest.fixture
def one_thread():
    """Tiny models: extra OpenMP threads would only spin on shared cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def cli(*args, ok: bool = True):
    result = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)
    if ok:
        assert result.exit_code == 0, result.output
    return result


# --- the writers -------------------------------------------------------------------------
def _pandas(tmp_path, version: str, kind: str) -> dict:
    if version == "2":
        shutil.copytree(os.path.join(FIXTURES, kind), tmp_path / "in")
    else:
        pandas_pools.write(str(tmp_path / "w"))
        shutil.move(str(tmp_path / "w" / kind), tmp_path / "in")
    base = tmp_path / "in"
    return {"pool": str(base / "pool"), "val": str(base / "val"),
            "labels": str(base / "labels.parquet")}


def _vectors(n: int, dim: int, seed: int, missing_every: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, dim)), np.arange(n) % missing_every == missing_every - 1


def _column(matrix, missing, kind: str, value_type) -> pa.Array:
    values = pa.array(matrix.reshape(-1), value_type)
    mask = pa.array(missing)
    dim = matrix.shape[1]
    if kind == "fixed":
        return pa.FixedSizeListArray.from_arrays(values, dim, mask=mask)
    offsets = pa.array(np.arange(len(matrix) + 1) * dim, pa.int32())
    if kind == "large":
        offsets = offsets.cast(pa.int64())
        return pa.LargeListArray.from_arrays(offsets, values, mask=mask)
    return pa.ListArray.from_arrays(offsets, values, mask=mask)


def _shard(first: int, n: int, ids, labels, image: tuple, text: tuple, seed: int) -> pa.Table:
    img, img_missing = _vectors(n, pandas_pools.IMAGE_DIM, seed, 6)
    txt, txt_missing = _vectors(n, pandas_pools.TEXT_DIM, seed + 1, 5)
    txt_missing &= ~img_missing  # every post keeps one modality
    return pa.table({"id": ids, "image_emb": _column(img, img_missing, *image),
                     "text_emb": _column(txt, txt_missing, *text), "label": labels})


def _labels(first: int, n: int, unlabelled: bool, kind: str) -> pa.Array:
    rows = range(first, first + n)
    values = [None if unlabelled and i % 5 == 4 else i % pandas_pools.CLASSES for i in rows]
    if kind == "float-nan":  # NaN stored as NaN, not null
        return pa.array(np.array([np.nan if v is None else v for v in values], np.float64),
                        from_pandas=False)
    return pa.array(values, kind)


def _pyarrow(tmp_path, text_ids: bool) -> dict:
    """Three shards of one pool, each with other (compatible) types."""
    def ids(first, n, how):
        values = [f"{i:05d}" for i in range(first, first + n)] if text_ids \
            else list(range(first, first + n))
        if how == "dictionary":
            return pa.array(values).dictionary_encode()
        return pa.array(values, how)

    id_types = (["dictionary", pa.large_string(), pa.string()] if text_ids
                else [pa.int32(), pa.int64(), pa.uint32()])
    shapes = [(("fixed", pa.float32()), ("list", pa.float64()), pa.int32()),
              (("large", pa.float32()), ("fixed", pa.float64()), "float-nan"),
              (("list", pa.float64()), ("large", pa.float32()), pa.int64())]
    base = tmp_path / "in"
    for name in ("pool", "val"):
        (base / name).mkdir(parents=True)
    for index, (how, (image, text, labels)) in enumerate(zip(id_types, shapes)):
        first = 14 * index
        pq.write_table(_shard(first, 14, ids(first, 14, how), _labels(first, 14, True, labels),
                              image, text, index), base / "pool" / f"part-{index}.parquet")
    val_first = pandas_pools.VAL_FIRST
    pq.write_table(_shard(val_first, 15, ids(val_first, 15, id_types[0]),
                          _labels(val_first, 15, False, pa.int64()), *shapes[0][:2], 9),
                   base / "val" / "part-0.parquet")
    return {"pool": str(base / "pool"), "val": str(base / "val"), "labels": None}


WRITERS = {
    "pandas2-str": lambda p: _pandas(p, "2", "str"),
    "pandas2-int": lambda p: _pandas(p, "2", "int"),
    "pandas-str": lambda p: _pandas(p, "installed", "str"),
    "pandas-int": lambda p: _pandas(p, "installed", "int"),
    "pyarrow-str": lambda p: _pyarrow(p, True),
    "pyarrow-int": lambda p: _pyarrow(p, False),
}


def _pool_ids(pool: str) -> set:
    from alray.config import PoolConfig
    from alray.pool.load import read_ids_and_labels

    return set(read_ids_and_labels(pool, PoolConfig())[0].tolist())


def _labels_file(tmp_path, files: dict) -> str:
    """The writer's labels file, or one fastparquet writes from the pool's labels."""
    if files["labels"]:
        return files["labels"]
    from alray.config import PoolConfig
    from alray.pool.load import read_ids_and_labels

    ids, labels = read_ids_and_labels(files["pool"], PoolConfig())
    keep = labels >= 0
    frame = pd.DataFrame({"id": ids[keep][:12].tolist(), "label": labels[keep][:12]})
    path = str(tmp_path / "labels.parquet")
    frame.to_parquet(path, engine="fastparquet", index=False)
    return path


# --- the matrix --------------------------------------------------------------------------
@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_command_over_the_pool(writer, tmp_path, one_thread):
    files = WRITERS[writer](tmp_path)
    pool, val = files["pool"], files["val"]
    pool_ids = _pool_ids(pool)
    for uri in (pool, val):
        output = cli("validate", uri, "--classes", "3", "--json").output
        report = json.loads(output[output.index("{"):])  # after the progress bar
        assert report["valid"], report["problems"]

    cli("train", "--pool", pool, "--val", val, "--labels-from-pool", "--initial", "8",
        "--out", tmp_path / "ckpt", *FAST)
    cli("train", "--pool", pool, "--labels", _labels_file(tmp_path, files),
        "--out", tmp_path / "ckpt2", *FAST)

    cli("score", "--pool", pool, "--checkpoint", tmp_path / "ckpt", "--out",
        tmp_path / "query.parquet", "--query-size", "3", "--local")
    query = pq.read_table(tmp_path / "query.parquet")
    assert query.num_rows == 3 and set(query.column("id").to_pylist()) <= pool_ids
    assert query.schema.field("id").type in CANONICAL

    run = tmp_path / "run"
    cli("loop", "--pool", pool, "--val", val, "--run-dir", run, "--initial", "8",
        "--query-size", "3", "--steps", "1", *FAST, "--local")
    cli("loop", "--run-dir", run, "--resume", "--steps", "2", "--local")
    labels = pq.read_table(run / "labels.parquet")
    assert labels.schema.field("id").type in CANONICAL
    assert labels.column("step").to_pylist() == [0] * 8 + [1] * 3 + [2] * 3
    for step in (1, 2):
        sent = pq.read_schema(run / "queries" / f"step-{step:05d}.parquet")
        assert sent.field("id").type == labels.schema.field("id").type
    assert set(labels.column("id").to_pylist()) <= pool_ids
    metrics = pq.read_table(run / "metrics.parquet")
    assert metrics.column("step").to_pylist() == [0, 1, 2]
    assert np.isfinite(metrics.column("fused_accuracy").to_numpy()).all()


@pytest.mark.parametrize("writer", ["pandas2-str", "pyarrow-int"])
def test_assessor_round_trip_with_fastparquet_answers(writer, tmp_path, one_thread):
    files = WRITERS[writer](tmp_path)
    run = tmp_path / "run"
    cli("loop", "--pool", files["pool"], "--val", files["val"], "--run-dir", run,
        "--initial", "8", "--query-size", "3", "--steps", "2", "--assessors", *FAST,
        "--local")
    query = pq.read_table(run / "queries" / "step-00001.parquet")
    answers = tmp_path / "answers.parquet"
    pd.DataFrame({"id": query.column("id").to_pylist()[:2], "label": [2.0, 0.0]}).to_parquet(
        answers, engine="fastparquet", index=False)
    assert "2 labelled, 1 skipped" in cli("labels", "import", run, answers).output
    cli("loop", "--run-dir", run, "--resume", "--local")
    labels = pq.read_table(run / "labels.parquet")
    assert labels.schema.field("id").type in CANONICAL
    assert labels.column("source").to_pylist()[-3:] == ["assessor", "assessor", "skipped"]


def test_online_posts_and_queue_on_a_pandas_pool(tmp_path, one_thread):
    """The service's input path (a Parquet body written by pandas, text ids) and
    ``online queue``: routed posts join a pool of ``large_string`` ids as a shard, then
    the assessor round trip and the loop go on over the grown pool."""
    from alray.config import PoolConfig
    from alray.serve.config import ServeConfig
    from alray.serve.posts import parse_posts
    from alray.serve.routing import routed_rows

    files = WRITERS["pandas-str"](tmp_path)
    run = tmp_path / "run"
    cli("loop", "--pool", files["pool"], "--val", files["val"], "--run-dir", run,
        "--initial", "8", "--query-size", "3", "--steps", "1", *FAST, "--local")
    posts = pandas_pools.frame(5000, 6, True, False, seed=11).drop(columns=["label"])
    posts["id"] = [f"n{i}" for i in range(6)]
    body = tmp_path / "body.parquet"
    posts.to_parquet(body, engine="pyarrow", index=False)
    dims = {"image": pandas_pools.IMAGE_DIM, "text": pandas_pools.TEXT_DIM}
    table = parse_posts(body.read_bytes(), "application/vnd.apache.parquet", PoolConfig(),
                        dims, "string")
    # routed as the service writes them (its routing score and prediction made up)
    n = table.num_rows
    config = ServeConfig(run_dir=str(run), id_type="string")
    result = {f"score_{config.route_strategy}": np.linspace(1, 0, n),
              "predicted_class": np.zeros(n, np.int64), "predicted_prob": np.full(n, 0.5)}
    routed = routed_rows(table, result, np.arange(n) < 3, config, 0.5, "ckpt")
    (run / "online").mkdir()
    pq.write_table(routed, run / "online" / "routed-000001.parquet")
    cli("online", "queue", run)
    query = pq.read_table(run / "queries" / "step-00002.parquet")
    assert sorted(query.column("id").to_pylist()) == ["n0", "n1", "n2"]
    answers = tmp_path / "answers.csv"
    answers.write_text("id,label\nn0,1\nn1,2\nn2,0\n")
    cli("labels", "import", run, answers)
    cli("loop", "--run-dir", run, "--resume", "--local")
    assert pq.read_table(run / "labels.parquet").column("step").to_pylist()[-3:] == [2] * 3


def test_ray_scoring_and_a_smoke_sweep_on_a_pool_of_mixed_types(tmp_path, ray_session):
    """Ray Data reads shards of dictionary, large_string and string ids and of list,
    large_list and fixed-size embeddings as one pool; then a sweep on Ray Tune."""
    files = WRITERS["pyarrow-str"](tmp_path)
    cli("train", "--pool", files["pool"], "--labels-from-pool", "--initial", "8",
        "--out", tmp_path / "ckpt", *FAST)
    for where in ([], ["--local"]):
        cli("score", "--pool", files["pool"], "--checkpoint", tmp_path / "ckpt", "--out",
            tmp_path / f"query{len(where)}.parquet", "--query-size", "3", *where)
    on_ray, local = (pq.read_table(tmp_path / f"query{i}.parquet") for i in (0, 1))
    assert on_ray.column("id").to_pylist() == local.column("id").to_pylist()
    # a NaN an actor refuses reaches the user as alray's error, not Ray's wrapper
    bad_pool = str(tmp_path / "bad")
    shutil.copytree(files["pool"], bad_pool)
    shard = pq.read_table(os.path.join(bad_pool, "part-1.parquet"))
    text = shard.column("text_emb").combine_chunks()
    values = np.asarray(text.values).copy()
    values[0] = np.nan
    bad = pa.FixedSizeListArray.from_arrays(pa.array(values), 3, mask=pa.array(~np.asarray(
        text.is_valid())))
    pq.write_table(shard.set_column(2, "text_emb", bad), os.path.join(bad_pool,
                                                                     "part-1.parquet"))
    refused = cli("score", "--pool", bad_pool, "--checkpoint", tmp_path / "ckpt",
                  "--out", tmp_path / "bad.parquet", "--query-size", "3", ok=False)
    assert refused.exit_code == 2, refused.output
    assert "NaN, infinite or null value in the embedding" in refused.output
    out = tmp_path / "sweep"
    cli("sweep", "--pool", files["pool"], "--val", files["val"], "--out", out,
        "--strategies", "random,margin", "--seeds", "0", "--steps", "1",
        *[x for key, value in (("initial", 8), ("score.query_size", 3), ("train.epochs", 1),
                               ("model.n_classes", 3)) for x in ("--set", f"{key}={value}")])
    curves = [p for p in out.rglob("*.parquet") if "curve" in p.name]
    assert curves, sorted(str(p) for p in out.rglob("*"))
