"""A 4-trial sweep on the default 250k pool: one shared resident pool against each trial
scoring in its own process (the sweep's path until now), in one run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/sweep_resident.py --steps 3 --actors 2

The grid is margin and random x seeds 0, 1 (initial 2,000, queries of 20, the loop's
other defaults), 1 CPU a trial on the 2-CPU embedded Ray (2 trials at a time). Each
path runs the same grid into its own folder, in the order given by --order (default:
streaming first; the pool is read once before either so both find it in the page
cache). Shared: ``--actors`` resident actors of the sweep's default token CPUs, opened
and loaded by the driver (inside the timed total). Prints, per path: the sweep's wall
time, the medians of the trials' step and scoring seconds (steps 1-n, by strategy),
the peak summed RSS of the process tree (``bench/sweep.py``'s sampler), whether both
paths labelled the same posts, then the CPU flags and fp32 matmul rate
(``bench/decode.py``'s helpers).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time
from pathlib import Path

import pyarrow.parquet as pq

from decode import cpu_flags, matmul_gflops
from sweep import CONFIG, PeakMemory

from alray.config import ComputeConfig
from alray.experiments.files import build_sweep, read_experiment
from alray.experiments.sweep import grid_points, run_sweep, trial_name


def arguments():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pool", default="/tmp/p250/pool")
    p.add_argument("--val", default="/tmp/p250/val")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--order", default="streaming,shared")
    p.add_argument("--out", default="data/bench/sweep_resident")
    return p.parse_args()


def grid(args, out: Path):
    data = dict(read_experiment(CONFIG), pool=args.pool, val=args.val,
                strategies=["margin", "random"], seeds=[0, 1], steps=args.steps)
    return build_sweep(data, {"out": str(out), "set": ("initial=2000",
                                                        "score.query_size=20")})


def warm_page_cache(*folders: str) -> None:
    for folder in folders:
        for path in sorted(Path(folder).glob("*.parquet")):
            with open(path, "rb") as f:
                while f.read(1 << 24):
                    pass


def run(name: str, args, root: Path) -> dict:
    sweep = grid(args, root / name)
    compute = (ComputeConfig(resident=False) if name == "streaming"
               else ComputeConfig(score_actors=args.actors))
    with PeakMemory() as memory:
        started = time.perf_counter()
        curves = run_sweep(sweep, verbose=0, compute=compute)
        wall = time.perf_counter() - started
    rows = [r for r in curves.to_pylist() if r["step"] >= 1]
    by = {s: [r for r in rows if r["strategy"] == s] for s in sweep.strategies}
    return {"sweep": sweep, "wall": wall, "peak": memory.peak,
            "step": {s: statistics.median(r["step_s"] for r in v) for s, v in by.items()},
            "score": {s: statistics.median(r["score_s"] for r in v) for s, v in by.items()},
            "steps": {s: [round(r["step_s"], 2) for r in v] for s, v in by.items()}}


def same_labels(a, b) -> bool:
    return all(pq.read_table(Path(a.out) / "runs" / trial_name(a, p) / "labels.parquet").equals(
        pq.read_table(Path(b.out) / "runs" / trial_name(b, p) / "labels.parquet"))
        for p in grid_points(a))


def main() -> None:
    args = arguments()
    root = Path(args.out)
    shutil.rmtree(root, ignore_errors=True)
    import ray
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    warm_page_cache(args.pool, args.val)
    print(f"start {time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, load "
          f"{os.getloadavg()}", flush=True)
    results = {}
    for name in args.order.split(","):
        results[name] = run(name, args, root)
        print(name, f"{results[name]['wall']:.1f} s", results[name]["steps"], flush=True)
    print(f"end {time.strftime('%H:%M:%S', time.gmtime())} UTC, load {os.getloadavg()}")
    a, b = results["streaming"], results["shared"]
    print("| measure | streaming (each trial) | shared resident | streaming / shared |")
    print("|---|---:|---:|---:|")
    print(f"| sweep wall time | {a['wall']:.1f} s | {b['wall']:.1f} s | "
          f"{a['wall'] / b['wall']:.2f}x |")
    for s in a["step"]:
        for key, what in (("step", "step"), ("score", "scoring")):
            print(f"| {s}: {what} s, median of steps 1-{args.steps} | {a[key][s]:.2f} | "
                  f"{b[key][s]:.2f} | {a[key][s] / b[key][s]:.2f}x |")
    gib = 2 ** 30
    print(f"| peak RSS, process tree | {a['peak'] / gib:.2f} GiB | {b['peak'] / gib:.2f} GiB"
          f" | {a['peak'] / b['peak']:.2f}x |")
    print("same labels in every trial:", same_labels(a["sweep"], b["sweep"]))
    print(f"CPU flags: {cpu_flags()}; fp32 matmul (2048^2, best of 5): "
          f"{matmul_gflops(1):.0f} GFLOP/s on 1 thread, {matmul_gflops(2):.0f} on 2")


if __name__ == "__main__":
    main()
