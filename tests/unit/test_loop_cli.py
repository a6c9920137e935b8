"""``alray loop`` and ``alray labels import`` from the command line (in-process, --local):
the assessor round trip and every bad input of a run, each a clear error and exit 2."""
from __future__ import annotations

import gc
import json
import os

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from alray.cli import main
from tests.conftest import make_pool_table, write_pool

FAST = ["--epochs", "2", "--classes", "5", "--local"]


@pytest.fixture
def pools(tmp_path):
    pool = write_pool(tmp_path / "pool", [make_pool_table(120, seed=1)])
    val = write_pool(tmp_path / "val", [make_pool_table(60, seed=2, first_id=5000)])
    return pool, val


def loop(*args):
    return CliRunner().invoke(main, ["loop", *args], catch_exceptions=False)


def new_loop(pools, run_dir, *extra):
    return loop("--pool", pools[0], "--val", pools[1], "--run-dir", str(run_dir),
                "--initial", "30", "--query-size", "4", *FAST, *extra)


@pytest.fixture
def assessor_pools(tmp_path):
    """A real pool for assessors: a labelled part (the initial set), unlabelled posts."""
    pool = write_pool(tmp_path / "apool", [make_pool_table(60, seed=1),
                                           make_pool_table(80, seed=3, first_id=60,
                                                           labelled=False)])
    return pool, write_pool(tmp_path / "aval", [make_pool_table(60, seed=2, first_id=5000)])


def test_assessor_round_trip_with_a_partial_answer(assessor_pools, tmp_path, one_thread):
    pools = assessor_pools
    run = tmp_path / "run"
    first = new_loop(pools, run, "--steps", "3", "--assessors")
    assert first.exit_code == 0, first.output
    assert "labels import" in first.output
    query = pacsv.read_csv(run / "queries" / "step-00001.csv")
    assert query.num_rows == 4
    ids = query.column("id").to_pylist()
    answers = run / "answers.csv"
    pacsv.write_csv(pa.table({"id": ids[:3], "label": [0, 1, 2]}), answers)  # one skipped
    imported = CliRunner().invoke(main, ["labels", "import", str(run), str(answers)])
    assert imported.exit_code == 0, imported.output
    assert "3 labelled, 1 skipped" in imported.output
    second = loop("--run-dir", str(run), "--resume", "--local")
    assert second.exit_code == 0, second.output
    labels = pq.read_table(run / "labels.parquet").to_pylist()
    step1 = [r for r in labels if r["step"] == 1]
    assert [r["source"] for r in step1] == ["assessor"] * 3 + ["skipped"]
    assert step1[3]["label"] is None and step1[3]["id"] == ids[3]
    next_query = pq.read_table(run / "queries" / "step-00002.parquet").column("id").to_pylist()
    assert not set(next_query) & set(ids)  # skipped posts are not asked again
    assert min(next_query) >= 60  # nor the pool's own labelled posts
    metrics = pq.read_table(run / "metrics.parquet")
    assert metrics.column("labelled").to_pylist() == [30, 33]


def test_resume_without_answers_is_refused(assessor_pools, tmp_path):
    pools = assessor_pools
    run = tmp_path / "run"
    assert new_loop(pools, run, "--steps", "2", "--assessors").exit_code == 0
    again = loop("--run-dir", str(run), "--resume", "--local")
    assert again.exit_code == 2
    assert "waits for labels" in again.output and "labels import" in again.output


def test_resume_with_other_options_shows_the_difference(pools, tmp_path, one_thread):
    run = tmp_path / "run"
    assert new_loop(pools, run, "--steps", "1").exit_code == 0
    before = (run / "state.json").read_bytes()
    result = loop("--run-dir", str(run), "--resume", "--freeze-batchnorm", "--lr", "0.01",
                  "--local")
    assert result.exit_code == 2
    assert "train.freeze_batchnorm: False -> True" in result.output
    assert "train.lr: 0.001 -> 0.01" in result.output
    assert (run / "state.json").read_bytes() == before


