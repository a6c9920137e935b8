"""A long margin loop end to end on the default 250k pool: resident, then streaming.

    OMP_NUM_THREADS=1 .venv/bin/python bench/loop_100.py --steps 100 --streaming-steps 15

The same loop (initial 2,000, query 20, seed 0, the study's model and training) run with
the resident pool (``--actors`` actors of 0.5 CPU) for ``--steps`` steps, then with Ray
Data streaming (1 actor of 0.5 CPU, as loops did before the resident pool) for
``--streaming-steps`` steps, in one process on the embedded Ray. Prints each run's wall
time from start to end (step 0's passive fit included), its steps' medians, whether the
two runs labelled the same posts over the steps both ran, and the streaming run's total
for ``--steps`` steps: measured when ``--streaming-steps`` equals ``--steps``, else its
measured start (step 0 and the first steps) plus the remaining steps at its median step
(stated as extrapolated). Pool: /tmp/p250 (``alray generate /tmp/p250 --rows 250000
--classes 50 --seed 0``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import time

import pyarrow.parquet as pq

from alray.config import ComputeConfig, LoopConfig, ScoreConfig, TrainConfig
from alray.loop.run import run_loop
from alray.loop.setup import new_run, shape_model
from alray.runtime import connect


def run(name: str, config: LoopConfig, steps: int, compute: ComputeConfig) -> dict:
    run_dir = f"/tmp/alray-loop100-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    marks = [time.perf_counter()]
    outcome = run_loop(new_run(run_dir, config, steps), compute,
                       progress=lambda s, l, r: marks.append(time.perf_counter()))
    walls = [b - a for a, b in zip(marks[1:], marks[2:])]  # steps 1.. (mark 1: step 0 done)
    scores = [r["score_s"] for r in outcome.metrics.to_pylist()[1:]]
    total = marks[-1] - marks[0]
    print(f"{name}: {steps} steps in {total:.1f} s (step 0 {marks[1] - marks[0]:.1f} s), "
          f"median step {statistics.median(walls):.2f} s, median scoring "
          f"{statistics.median(scores):.2f} s", flush=True)
    return {"dir": run_dir, "total": total, "step0": marks[1] - marks[0], "walls": walls,
            "scores": scores}


def same_labels(a: str, b: str, steps: int) -> bool:
    read = [pq.read_table(f"{d}/labels.parquet").to_pandas() for d in (a, b)]
    picked = [t[t["step"] <= steps].sort_values(["step", "id"])["id"].tolist() for t in read]
    return picked[0] == picked[1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--streaming-steps", type=int, default=100)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--pool", default="/tmp/p250")
    args = parser.parse_args()
    sys.path.insert(0, os.path.dirname(__file__))
    from decode import cpu_flags
    from resident import matmul_rate

    print(f"CPU flags: {cpu_flags()}; fp32 matmul {matmul_rate(2):.0f} GFLOP/s on 2 threads; "
          f"load average {os.getloadavg()[0]:.1f}", flush=True)
    connect()
    config = shape_model(LoopConfig(
        pool_uri=f"{args.pool}/pool", val_uri=f"{args.pool}/val", initial=2000, seed=0,
        train=TrainConfig(seed=0), score=ScoreConfig(strategies=("margin",), query_size=20)))
    resident = run("resident", config, args.steps, ComputeConfig(
        score_actors=args.actors, score_cpus_per_actor=0.5, resident=True))
    streaming = run("streaming", config, args.streaming_steps, ComputeConfig(
        score_actors=1, score_cpus_per_actor=0.5, resident=False))
    common = min(args.steps, args.streaming_steps)
    print(f"same labels over steps 0-{common}:",
          same_labels(resident["dir"], streaming["dir"], common))
    rest = args.steps - args.streaming_steps
    total = streaming["total"] + max(0, rest) * statistics.median(streaming["walls"])
    kind = "measured" if rest <= 0 else f"extrapolated: {args.streaming_steps} measured"
    print(f"{args.steps} steps end to end: resident {resident['total']:.1f} s, streaming "
          f"{total:.1f} s ({kind}), {total / resident['total']:.2f}x")


if __name__ == "__main__":
    main()
