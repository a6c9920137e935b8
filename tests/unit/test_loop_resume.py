"""A run killed at any moment resumes to exactly the uninterrupted run's labels and metrics.

Two ways to interrupt: SIGKILL of an ``alray loop`` subprocess at seeded random times,
and a crash injected at every single state write (after the temporary file is written,
before the rename) of an in-process run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pyarrow.parquet as pq
import pytest

from alray.loop.state import TIMING_SUFFIX
from tests.conftest import make_pool_table, write_pool

STEPS = 12
LOOP_ARGS = ["--initial", "40", "--query-size", "5", "--epochs", "3", "--classes", "5",
             "--seed", "3", "--local"]


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop-pools")
    pool = write_pool(root / "pool", [make_pool_table(150, seed=i, first_id=150 * i)
                                      for i in range(2)])
    val = write_pool(root / "val", [make_pool_table(80, seed=9, first_id=10_000)])
    return pool, val


def loop_command(pools, run_dir, steps=STEPS) -> list[str]:
    return [sys.executable, "-c", "from alray.cli import main; main()", "loop",
            "--pool", pools[0], "--val", pools[1], "--run-dir", str(run_dir),
            "--steps", str(steps), "--resume-if-exists", *LOOP_ARGS]


def results(run_dir):
    """The labelled set and the metrics without wall times."""
    labels = pq.read_table(os.path.join(run_dir, "labels.parquet"))
    metrics = pq.read_table(os.path.join(run_dir, "metrics.parquet"))
    metrics = metrics.select([c for c in metrics.column_names if not c.endswith(TIMING_SUFFIX)])
    return labels, metrics


@pytest.fixture(scope="module")
def reference(pools, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("reference") / "run"
    subprocess.run(loop_command(pools, run_dir), check=True, capture_output=True)
    return results(run_dir)


def test_reference_run_labels_every_step(reference):
    labels, metrics = reference
    assert metrics.column("step").to_pylist() == list(range(STEPS + 1))
    assert labels.num_rows == 40 + 5 * STEPS
    assert len(set(labels.column("id").to_pylist())) == labels.num_rows  # no post twice
    assert set(labels.column("source").to_pylist()) == {"initial", "oracle"}


def test_sigkill_at_random_moments_then_resume(pools, reference, tmp_path):
    run_dir = tmp_path / "run"
    rng = np.random.default_rng(0)
    kills = 0
    for attempt in range(6):
        proc = subprocess.Popen(loop_command(pools, run_dir), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        time.sleep(float(rng.uniform(1.5, 5.0)))  # past start-up (imports) into the steps
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 3, "the run finished before it could be killed: make it longer"
    done = subprocess.run(loop_command(pools, run_dir), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    labels, metrics = results(run_dir)
    assert labels.equals(reference[0])
    assert metrics.equals(reference[1])
    leftovers = [p for p in run_dir.rglob(".*") if ".tmp" in p.name]
    assert leftovers == []


class Crash(BaseException):
    """Stands for a kill: not an Exception, so nothing in alray catches it."""


def test_crash_at_every_write_then_resume(pools, reference, tmp_path, monkeypatch, one_thread):
    from alray.config import ComputeConfig
    from alray.loop import state as state_module
    from alray.loop.run import run_loop
    from alray.loop.setup import new_config, new_run, reopen_run
    from alray.pool import io

    writes = {"n": 0, "crash_at": None}
    real_replace = io._replace

    def replace_then_maybe_crash(fs, src, dst, is_dir):
        writes["n"] += 1
        if writes["n"] == writes["crash_at"]:
            raise Crash(dst)  # the temporary file is written, the rename never happens
        real_replace(fs, src, dst, is_dir)
    monkeypatch.setattr(io, "_replace", replace_then_maybe_crash)
    real_json = state_module.io.write_json

    def json_then_maybe_crash(path, data):
        writes["n"] += 1
        if writes["n"] == writes["crash_at"]:
            raise Crash(path)
        real_json(path, data)
    monkeypatch.setattr(state_module.io, "write_json", json_then_maybe_crash)
    from alray.model import checkpoint as checkpoint_module
    real_swap = checkpoint_module._swap_in

    def swap_then_maybe_crash(tmp, path):
        writes["n"] += 1
        if writes["n"] == writes["crash_at"]:
            raise Crash(path)
        real_swap(tmp, path)
    monkeypatch.setattr(checkpoint_module, "_swap_in", swap_then_maybe_crash)

    steps = 4
    config = new_config(pools[0], pools[1], overrides={
        "initial": 40, "score.query_size": 5, "train.epochs": 3, "model.n_classes": 5,
        "seed": 3, "train.seed": 3, "score.seed": 3})
    compute = ComputeConfig(local=True)
    crashes = 0
    for crash_at in range(1, 100):
        run_dir = tmp_path / f"run-{crash_at}"
        writes.update(n=0, crash_at=crash_at)
        try:
            run_loop(new_run(run_dir, config, steps), compute)
        except Crash:
            crashes += 1
        else:
            break  # past the last write: every write point has been crashed at
        writes["crash_at"] = None
        run = reopen_run(run_dir) if (run_dir / "run.json").exists() else new_run(run_dir, config, steps)
        run_loop(run, compute)
        labels, metrics = results(run_dir)
        expected_labels = reference[0].slice(0, labels.num_rows)
        assert labels.num_rows == 40 + 5 * steps
        assert labels.equals(expected_labels), f"crash at write {crash_at}"
        assert metrics.equals(reference[1].slice(0, steps + 1)), f"crash at write {crash_at}"
    assert crashes == 2 + 4 + 5 * steps  # create: 2; step 0: 4; each step: 5 writes


def test_resubmitted_job_resumes_its_run_directory(pools, reference, tmp_path):
    """jobs/run_loop.py is what `ray job submit` runs; submitting it again continues."""
    job = os.path.join(os.path.dirname(__file__), "..", "..", "jobs", "run_loop.py")
    run_dir = tmp_path / "run"
    args = ["--pool", pools[0], "--val", pools[1], "--run-dir", str(run_dir), *LOOP_ARGS]
    first = subprocess.run([sys.executable, job, *args, "--steps", "4"],
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    again = subprocess.run([sys.executable, job, *args, "--steps", str(STEPS)],
                           capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    assert "resuming" in again.stdout
    labels, metrics = results(run_dir)
    assert labels.equals(reference[0]) and metrics.equals(reference[1])
