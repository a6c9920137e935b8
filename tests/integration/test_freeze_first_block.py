"""The cached first block on Ray: ResidentPool.score with ``first_block`` gives the raw
path's query (margin and BALD), and a --freeze-first-block loop scored by its resident
actors labels the posts the in-process loop labels."""
from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
from click.testing import CliRunner

from alray.config import ComputeConfig, PoolConfig, ScoreConfig
from alray.scoring.pipeline import score_pool
from alray.scoring.resident import ResidentPool
from tests.conftest import make_pool_table, write_pool
from tests.unit.test_freeze_first_block import small_state
from tests.unit.test_loop_resume import LOOP_ARGS, pools, results  # noqa: F401
from tests.unit.test_resident import assert_same

RESIDENT = ComputeConfig(score_actors=2, score_cpus_per_actor=0.25, score_batch_size=64)
LOCAL = ComputeConfig(local=True, score_batch_size=29)


def test_resident_pool_with_the_cached_first_block_gives_the_raw_query(ray_session,
                                                                       tmp_path):
    pool = write_pool(tmp_path / "pool", [make_pool_table(n, seed=60 + i, first_id=1000 * i)
                                          for i, n in enumerate((300, 170))])
    score = ScoreConfig(strategies=("margin", "bald"), query_size=15, mc_samples=20, seed=2)
    state, exclude = small_state(3), [0, 1, 1005]
    handle = ResidentPool.open(pool, PoolConfig(), RESIDENT)
    try:
        for step in (1, 2):
            got = handle.score(state, score, exclude, step, carry=True, first_block=True)
            assert_same(score_pool(pool, state, score, exclude_ids=exclude, step=step,
                                   compute=LOCAL, carry=True), got)
            exclude += got["margin"].column("id").to_pylist()
        info = handle.info()
        assert [i["loads"] for i in info] == [1, 1]  # one cache for both steps
        assert len({i["first_block"] for i in info}) == 1 and info[0]["first_block"]
        rows = sum(i["rows"] for i in info)
        features = sum(i["bytes"] for i in info) - rows * (8 + 8 + 2)  # ids, labels, masks
        assert rows == 470 and features == rows * (5 + 3) * 4  # not rows x (8 + 4) x 4
    finally:
        handle.close()


def test_a_frozen_first_block_loop_on_ray_labels_what_the_local_loop_labels(
        ray_session, pools, tmp_path, monkeypatch):  # noqa: F811
    from alray.cli import main

    asked = []
    real = ResidentPool.score
    monkeypatch.setattr(ResidentPool, "score", lambda self, *a, **k:
                        asked.append(k.get("first_block")) or real(self, *a, **k))
    runs = {}
    for name, extra in (("local", []), ("ray", ["--actors", "2", "--num-cpus-per-actor",
                                                "0.5", "--score-batch-size", "64"])):
        args = [a for a in LOOP_ARGS if a != "--local" or name == "local"]
        out = CliRunner().invoke(main, [
            "loop", "--pool", pools[0], "--val", pools[1], "--run-dir", str(tmp_path / name),
            "--steps", "3", "--freeze-first-block", *args, *extra])
        assert out.exit_code == 0, out.output
        runs[name] = results(tmp_path / name)
    assert asked == [True, True, True]
    (labels, metrics), (want_labels, want_metrics) = runs["ray"], runs["local"]
    assert labels.equals(want_labels)
    assert pc.max(labels.column("step")).as_py() == 3
    np.testing.assert_allclose(metrics.column("fused_accuracy").to_numpy(),
                               want_metrics.column("fused_accuracy").to_numpy(), rtol=1e-6)
