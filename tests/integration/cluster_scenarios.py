"""Fault scenarios on a simulated multi-node cluster, run one after another in one process.

    python -m tests.integration.cluster_scenarios PLAN.json

PLAN.json lists the scenarios to run, each as ``[SCENARIO, OUT.json, ARGS...]``. The
process builds one ``ray.cluster_utils.Cluster`` (a head with no CPUs, so all work runs
on two worker nodes of 2 CPUs each) and, for each scenario in turn, drives it, kills a
worker node with SIGKILL of all its processes (``remove_node(allow_graceful=False)``) at
the chosen moment and writes what it observed to its OUT.json (with ``failure``, the
traceback, where the scenario raised; the next scenario still runs). Between scenarios
the driver disconnects (its job's actors and placement groups go with it) and a fresh
worker node takes the dead one's place, so every scenario starts on a head and two live
workers; only the cluster's start-up is shared. A separate process because the test
session has its own local Ray, and a driver belongs to one cluster.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

from tests.conftest import free_port, pids_mentioning

# node death is noticed within ~2 s instead of the default ~15 s health-check window
SYSTEM_CONFIG = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 500,
                 "health_check_timeout_ms": 500, "health_check_failure_threshold": 3}
NODE_CPUS = 2
WORKERS = 2
OBJECT_STORE = 150 * 2**20


def _resident_score():
    from alray.config import ScoreConfig

    return ScoreConfig(strategies=("margin", "bald"), query_size=25, mc_samples=16)


def start_cluster():
    from ray.cluster_utils import Cluster

    # Cluster writes ray_current_cluster into Ray's default temp folder
    # ($RAY_TMPDIR/ray) whatever temp_dir it is given, and fails where that folder was
    # never created (a new machine): this process's default is a folder of its own, made
    # here, which also keeps other Ray users on the machine from finding this cluster
    base = tempfile.mkdtemp(prefix="alray-cluster-")
    os.environ["RAY_TMPDIR"] = base  # the drivers this scenario starts inherit it
    temp = os.path.join(base, "ray")
    os.mkdir(temp)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "include_dashboard": False, "object_store_memory": OBJECT_STORE,
        "temp_dir": temp, "dashboard_agent_listen_port": free_port(),
        "_system_config": SYSTEM_CONFIG})
    workers = [cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=OBJECT_STORE)
               for _ in range(WORKERS)]
    cluster.wait_for_nodes()
    return cluster, workers


def node_of(pid: int, nodes) -> object | None:
    """The cluster node whose raylet is an ancestor of process ``pid``."""
    raylets = {node.all_processes["raylet"][0].process.pid: node for node in nodes}
    while pid > 1:
        if pid in raylets:
            return raylets[pid]
        pid = _parent(pid)
    return None


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError, IndexError):
        return 0


def kill_node(cluster, node) -> None:
    cluster.remove_node(node, allow_graceful=False)


def scoring(cluster, workers, seen: dict, pool: str, checkpoint: str) -> None:
    """Remove the node of a scoring actor once a quarter of the rows are scored."""
    from alray.config import ComputeConfig, ScoreConfig
    from alray.runtime import connect
    from alray.scoring.pipeline import score_pool

    seen.update(killed=None, at_rows=None)
    lock = threading.Lock()

    def progress(done: int, total: int) -> None:
        with lock:
            if seen["killed"] or not 0 < done < total // 4 * 3:
                return
            hosts = {node_of(pid, workers) for pid in pids_mentioning("BatchScorer")} - {None}
            if not hosts:
                return
            victim = sorted(hosts, key=lambda n: n.unique_id)[0]
            seen["killed"], seen["at_rows"], seen["total"] = victim.unique_id, done, total
            kill_node(cluster, victim)

    config = ScoreConfig(strategies=("margin", "bald"), query_size=25, mc_samples=8)
    compute = ComputeConfig(address=cluster.address, score_batch_size=50, score_actors=2,
                            score_cpus_per_actor=0.5)
    connect(cluster.address)
    queries = score_pool(pool, checkpoint, config, compute=compute, progress=progress)
    seen["queries"] = {s: t.column("id").to_pylist() for s, t in queries.items()}
    seen["scores"] = {s: t.column("score").to_pylist() for s, t in queries.items()}


def resident(cluster, workers, seen: dict, pool: str, checkpoint: str) -> None:
    """Remove the node of a resident actor while a step is being scored; the step is
    retried on the actor Ray restarts, which reads its own part again."""
    from alray.config import ComputeConfig, PoolConfig
    from alray.runtime import connect
    from alray.scoring.resident import ResidentPool

    compute = ComputeConfig(address=cluster.address, score_batch_size=16, score_actors=2,
                            score_cpus_per_actor=0.5)
    connect(cluster.address)
    seen["killed"] = None
    resident_pool = ResidentPool.open(pool, PoolConfig(), compute)
    seen["before"] = resident_pool.load()
    seen["step0"] = _ids(resident_pool.score(checkpoint, _resident_score(), step=0))
    done = {}

    def score_step_1() -> None:
        try:
            done["queries"] = resident_pool.score(checkpoint, _resident_score(), step=1)
        except Exception as exc:  # reported, not lost in the thread
            done["error"] = repr(exc)

    step = threading.Thread(target=score_step_1)
    step.start()
    time.sleep(0.3)  # the actors are scoring: a step takes seconds at this batch size
    seen["mid_step"] = step.is_alive()
    # other Ray instances on the machine may run resident actors too: this cluster's
    hosts = {node_of(pid, workers) for pid in pids_mentioning("ResidentPart")} - {None}
    victim = sorted(hosts, key=lambda n: n.unique_id)[0]
    seen["killed"] = victim.unique_id
    kill_node(cluster, victim)
    step.join()
    seen["error"] = done.get("error")
    seen["step1"] = _ids(done["queries"])
    seen["scores1"] = {s: t.column("score").to_pylist() for s, t in done["queries"].items()}
    seen["after"] = resident_pool.info()


def _ids(queries) -> dict:
    return {s: t.column("id").to_pylist() for s, t in queries.items()}


def training(cluster, workers, seen: dict, *loop_args: str) -> None:
    """Remove the node of the training worker when step 2's fine-tuning is requested."""
    from alray.cli.loop import invoke_loop
    from alray.train import service

    seen.update(killed=None, fine_tunes=0)
    original = service.RayTraining.run

    def run(self, request):
        seen["fine_tunes"] += request["op"] == "fine_tune"
        if seen["fine_tunes"] == 2 and seen["killed"] is None:
            victim = node_of(self._group.pids[0], workers)
            seen["killed"] = victim.unique_id
            kill_node(cluster, victim)
        reply = original(self, request)
        seen["restarts"] = self.restarts
        return reply

    service.RayTraining.run = run
    try:
        outcome = invoke_loop([*loop_args, "--address", cluster.address])
        seen["status"], seen["step"] = outcome.status, outcome.step
    finally:
        service.RayTraining.run = original


