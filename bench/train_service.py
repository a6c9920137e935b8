"""Fine-tuning on Ray Train: a fresh TorchTrainer.fit() per request vs the warm service.

    .venv/bin/python bench/train_service.py --rows 4000 --fresh 3 --warm 20

One request = a fine_tune of the study-sized model (ModelConfig() defaults: image 1024,
text 300, 50 classes; TrainConfig() defaults: 1 epoch, batch 512) on --rows random
labelled rows, from the weights and Adam state of an earlier fine_tune. Rows printed as
markdown:

- in-process: ``run_request`` in this process (no Ray), the compute floor;
- fresh fit: a new ``RayTraining`` (one ``TorchTrainer.fit()``) started for the request,
  as a loop without a long-lived worker group would pay every step (start + reply;
  the close that follows is shown apart);
- warm service: the request on a long-lived ``RayTraining``, after one untimed request.

"overhead" = reply time seen by the caller minus the worker's compute seconds.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import numpy as np
import torch

from alray.config import ModelConfig, TrainConfig
from alray.pool.arrays import PostArrays
from alray.runtime import connect
from alray.train.service import RayTraining
from alray.train.worker import new_request, run_request


def make_data(n: int, model: ModelConfig, seed: int = 0) -> PostArrays:
    """n labelled rows, float32 embeddings of the model's dims, some modalities missing."""
    rng = np.random.default_rng(seed)
    feats, pres = {}, {}
    for m, dim in model.modality_dims.items():
        pres[m] = rng.random(n) >= 0.1
        feats[m] = (rng.standard_normal((n, dim), dtype=np.float32) * pres[m][:, None])
    pres["image"] |= ~pres["text"]
    return PostArrays(ids=np.arange(n), features=feats, present=pres,
                      labels=rng.integers(0, model.n_classes, n))


def timed_run(service, request) -> tuple[float, float]:
    """(reply seconds seen here, compute seconds in the worker)."""
    start = time.perf_counter()
    reply = service.run(request)
    return time.perf_counter() - start, reply["seconds"]


def row(name: str, walls: list[float], computes: list[float], note: str = "") -> str:
    wall, compute = statistics.median(walls), statistics.median(computes)
    return (f"| {name} | {len(walls)} | {wall:.3f} | {compute:.3f} | "
            f"{wall - compute:.3f} | {note} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--fresh", type=int, default=3, help="fresh fits to time")
    parser.add_argument("--warm", type=int, default=20, help="warm requests to time")
    parser.add_argument("--threads", default="1,2", help="torch threads per worker to try")
    parser.add_argument("--num-cpus", type=int, default=None, help="local Ray's CPUs")
    args = parser.parse_args()

    model = ModelConfig()
    train = TrainConfig()
    data = make_data(args.rows, model)
    torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))
    base = run_request(new_request("fine_tune", model, train, data, step_seed=0))
    request = new_request("fine_tune", model, train, data, base["weights"],
                          base["train_state"], step_seed=1)
    mb = sum(f.nbytes for f in data.features.values()) / 2**20
    print(f"fine_tune of {args.rows} rows ({mb:.0f} MiB of embeddings), study-sized model, "
          f"{torch.get_num_threads()} cores here")
    local = [run_request(request)["seconds"] for _ in range(5)]

    if args.num_cpus:
        import ray
        ray.init(address="local", num_cpus=args.num_cpus, include_dashboard=False,
                 log_to_driver=False)
    connect()
    storage = tempfile.mkdtemp(prefix="alray-bench-train-")
    rows = [row("in-process run_request", local, local,
                f"{torch.get_num_threads()} threads")]

    walls, computes, closes = [], [], []
    for _ in range(args.fresh):
        start = time.perf_counter()
        service = RayTraining.start(storage_path=storage)
        wall, compute = timed_run(service, request)
        walls.append(time.perf_counter() - start)
        computes.append(compute)
        start = time.perf_counter()
        service.close()
        closes.append(time.perf_counter() - start)
    rows.append(row("fresh TorchTrainer.fit() per request", walls, computes,
                    f"start + reply; close {statistics.median(closes):.1f} s more"))

    for threads in [int(t) for t in args.threads.split(",")]:
        start = time.perf_counter()
        with RayTraining.start(threads=threads, storage_path=storage) as service:
            started = time.perf_counter() - start
            timed_run(service, request)  # untimed: first request on this worker
            timings = [timed_run(service, request) for _ in range(args.warm)]
        rows.append(row(f"warm service, {threads} torch thread(s)", [w for w, _ in timings],
                        [c for _, c in timings], f"started in {started:.1f} s"))

    print("| path | requests | reply s (median) | compute s | overhead s | note |")
    print("|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
