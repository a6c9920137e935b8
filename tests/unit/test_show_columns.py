"""Pass-through fields (issue 20, item 1): ``--show-columns`` copies a pool's other
columns (a URL, a title) into every query, with the right value per id; a missing one is
a clear error naming the pool's file and the column."""
from __future__ import annotations

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from alray.cli import main
from alray.config import ComputeConfig, PoolConfig, ScoreConfig
from alray.errors import ConfigError, PoolSchemaError
from alray.scoring.pipeline import score_pool, write_query
from tests.conftest import make_pool_table, write_pool
from tests.unit.test_scorer import build_checkpoint

FAST = ["--epochs", "2", "--classes", "5", "--local"]


def with_fields(table: pa.Table, large: bool = False) -> pa.Table:
    """``table`` with a url and a title derived from each id (a title type per shard)."""
    ids = table.column("id").to_pylist()
    text = pa.large_string() if large else pa.string()
    return (table.append_column("url", pa.array([f"https://x.test/{i}" for i in ids]))
                 .append_column("title", pa.array([f"post {i}" if i % 7 else None
                                                   for i in ids], text)))


def expected(i: int) -> tuple[str, str | None]:
    return f"https://x.test/{i}", (f"post {i}" if i % 7 else None)


@pytest.fixture
def pool(tmp_path):
    return write_pool(tmp_path / "pool", [with_fields(make_pool_table(70, seed=1)),
                                          with_fields(make_pool_table(50, seed=4, first_id=70,
                                                                      labelled=False),
                                                      large=True)])


def check_rows(table: pa.Table) -> None:
    assert table.num_rows > 0
    for row in table.to_pylist():
        assert (row["url"], row["title"]) == expected(row["id"])


def test_score_writes_the_shown_columns_per_id(pool, tmp_path, one_thread):
    checkpoint = build_checkpoint(tmp_path / "model")
    out = tmp_path / "q.parquet"
    done = CliRunner().invoke(main, [
        "score", "--pool", pool, "--checkpoint", checkpoint, "--out", str(out), "--local",
        "--strategy", "margin,random", "--query-size", "6", "--score-batch-size", "16",
        "--show-columns", "url, title"], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    table = pq.read_table(out)
    assert table.column_names[-2:] == ["url", "title"]
    assert table.num_rows == 12
    check_rows(table)


def test_scores_out_keeps_the_shown_columns(pool, tmp_path, one_thread):
    checkpoint = build_checkpoint(tmp_path / "model")
    columns = PoolConfig(show_columns=("title",))
    tables = score_pool(pool, checkpoint, ScoreConfig(strategies=("entropy",), query_size=5),
                        columns, compute=ComputeConfig(local=True, score_batch_size=16),
                        scores_out=str(tmp_path / "scores"))
    table = write_query(tables, str(tmp_path / "q.parquet"), shown=columns.show_columns)
    for row in table.to_pylist():
        assert row["title"] == expected(row["id"])[1]


def test_a_loop_step_writes_them_into_its_query_files(pool, tmp_path, one_thread):
    val = write_pool(tmp_path / "val", [make_pool_table(40, seed=2, first_id=5000)])
    run = tmp_path / "run"
    done = CliRunner().invoke(main, [
        "loop", "--pool", pool, "--val", val, "--run-dir", str(run), "--initial", "30",
        "--query-size", "4", "--steps", "1", "--assessors", "--show-columns", "url,title",
        *FAST], catch_exceptions=False)
    assert done.exit_code == 0, done.output
    check_rows(pq.read_table(run / "queries" / "step-00001.parquet"))
    csv = pacsv.read_csv(run / "queries" / "step-00001.csv",
                         convert_options=pacsv.ConvertOptions(strings_can_be_null=True))
    assert csv.num_rows == 4
    check_rows(csv)


def test_a_simulated_loop_step_too(pool, tmp_path, one_thread):
    val = write_pool(tmp_path / "val", [make_pool_table(40, seed=2, first_id=5000)])
    run = tmp_path / "run"
    done = CliRunner().invoke(main, [
        "loop", "--pool", pool, "--val", val, "--run-dir", str(run), "--initial", "30",
        "--query-size", "4", "--steps", "1", "--show-columns", "title", *FAST],
        catch_exceptions=False)
    assert done.exit_code == 0, done.output
    table = pq.read_table(run / "queries" / "step-00001.parquet")
    assert table.num_rows == 4 and "url" not in table.column_names
    assert table.column("title").to_pylist() == [expected(i)[1] for i in
                                                 table.column("id").to_pylist()]


def test_a_missing_column_names_the_file_and_the_column(pool, tmp_path):
    val = write_pool(tmp_path / "val", [make_pool_table(40, seed=2, first_id=5000)])
    done = CliRunner().invoke(main, [
        "loop", "--pool", pool, "--val", val, "--run-dir", str(tmp_path / "run"),
        "--initial", "30", "--show-columns", "url,snippet", *FAST])
    assert done.exit_code == 2
    assert "no column 'snippet' to show (--show-columns)" in done.output
    assert "part-00000.parquet" in done.output and "url" in done.output.split("columns:")[1]
    assert not (tmp_path / "run").exists()


def test_a_shown_column_may_not_be_a_query_or_pool_column(pool, tmp_path):
    with pytest.raises(ConfigError, match="show_columns"):
        PoolConfig(show_columns=("label",))
    checkpoint = build_checkpoint(tmp_path / "model")
    with pytest.raises(PoolSchemaError, match="a query already has a column"):
        score_pool(pool, checkpoint, ScoreConfig(strategies=("margin",), query_size=3),
                   PoolConfig(show_columns=("score",)), compute=ComputeConfig(local=True))


def test_validate_checks_the_shown_columns(pool):
    ok = CliRunner().invoke(main, ["validate", pool, "--show-columns", "url,title"])
    assert ok.exit_code == 0, ok.output
    bad = CliRunner().invoke(main, ["validate", pool, "--show-columns", "url,snippet"])
    assert bad.exit_code == 2
    assert "no column 'snippet' to show (--show-columns)" in bad.output
