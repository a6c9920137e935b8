"""The pool contract: every kind of bad input named by file, row, id and column."""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner

from alray.cli import main
from alray.config import PoolConfig
from alray.pool import io
from alray.pool.validate import validate_pool
from tests.conftest import fixed_list, make_pool_table, write_pool


def run_validate(path, *args):
    result = CliRunner().invoke(main, ["validate", str(path), *args])
    assert "Traceback" not in result.output
    return result


def test_valid_pool_passes_with_summary(small_pool):
    report = validate_pool(small_pool, n_classes=5)
    assert report.ok, [str(p) for p in report.problems]
    s = report.summary
    assert (s.rows, s.labelled, s.shards) == (300, 300, 3)
    assert s.dims == {"image": 8, "text": 4}
    assert 0.7 < s.coverage()["image"] < 0.9
    assert sum(s.classes.values()) == 300
    result = run_validate(small_pool, "--classes", "5")
    assert result.exit_code == 0
    assert "valid" in result.output and "300" in result.output


def _one_bad(tmp_path, table, bad_index=1):
    tables = [make_pool_table(50, seed=0), table, make_pool_table(50, seed=2, first_id=200)]
    return write_pool(tmp_path / "pool", tables), f"part-{bad_index:05d}.parquet"


def _assert_problem(tmp_path, table, kind, column, row, *args):
    pool, bad_file = _one_bad(tmp_path, table)
    report = validate_pool(pool, n_classes=5)
    found = [p for p in report.problems if p.kind == kind]
    assert found, f"no {kind!r} problem in {[str(p) for p in report.problems]}"
    first = found[0]
    assert first.file.endswith(bad_file) and first.column == column and first.row == row
    result = run_validate(pool, "--classes", "5", *args)
    assert result.exit_code == 2
    assert bad_file in result.output and column in result.output and f"row {row}" in result.output


def test_wrong_dimension(tmp_path):
    t = make_pool_table(50, seed=1, first_id=100)
    emb = t.column("text_emb").to_pylist()
    emb[7] = [0.1] * 3
    t = t.set_column(2, "text_emb", pa.array(emb, type=pa.list_(pa.float32())))
    _assert_problem(tmp_path, t, "wrong dimension", "text_emb", 7)


def test_nan_and_inf(tmp_path):
    t = make_pool_table(50, seed=1, first_id=100)
    emb = np.nan_to_num(np.array([v if v is not None else [0.0] * 8
                                  for v in t.column("image_emb").to_pylist()]))
    emb[5, 3] = np.nan
    emb[9, 0] = np.inf
    t = t.set_column(1, "image_emb", fixed_list(emb))
    _assert_problem(tmp_path, t, "non-finite value", "image_emb", 5)
    report = validate_pool(str(tmp_path / "pool"), n_classes=5)
    assert report.counts["non-finite value"] == 2


def test_both_embeddings_null(tmp_path):
    t = make_pool_table(50, seed=1, first_id=100)
    for i, name in ((1, "image_emb"), (2, "text_emb")):
        values = t.column(name).to_pylist()
        values[11] = None
        t = t.set_column(i, name, pa.array(values, type=t.schema.field(name).type))
    _assert_problem(tmp_path, t, "no embedding", "image_emb,text_emb", 11)


def test_duplicate_ids_across_shards(tmp_path):
    t = make_pool_table(50, seed=1, first_id=100)
    ids = t.column("id").to_numpy().copy()
    ids[13] = 3  # id 3 lives in the first shard
    t = t.set_column(0, "id", pa.array(ids))
    _assert_problem(tmp_path, t, "duplicate id", "id", 13)


def test_duplicate_string_ids(tmp_path):
    df = pd.DataFrame({"id": ["a", "b", "c"], "image_emb": [[1.0, 2.0]] * 3,
                       "text_emb": [[1.0]] * 3, "label": [0, 1, 2]})
    write_pool(tmp_path / "pool", [pa.Table.from_pandas(df, preserve_index=False),
                                   pa.Table.from_pandas(df.iloc[1:2], preserve_index=False)])
    report = validate_pool(str(tmp_path / "pool"), n_classes=5)
    dups = [p for p in report.problems if p.kind == "duplicate id"]
    assert len(dups) == 1 and dups[0].id == "b" and dups[0].file.endswith("part-00001.parquet")


def test_label_out_of_range(tmp_path):
    t = make_pool_table(50, seed=1, first_id=100)
    labels = t.column("label").to_numpy().copy()
    labels[17] = 9
    t = t.set_column(3, "label", pa.array(labels))
    _assert_problem(tmp_path, t, "label out of range", "label", 17)


def test_non_integer_label(tmp_path):
    t = make_pool_table(50, seed=1, first_id=100)
    labels = t.column("label").to_numpy().astype(float)
    labels[19] = 2.5
    t = t.set_column(3, "label", pa.array(labels))
    _assert_problem(tmp_path, t, "non-integer label", "label", 19)


def test_string_labels_rejected(tmp_path):
    t = make_pool_table(50, seed=1, first_id=100)
    t = t.set_column(3, "label", pa.array(["x"] * 50))
    pool, bad = _one_bad(tmp_path, t)
    report = validate_pool(pool)
    assert report.counts["non-integer label"] == 1
    assert report.problems[0].file.endswith(bad) and report.problems[0].column == "label"


def test_missing_column(tmp_path):
    t = make_pool_table(50, seed=1, first_id=100).drop_columns(["text_emb"])
    pool, bad = _one_bad(tmp_path, t)
    result = run_validate(pool)
    assert result.exit_code == 2 and bad in result.output and "text_emb" in result.output


