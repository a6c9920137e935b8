"""One writer per run directory (alray.loop.lock), checked with real second processes:
a live holder is named and refused, a dead one's lock is taken over with a message,
readers never delete, and two ``labels import`` runs cannot both succeed. No Ray."""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from alray.errors import StateError
from alray.loop.assessors import import_labels
from alray.loop.lock import LOCK_NAME, read_holder
from alray.loop.state import RunDir, RunState
from tests.unit.test_assessors import make_run, write_file

REPO = Path(__file__).resolve().parents[2]
TIMEOUT_S = 60

HOLD = """
import sys
from alray.loop.state import RunDir
run = RunDir.open(sys.argv[1], write=True)
print("locked", flush=True)
sys.stdin.read()  # holds the lock until the test closes stdin
"""

# an import that stops after reading the run (the lock held, the labels table read)
# until the test says go: the moment a second import would race it
PAUSED_IMPORT = """
import sys
from alray.loop import assessors
original = assessors._read_answers
def paused(*args, **kwargs):
    print("reading", flush=True)
    sys.stdin.readline()
    return original(*args, **kwargs)
assessors._read_answers = paused
print(assessors.import_labels(sys.argv[1], sys.argv[2]), flush=True)
"""


def start(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                            cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(proc: subprocess.Popen, word: str) -> None:
    line = proc.stdout.readline()
    if line.strip() != word:
        proc.kill()
        raise AssertionError(f"expected {word!r}, got {line!r}: {proc.stderr.read()[-3000:]}")


def finish(proc: subprocess.Popen, say: str = "") -> tuple[int, str, str]:
    """Send ``say`` and close stdin (a holder then lets go); wait for the end."""
    out, err = proc.communicate(say, timeout=TIMEOUT_S)
    return proc.returncode, out, err


def python(code: str, *args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)],
                          cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)


def leftovers(run: Path) -> list[Path]:
    made = [run / ".labels.parquet.tmp-0a1b2c3d", run / "queries" / ".step-00001.csv.tmp",
            run / "checkpoints" / ".step-00001.tmp-0a1b2c3d"]
    made[0].write_bytes(b"half a write")
    made[1].write_bytes(b"half a write")
    made[2].mkdir()
    return made


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path)  # a run waiting for the answers of step 1 (no lock held)


# --- a live holder ---------------------------------------------------------------------
def test_a_second_writer_is_refused_with_the_holder_named(run):
    holder = start(HOLD, run)
    try:
        wait_for(holder, "locked")
        with pytest.raises(StateError) as info:
            RunDir.open(run, write=True)
        message = str(info.value)
        assert f"pid {holder.pid} on {socket.gethostname()}" in message
        assert "in use" in message
        recorded = json.loads((run / LOCK_NAME).read_text())
        assert recorded["pid"] == holder.pid and recorded["host"] == socket.gethostname()
        assert recorded["started"]
    finally:
        assert finish(holder)[0] == 0
    assert read_holder(run) is None  # a clean release leaves no stale record
    RunDir.open(run, write=True).write_state(RunState(step=0, open_query=1))


def test_a_second_loop_resume_is_refused_with_the_holder_named(run):
    holder = start(HOLD, run)
    try:
        wait_for(holder, "locked")
        second = subprocess.run(
            [sys.executable, "-m", "alray", "loop", "--run-dir", str(run), "--resume",
             "--local"], cwd=REPO, capture_output=True, text=True, timeout=TIMEOUT_S)
        assert second.returncode == 2, second.stderr
        assert f"in use by pid {holder.pid} on {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr
    finally:
        finish(holder)


def test_a_second_loop_on_a_running_loop_is_refused(tmp_path):
    """The double `ray job submit` of jobs/run_loop.py: a second loop on a run that a
    live loop is writing stops at once, naming it, and changes nothing."""
    import time

    from tests.conftest import make_pool_table, write_pool

    pool = write_pool(tmp_path / "pool", [make_pool_table(200, seed=1)])
    val = write_pool(tmp_path / "val", [make_pool_table(60, seed=2, first_id=5000)])
    run = tmp_path / "run"
    command = [sys.executable, "-m", "alray", "loop", "--pool", pool, "--val", val,
               "--run-dir", str(run), "--resume-if-exists", "--steps", "40",
               "--initial", "30", "--query-size", "4", "--epochs", "2", "--classes", "5",
               "--local"]
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (run / "metrics.parquet").exists():  # step 0 committed: mid-run
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no step within 120 s"
            time.sleep(0.05)
        second = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                                timeout=TIMEOUT_S)
        assert first.poll() is None, "the first loop ended before the second started"
        assert second.returncode == 2, second.stderr
        assert f"in use by pid {first.pid} on {socket.gethostname()}" in second.stderr
        assert "resuming" not in second.stdout
    finally:
        first.kill()
        first.wait()
        first.stderr.close()