def driver(cluster, workers, seen: dict, job: str, run_dir: str, *loop_args: str) -> None:
    """SIGKILL the loop's driver (the process `ray job submit` starts) once step 1 is
    committed, then submit it again."""
    env = {**os.environ, "RAY_ADDRESS": cluster.address}
    command = [sys.executable, job, "--run-dir", run_dir, *loop_args]
    first = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT)
    seen["killed_after_step"] = _wait_for_step(run_dir, 1, first)
    first.send_signal(signal.SIGKILL)
    first.wait()
    again = subprocess.run(command, env=env, capture_output=True, text=True)
    seen["returncode"], seen["stdout"] = again.returncode, again.stdout[-3000:]
    seen["stderr"] = again.stderr[-3000:]


def _wait_for_step(run_dir: str, step: int, proc: subprocess.Popen,
                   timeout_s: float = 300) -> int:
    deadline = time.monotonic() + timeout_s
    state = os.path.join(run_dir, "state.json")
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the loop exited {proc.returncode} before step {step}: "
                               f"{proc.stdout.read().decode()[-3000:]}")
        try:
            with open(state) as f:
                done = json.load(f)["step"]
        except (OSError, ValueError, KeyError):
            done = -1
        if done >= step:
            return done
        time.sleep(0.05)
    raise RuntimeError(f"step {step} not committed within {timeout_s} s")


def _write(out: str, seen: dict) -> None:
    with open(out + ".tmp", "w") as f:
        json.dump(seen, f)
    os.replace(out + ".tmp", out)


def _fresh_workers(cluster) -> list:
    """Disconnect this driver (its job's actors go with it) and replace every worker
    node a scenario killed, so the next one starts on a head and two live workers;
    ``wait_for_nodes`` returns once the dead node is marked dead and the new one alive."""
    import ray

    ray.shutdown()
    while len(cluster.worker_nodes) < WORKERS:
        cluster.add_node(num_cpus=NODE_CPUS, object_store_memory=OBJECT_STORE)
    cluster.wait_for_nodes()
    return sorted(cluster.worker_nodes, key=lambda n: n.unique_id)


def run_plan(plan: list[list[str]]) -> None:
    """Run each ``[scenario, out, *args]`` of the plan on one cluster, in order."""
    cluster, workers = start_cluster()
    try:
        for scenario, out, *args in plan:
            seen = {"failure": None}
            try:
                SCENARIOS[scenario](cluster, workers, seen, *args)
            except Exception:  # reported in OUT.json; the next scenario still runs
                seen["failure"] = traceback.format_exc()
            finally:
                _write(out, seen)
            if out != plan[-1][1]:
                workers = _fresh_workers(cluster)
    finally:
        _shutdown(cluster)


def _shutdown(cluster) -> None:
    import ray

    ray.shutdown()
    cluster.shutdown()


SCENARIOS = {"scoring": scoring, "resident": resident, "training": training,
             "driver": driver}

if __name__ == "__main__":
    with open(sys.argv[1]) as f:
        run_plan(json.load(f))
