"""Sweeps on Ray Tune: every shipped experiment at its smoke size, the paired design,
resuming an interrupted sweep, and the report's files."""
from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from alray.experiments.files import build_sweep, read_experiment
from alray.experiments.sweep import grid_points, run_sweep, trial_name

ALL_CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "..", "jobs",
                                            "configs", "*.yaml")))
# sweep experiments; other kinds (the correlation experiment) have their own tests
CONFIGS = [c for c in ALL_CONFIGS if read_experiment(c).get("kind", "sweep") == "sweep"]


def test_configs_are_shipped():
    names = {Path(c).stem for c in CONFIGS}
    assert {"batch_size", "uncertainty", "qbc", "bald_frozen_bn", "learning_loss",
            "ideal_loss", "long_margin"} <= names


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: Path(c).stem)
def test_shipped_config_parses(config, tmp_path):
    from alray.acquisition import check_names
    from alray.experiments.files import parse_seeds
    from alray.config import LoopConfig
    from alray.experiments.sweep import SweepConfig
    from alray.loop.setup import apply_overrides

    data = read_experiment(config)
    assert data["description"] and data["smoke"]
    check_names(data["strategies"])
    # full size, every option checked, without the real pool
    loop = apply_overrides(LoopConfig(pool_uri="p", val_uri="v"), data.get("set") or {})
    full = SweepConfig(loop=loop, steps=data["steps"], strategies=tuple(data["strategies"]),
                       seeds=parse_seeds(data["seeds"]), out=str(tmp_path),
                       grid={k: tuple(v) for k, v in (data.get("grid") or {}).items()})
    assert full.seeds == tuple(data["seeds"]) and full.loop.initial == data["set"]["initial"]
    smoke = build_sweep(data, {"out": str(tmp_path), "smoke": True})
    assert smoke.steps == data["smoke"].get("steps", 3) and len(smoke.seeds) >= 2


# Configs whose smoke run would repeat another's: the strategies and grid options of their
# smoke run are a subset of the named config's, which runs (checked below); what differs
# is sizes (steps, query size, initial), which the parse test checks at full size.
SMOKE_COVERED_BY = {"long_horizon_digits": "digits",
                    "long_horizon_digits_frozen_bn": "bald_frozen_bn",
                    "long_horizon_study": "bald_frozen_bn",
                    "long_horizon_study_small": "digits",
                    "long_horizon_study_small_frozen_bn": "bald_frozen_bn",
                    "long_margin": "uncertainty"}
SMOKED = [c for c in CONFIGS if Path(c).stem not in SMOKE_COVERED_BY]


def _smoke_strategies_and_grid(name: str) -> tuple[set, set]:
    data = read_experiment(os.path.join(os.path.dirname(ALL_CONFIGS[0]), f"{name}.yaml"))
    return (set(data["smoke"].get("strategies", data["strategies"])),
            set(data.get("grid") or {}))


@pytest.mark.parametrize("covered", sorted(SMOKE_COVERED_BY))
def test_a_config_without_a_smoke_run_is_covered_by_one_with(covered):
    strategies, grid = _smoke_strategies_and_grid(covered)
    by_strategies, by_grid = _smoke_strategies_and_grid(SMOKE_COVERED_BY[covered])
    assert strategies <= by_strategies and grid <= by_grid


@pytest.mark.parametrize("config", SMOKED, ids=lambda c: Path(c).stem)
def test_smoke_sweep_and_report(config, tmp_path, ray_session):
    from alray.experiments.report import write_report

    out = tmp_path / "sweep"
    sweep = build_sweep(read_experiment(config), {"out": str(out), "smoke": True})
    curves = run_sweep(sweep, verbose=0)
    points = grid_points(sweep)
    assert curves.num_rows == len(points) * (sweep.steps + 1)
    # paired design: for a seed, every strategy starts from the same labelled set
    for seed in sweep.seeds:
        initial = {frozenset(pq.read_table(out / "runs" / trial_name(sweep, p) /
                                           "labels.parquet",
                                           filters=[("step", "=", 0)]).column("id").to_pylist())
                   for p in points if p["seed"] == seed}
        assert len(initial) == 1
    files = write_report(out, tmp_path / "report")
    assert all(os.path.getsize(f) > 0 for f in files)
    summary = (tmp_path / "report" / "summary.md").read_text()
    for strategy in sweep.strategies:
        assert f"| {strategy}" in summary


RESUMED_STRATEGIES = "random,margin"


def test_interrupted_sweep_resumes_without_redoing_finished_trials(tmp_path, ray_session):
    out = tmp_path / "sweep"
    config = next(c for c in CONFIGS if Path(c).stem == "uncertainty")
    # 2 strategies x 2 seeds: 4 trials, 2 at a time, so two are still to start when the
    # first finishes and the sweep is interrupted
    cmd = [sys.executable, "-c", "from alray.cli import main; main()", "sweep", "--config",
           config, "--smoke", "--out", str(out), "--strategies", RESUMED_STRATEGIES,
           "--set", "train.epochs=30"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    finished = _wait_for_finished_trials(out, proc, at_least=1, timeout=240)
    proc.send_signal(signal.SIGINT)  # Ctrl-C: Tune saves its state and stops
    proc.wait(timeout=120)
    sweep = build_sweep(read_experiment(config), {"out": str(out), "smoke": True,
                                                  "strategies": RESUMED_STRATEGIES,
                                                  "set": ("train.epochs=30",)})
    assert len(finished) < len(grid_points(sweep)) == 4  # trials left for the resume
    before = {name: (out / "runs" / name / "metrics.parquet").stat().st_mtime_ns
              for name in finished}
    curves = run_sweep(sweep, resume=True, verbose=0)
    assert curves.num_rows == len(grid_points(sweep)) * (sweep.steps + 1)
    after = {name: (out / "runs" / name / "metrics.parquet").stat().st_mtime_ns
             for name in finished}
    assert after == before


def _wait_for_finished_trials(out: Path, proc, at_least: int, timeout: float) -> list[str]:
    import json
    deadline = time.time() + timeout
    while time.time() < deadline:
        done = [p.parent.name for p in out.glob("runs/*/state.json")
                if json.loads(p.read_text()).get("step") == 3]
        if len(done) >= at_least:
            return done
        assert proc.poll() is None, "the sweep ended before it could be interrupted"
        time.sleep(0.5)
    raise AssertionError("no trial finished in time")
