"""RayTraining: a long-lived Ray Train worker group answering training requests."""
from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from alray.config import ComputeConfig, ScoreConfig
from alray.errors import AlrayError
from alray.scoring.pipeline import score_pool
from alray.train.service import LocalTraining, RayTraining
from alray.train.worker import new_request
from tests.conftest import make_pool_table, write_pool
from tests.unit.model_helpers import SMALL
from tests.unit.test_scorer import build_checkpoint
from tests.unit.test_train_worker import TRAIN, make_data, same


def live_actors() -> dict[str, str]:
    """actor id -> class name of every actor not DEAD (alive, pending, restarting),
    from the GCS (no dashboard needed)."""
    from ray._private import state

    return {aid: a["ActorClassName"] for aid, a in state.actors().items()
            if a["State"] != "DEAD"}


def _catch(fn, arg, errors: list) -> None:
    try:
        fn(arg)
    except Exception as exc:  # handed to the test thread
        errors.append(exc)


@pytest.fixture(scope="module")
def service(ray_session, tmp_path_factory):
    with RayTraining.start(workers=1, threads=1,
                     storage_path=str(tmp_path_factory.mktemp("train"))) as svc:
        yield svc


def test_ray_equals_local_bitwise_on_one_reused_worker(service):
    data, more = make_data(), make_data(90, seed=1)
    fit_request = new_request("fit", SMALL, TRAIN, data)
    local, remote = LocalTraining().run(fit_request), service.run(fit_request)
    assert same(local["weights"], remote["weights"])
    assert same(local["train_state"], remote["train_state"])
    tune = new_request("fine_tune", SMALL, TRAIN, more, remote["weights"],
                       remote["train_state"], step_seed=3)
    local2, remote2 = LocalTraining().run(tune), service.run(tune)
    assert same(local2["weights"], remote2["weights"])
    assert same(local2["train_state"], remote2["train_state"])
    assert remote["pid"] == remote2["pid"] == service._group.pids[0] != os.getpid()
    assert remote2["history"][0]["loss"] == local2["history"][0]["loss"]


def test_a_bad_request_raises_as_locally_and_the_worker_keeps_serving(service):
    data = make_data()
    data.labels[:3] = -1
    with pytest.raises(ValueError, match="unlabelled"):
        service.run(new_request("fit", SMALL, TRAIN, data))
    reply = service.run(new_request("fit", SMALL, TRAIN.replace(epochs=1), make_data()))
    assert reply["pid"] == service._group.pids[0] and service.restarts == 0


def test_scoring_runs_beside_an_idle_training_worker(service, tmp_path):
    # 2 CPUs: the worker's 0.5 + a scoring actor's 0.5 leave the read tasks their CPU
    pool = write_pool(tmp_path / "pool", [make_pool_table(60, seed=20 + i, first_id=100 * i)
                                          for i in range(2)])
    checkpoint = build_checkpoint(tmp_path / "ckpt")
    config = ScoreConfig(strategies=("margin",), query_size=5)
    query = score_pool(pool, checkpoint, config,
                       compute=ComputeConfig(score_batch_size=32, score_cpus_per_actor=0.5))
    assert query["margin"].num_rows == 5
    assert service.run(new_request("fit", SMALL, TRAIN.replace(epochs=1), make_data()))


def test_a_killed_worker_is_replaced_and_the_request_resent(service):
    request = new_request("fit", SMALL, TRAIN, make_data())
    expected = LocalTraining().run(request)
    old = service._group.pids[0]
    os.kill(old, signal.SIGKILL)
    reply = service.run(request)
    assert service.restarts == 1 and reply["pid"] != old
    assert same(reply["weights"], expected["weights"])


def test_two_data_parallel_workers_learn_and_close_leaves_no_actor(ray_session, tmp_path):
    before = live_actors()
    data = make_data(400, seed=5)
    train = TRAIN.replace(epochs=8, batch_size=64)
    with RayTraining.start(workers=2, cpus_per_worker=0.5, threads=1,
                     storage_path=str(tmp_path)) as svc:
        assert len(set(svc._group.pids)) == 2
        reply = svc.run(new_request("fit", SMALL, train, data))
        assert reply["workers"] == 2
        losses = [r["loss"] for r in reply["history"]]
        single = LocalTraining().run(new_request("fit", SMALL, train, data))["history"]
        # the same descent as one process (not bitwise: per-rank BatchNorm and dropout)
        assert losses[-1] < losses[0] - 0.3
        assert abs(losses[-1] - single[-1]["loss"]) < 0.1 * single[-1]["loss"]
        tuned = svc.run(new_request("fine_tune", SMALL, train, data, reply["weights"],
                                    reply["train_state"], step_seed=1))
        assert tuned["history"][0]["loss"] < losses[0]
        # close while a long request runs: after 1 s the run is aborted, the caller told
        errors = []
        long = new_request("fit", SMALL, train.replace(epochs=100_000), data)
        thread = threading.Thread(target=lambda: _catch(svc.run, long, errors))
        thread.start()
        time.sleep(1.0)
        svc.close(timeout_s=1.0)
        thread.join(timeout=30)
        assert not thread.is_alive() and "closed during the request" in str(errors[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        # Ray Data's AutoscalingCoordinator is a detached cluster-wide singleton, not ours
        left = {a: c for a, c in live_actors().items()
                if a not in before and c != "_AutoscalingCoordinatorActor"}
        if not left:
            break
        time.sleep(0.5)
    assert not left, f"actors still alive after close: {sorted(left.values())}"
    with pytest.raises(AlrayError, match="closed"):
        svc.run(new_request("fit", SMALL, train, data))


def test_a_group_the_cluster_cannot_hold_fails_at_once(ray_session):
    started = time.monotonic()
    with pytest.raises(AlrayError, match="need 3 CPU; the Ray cluster has 2"):
        RayTraining.start(workers=3, cpus_per_worker=1.0)
    with pytest.raises(AlrayError, match="GPU"):
        RayTraining.start(use_gpu=True)
    assert time.monotonic() - started < 5
