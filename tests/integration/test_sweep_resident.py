"""A sweep's trials share one resident pool: the streaming sweep's labels and metrics,
the actors read their parts once, answer every trial's steps and are gone after it."""
from __future__ import annotations

import time

import numpy as np
import pytest

from alray.config import ComputeConfig, PoolConfig
from alray.errors import ConfigError
from alray.experiments.shared_pool import SHARED_ACTOR_CPUS, check_fits, shared_pools
from alray.experiments.sweep import SweepConfig, grid_points, run_sweep, trial_name
from alray.loop.setup import new_config
from alray.scoring.resident import ResidentPool
from tests.conftest import make_pool_table, write_pool
from tests.unit.test_loop_resume import results

STEPS = 2
SETTINGS = {"initial": 40, "score.query_size": 5, "train.epochs": 3, "model.n_classes": 5}


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep-pools")
    pool = write_pool(root / "pool", [make_pool_table(150, seed=i, first_id=150 * i)
                                      for i in range(2)])
    val = write_pool(root / "val", [make_pool_table(80, seed=9, first_id=10_000)])
    return pool, val


def sweep_in(out, pools, **options) -> SweepConfig:
    loop = new_config(pools[0], pools[1], PoolConfig(), dict(SETTINGS))
    return SweepConfig(loop=loop, steps=STEPS, strategies=("random", "margin"), seeds=(0, 1),
                       out=str(out), **options)


def test_trials_share_one_resident_pool_and_match_streaming(ray_session, pools, tmp_path,
                                                            monkeypatch):
    streamed = sweep_in(tmp_path / "streaming", pools)
    run_sweep(streamed, verbose=0, compute=ComputeConfig(resident=False))

    closed = []  # (handle's actors, their info) when the driver closes the pool
    real_close = ResidentPool.close
    monkeypatch.setattr(ResidentPool, "close", lambda self: closed.append(
        (list(self.actors), self.info())) or real_close(self))
    shared = sweep_in(tmp_path / "resident", pools)
    # 2 actors of the default token CPUs beside two 1-CPU trials on the 2-CPU Ray
    run_sweep(shared, verbose=0, compute=ComputeConfig(score_actors=2, score_batch_size=64))

    assert len(closed) == 1  # one pool for the grid's one pool, closed once
    actors, info = closed[0]
    assert [i["loads"] for i in info] == [1, 1] and sum(i["rows"] for i in info) == 300
    # every step of every trial was scored by both actors
    assert [i["scored"] for i in info] == [len(grid_points(shared)) * STEPS] * 2
    for actor in actors:
        assert_dies(ray_session, actor)
    # the actors' CPUs came out of the trials': two trial processes ran side by side
    # (Tune reuses a finished trial's process, so trials run one by one share one pid)
    assert len(trial_pids(tmp_path / "resident")) == 2
    for params in grid_points(shared):
        name = trial_name(shared, params)
        labels, metrics = results(tmp_path / "resident" / "runs" / name)
        want_labels, want_metrics = results(tmp_path / "streaming" / "runs" / name)
        assert labels.equals(want_labels), name
        assert metrics.column_names == want_metrics.column_names
        for column in metrics.column_names:
            np.testing.assert_allclose(metrics.column(column).to_numpy(),
                                       want_metrics.column(column).to_numpy(), rtol=1e-6)


def trial_pids(out) -> set[int]:
    import json

    return {json.loads(path.read_text().splitlines()[0])["pid"]
            for path in out.glob("tune/*/result.json")}


def test_actors_leaving_no_room_for_a_trial_are_refused(ray_session, pools, tmp_path):
    sweep = sweep_in(tmp_path / "s", pools, cpus_per_trial=1.5)
    with pytest.raises(ConfigError, match=r"1 actor\(s\) x 1 CPU .* one trial's 1.5 CPU "
                                          r"\(--cpus-per-trial\) exceed the cluster's 2 CPUs"):
        run_sweep(sweep, verbose=0, compute=ComputeConfig(score_cpus_per_actor=1.0))
    assert not (tmp_path / "s" / "runs").exists()
    # the default token share fits beside it
    check_fits(ComputeConfig(score_cpus_per_actor=SHARED_ACTOR_CPUS, score_actors=4), 1,
               1.5, 2.0)


def assert_dies(ray, actor, within_s: float = 60.0) -> None:
    """``actor`` stops answering within ``within_s``: ray.kill only asks for the kill, so
    a call sent just after it can still be served (seen under load in a full run)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            ray.get(actor.info.remote(), timeout=within_s)
        except ray.exceptions.RayActorError:
            return
        time.sleep(0.2)
    pytest.fail(f"the resident actor still answered {within_s:g} s after the pool closed")


def test_the_shared_pool_is_closed_when_the_sweep_fails(ray_session, pools):
    loop = new_config(pools[0], pools[1], PoolConfig(), dict(SETTINGS))
    with pytest.raises(KeyboardInterrupt):
        with shared_pools([loop, loop], ComputeConfig(), 1.0) as opened:
            (handle,) = opened.values()  # one pool for two trials on it
            actors = list(handle.actors)
            assert [i["loads"] for i in handle.info()] == [1]
            raise KeyboardInterrupt
    assert_dies(ray_session, actors[0])
    with shared_pools([loop], ComputeConfig(resident=False), 1.0) as opened:
        assert opened == {}


def test_alray_sweep_compute_options_choose_the_path_not_the_science(pools, tmp_path):
    from alray.cli.experiments import sweep, sweep_config
    from alray.cli.options import compute_config
    from alray.experiments.shared_pool import sweep_compute

    base = ["--pool", pools[0], "--val", pools[1], "--out", str(tmp_path / "s"),
            "--initial", "30"]
    for extra, resident, cpus in (([], True, SHARED_ACTOR_CPUS),
                                  (["--streaming", "--actors", "3",
                                    "--num-cpus-per-actor", "0.2"], False, 0.2)):
        params = sweep.make_context("sweep", base + extra).params
        compute = sweep_compute(compute_config(params))
        assert compute.resident is resident and compute.cpus_per_actor == cpus
        cfg = sweep_config(params.pop("config_file"), params.pop("smoke"),
                           params.pop("resume"),
                           {k: v for k, v in params.items() if k != "address"})
        assert cfg.loop.initial == 30  # the same sweep either way
    assert compute.score_actors == 3
