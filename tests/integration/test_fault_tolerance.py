"""A lost node costs time, not results: faults on a simulated three-node cluster.

The four scenarios run one after another in one child process
(``tests/integration/cluster_scenarios.py``), started once for the module, that builds a
head and two worker nodes with ``ray.cluster_utils.Cluster``; each scenario kills one
worker node (SIGKILL of all its processes) or the driver at its chosen moment and reports
to a file of its own, and a fresh worker node replaces the dead one before the next. Each
test waits for its own scenario's report only, and compares it with undisturbed
in-process runs (which the Ray paths equal exactly, tested elsewhere), computed while the
cluster works.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from alray.config import ComputeConfig, ScoreConfig
from alray.scoring.pipeline import score_pool
from tests.conftest import make_pool_table, write_pool
from tests.unit.test_loop_resume import (  # noqa: F401 (fixture: pools)
    LOOP_ARGS, pools, results, run_in_process)
from tests.unit.test_scorer import build_checkpoint

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCENARIO_TIMEOUT_S = 400
SHUTDOWN_TIMEOUT_S = 120
CLUSTER_STEPS = 3  # each step pays Ray Data's start-up on the cluster: keep them few
CLUSTER_ARGS = [a for a in LOOP_ARGS if a != "--local"] + [
    "--actors", "1", "--num-cpus-per-actor", "0.5", "--score-batch-size", "64"]


@pytest.fixture(scope="module")
def reference(pools, tmp_path_factory):
    """The cluster runs' CLUSTER_STEPS steps, undisturbed and without Ray (--local), in
    this process."""
    return run_in_process(pools, tmp_path_factory.mktemp("reference") / "run",
                          CLUSTER_STEPS)


def pool_and_checkpoint(root, shards: int, seed: int) -> tuple[str, str]:
    """A pool of ``shards`` shards of 5,000 rows and a small model's checkpoint."""
    pool = write_pool(root / "pool", [make_pool_table(5000, seed=seed + i,
                                                      first_id=10_000 * i)
                                      for i in range(shards)])
    return pool, build_checkpoint(root / "model")


