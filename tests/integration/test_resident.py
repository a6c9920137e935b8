"""The resident pool on Ray: the streaming path's query step after step, actors killed
between and during steps, the memory refusal and fallback, and the loop using it."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from alray.config import ComputeConfig, PoolConfig, ScoreConfig
from alray.scoring.pipeline import score_pool
from alray.scoring.resident import (ResidentFallback, ResidentMemoryError, ResidentPool,
                                    open_resident)
from tests.conftest import make_pool_table, write_pool
from tests.unit.test_loop_resume import (  # noqa: F401 (fixture: pools)
    LOOP_ARGS, pools, results, run_in_process)
from tests.unit.test_resident import ALL, assert_same
from tests.unit.test_scorer import build_checkpoint

LOOP_STEPS = 3
LOCAL = ComputeConfig(local=True, score_batch_size=29)
# 2 x 0.25 CPU: Ray Data's streaming actor (0.5) and its read tasks need the rest
RESIDENT = ComputeConfig(score_actors=2, score_cpus_per_actor=0.25, score_batch_size=64)
SCORE = ScoreConfig(strategies=ALL, query_size=12, mc_samples=5, seed=4, candidates=300,
                    class_balance=0.3, sampling="softmax")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    tables = [make_pool_table(n, seed=40 + i, first_id=1000 * i)
              for i, n in enumerate((300, 170, 250))]
    return write_pool(tmp_path_factory.mktemp("pool") / "pool", tables)


@pytest.fixture(scope="module")
def reference(pools, tmp_path_factory):
    """The loop test's LOOP_STEPS steps without Ray (--local), in this process."""
    return run_in_process(pools, tmp_path_factory.mktemp("reference") / "run", LOOP_STEPS)


@pytest.fixture
def resident(ray_session, pool):
    handle = ResidentPool.open(pool, PoolConfig(), RESIDENT)
    yield handle
    handle.close()


def test_the_query_of_every_step_is_the_streaming_paths(resident, pool, checkpoint):
    streaming = ComputeConfig(score_actors=1, score_cpus_per_actor=0.5, score_batch_size=50)
    exclude = [0, 1, 1005, 2100]
    for step in (1, 2, 3):
        got = resident.score(checkpoint, SCORE, exclude, step, carry=True)
        local = score_pool(pool, checkpoint, SCORE, exclude_ids=exclude, step=step,
                           compute=LOCAL, carry=True)
        assert_same(local, got)
        if step == 1:  # Ray Data's streaming path once (it equals the local path)
            assert_same(score_pool(pool, checkpoint, SCORE, exclude_ids=exclude, step=step,
                                   compute=streaming, carry=True), got)
        exclude += got["margin"].column("id").to_pylist()
    info = resident.info()
    assert [i["loads"] for i in info] == [1, 1] and sum(i["rows"] for i in info) == 720
    assert len({i["pid"] for i in info}) == 2


def test_an_actor_killed_between_steps_rereads_its_part_only(resident, pool, checkpoint):
    import ray

    score = SCORE.replace(strategies=("margin", "bald"), candidates=0)
    resident.score(checkpoint, score, None, 1)
    before = resident.info()
    ray.kill(resident.actors[0], no_restart=False)
    got = resident.score(checkpoint, score, None, 2)
    assert_same(score_pool(pool, checkpoint, score, step=2, compute=LOCAL), got)
    after = resident.info()
    assert after[0]["pid"] != before[0]["pid"] and after[0]["loads"] == 1
    assert after[0]["rows"] == before[0]["rows"] == 360
    assert after[1]["pid"] == before[1]["pid"] and after[1]["loads"] == 1


def test_an_actor_killed_mid_step_gives_the_same_query(resident, pool, checkpoint):
    import ray

    score = SCORE.replace(strategies=("bald", "entropy"), candidates=0, mc_samples=20)
    want = score_pool(pool, checkpoint, score, step=5, compute=LOCAL)
    old_pid = resident.load()[1]["pid"]
    real = resident.actors[1].score

    class KillAfterSending:  # the step's calls are in flight when the actor dies
        def remote(self, *args):
            ref = real.remote(*args)
            ray.kill(resident.actors[1], no_restart=False)
            return ref

    resident.actors[1].score = KillAfterSending()
    try:
        got = resident.score(checkpoint, score, None, 5)
    finally:
        resident.actors[1].score = real
    assert_same(want, got)
    info = resident.info()[1]
    assert info["pid"] != old_pid and info["loads"] == 1


def test_a_pool_over_the_allowed_memory_is_refused_or_streamed(ray_session, pool):
    tight = RESIDENT.replace(resident_memory_mb=1)  # 720 rows x 12 dims fit; 1 MiB...
    big = write_pool(pool + "-big", [make_pool_table(30_000, 64, 32, seed=1)])
    with pytest.raises(ResidentMemoryError, match=r"needs \d+ MiB on a node .* more than "
                                                  r"the 1 MiB allowed"):
        ResidentPool.open(big, PoolConfig(), tight.replace(score_actors=1))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert open_resident(big, PoolConfig(), tight.replace(score_actors=1)) is None
    assert any(issubclass(w.category, ResidentFallback) and "streaming" in str(w.message)
               for w in caught)
    assert open_resident(big, PoolConfig(), tight.replace(resident=False)) is None
    handle = open_resident(pool, PoolConfig(), tight)
    assert handle is not None
    handle.close()


def test_the_loop_on_ray_scores_with_the_resident_pool(ray_session, pools, reference,
                                                       tmp_path, monkeypatch):
    from alray.cli import main

    calls = []
    real = ResidentPool.score
    monkeypatch.setattr(ResidentPool, "score",
                        lambda self, *a, **k: calls.append(a[3]) or real(self, *a, **k))
    args = [a for a in LOOP_ARGS if a != "--local"]
    run_dir = tmp_path / "run"
    out = CliRunner().invoke(main, [
        "loop", "--pool", pools[0], "--val", pools[1], "--run-dir", str(run_dir),
        "--steps", str(LOOP_STEPS), *args, "--actors", "2", "--num-cpus-per-actor", "0.5",
        "--score-batch-size", "64"])
    assert out.exit_code == 0, out.output
    assert calls == [1, 2, 3]
    labels, metrics = results(run_dir)
    want_labels, want_metrics = reference
    assert labels.equals(want_labels)
    for name in ("fused_accuracy", "labelled"):
        np.testing.assert_allclose(metrics.column(name).to_numpy(),
                                   want_metrics.column(name).to_numpy(), rtol=1e-6)
