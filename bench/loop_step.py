"""Where a loop step's time goes: scoring, fine-tuning, everything else.

    .venv/bin/python bench/loop_step.py --rows 250000 --steps 5
    .venv/bin/python bench/loop_step.py --rows 250000 --steps 100   # the 100-step run

Runs a margin loop on the embedded Ray (Ray Data scoring, the long-lived Ray Train
worker) over a study-like pool generated once under --dir. Each step's wall time is
taken between the loop's progress callbacks (so it includes the state writes); the
split comes from the run's metrics (score_s, train_s). "Else" = wall - score - train:
evaluation, checkpoint and table writes, the request's round trip. The service's
start-up is printed separately: it is paid once per process, not per step.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import time

from alray.config import ComputeConfig, LoopConfig, ScoreConfig, TrainConfig
from alray.pool.synthetic import GeneratorConfig
from alray.loop.run import run_loop
from alray.loop.setup import new_run, shape_model
from alray.pool.synthetic import generate_pool
from alray.runtime import connect


def main() -> None:
    args = parse()
    pool, val = ensure_pool(args.dir, args.rows)
    run_dir = os.path.join(args.dir, f"run-{args.rows}-{args.steps}")
    shutil.rmtree(run_dir, ignore_errors=True)
    config = shape_model(LoopConfig(
        pool_uri=pool, val_uri=val, initial=2000, seed=0, train=TrainConfig(seed=0),
        score=ScoreConfig(strategies=("margin",), query_size=20)))
    compute = ComputeConfig(score_actors=args.actors, score_cpus_per_actor=0.5)
    connect()
    marks = []
    started = time.perf_counter()
    outcome = run_loop(new_run(run_dir, config, args.steps), compute,
                       progress=lambda step, last, row: marks.append(time.perf_counter()))
    total = time.perf_counter() - started
    rows = outcome.metrics.to_pylist()
    report(rows, marks, started, total, args)


def parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--actors", type=int, default=1)
    parser.add_argument("--dir", default="data/bench")
    return parser.parse_args()


def ensure_pool(directory: str, rows: int) -> tuple[str, str]:
    out = os.path.join(directory, f"pool-{rows}")
    pool, val = os.path.join(out, "pool"), os.path.join(out, "val")
    if not os.path.exists(val):
        generate_pool(out, GeneratorConfig(rows=rows, seed=0))
    return pool, val


def report(rows: list[dict], marks: list[float], started: float, total: float, args) -> None:
    walls = [b - a for a, b in zip(marks, marks[1:])]  # steps 1..n
    steps = rows[1:]
    score = [r["score_s"] for r in steps]
    train = [r["train_s"] for r in steps]
    other = [w - s - t for w, s, t in zip(walls, score, train)]
    evals = [r["eval_s"] for r in steps]
    wall = statistics.median(walls)
    print(f"\n{args.rows:,}-row pool, margin, {args.steps} steps, {args.actors} scoring actor(s)")
    print(f"start-up until step 0 is committed (Ray, pool reads, training service, "
          f"45-epoch passive fit): {marks[0] - started:.1f} s")
    print("| part of a step (median) | seconds | share |")
    print("|---|---|---|")
    for name, values in (("scoring (Ray Data)", score), ("fine-tuning (Ray Train)", train),
                         ("everything else", other),
                         ("  of which evaluation", evals)):
        print(f"| {name} | {statistics.median(values):.3f} | "
              f"{statistics.median(values) / wall:.1%} |")
    print(f"| whole step | {wall:.3f} | 100% |")
    print(f"total wall time: {total:.1f} s for {args.steps} steps "
          f"(final fused accuracy {rows[-1]['fused_accuracy']:.3f}, "
          f"{rows[-1]['labelled']:,} labels)")


if __name__ == "__main__":
    main()
