"""Loop-step scoring: the resident pool against Ray Data streaming and pure compute.

    .venv/bin/alray generate /tmp/p250 --rows 250000 --classes 50 --seed 0   # once
    OMP_NUM_THREADS=1 .venv/bin/python bench/resident.py --pool /tmp/p250/pool \\
        --strategies margin,bald --steps 2 --rows 250000 --cpus 0.25

``--cpus 0.25``: each resident actor still runs one torch thread, and Ray's accounting
leaves the streaming actor (0.5) and its read tasks (1) their CPUs in the same Ray; with
2 x 0.5 the streaming path stalls (the CPU trap of RAY_NOTES.md).

One process, the embedded Ray (2 CPUs), the study-sized model with random weights (speed
does not depend on them), 20-post queries with the embeddings carried, as a loop step
asks. Per strategy and per step, in turn on the same shared cores:
- streaming: ``score_pool`` on Ray Data, as a loop step did (``--stream-actors`` actors
  of 0.5 CPU; the read tasks need the other CPU);
- resident: ``ResidentPool.score`` (``--actors`` actors of ``--cpus`` CPUs, the pool read
  once before the timed steps; the first read is printed apart);
- pure compute: the same ``BatchModel.outputs`` over the same rows already in memory,
  in batches of the same size, inside the resident actors themselves (same processes,
  same threads, all at once; ``ResidentPool.forward_seconds``): the arithmetic a step
  cannot avoid. ``--paths ...,process`` also times it in this process with as many
  torch threads as the actors have together.
Ratios are per step (same strategy, same step), medians over steps. Memory: each
resident actor's bytes held and RSS against rows x dims x bytes.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from alray.config import ComputeConfig, ModelConfig, PoolConfig, ScoreConfig
from alray.pool import io
from alray.scoring.resident import ResidentPart, ResidentPool, part_bytes, plan_parts


def main() -> None:
    args = parse()
    import ray
    import torch

    from alray.model import FusionNet, model_state
    from alray.runtime import connect

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = model_state(FusionNet(ModelConfig()))
    connect()
    cpus = ray.cluster_resources().get("CPU")
    resident_compute = ComputeConfig(score_actors=args.actors, score_cpus_per_actor=args.cpus,
                                     score_gpus_per_actor=args.gpus,
                                     score_batch_size=args.batch, resident_dtype=args.dtype,
                                     resident_memory_mb=args.resident_memory)
    stream_compute = ComputeConfig(score_actors=args.stream_actors, score_cpus_per_actor=0.5,
                                   score_batch_size=args.batch)
    threads = max(1, int(args.cpus)) * args.actors
    print(f"pool {args.pool}, {cpus:g} CPUs, resident {args.actors} x {args.cpus} CPU "
          f"({args.dtype}), streaming {args.stream_actors} x 0.5 CPU, pure compute "
          f"{threads} thread(s), batch {args.batch}, {matmul_rate(threads):.0f} GFLOP/s "
          f"fp32 matmul ({threads} thread(s))")
    started = time.perf_counter()
    pool = ResidentPool.open(args.pool, PoolConfig(), resident_compute)
    before = pool.info()
    info = pool.load()
    print(f"resident: first read of the pool {time.perf_counter() - started:.1f} s")
    memory(info, before, pool.dims, args.dtype)
    paths = set(args.paths.split(","))
    here = in_memory(args.pool, pool.dims, args.dtype) if "process" in paths else None
    device = "cuda" if args.gpus else "cpu"
    rows = []
    try:
        for strategy in args.strategies.split(","):
            score = ScoreConfig(strategies=(strategy,), query_size=20, mc_samples=args.k)
            for step in range(1, args.steps + 1):
                rows.append(one_step(strategy, step, score, state, pool, here, args.pool,
                                     stream_compute, threads, args.batch, paths, device))
    finally:
        pool.close()
    report(rows, args)


def one_step(strategy, step, score, state, pool, here, pool_uri, stream_compute,
             threads, batch, paths, device) -> dict:
    from alray.scoring.pipeline import score_pool

    nan = float("nan")
    t0 = time.perf_counter()
    resident = pool.score(state, score, None, step, carry=True)
    t1 = time.perf_counter()
    row = {"strategy": strategy, "step": step, "resident": t1 - t0, "streaming": nan,
           "compute": nan, "same_query": None, "rows": len(here) if here else None}
    if "streaming" in paths:
        streamed = score_pool(pool_uri, state, score, compute=stream_compute, step=step,
                              carry=True)
        row["streaming"] = time.perf_counter() - t1
        row["same_query"] = (resident[strategy].column("id").to_pylist()
                             == streamed[strategy].column("id").to_pylist())
    if "compute" in paths:  # in the actors, their threads, every actor at once
        row["compute"] = pool.forward_seconds(state, score)
    row["process"] = (pure_compute(here, state, score, threads, batch, device)
                      if here is not None else nan)
    print(f"  {strategy} step {step}: resident {row['resident']:.2f} s, streaming "
          f"{row['streaming']:.2f} s, pure compute in the actors {row['compute']:.2f} s, "
          f"in one process ({threads} threads) {row['process']:.2f} s, same query: "
          f"{row['same_query']}", flush=True)
    return row


def in_memory(pool_uri: str, dims, dtype: str):
    """The whole pool decoded in this process, as one resident part holds it."""
    part = ResidentPart(plan_parts(io.pool_shards(pool_uri), 1)[0], PoolConfig().to_dict(),
                        dims, dtype)
    part.load()
    return part.data


def pure_compute(data, state, score, threads: int, batch: int, device: str = "cpu"
                 ) -> float:
    """Seconds of ``BatchModel.outputs`` over every row (no top-k, no merge); on a GPU
    the rows stay in host memory (each batch is copied to the device)."""
    import torch

    from alray.scoring.outputs import BatchModel

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        dims = {m: f.shape[1] for m, f in data.features.items()}
        model = BatchModel.from_state(state, score, dims, device)
        started = time.perf_counter()
        for start in range(0, len(data), batch):
            model.outputs(data.take(slice(start, start + batch)))
        return time.perf_counter() - started
    finally:
        torch.set_num_threads(old)


def matmul_rate(threads: int) -> float:
    """GFLOP/s of a 2048 x 2048 fp32 matmul on ``threads`` torch threads."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    started, n = time.perf_counter(), 10
    for _ in range(n):
        a @ b
    torch.set_num_threads(old)
    return 2 * 2048**3 * n / (time.perf_counter() - started) / 1e9