def test_corrupt_and_non_parquet_files(tmp_path):
    pool = write_pool(tmp_path / "pool", [make_pool_table(50)])
    with open(os.path.join(pool, "part-00001.parquet"), "wb") as f:
        f.write(b"PAR1 this is not parquet")
    with open(os.path.join(pool, "notes.csv"), "w") as f:
        f.write("id\n1\n")
    report = validate_pool(pool)
    kinds = {p.kind: p.file for p in report.problems}
    assert kinds["unreadable file"].endswith("part-00001.parquet")
    assert kinds["not parquet"].endswith("notes.csv")
    assert run_validate(pool).exit_code == 2


def test_truncated_shard_is_reported(tmp_path):
    pool = write_pool(tmp_path / "pool", [make_pool_table(50), make_pool_table(50, first_id=50)])
    path = os.path.join(pool, "part-00001.parquet")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2] + data[-8:])  # keeps the magic, breaks the footer
    report = validate_pool(pool)
    assert [p.kind for p in report.problems] == ["unreadable file"]
    assert report.problems[0].file.endswith("part-00001.parquet")


def test_empty_pool(tmp_path):
    os.makedirs(tmp_path / "pool")
    result = run_validate(tmp_path / "pool")
    assert result.exit_code == 2 and "no rows" in result.output
    pq.write_table(make_pool_table(1).slice(0, 0), tmp_path / "pool" / "empty.parquet")
    assert validate_pool(str(tmp_path / "pool")).counts["empty pool"] == 1


def test_missing_path_is_a_clean_error(tmp_path):
    result = run_validate(tmp_path / "nowhere")
    assert result.exit_code == 2 and "no such file" in result.output


def test_pandas_pool_with_string_ids_and_double_lists(tmp_path):
    df = pd.DataFrame({"id": [f"post-{i}" for i in range(6)],
                       "image_emb": [[0.1, 0.2, 0.3]] * 3 + [None] * 3,
                       "text_emb": [None, [1.0, 2.0], [1.0, 2.0], [1.0, 2.0], [1.0, 2.0],
                                    [3.0, 4.0]],
                       "label": [0, None, 2, None, 1, 1]})  # pandas makes this float64
    path = tmp_path / "pool.parquet"
    df.to_parquet(path, index=False)
    report = validate_pool(str(path), n_classes=3)
    assert report.ok, [str(p) for p in report.problems]
    assert report.summary.labelled == 4 and report.summary.dims == {"image": 3, "text": 2}


def test_dims_checked_against_config(small_pool):
    report = validate_pool(small_pool, dims={"image": 16, "text": 4})
    assert report.counts["wrong dimension"] > 0
    assert all(p.column == "image_emb" for p in report.problems)


def test_custom_column_names(tmp_path):
    t = make_pool_table(20).rename_columns(["post", "img", "txt", "topic"])
    path = tmp_path / "p.parquet"
    pq.write_table(t, path)
    cfg = PoolConfig(id_column="post", label_column="topic",
                     embedding_columns={"image": "img", "text": "txt"})
    assert validate_pool(str(path), cfg).ok
    result = run_validate(path, "--id-column", "post", "--label-column", "topic",
                          "--embedding-column", "image=img", "--embedding-column", "text=txt")
    assert result.exit_code == 0, result.output


def test_fastparquet_flat_table_is_read(tmp_path):
    df = pd.DataFrame({"id": np.arange(5, dtype=np.int64), "label": [0, 1, 2, 3, 4]})
    path = tmp_path / "labels.parquet"
    import fastparquet
    fastparquet.write(str(path), df, write_index=False)
    table = io.read_table(str(path))
    assert table.column("id").to_pylist() == [0, 1, 2, 3, 4]


def test_json_report(small_pool):
    import json
    result = run_validate(small_pool, "--json")
    data = json.loads(result.stdout)
    assert data["valid"] is True and data["summary"]["rows"] == 300


MEASURE = """
import json, sys, tracemalloc
import pyarrow as pa
from alray.pool.validate import validate_pool
tracemalloc.start()
report = validate_pool(sys.argv[1], n_classes=5, max_examples=3)
print(json.dumps({"arrow_peak": pa.default_memory_pool().max_memory(),
                  "python_peak": tracemalloc.get_traced_memory()[1],
                  "bad": report.counts["label out of range"],
                  "shown": len([p for p in report.problems
                                if p.kind == "label out of range"])}))
"""


def _validate_measured(pool: str) -> dict:
    """Validate in a fresh process: peak Arrow memory (the pool's buffers) and peak
    Python memory (tracemalloc: problems, ids) of that validation alone."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", MEASURE, pool], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_memory_is_bounded_by_batches(tmp_path):
    """Peak memory follows one shard, not the pool: 4x the shards (every label out of
    range) costs the same Arrow peak and a few bytes per row of Python memory; problems
    are capped, counts complete."""
    def pool(name: str, shards: int) -> str:
        tables = []
        for i in range(shards):
            t = make_pool_table(4000, image_dim=96, text_dim=32, seed=i, first_id=4000 * i)
            tables.append(t.set_column(3, "label", pa.array(np.full(4000, 7))))
        return write_pool(tmp_path / name, tables)

    small, big = _validate_measured(pool("small", 3)), _validate_measured(pool("big", 12))
    assert (small["bad"], big["bad"]) == (3 * 4000, 12 * 4000)
    assert small["shown"] == big["shown"] == 3
    # Arrow's peak (decoding one shard: ~14 MB here) does not grow with the shards
    assert big["arrow_peak"] < 1.2 * small["arrow_peak"], (small, big)
    # Python's grows only by what must be kept per row (its id, to find duplicates
    # across shards: ~20 bytes), far below a row's 512 bytes of vectors
    assert (big["python_peak"] - small["python_peak"]) / (9 * 4000) < 64, (small, big)
