"""A run killed at any moment resumes to exactly the uninterrupted run's labels and metrics.

Two ways to interrupt: SIGKILL of an ``alray loop`` subprocess at seeded random moments
of a step (each after the run committed a step of its own), and a crash injected at every
single state write (after the temporary file is written, before the rename) of an
in-process run, in simulation and along the assessors' round trip (loop, labels import,
resume).
"""
from __future__ import annotations

import json
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


def run_in_process(pools, run_dir, steps: int):
    """``alray loop`` with LOOP_ARGS (--local) in this process: the undisturbed
    reference of a run elsewhere, without a subprocess's imports."""
    from click.testing import CliRunner

    from alray.cli import main

    out = CliRunner().invoke(main, ["loop", "--pool", pools[0], "--val", pools[1],
                                    "--run-dir", str(run_dir), "--steps", str(steps),
                                    *LOOP_ARGS])
    assert out.exit_code == 0, out.output
    return results(run_dir)


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


def committed(run_dir) -> int:
    """The last committed step (state.json), -1 before any."""
    try:
        return json.loads((run_dir / "state.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


def test_sigkill_at_random_moments_then_resume(pools, reference, tmp_path):
    run_dir = tmp_path / "run"
    rng = np.random.default_rng(0)
    kills = []  # (step committed when the attempt started, when it was killed)
    while len(kills) < 4 and committed(run_dir) < STEPS - 2:
        start = committed(run_dir)
        proc = subprocess.Popen(loop_command(pools, run_dir), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        deadline = time.monotonic() + 120
        # past start-up: this attempt has committed a step of its own ...
        while committed(run_dir) <= start and proc.poll() is None:
            assert time.monotonic() < deadline, "no step committed within 120 s"
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.5)))  # ... then somewhere in a later step
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills.append((start, committed(run_dir)))
        else:
            assert proc.returncode == 0, proc.stderr.read()[-3000:]
        proc.stderr.close()
    assert len(kills) >= 3, f"the run finished before it could be killed: {kills}"
    assert all(at > start for start, at in kills), kills  # every kill after a commit moved
    done = subprocess.run(loop_command(pools, run_dir), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    labels, metrics = results(run_dir)
    assert labels.equals(reference[0])
    assert metrics.equals(reference[1])
    leftovers = [p for p in run_dir.rglob(".*") if ".tmp" in p.name]
    assert leftovers == []


class Crash(BaseException):
    """Stands for a kill: not an Exception, so nothing in alray catches it."""


def inject_crashes(monkeypatch) -> dict:
    """Count every state write of this process (table, JSON, checkpoint) and raise
    ``Crash`` at write number ``writes["crash_at"]``, after its temporary file is
    written and before its rename."""
    from alray.loop import state as state_module
    from alray.model import checkpoint as checkpoint_module
    from alray.pool import io

    writes = {"n": 0, "crash_at": None}

    def crashing(real, what):
        def write(*args, **kwargs):
            writes["n"] += 1
            if writes["n"] == writes["crash_at"]:
                raise Crash(what(args))  # the temporary file is written, not renamed
            real(*args, **kwargs)
        return write
    monkeypatch.setattr(io, "_replace", crashing(io._replace, lambda a: a[2]))
    monkeypatch.setattr(state_module.io, "write_json",
                        crashing(state_module.io.write_json, lambda a: a[0]))
    monkeypatch.setattr(checkpoint_module, "_swap_in",
                        crashing(checkpoint_module._swap_in, lambda a: a[1]))
    return writes


def test_crash_at_every_write_then_resume(pools, reference, tmp_path, monkeypatch, one_thread):
    from alray.config import ComputeConfig
    from alray.loop.run import run_loop
    from alray.loop.setup import new_config, new_run, reopen_run

    writes = inject_crashes(monkeypatch)
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


@pytest.fixture(scope="module")
def assessor_pools(tmp_path_factory):
    """A labelled part (the initial set), an unlabelled part the assessors answer
    (``truth``: what they answer, the unlabelled rows' hidden labels)."""
    root = tmp_path_factory.mktemp("assessor-pools")
    hidden = make_pool_table(80, seed=3, first_id=60)
    pool = write_pool(root / "pool", [make_pool_table(60, seed=1),
                                      make_pool_table(80, seed=3, first_id=60,
                                                      labelled=False)])
    val = write_pool(root / "val", [make_pool_table(60, seed=2, first_id=5000)])
    truth = dict(zip(hidden.column("id").to_pylist(), hidden.column("label").to_pylist()))
    return pool, val, truth


def assessor_round_trip(run_dir, config, steps: int, truth: dict, answers_dir) -> None:
    """Create or resume ``run_dir`` and drive it to ``steps``: each query answered by
    the assessors (every post but the last of each query, which they skip) with
    ``alray labels import``'s function, then the run resumed."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    from alray.config import ComputeConfig
    from alray.loop.assessors import import_labels
    from alray.loop.run import run_loop
    from alray.loop.setup import new_run, reopen_run

    run = reopen_run(run_dir) if (run_dir / "run.json").exists() else new_run(
        run_dir, config, steps)
    while True:
        state = run.read_state()
        labels = run.read_labels()
        open_step = state.open_query
        if open_step is not None and (labels is None or open_step not in set(
                labels.column("step").to_pylist())):
            ids = run.read_query(open_step).sort_by("rank").column("id").to_pylist()[:-1]
            answers = answers_dir / f"answers-{open_step}.csv"
            pacsv.write_csv(pa.table({"id": ids, "label": [truth[i] for i in ids]}),
                            answers)
            import_labels(run_dir, answers)
        if run_loop(run, ComputeConfig(local=True)).status == "finished":
            return


def test_crash_at_every_write_of_the_assessor_round_trip(assessor_pools, tmp_path,
                                                          monkeypatch, one_thread):
    """Loop (query out), labels import, resume: a crash at any write of the round trip
    (an interrupted import included) then a rerun ends as the uninterrupted run."""
    from alray.loop.setup import new_config

    pool, val, truth = assessor_pools
    steps = 3
    config = new_config(pool, val, overrides={
        "initial": 20, "score.query_size": 4, "train.epochs": 2, "model.n_classes": 5,
        "seed": 5, "train.seed": 5, "score.seed": 5, "assessors": True})
    answers = tmp_path / "answers"
    answers.mkdir()
    assessor_round_trip(tmp_path / "reference", config, steps, truth, answers)
    expected = results(tmp_path / "reference")
    assert set(expected[0].column("source").to_pylist()) == {"initial", "assessor",
                                                             "skipped"}
    writes = inject_crashes(monkeypatch)
    crashes = 0
    for crash_at in range(1, 100):
        run_dir = tmp_path / f"run-{crash_at}"
        writes.update(n=0, crash_at=crash_at)
        try:
            assessor_round_trip(run_dir, config, steps, truth, answers)
        except Crash:
            crashes += 1
        else:
            break  # past the last write: every write point has been crashed at
        writes["crash_at"] = None
        assessor_round_trip(run_dir, config, steps, truth, answers)
        labels, metrics = results(run_dir)
        assert labels.equals(expected[0]), f"crash at write {crash_at}"
        assert metrics.equals(expected[1]), f"crash at write {crash_at}"
    # create: 2; step 0: 4; each step: query, open query, labels import, checkpoint,
    # metrics, state
    assert crashes == 2 + 4 + 6 * steps


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
