"""``alray online queue`` and the routed posts' journal, without Ray: an assessor-mode
run directory after its passive step, routed shards written by the service's own writer."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from alray.cli import main
from alray.serve import queue
from alray.serve.config import ServeConfig
from alray.serve.routing import JOURNAL, Coordinator, RoutedWriter, routed_rows
from tests.conftest import make_pool_table, write_pool

CONFIG = ServeConfig(checkpoint="unused")


@pytest.fixture
def run_dir(tmp_path):
    """An assessor-mode run whose passive step is done (what ``online queue`` needs of
    it); pool ids 0..59 labelled, 60..139 not."""
    from alray.config import LoopConfig
    from alray.loop.setup import fingerprints
    from alray.loop.state import RunDir, RunState

    pool = write_pool(tmp_path / "pool", [make_pool_table(60, seed=1),
                                          make_pool_table(80, seed=3, first_id=60,
                                                          labelled=False)])
    val = write_pool(tmp_path / "val", [make_pool_table(40, seed=2, first_id=5000)])
    config = LoopConfig(pool_uri=pool, val_uri=val, initial=30, assessors=True)
    run = RunDir.create(tmp_path / "run", config, fingerprints(config))
    run.write_state(RunState(step=0, checkpoint="checkpoints/step-00000"))
    getattr(run, "close", lambda: None)()
    return tmp_path / "run"


def routed(table: pa.Table, seed: int = 0) -> pa.Table:
    """``table``'s posts as the service routes them (every one routed)."""
    n = table.num_rows
    rng = np.random.default_rng(seed)
    result = {"score_margin": -rng.random(n), "predicted_class": rng.integers(0, 5, n),
              "predicted_prob": rng.random(n)}
    posts = table.select(["id", "image_emb", "text_emb"])
    return routed_rows(posts, result, np.ones(n, dtype=bool), CONFIG, -0.5, "ckpt")


def write_routed(run_dir, table: pa.Table) -> None:
    writer = RoutedWriter.open(run_dir / "online")
    writer.add(routed(table))
    writer.flush()


def pool_rows(run_dir, ids: list) -> pa.Table:
    pool = pq.read_table(run_dir.parent / "pool")
    return pool.filter(pa.compute.is_in(pool.column("id"), pa.array(ids, pa.int64())))


class Killed(Exception):
    pass


@pytest.mark.parametrize("kill_point", ["after the pool shard", "before the query"])
def test_queue_killed_midway_finishes_when_run_again(run_dir, monkeypatch, kill_point):
    from alray.loop.setup import reopen_run
    from alray.loop.state import RunDir

    new_posts = make_pool_table(6, seed=9, first_id=90_000, labelled=False)
    write_routed(run_dir, new_posts)
    if kill_point == "after the pool shard":
        original = queue._add_to_pool

        def add_then_die(*args):
            original(*args)
            raise Killed

        monkeypatch.setattr(queue, "_add_to_pool", add_then_die)
    else:
        monkeypatch.setattr(RunDir, "write_query", lambda *a, **k: (_ for _ in ()).throw(
            Killed()))
    with pytest.raises(Killed):
        queue.queue_routed(run_dir)
    monkeypatch.undo()
    assert RunDir.open(run_dir).read_state().open_query is None
    assert (run_dir.parent / "pool" / "online" / "step-00001.parquet").exists()

    out = queue.queue_routed(run_dir)  # the same command again finishes the step
    run = RunDir.open(run_dir)
    assert run.read_state().open_query == out["step"] == 1
    assert sorted(run.read_query(1).column("id").to_pylist()) == list(range(90_000, 90_006))
    shard = pq.read_table(run_dir.parent / "pool" / "online" / "step-00001.parquet")
    assert sorted(shard.column("id").to_pylist()) == list(range(90_000, 90_006))
    reopen_run(run_dir)  # refuses no pool change: the shard is the run's own now
    assert not queue.pending_shards(run_dir)


def test_a_routed_post_with_a_pool_id_trains_its_own_embedding_or_is_refused(run_dir):
    from alray.loop.state import RunDir

    same = pool_rows(run_dir, [70]).drop_columns(["label"])        # the pool's own post
    other = make_pool_table(1, seed=4, first_id=71, labelled=False)  # id 71, other vectors
    new = make_pool_table(2, seed=5, first_id=90_000, labelled=False)
    write_routed(run_dir, pa.concat_tables([same.cast(new.drop_columns(["label"]).schema),
                                            other.drop_columns(["label"]),
                                            new.drop_columns(["label"])]))
    out = queue.queue_routed(run_dir)
    assert out["refused"] == [71]
    assert sorted(RunDir.open(run_dir).read_query(1).column("id").to_pylist()) == [
        70, 90_000, 90_001]
    result = CliRunner().invoke(main, ["online", "queue", str(run_dir)])
    assert result.exit_code == 2  # the open query waits: nothing queued twice


def test_the_query_csv_escapes_formulas_and_keeps_numbers(run_dir):
    from alray.loop.setup import reopen_run
    from alray.pool.labels_file import parse_id

    ids = ["=HYPERLINK(\"http://x\")", "-2+3", "@SUM(A1)", "+1", "'quoted", "plain"]
    table = pa.table({"id": ids, "score": [-0.25, 1.5, -3.0, 0.0, 2.0, 1.0],
                      "strategy": ["margin", "=cmd", "margin", "margin", "margin", "m"]})
    run = reopen_run(run_dir)  # a writer's RunDir
    run.write_query(table, 7, csv=True)
    lines = run.query_path(7, ".csv").read_text().splitlines()
    assert lines[1] == '"\'=HYPERLINK(""http://x"")",-0.25,"margin"'
    assert lines[2] == '"\'-2+3",1.5,"\'=cmd"'
    assert [line.split(",")[0] for line in lines[3:]] == ['"\'@SUM(A1)"', '"\'+1"',
                                                         '"\'\'quoted"', '"plain"']
    # an answer file with the escaped ids reads back the original ids
    import pyarrow.csv as pacsv
    read = pacsv.read_csv(run.query_path(7, ".csv"), convert_options=pacsv.ConvertOptions(
        column_types={"id": pa.string()})).column("id").to_pylist()
    assert [parse_id(v, int_ids=False)[0] for v in read] == ids


def test_routed_posts_in_the_journal_survive_a_crash(tmp_path):
    posts = make_pool_table(5, seed=1, first_id=100, labelled=False)
    writer = RoutedWriter.open(tmp_path)
    writer.add(routed(posts.slice(0, 3)))
    writer.add(routed(posts.slice(3, 2)))
    assert not list(tmp_path.glob("routed-*.parquet"))  # buffered, not yet a shard
    del writer  # the process dies: no flush
    with open(tmp_path / JOURNAL, "ab") as f:
        f.write(b"\xff\xff\xff\xff\x10\x00")  # a batch torn by the crash
    again = RoutedWriter.open(tmp_path)
    assert again.replayed is not None and not (tmp_path / JOURNAL).exists()
    assert pq.read_table(again.replayed).column("id").to_pylist() == [100, 101, 102, 103, 104]
    again.add(routed(posts.slice(0, 1)))
    assert again.flush().endswith("routed-000001.parquet")


def test_a_restarted_coordinator_never_hands_out_an_older_version():
    coordinator = Coordinator(CONFIG.to_dict(), "first")  # as Ray restarts it: version 0
    assert coordinator.current("replica", 4, "/ck/four") == {"checkpoint": "/ck/four",
                                                              "version": 4}
    assert coordinator.reload("/ck/five")["version"] == 5
    assert coordinator.current("other", 3, "/ck/three")["version"] == 5
