"""Strategy x seed grids on Ray Tune: one loop (in simulation) per trial, resumable.

Each trial is a function trainable that runs ``run_loop`` in its own run directory
``SWEEP/runs/<trial>``, fine-tuning in its own process (the trial's CPUs), so trials run
side by side. The design is paired: for a given seed every strategy starts from the same
initial set and the same initial weights (both drawn from the seed alone). The pool is
never loaded into a trial: by default every trial scores with one resident pool that
the driver opened for all trials on that pool (``alray.experiments.shared_pool``: read
once, each trial's own weights per call); with ``ComputeConfig.resident`` off (``alray
sweep --streaming``) each trial scores in its own process, streaming the shared files
batch by batch. A trial holds only the labelled set. An interrupted sweep resumes with
``Tuner.restore``: finished trials are kept and unfinished ones pick up their run
directory where it stopped.
"""
from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from alray.config import DEFAULT_STEPS, ComputeConfig, Config, LoopConfig, flatten, int_problems
from alray.errors import StateError
from alray.experiments.shared_pool import pool_key, shared_pools, trial_cpus
from alray.pool import io

EXPERIMENT = "tune"
CURVES = "curves.parquet"
SWEEP_FILE = "sweep.json"


@dataclass(frozen=True)
class SweepConfig(Config):
    """A strategy x seed grid (plus any LoopConfig option as a list) on Ray Tune."""

    loop: LoopConfig = field(default_factory=LoopConfig)
    steps: int = DEFAULT_STEPS
    strategies: tuple[str, ...] = ("random", "margin")
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    grid: Mapping[str, tuple] = field(default_factory=dict)  # dotted key -> values
    out: str = ""
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    max_concurrent: int = 0  # 0: as many trials as the resources allow

    _NESTED = {"loop": LoopConfig}

    def _check(self) -> list[str]:
        problems = []
        if not self.out:
            problems.append("out is required (the sweep's folder)")
        problems += int_problems(self, ("steps",), minimum=0)
        if not self.strategies:
            problems.append("strategies needs at least one strategy")
        if not self.seeds or any(not isinstance(s, int) for s in self.seeds):
            problems.append(f"seeds must be integers, got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            problems.append(f"seeds repeat: {self.seeds!r}")
        known = flatten(self.loop.to_dict())
        for key, values in self.grid.items():
            if key not in known or key in ("seed", "score.strategies"):
                problems.append(f"grid option {key!r} is not a loop option (strategies and "
                                "seeds have their own lists)")
            if not isinstance(values, (tuple, list)) or not values:
                problems.append(f"grid option {key!r} needs a non-empty list of values")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            problems.append("cpus_per_trial must be > 0 and gpus_per_trial >= 0")
        return problems



def trial_overrides(sweep: SweepConfig, params: dict) -> dict:
    """Dotted LoopConfig keys for one grid point (strategy, seed, extra options)."""
    seed = int(params["seed"])
    out = {"score.strategies": (params["strategy"],), "seed": seed, "train.seed": seed,
           "score.seed": seed}
    out.update({key: params[key] for key in sweep.grid})
    return out


def trial_name(sweep: SweepConfig, params: dict) -> str:
    extras = "".join(f"_{key.rsplit('.', 1)[-1]}={params[key]}" for key in sorted(sweep.grid))
    return f"{params['strategy']}_seed={params['seed']}{extras}"


def grid_points(sweep: SweepConfig) -> list[dict]:
    """Every (strategy, seed, extras...) combination, in a fixed order."""
    keys = ["strategy", "seed", *sorted(sweep.grid)]
    values = [sweep.strategies, sweep.seeds, *[sweep.grid[k] for k in sorted(sweep.grid)]]
    return [dict(zip(keys, combo)) for combo in itertools.product(*values)]


def run_trial(params: dict, resident: dict | None = None) -> None:
    """The Tune trainable: run (or resume) one loop and report each step's metrics.
    ``resident``: the driver's shared pools by ``pool_key`` (absent: stream)."""
    import torch
    from ray import tune

    from alray.loop.run import run_loop
    from alray.loop.setup import new_run, reopen_run
    from alray.loop.state import RunDir

    sweep = SweepConfig.from_dict(params["_sweep"])
    torch.set_num_threads(max(1, int(sweep.cpus_per_trial)))
    run_dir = Path(sweep.out) / "runs" / trial_name(sweep, params)
    if RunDir.exists(run_dir):
        run = reopen_run(run_dir)
    else:
        run = new_run(run_dir, _trial_config(sweep, params), sweep.steps)

    shared = (resident or {}).get(pool_key(run.config))
    reported = []

    def report(step, last, row):
        reported.append(step)
        tune.report({k: v for k, v in row.items() if isinstance(v, (int, float))})
    outcome = run_loop(run, ComputeConfig(local=True), progress=report, resident=shared)
    if not reported and outcome.metrics is not None:  # resumed a run that had finished
        last_row = outcome.metrics.to_pylist()[-1]
        tune.report({k: v for k, v in last_row.items() if isinstance(v, (int, float))})


def run_sweep(sweep: SweepConfig, resume: bool = False, verbose: int = 1,
              compute: ComputeConfig = ComputeConfig()) -> pa.Table:
    """Run the grid (or resume it); returns the curves table, also written to
    ``SWEEP/curves.parquet``. ``compute``: the shared resident pool's actors (or
    ``resident=False``: every trial streams); trials always fine-tune in-process."""
    from alray.runtime import require_ray

    out = Path(sweep.out).resolve()
    _check_out(out, sweep, resume)
    require_ray()
    loops = [_trial_config(sweep, params) for params in grid_points(sweep)]
    with shared_pools(loops, compute, sweep.cpus_per_trial) as resident:
        cpus = trial_cpus(resident, compute, sweep.cpus_per_trial)
        results = _fit(sweep, out, resume, verbose, resident, cpus)
    errors = [str(r.error).splitlines()[0] for r in results if r.error is not None]
    curves = collect_curves(sweep)
    if errors:
        raise StateError(f"{len(errors)} of {len(results)} trials failed; fix the cause and "
                         f"rerun with --resume", [f"trial failed: {e}" for e in errors])
    return curves


def _trial_config(sweep: SweepConfig, params: dict):
    from alray.loop.setup import apply_overrides

    return apply_overrides(sweep.loop, trial_overrides(sweep, params))


def _fit(sweep: SweepConfig, out: Path, resume: bool, verbose: int, resident: dict,
         cpus: float):
    """Tune's results of the grid, the trials given the shared pools ``resident`` and
    ``cpus`` each (their torch threads still follow ``cpus_per_trial``)."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(run_trial, resident=resident),
                                    {"cpu": cpus, "gpu": sweep.gpus_per_trial})
    path = str(out / EXPERIMENT)
    if resume and tune.Tuner.can_restore(path):
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        space = {"_sweep": sweep.to_dict(), "strategy": tune.grid_search(list(sweep.strategies)),
                 "seed": tune.grid_search(list(sweep.seeds))}
        space.update({k: tune.grid_search(list(v)) for k, v in sweep.grid.items()})
        tuner = tune.Tuner(
            trainable, param_space=space,
            # reused trial processes skip a fresh interpreter and torch import per trial
            tune_config=tune.TuneConfig(max_concurrent_trials=sweep.max_concurrent or None,
                                        reuse_actors=True),
            run_config=tune.RunConfig(storage_path=str(out), name=EXPERIMENT,
                                      verbose=verbose,
                                      failure_config=tune.FailureConfig(max_failures=1)))
    return tuner.fit()


def _check_out(out: Path, sweep: SweepConfig, resume: bool) -> None:
    meta = out / SWEEP_FILE
    if meta.exists():
        if not resume:
            raise StateError(f"{out} already holds a sweep; add --resume to continue it")
        old = SweepConfig.from_dict(_read_json(meta))
        if old.to_dict() != sweep.to_dict():
            raise StateError(f"{out}: resuming a sweep with other options than it started "
                             "with; resume without options or use another --out")
        return
    if resume:
        raise StateError(f"{out}: no sweep to resume")
    out.mkdir(parents=True, exist_ok=True)
    io.write_json(meta, sweep.to_dict())


def _read_json(path: Path) -> dict:
    import json
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: corrupt sweep description: {exc}") from None


def load_sweep(out: str | os.PathLike) -> SweepConfig:
    return SweepConfig.from_dict(_read_json(Path(out) / SWEEP_FILE))


def collect_curves(sweep: SweepConfig) -> pa.Table:
    """Every trial's metrics, one row per (trial, step), with its grid point and a
    ``variant`` label (strategy plus extra options); written to SWEEP/curves.parquet."""
    parts = []
    for params in grid_points(sweep):
        path = Path(sweep.out) / "runs" / trial_name(sweep, params) / "metrics.parquet"
        if not path.exists():
            continue
        table = pq.read_table(path)
        extras = " ".join(f"{k.rsplit('.', 1)[-1]}={params[k]}" for k in sorted(sweep.grid))
        variant = f"{params['strategy']} {extras}".strip()
        n = table.num_rows
        table = table.append_column("variant", pa.array([variant] * n))
        table = table.append_column("strategy", pa.array([params["strategy"]] * n))
        table = table.append_column("seed", pa.array([int(params["seed"])] * n, pa.int64()))
        parts.append(table)
    if not parts:
        raise StateError(f"{sweep.out}: no trial has written metrics yet")
    curves = pa.concat_tables(parts, promote_options="default")
    io.write_table(curves, Path(sweep.out) / CURVES)
    return curves
