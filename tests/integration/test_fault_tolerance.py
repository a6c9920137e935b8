"""A lost node costs time, not results: faults on a simulated three-node cluster.

Each scenario runs in a child process (``tests/integration/cluster_scenarios.py``) that
builds a head and two worker nodes with ``ray.cluster_utils.Cluster``, kills one worker
node (SIGKILL of all its processes) or the driver at the chosen moment, and reports. The
results are compared with undisturbed in-process runs, which the Ray paths equal
exactly (tested elsewhere).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from alray.config import ComputeConfig, ScoreConfig
from alray.scoring.pipeline import score_pool
from tests.conftest import make_pool_table, write_pool
from tests.unit.test_loop_resume import (  # noqa: F401 (fixtures: pools, reference)
    LOOP_ARGS, pools, reference, results)
from tests.unit.test_scorer import build_checkpoint

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCENARIO_TIMEOUT_S = 400
CLUSTER_STEPS = 3  # each step pays Ray Data's start-up on the cluster: keep them few
CLUSTER_ARGS = [a for a in LOOP_ARGS if a != "--local"] + [
    "--actors", "1", "--num-cpus-per-actor", "0.5", "--score-batch-size", "64"]


def reference_until(reference, step: int):
    """The undisturbed run's labels and metrics up to ``step``."""
    import pyarrow.compute as pc

    labels, metrics = reference
    return (labels.filter(pc.less_equal(labels.column("step"), step)),
            metrics.filter(pc.less_equal(metrics.column("step"), step)))


def run_scenario(tmp_path, name: str, *args: str) -> dict:
    out = tmp_path / f"{name}.json"
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.cluster_scenarios", name, str(out),
         *map(str, args)], cwd=REPO, capture_output=True, text=True,
        timeout=SCENARIO_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-4000:]
    with open(out) as f:
        return json.load(f)


def pool_and_checkpoint(tmp_path, shards: int, seed: int) -> tuple[str, str]:
    """A pool of ``shards`` shards of 5,000 rows and a small model's checkpoint."""
    pool = write_pool(tmp_path / "pool", [make_pool_table(5000, seed=seed + i,
                                                          first_id=10_000 * i)
                                          for i in range(shards)])
    return pool, build_checkpoint(tmp_path / "model")


def test_scoring_survives_a_worker_node_killed_mid_way(tmp_path):
    # big enough that scoring outlasts a few of the progress polls (every 0.5 s) on
    # which the scenario kills a node: 16k rows could finish between two polls
    pool, ckpt = pool_and_checkpoint(tmp_path, shards=8, seed=30)
    seen = run_scenario(tmp_path, "scoring", pool, ckpt)
    assert seen["killed"] and 0 < seen["at_rows"] < seen["total"], seen
    expected = score_pool(pool, ckpt, ScoreConfig(strategies=("margin", "bald"),
                                                  query_size=25, mc_samples=8),
                          compute=ComputeConfig(local=True, score_batch_size=50))
    for strategy, table in expected.items():
        assert seen["queries"][strategy] == table.column("id").to_pylist()
        assert seen["scores"][strategy] == table.column("score").to_pylist()


def test_a_resident_actor_whose_node_dies_mid_step_reads_its_part_again(tmp_path):
    pool, ckpt = pool_and_checkpoint(tmp_path, shards=4, seed=50)
    seen = run_scenario(tmp_path, "resident", pool, ckpt)
    assert seen["killed"] and seen["mid_step"] and seen["error"] is None, seen
    config = ScoreConfig(strategies=("margin", "bald"), query_size=25, mc_samples=16)
    local = ComputeConfig(local=True, score_batch_size=16)
    for step in (0, 1):
        expected = score_pool(pool, ckpt, config, compute=local, step=step)
        for strategy, table in expected.items():
            assert seen[f"step{step}"][strategy] == table.column("id").to_pylist()
    # ids exactly; scores to float32 rounding (the actors multiply on one thread each)
    assert seen["scores1"]["bald"] == pytest.approx(
        expected["bald"].column("score").to_pylist(), rel=1e-5)
    before, after = seen["before"], seen["after"]
    assert [a["rows"] for a in after] == [b["rows"] for b in before]
    assert [a["loads"] for a in after] == [1, 1]  # a restarted actor read its part once
    moved = [a["pid"] != b["pid"] for a, b in zip(after, before)]
    assert moved.count(True) == 1, (before, after)  # only the dead node's actor


def test_a_training_node_killed_during_fine_tuning_loses_nothing(pools, reference,
                                                                 tmp_path):
    run_dir = tmp_path / "run"
    seen = run_scenario(tmp_path, "training", "--pool", pools[0], "--val",
                        pools[1], "--run-dir", run_dir, "--steps", CLUSTER_STEPS,
                        *CLUSTER_ARGS)
    assert seen["killed"] and seen["restarts"] == 1, seen
    assert seen["status"] == "finished" and seen["step"] == CLUSTER_STEPS
    labels, metrics = results(run_dir)
    expected = reference_until(reference, CLUSTER_STEPS)
    assert labels.equals(expected[0]) and metrics.equals(expected[1])


def test_a_killed_driver_resubmitted_resumes_its_run(pools, reference, tmp_path):
    run_dir = tmp_path / "run"
    job = os.path.join(REPO, "jobs", "run_loop.py")
    seen = run_scenario(tmp_path, "driver", job, run_dir, "--pool", pools[0],
                        "--val", pools[1], "--steps", CLUSTER_STEPS, *CLUSTER_ARGS)
    assert 1 <= seen["killed_after_step"] < CLUSTER_STEPS and seen["returncode"] == 0, seen
    assert "resuming" in seen["stdout"]
    labels, metrics = results(run_dir)
    expected = reference_until(reference, CLUSTER_STEPS)
    assert labels.equals(expected[0]) and metrics.equals(expected[1])
