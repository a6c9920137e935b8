"""Durable writes: each data file is fsynced before its rename and its directory after it,
so a commit point (state.json) that survived a power cut points at files that survived
too (docs/formats.md, the commit protocol). Checked by recording the system calls."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest

from alray.pool import io


@pytest.fixture
def calls(monkeypatch) -> list[tuple]:
    """("fsync", path) / ("rename", src, dst) in the order they happen."""
    events: list[tuple] = []
    real_fsync, real_replace, real_rename = os.fsync, os.replace, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst, *args, **kwargs):
        events.append(("rename", os.fspath(src), os.fspath(dst)))
        real_replace(src, dst, *args, **kwargs)

    def rename(src, dst, *args, **kwargs):
        events.append(("rename", os.fspath(src), os.fspath(dst)))
        real_rename(src, dst, *args, **kwargs)
    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    monkeypatch.setattr(os, "rename", rename)
    return events


def renames_onto(events: list[tuple], dst: Path) -> list[int]:
    dst = os.path.realpath(dst)
    return [i for i, e in enumerate(events)
            if e[0] == "rename" and os.path.realpath(e[2]) == dst]


def assert_durable(events: list[tuple], at: int) -> int:
    """The rename ``events[at]``: its source fsynced before it, the directory it lands in
    fsynced after it; returns the index of that directory's fsync."""
    _, src, dst = events[at]
    assert ("fsync", os.path.realpath(src)) in events[:at], f"{src} not fsynced: {events}"
    parent = os.path.dirname(os.path.realpath(dst))
    after = [i for i in range(at + 1, len(events)) if events[i] == ("fsync", parent)]
    assert after, f"{parent} not fsynced after the rename: {events}"
    return after[0]


def test_write_table_fsyncs_file_then_directory(tmp_path, calls):
    out = tmp_path / "labels.parquet"
    io.write_table(pa.table({"id": [1, 2]}), out)
    assert_durable(calls, renames_onto(calls, out)[0])
    assert [e[0] for e in calls] == ["fsync", "rename", "fsync"]


def test_write_json_fsyncs_file_then_directory(tmp_path, calls):
    out = tmp_path / "state.json"
    io.write_json(out, {"step": 1})
    assert_durable(calls, renames_onto(calls, out)[0])


def test_a_checkpoint_is_durable_before_it_is_found(tmp_path, calls):
    from alray.model import save_checkpoint
    from tests.unit.model_helpers import build

    model = build().eval()
    path = tmp_path / "checkpoints" / "step-00001"
    save_checkpoint(path, model, model.config)
    save_checkpoint(path, model, model.config)  # again: over an existing checkpoint
    renames = renames_onto(calls, path)
    assert len(renames) == 2
    for at in renames:
        tmp = calls[at][1]
        synced = {e[1] for e in calls[:at] if e[0] == "fsync"}
        for name in ("weights.pt", "model.json"):
            assert os.path.realpath(os.path.join(tmp, name)) in synced
        assert os.path.realpath(tmp) in synced  # the directory's entries
        assert ("fsync", os.path.realpath(path.parent)) in calls[at + 1:]


def test_a_new_run_is_durable_before_it_is_found(tmp_path, calls):
    from alray.loop.state import RunDir
    from tests.unit.test_assessors import _config

    run = tmp_path / "runs" / "run"
    RunDir.create(run, _config(), fingerprints={})
    at = renames_onto(calls, run)[0]
    tmp = os.path.realpath(calls[at][1])
    for name in ("state.json", "run.json"):
        inside = renames_onto(calls, Path(tmp) / name)[0]
        assert assert_durable(calls, inside) < at
    assert ("fsync", tmp) in calls[max(renames_onto(calls, Path(tmp) / "run.json")) + 1:at]
    assert_durable(calls, at)


def test_every_write_of_a_step_is_durable_before_its_commit(tmp_path, calls, one_thread):
    """A whole simulated run of two steps: before each rename of state.json, every
    other file renamed since the last commit was fsynced and its directory fsynced."""
    from alray.config import ComputeConfig, LoopConfig, ScoreConfig, TrainConfig
    from alray.loop.run import run_loop
    from alray.loop.setup import new_run, shape_model
    from tests.conftest import make_pool_table, write_pool

    pool = write_pool(tmp_path / "pool", [make_pool_table(120, seed=1)])
    val = write_pool(tmp_path / "val", [make_pool_table(60, seed=2, first_id=5000)])
    config = shape_model(LoopConfig(
        pool_uri=pool, val_uri=val, initial=30, train=TrainConfig(epochs=1),
        score=ScoreConfig(strategies=("margin",), query_size=4)), 5)
    run = tmp_path / "run"
    run_loop(new_run(run, config), ComputeConfig(local=True), steps=2)
    state = os.path.realpath(run / "state.json")
    commits = [i for i, e in enumerate(calls) if e[0] == "rename"
               and os.path.realpath(e[2]) == state]
    assert len(commits) >= 3  # steps 0, 1, 2
    start = 0
    for commit in commits:
        for i in range(start, commit):
            if calls[i][0] == "rename":
                assert assert_durable(calls, i) < commit, f"{calls[i]}: synced after the commit"
        start = commit + 1
