"""Ray Tune overhead and memory of a sweep: the grid against its trials run alone.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sweep.py

On the smoke pool of the shipped uncertainty experiment (3,000 rows), a 2-strategy x
2-seed grid (random, margin x seeds 0, 1): (a) each trial's loop run alone in this
process, one after the other; (b) the same 4 trials as one Tune grid (1 CPU a trial,
so 2 at a time on this machine). Then peak memory (RSS summed over this process and
all its descendants: Ray's workers included) of a 1-trial grid and of the 4-trial grid.
"""
from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import procs
from alray.experiments.files import build_sweep, read_experiment
from alray.config import ComputeConfig
from alray.loop.run import run_loop
from alray.loop.setup import apply_overrides, new_run
from alray.experiments.sweep import grid_points, run_sweep, trial_overrides

CONFIG = Path(__file__).resolve().parents[1] / "jobs" / "configs" / "uncertainty.yaml"


class PeakMemory(procs.Sampler):
    """The peak of the summed RSS of this process and its descendants, every 0.2 s."""

    def __init__(self):
        super().__init__(self._sample, 0.2)
        self.peak = 0

    def _sample(self) -> None:
        tree = procs.descendants(os.getpid())
        self.peak = max(self.peak, sum((procs.rss(pid) or (0, 0))[0] for pid in tree))


def sweep_for(out: Path, strategies, seeds):
    data = dict(read_experiment(CONFIG), strategies=list(strategies), seeds=list(seeds))
    return build_sweep(data, {"out": str(out), "smoke": True})


def main() -> None:
    root = Path("data/bench/sweep")
    shutil.rmtree(root, ignore_errors=True)
    grid = sweep_for(root / "grid", ["random", "margin"], [0, 1])
    alone = 0.0
    for params in grid_points(grid):
        run_dir = root / "alone" / f"{params['strategy']}-{params['seed']}"
        started = time.perf_counter()
        config = apply_overrides(grid.loop, trial_overrides(grid, params))
        run_loop(new_run(run_dir, config), ComputeConfig(local=True))
        alone += time.perf_counter() - started
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    one = sweep_for(root / "one", ["random"], [0])
    with PeakMemory() as mem_one:
        started = time.perf_counter()
        run_sweep(one, verbose=0)
        one_wall = time.perf_counter() - started
    with PeakMemory() as mem_grid:
        started = time.perf_counter()
        run_sweep(grid, verbose=0)
        grid_wall = time.perf_counter() - started
    gib = 2 ** 30
    print("| measure | value |\n|---|---|")
    print(f"| 4 trials run alone, one after the other (sum) | {alone:.1f} s |")
    print(f"| the 4-trial grid on Tune (2 at a time) | {grid_wall:.1f} s |")
    print(f"| grid / sum of trials alone | {grid_wall / alone:.2f}x |")
    print(f"| a 1-trial grid | {one_wall:.1f} s |")
    print(f"| peak memory, 1-trial grid | {mem_one.peak / gib:.2f} GiB |")
    print(f"| peak memory, 4-trial grid | {mem_grid.peak / gib:.2f} GiB |")
    print(f"| 4-trial / 1-trial memory | {mem_grid.peak / mem_one.peak:.2f}x |")
    print(f"(cpus: {os.cpu_count()})")


if __name__ == "__main__":
    main()
