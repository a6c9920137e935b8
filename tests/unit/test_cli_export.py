"""`--export label-studio` on `alray loop --assessors` and `alray score`: the query as
Label Studio tasks and its labelling config, beside the query."""
from __future__ import annotations

import json

from click.testing import CliRunner

from alray.cli import main
from tests.conftest import make_pool_table, write_pool


def test_loop_and_score_write_label_studio_tasks(tmp_path):
    pool = write_pool(tmp_path / "pool", [make_pool_table(120, seed=1),
                                          make_pool_table(80, seed=2, first_id=500,
                                                          labelled=False)])
    val = write_pool(tmp_path / "val", [make_pool_table(40, seed=3, first_id=900)])
    names = tmp_path / "names.txt"
    names.write_text("\n".join(f"topic {i}" for i in range(5)) + "\n")
    run = tmp_path / "run"
    looped = CliRunner().invoke(main, [
        "loop", "--pool", pool, "--val", val, "--run-dir", str(run), "--assessors",
        "--initial", "40", "--query-size", "6", "--steps", "1", "--epochs", "2",
        "--classes", "5", "--local", "--export", "label-studio", "--class-names", str(names)])
    assert looped.exit_code == 0, looped.output
    tasks = json.loads((run / "queries" / "step-00001.label-studio.json").read_text())
    assert len(tasks) == 6
    assert {t["data"]["alray_id"] for t in tasks} <= set(range(500, 580))  # unlabelled only
    config = (run / "queries" / "step-00001.label-studio.xml").read_text()
    assert "topic 4" in config and "topic 5" not in config
    scored = CliRunner().invoke(main, [
        "score", "--pool", pool, "--checkpoint", str(run / "checkpoints" / "step-00000"),
        "--query-size", "3", "--out", str(tmp_path / "q.parquet"), "--local",
        "--export", "label-studio"])
    assert scored.exit_code == 0, scored.output
    assert len(json.loads((tmp_path / "q.label-studio.json").read_text())) == 3