def memory(info: list[dict], before: list[dict], dims, dtype: str) -> None:
    for i, (after, idle) in enumerate(zip(info, before)):
        ideal = after["rows"] * sum(dims.values()) * np.dtype(dtype).itemsize
        print(f"  actor {i}: {after['rows']:,} rows, held {after['bytes'] / 2**20:,.0f} MiB "
              f"(rows x dims x bytes {ideal / 2**20:,.0f} MiB, {after['bytes'] / ideal:.3f}x; "
              f"with ids, labels, masks {part_bytes(after['rows'], dims, dtype) / 2**20:,.0f}"
              f" MiB), RSS {after['rss'] / 2**20:,.0f} MiB ({after['rss'] / ideal:.2f}x; "
              f"{idle['rss'] / 2**20:,.0f} MiB before reading, so "
              f"{(after['rss'] - idle['rss']) / ideal:.2f}x for the data)")
    rows = sum(a["rows"] for a in info)
    ideal = rows * sum(dims.values()) * np.dtype(dtype).itemsize
    rss = sum(a["rss"] for a in info)
    print(f"  node: {rows:,} rows, actors' RSS {rss / 2**20:,.0f} MiB = "
          f"{rss / ideal:.2f}x rows x dims x bytes ({ideal / 2**20:,.0f} MiB)")


def report(rows: list[dict], args) -> None:
    """Medians over the steps after the first (the first step of a session also builds
    each actor's model and imports torch there); the first step apart."""
    print(f"\n| {args.pool}, K={args.k} | first step: resident s | resident s | "
          "streaming s | pure compute s (actors) | streaming / resident | "
          "resident / compute | same query |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == strategy]
        later = mine[1:] or mine
        med = lambda key: statistics.median(r[key] for r in later)  # noqa: E731
        speedup = statistics.median(r["streaming"] / r["resident"] for r in later)
        overhead = statistics.median(r["resident"] / r["compute"] for r in later)
        same = all(r["same_query"] for r in mine) if mine[0]["same_query"] is not None \
            else "n/a"
        rate = f" ({args.rows / med('resident'):,.0f} rows/s)" if args.rows else ""
        print(f"| {strategy}, steps 2-{len(mine)} (median) | {mine[0]['resident']:.2f} | "
              f"{med('resident'):.2f}{rate} | {med('streaming'):.2f} | {med('compute'):.2f} "
              f"| **{speedup:.1f}x** | **{overhead:.2f}x** | {same} |")


def parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="/tmp/p250/pool")
    parser.add_argument("--strategies", default="margin,bald")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus", type=float, default=0.25)
    parser.add_argument("--stream-actors", type=int, default=1)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--gpus", type=float, default=0.0, help="GPUs per resident actor")
    parser.add_argument("--paths", default="resident,streaming,compute",
                        help="resident is always timed; streaming, compute (in the "
                             "actors), process (in this process): optional")
    parser.add_argument("--rows", type=int, default=0, help="the pool's rows, for rows/s")
    parser.add_argument("--resident-memory", type=int, default=None,
                        help="MiB a node may hold (default: half the node's Ray memory)")
    return parser.parse_args()


if __name__ == "__main__":
    main()