def test_new_run_into_an_existing_run_is_refused(pools, tmp_path, one_thread):
    run = tmp_path / "run"
    assert new_loop(pools, run, "--steps", "1").exit_code == 0
    again = new_loop(pools, run, "--steps", "1")
    assert again.exit_code == 2 and "--resume" in again.output


@pytest.mark.parametrize("args, message", [
    (["--initial", "500"], "initial set of 500 asked, the pool has 120 labelled posts"),
    (["--initial", "110", "--query-size", "20"], "larger than the pool's 120 posts"),
    (["--classes", "3"], "out of range for 3 classes"),
    (["--strategy", "nope"], "unknown strategy"),
])
def test_bad_run_options(pools, tmp_path, args, message):
    base = ["--pool", pools[0], "--val", pools[1], "--run-dir", str(tmp_path / "run"),
            "--epochs", "2", "--local", "--steps", "1"]
    defaults = {"--initial": "30", "--query-size": "4", "--classes": "5"}
    for flag, value in defaults.items():
        if flag not in args:
            base += [flag, value]
    result = loop(*base, *args)
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_validation_classes_unseen_in_the_pool_warn_and_are_counted(tmp_path, one_thread):
    """Rare classes: the validation pool may hold classes the pool never has; the run
    warns, goes on, and counts those posts as unreachable in every metrics row."""
    import warnings

    pool_table = make_pool_table(100, classes=3, seed=1)
    val_table = make_pool_table(50, classes=5, seed=2, first_id=900)
    pool = write_pool(tmp_path / "pool", [pool_table])
    val = write_pool(tmp_path / "val", [val_table])
    shown = warnings.showwarning
    result = loop("--pool", pool, "--val", val, "--run-dir", str(tmp_path / "run"),
                  "--initial", "20", "--query-size", "4", "--steps", "1", *FAST)
    assert result.exit_code == 0, result.output
    # the CLI says it as one alray line, and leaves Python's warning display as it was
    assert ("alray: warning: " in result.stderr and "validation posts have classes the "
            "pool never has (3, 4)" in result.stderr)
    assert warnings.showwarning is shown
    unreachable = sum(1 for v in val_table.column("label").to_pylist() if v >= 3)
    metrics = pq.read_table(tmp_path / "run" / "metrics.parquet").to_pylist()
    assert [m["val_unreachable"] for m in metrics] == [unreachable, unreachable]


def test_pool_change_is_refused_unless_allowed(pools, tmp_path, one_thread):
    run = tmp_path / "run"
    assert new_loop(pools, run, "--steps", "1").exit_code == 0
    shard = os.path.join(pools[0], "part-00000.parquet")
    pq.write_table(make_pool_table(120, seed=7), shard)  # same ids, new content
    refused = loop("--run-dir", str(run), "--resume", "--steps", "2", "--local")
    assert refused.exit_code == 2
    assert "part-00000.parquet" in refused.output and "--allow-pool-change" in refused.output
    allowed = loop("--run-dir", str(run), "--resume", "--steps", "2", "--local",
                   "--allow-pool-change")
    assert allowed.exit_code == 0, allowed.output
    assert json.loads((run / "state.json").read_text())["step"] == 2


@pytest.mark.parametrize("damage, message", [
    ("state", "corrupt run state"),
    ("version", "run format version 99"),
    ("labels", "corrupt labels file"),
])
def test_damaged_run_directory(pools, tmp_path, damage, message, one_thread):
    run = tmp_path / "run"
    assert new_loop(pools, run, "--steps", "1").exit_code == 0
    if damage == "state":
        (run / "state.json").write_text("{not json")
    elif damage == "version":
        meta = json.loads((run / "run.json").read_text())
        (run / "run.json").write_text(json.dumps({**meta, "version": 99}))
    else:
        (run / "labels.parquet").write_bytes(b"PAR1 garbage")
    files = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    result = loop("--run-dir", str(run), "--resume", "--steps", "2", "--local")
    assert result.exit_code == 2
    assert message in result.output
    del result  # its traceback holds the refused command's run, and so its lock
    gc.collect()
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == files