class Scenarios:
    """The child process running every scenario on one cluster; ``seen(name)`` waits
    for that scenario's report only."""

    def __init__(self, root, plan: dict[str, list]):
        self.root, self.outs = root, {name: str(root / f"{name}.json") for name in plan}
        with open(root / "plan.json", "w") as f:
            json.dump([[name, self.outs[name], *map(str, args)]
                       for name, args in plan.items()], f)
        self.log = open(root / "scenarios.log", "w")
        # its own process group: the cluster's processes go with it if it must be killed
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.integration.cluster_scenarios",
             str(root / "plan.json")], cwd=REPO, stdout=self.log,
            stderr=subprocess.STDOUT, start_new_session=True)
        self.deadline = time.monotonic() + SCENARIO_TIMEOUT_S * len(plan)

    def seen(self, name: str) -> dict:
        while not os.path.exists(self.outs[name]):
            if self.proc.poll() is not None:
                pytest.fail(f"the scenarios' process exited {self.proc.returncode} before "
                            f"{name} reported: {self.tail()}")
            if time.monotonic() > self.deadline:
                pytest.fail(f"{name} did not report in time: {self.tail()}")
            time.sleep(0.2)
        with open(self.outs[name]) as f:
            seen = json.load(f)
        assert seen.pop("failure") is None, seen
        return seen

    def tail(self) -> str:
        self.log.flush()
        return (self.root / "scenarios.log").read_text()[-4000:]

    def close(self) -> None:
        """Wait for the process to shut its cluster down once every scenario reported;
        kill its group at once where one did not (a test stopped the module early)."""
        reported = all(os.path.exists(out) for out in self.outs.values())
        try:
            self.proc.wait(timeout=SHUTDOWN_TIMEOUT_S if reported else 0.1)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        finally:
            self.log.close()
        if reported:
            assert self.proc.returncode == 0, self.tail()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Inputs of the two scoring scenarios: 8 shards for scoring (big enough that it
    outlasts a few of the progress polls, every 0.5 s, on which the scenario kills a
    node: 16k rows could finish between two polls), 4 for the resident pool."""
    root = tmp_path_factory.mktemp("scenario-inputs")
    return {"scoring": pool_and_checkpoint(root / "scoring", shards=8, seed=30),
            "resident": pool_and_checkpoint(root / "resident", shards=4, seed=50)}


@pytest.fixture(scope="module")
def scenarios(inputs, pools, tmp_path_factory):
    root = tmp_path_factory.mktemp("scenarios")
    loop = ["--pool", pools[0], "--val", pools[1], "--steps", CLUSTER_STEPS, *CLUSTER_ARGS]
    run = Scenarios(root, {
        "scoring": inputs["scoring"],
        "resident": inputs["resident"],
        "training": [*loop, "--run-dir", root / "training-run"],
        "driver": [os.path.join(REPO, "jobs", "run_loop.py"), root / "driver-run", *loop]})
    run.run_dirs = {name: root / f"{name}-run" for name in ("training", "driver")}
    yield run
    run.close()


def test_scoring_survives_a_worker_node_killed_mid_way(inputs, scenarios):
    pool, ckpt = inputs["scoring"]
    expected = score_pool(pool, ckpt, ScoreConfig(strategies=("margin", "bald"),
                                                  query_size=25, mc_samples=8),
                          compute=ComputeConfig(local=True, score_batch_size=50))
    seen = scenarios.seen("scoring")
    assert seen["killed"] and 0 < seen["at_rows"] < seen["total"], seen
    for strategy, table in expected.items():
        assert seen["queries"][strategy] == table.column("id").to_pylist()
        assert seen["scores"][strategy] == table.column("score").to_pylist()


def test_a_resident_actor_whose_node_dies_mid_step_reads_its_part_again(inputs, scenarios):
    pool, ckpt = inputs["resident"]
    config = ScoreConfig(strategies=("margin", "bald"), query_size=25, mc_samples=16)
    local = ComputeConfig(local=True, score_batch_size=16)
    expected = {step: score_pool(pool, ckpt, config, compute=local, step=step)
                for step in (0, 1)}
    seen = scenarios.seen("resident")
    assert seen["killed"] and seen["mid_step"] and seen["error"] is None, seen
    for step in (0, 1):
        for strategy, table in expected[step].items():
            assert seen[f"step{step}"][strategy] == table.column("id").to_pylist()
    # ids exactly; scores to float32 rounding (the actors multiply on one thread each)
    assert seen["scores1"]["bald"] == pytest.approx(
        expected[1]["bald"].column("score").to_pylist(), rel=1e-5)
    before, after = seen["before"], seen["after"]
    assert [a["rows"] for a in after] == [b["rows"] for b in before]
    assert [a["loads"] for a in after] == [1, 1]  # a restarted actor read its part once
    moved = [a["pid"] != b["pid"] for a, b in zip(after, before)]
    assert moved.count(True) == 1, (before, after)  # only the dead node's actor


def test_a_training_node_killed_during_fine_tuning_loses_nothing(scenarios, reference):
    seen = scenarios.seen("training")
    assert seen["killed"] and seen["restarts"] == 1, seen
    assert seen["status"] == "finished" and seen["step"] == CLUSTER_STEPS
    labels, metrics = results(scenarios.run_dirs["training"])
    assert labels.equals(reference[0]) and metrics.equals(reference[1])


def test_a_killed_driver_resubmitted_resumes_its_run(scenarios, reference):
    seen = scenarios.seen("driver")
    assert 1 <= seen["killed_after_step"] < CLUSTER_STEPS and seen["returncode"] == 0, seen
    assert "resuming" in seen["stdout"]
    labels, metrics = results(scenarios.run_dirs["driver"])
    assert labels.equals(reference[0]) and metrics.equals(reference[1])
