"""A real Ray Jobs round trip: `ray start --head` on 127.0.0.1, submit jobs/score_pool.py
through the Jobs API (token authentication on, as Ray 2.60 ships), wait, read the query.

The test stops only the head it started: `ray start --block` runs in its own process
group, and the group is signalled (never `ray stop`, which would stop every Ray on the
machine).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from alray.config import ComputeConfig, ScoreConfig
from alray.scoring.pipeline import score_pool
from tests.conftest import free_port, make_pool_table, pids_mentioning, write_pool
from tests.unit.test_scorer import build_checkpoint

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
START_TIMEOUT_S = 90
JOB_TIMEOUT_S = 240


@pytest.fixture(scope="module")
def head(tmp_path_factory):
    """A one-node Ray cluster of our own: (dashboard URL, environment for its clients)."""
    temp = tmp_path_factory.mktemp("ray-head")
    port, dashboard = free_port(), free_port()
    # every fixed default port gets a free one: another Ray on this machine (the test
    # session's own, a developer's) may hold the defaults
    ports = [f"--{name}={free_port()}" for name in (
        "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
        "runtime-env-agent-port", "node-manager-port", "object-manager-port",
        "ray-client-server-port")]
    # token authentication on explicitly: `ray start` turns it on by itself only where
    # a token already exists (tests/conftest.py gives the session a token of its own)
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}
    env.pop("RAY_ADDRESS", None)
    log = open(temp / "ray-start.log", "w")
    proc = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=2",
         "--object-store-memory=300000000", f"--temp-dir={temp}", "--disable-usage-stats",
         *ports],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dashboard}"
    try:
        client = _wait_for_job_server(url, proc, temp / "ray-start.log")
        yield url, client
    finally:
        _stop(proc)
        log.close()
    left = pids_mentioning(str(temp))
    assert not left, f"processes of the test's head still running: {left}"


def token_header() -> dict:
    """The bearer token `ray start` uses (the session's own, see tests/conftest.py);
    passed explicitly because Ray reads RAY_AUTH_MODE once per process."""
    token = os.environ.get("RAY_AUTH_TOKEN")
    if not token:
        path = os.environ.get("RAY_AUTH_TOKEN_PATH", os.path.expanduser("~/.ray/auth_token"))
        with open(path) as f:
            token = f.read()
    return {"Authorization": f"Bearer {token.strip()}"}


def _wait_for_job_server(url: str, proc: subprocess.Popen, log_path):
    from ray.job_submission import JobSubmissionClient

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited {proc.returncode}: {open(log_path).read()}")
        try:
            client = JobSubmissionClient(url, headers=token_header())
            client.list_jobs()
            return client
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM to the process group of our `ray start --block`: it stops the processes it
    started; SIGKILL the group if it has not within 10 s."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def submit(client, **job) -> str:
    """Submit, retrying while the head's dashboard agent is still registering (the job
    server answers 'No available agent' for a few seconds after it starts)."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as exc:
            if "No available agent" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(1)


def _wait_for_job(client, job_id: str):
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (status := client.get_job_status(job_id)) not in {
            JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED}:
        assert time.monotonic() < deadline, client.get_job_logs(job_id)[-3000:]
        time.sleep(1)
    return status


def test_score_job_round_trip_through_the_jobs_api(head, tmp_path):
    url, client = head
    pool = write_pool(tmp_path / "pool", [make_pool_table(120, seed=20 + i, first_id=200 * i)
                                          for i in range(3)])
    ckpt = build_checkpoint(tmp_path / "model")
    out = tmp_path / "query.parquet"
    job_id = submit(
        client, entrypoint=f"{sys.executable} jobs/score_pool.py --pool {pool} --checkpoint {ckpt} "
                   f"--strategy margin,bald --query-size 7 --mc-samples 4 --actors 1 "
                   f"--score-batch-size 50 --out {out}",
        runtime_env={"working_dir": REPO, "excludes": ["data/", "tests/", "docs/", "bench/"],
                     "env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}})
    status = _wait_for_job(client, job_id)
    logs = client.get_job_logs(job_id)
    assert status.value == "SUCCEEDED", logs[-3000:]
    query = pq.read_table(out)
    expected = score_pool(pool, ckpt, ScoreConfig(strategies=("margin", "bald"), query_size=7,
                                                  mc_samples=4),
                          compute=ComputeConfig(local=True, score_batch_size=50))
    for strategy, table in expected.items():
        got = query.filter(pc.equal(query.column("strategy"), strategy))
        assert got.column("id").to_pylist() == table.column("id").to_pylist()
    info = client.get_job_info(job_id)
    assert info.entrypoint.endswith(f"--out {out}")


def test_the_job_server_refuses_a_client_without_the_token(head):
    import requests

    url, _ = head
    assert requests.get(f"{url}/api/jobs/", timeout=10).status_code == 401
    wrong = {"Authorization": "Bearer " + "0" * 64}
    assert requests.get(f"{url}/api/jobs/", headers=wrong, timeout=10).status_code == 403
    assert requests.get(f"{url}/api/jobs/", headers=token_header(), timeout=10).ok

