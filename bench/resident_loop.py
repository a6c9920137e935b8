"""A margin loop on the default 250k pool, resident then streaming scoring, one process.

    OMP_NUM_THREADS=1 .venv/bin/python bench/resident_loop.py 4 2   # steps, resident actors

The same loop (initial 2,000, query 20, seed 0) twice on the embedded Ray: with the
resident pool (that many actors of 0.5 CPU) and with Ray Data streaming (1 actor of 0.5
CPU, the read tasks beside it, as loops did until now). Prints each step's wall time
(between the loop's progress callbacks) and its scoring time, the medians of steps 2-n
and whether both runs labelled the same posts. Pool: /tmp/p250 (`alray generate /tmp/p250
--rows 250000 --classes 50 --seed 0`).
"""
import shutil, statistics, sys, time
from alray.config import ComputeConfig, LoopConfig, ScoreConfig, TrainConfig
from alray.loop.run import run_loop
from alray.loop.setup import new_run, shape_model
from alray.runtime import connect

connect()
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 3
config = shape_model(LoopConfig(pool_uri="/tmp/p250/pool", val_uri="/tmp/p250/val", initial=2000,
                                seed=0, train=TrainConfig(seed=0),
                                score=ScoreConfig(strategies=("margin",), query_size=20)))
out = {}
for name, resident in (("resident", True), ("streaming", False)):
    run_dir = f"/tmp/alray-resident-loop-{name}"
    shutil.rmtree(run_dir, ignore_errors=True)
    compute = ComputeConfig(score_actors=int(sys.argv[2]) if resident and len(sys.argv) > 2 else 1, score_cpus_per_actor=0.5, resident=resident)
    marks = []
    outcome = run_loop(new_run(run_dir, config, steps), compute,
                       progress=lambda s, l, r: marks.append(time.perf_counter()))
    rows = outcome.metrics.to_pylist()[1:]
    walls = [b - a for a, b in zip(marks, marks[1:])]
    out[name] = (walls, [r["score_s"] for r in rows])
    print(name, "step walls", [f"{w:.2f}" for w in walls], "score_s", [f"{r['score_s']:.2f}" for r in rows], flush=True)
import pyarrow.parquet as pq
a = pq.read_table("/tmp/alray-resident-loop-resident/labels.parquet")
b = pq.read_table("/tmp/alray-resident-loop-streaming/labels.parquet")
print("same labels:", a.equals(b))
for k in (0, 1):
    r, s = statistics.median(out["resident"][k][1:]), statistics.median(out["streaming"][k][1:])
    print(("step wall" if k == 0 else "score_s"), f"median of steps 2-{steps}: resident {r:.2f} s, streaming {s:.2f} s, {s / r:.1f}x")