def test_this_process_holds_what_it_creates_until_closed(run, tmp_path):
    mine = RunDir.open(run, write=True)
    again = RunDir.open(run, write=True)  # one process: its writers share the lock
    assert mine.writable and again.writable
    probe = python(HOLD.replace("sys.stdin.read()", "pass"), run)
    assert probe.returncode != 0 and f"in use by pid {os.getpid()}" in probe.stderr
    mine.close()
    assert again.writable  # still held through the other
    again.close()
    probe = python(HOLD.replace("sys.stdin.read()", "pass"), run)
    assert probe.returncode == 0, probe.stderr


def _forked_child_writes(path: str, out) -> None:
    try:
        RunDir.open(path, write=True)
        out.put("locked")
    except StateError as exc:
        out.put(str(exc))


def test_a_forked_child_does_not_inherit_the_lock(run):
    held = RunDir.open(run, write=True)
    context = multiprocessing.get_context("fork")
    out = context.Queue()
    child = context.Process(target=_forked_child_writes, args=(str(run), out))
    child.start()
    child.join(TIMEOUT_S)
    assert f"in use by pid {os.getpid()}" in out.get(timeout=5)
    assert held.writable and json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()


# --- a dead holder ---------------------------------------------------------------------
def test_a_killed_holders_lock_is_taken_over_with_a_message(run, caplog):
    holder = start(HOLD, run)
    wait_for(holder, "locked")
    made = leftovers(run)
    holder.send_signal(signal.SIGKILL)
    holder.wait(TIMEOUT_S)
    assert read_holder(run)["pid"] == holder.pid  # the record it could not clear
    with caplog.at_level(logging.WARNING, logger="alray.loop.lock"):
        taken = RunDir.open(run, write=True)
    assert taken.writable
    assert f"took over the run's lock left by pid {holder.pid}" in caplog.text
    assert not any(p.exists() for p in made)  # the holder cleans the killed writes up
    assert read_holder(run)["pid"] == os.getpid()


# --- readers ---------------------------------------------------------------------------
def test_readers_never_delete_a_writers_files(run):
    from alray.serve.routing import latest_checkpoint

    holder = start(HOLD, run)
    try:
        wait_for(holder, "locked")
        made = leftovers(run)  # as a running writer's files in flight look
        reader = RunDir.open(run)
        assert reader.read_state().open_query == 1 and reader.read_labels() is not None
        latest_checkpoint(str(run))
        assert all(p.exists() for p in made)
        assert not reader.writable
        for write in (lambda: reader.write_state(RunState()),
                      lambda: reader.write_labels(reader.read_labels()),
                      lambda: reader.remove_leftovers(),
                      lambda: reader.prune_checkpoints(set())):
            with pytest.raises(StateError, match="opened read-only"):
                write()
        assert all(p.exists() for p in made)
    finally:
        finish(holder)


def test_a_read_only_run_cannot_be_looped(run):
    from alray.loop.run import run_loop

    with pytest.raises(StateError, match="opened read-only"):
        run_loop(RunDir.open(run))


# --- two labels imports ----------------------------------------------------------------
def test_two_concurrent_label_imports_cannot_both_succeed(run, tmp_path):
    first = write_file(tmp_path / "first.csv", [10, 11], [1, 2])
    second = write_file(tmp_path / "second.csv", [12, 13, 14], [3, 4, 0])
    paused = start(PAUSED_IMPORT, run, first)
    try:
        wait_for(paused, "reading")  # the first import holds the run and has read it
        with pytest.raises(StateError) as info:
            import_labels(run, second)
        assert f"in use by pid {paused.pid}" in str(info.value)
        code, out, err = finish(paused, "go\n")
        assert code == 0, err
        assert "'labelled': 2" in out
    finally:
        if paused.poll() is None:
            paused.kill()
    # afterwards the second import sees the first one's rows and is refused, not lost
    with pytest.raises(StateError, match="the query of step 1 was already answered"):
        import_labels(run, second)
    rows = [r for r in pq.read_table(run / "labels.parquet").to_pylist() if r["step"] == 1]
    assert {r["id"]: (r["label"], r["source"]) for r in rows} == {
        10: (1, "assessor"), 11: (2, "assessor"), 12: (None, "skipped"),
        13: (None, "skipped"), 14: (None, "skipped")}


def test_two_racing_label_imports_one_wins_the_other_is_told(run, tmp_path):
    """No pause: both started at once; whichever loses is refused either by the lock or
    by the rows the winner wrote, and the winner's answers are all there."""
    files = [write_file(tmp_path / "a.csv", [10, 11], [1, 2]),
             write_file(tmp_path / "b.csv", [12, 13, 14], [3, 4, 0])]
    code = "import sys; from alray.loop.assessors import import_labels as f; " \
           "print(f(sys.argv[1], sys.argv[2]))"
    procs = [start(code, run, f) for f in files]
    results = [finish(p) for p in procs]
    won = [i for i, (rc, _, _) in enumerate(results) if rc == 0]
    assert len(won) == 1, results
    lost = results[1 - won[0]][2]
    assert "in use by pid" in lost or "was already answered" in lost, lost
    rows = [r for r in pq.read_table(run / "labels.parquet").to_pylist() if r["step"] == 1]
    answered = {r["id"] for r in rows if r["source"] == "assessor"}
    assert answered == ({10, 11} if won == [0] else {12, 13, 14})
