"""SEALS-style candidates (``--candidates knn:K``) on a big pool: the graph's cost and
recall, and what a knn step costs against a whole-pool step.

    OMP_NUM_THREADS=1 .venv/bin/python bench/knn_candidates.py --pool /tmp/p1m/packed \\
        --graph /tmp/p1m/neighbours.parquet --k 10 --labelled 2000,10000 --steps 2

(a) ``build_neighbours`` with an IVF-Flat index on Ray tasks (``--actors`` x ``--cpus``),
timed end to end (read + project, index, search, write), then recall@K of the graph
against an exact search (faiss ``IndexFlatL2`` over the same projected pool) for
``--sample`` seeded query posts; ``--nprobes`` also gives the recall of the same index
at other nprobe values on that sample.
(b) One resident pool (``--actors`` actors, the pool read once before the timed steps,
``--dtype``), the study-sized model with random weights (speed does not depend on them),
margin, 20-post queries with the embeddings carried, as a loop step asks. For each
labelled-set size (a seeded random sample of the pool), per step, in turn on the same
actors: a whole-pool step, then a ``knn:K`` step; wall seconds of ``ResidentPool.score``
(planning included: it reads the pool's id column every step). Medians over steps;
ratios are per step. ``--skip-build`` reuses ``--graph``.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from alray.config import ComputeConfig, ModelConfig, PoolConfig, ScoreConfig


def main() -> None:
    args = parse()
    import ray

    from alray.runtime import connect
    from decode import cpu_flags
    from resident import matmul_rate

    connect()
    compute = ComputeConfig(score_actors=args.actors, score_cpus_per_actor=args.cpus,
                            score_batch_size=args.batch, resident_dtype=args.dtype)
    print(f"pool {args.pool}, {ray.cluster_resources().get('CPU'):g} CPUs, flags "
          f"{cpu_flags()}, fp32 matmul {matmul_rate(2):.0f} GFLOP/s on 2 threads",
          flush=True)
    if not args.skip_build:
        build(args, compute)
    recall(args)
    if args.labelled:
        steps(args, compute)


def build(args, compute: ComputeConfig) -> None:
    from alray.scoring.neighbours import build_neighbours

    s = build_neighbours(args.pool, args.graph, args.k, index="ivf", nprobe=args.nprobe,
                         compute=compute)
    print(f"(a) graph: {s['rows']:,} posts, K={s['k']}, IVF {s['nlist']} lists, nprobe "
          f"{s['nprobe']}: {s['total_s']:.1f} s (read+project {s['read_s']:.1f}, index "
          f"{s['build_s']:.1f}, search {s['search_s']:.1f}, write "
          f"{s['total_s'] - s['read_s'] - s['build_s'] - s['search_s']:.1f})", flush=True)


def recall(args) -> None:
    """Recall@K of the graph (and of the same IVF index at ``--nprobes``) against an
    exact search, on ``--sample`` seeded posts."""
    import faiss
    import pyarrow.parquet as pq

    from alray.pool import io
    from alray.pool.schema import infer_dims
    from alray.scoring.clusters import projection
    from alray.scoring.neighbours import build_index, project_part, read_neighbours

    started = time.perf_counter()
    meta = {k.decode(): v.decode() for k, v in pq.read_schema(args.graph).metadata.items()}
    dims = infer_dims(args.pool, PoolConfig())
    matrix = projection(dims, int(meta["alray.dims"]), int(meta["alray.seed"]))
    ids, feats = project_part(io.pool_shards(args.pool), PoolConfig().to_dict(), dims, matrix)
    pick = np.sort(np.random.default_rng(7).choice(len(ids), args.sample, replace=False))
    exact = faiss.IndexFlatL2(feats.shape[1])
    exact.add(feats)
    _, found = exact.search(feats[pick], args.k + 1)
    truth = [ids[[r for r in row if r != own][:args.k]] for row, own in zip(found, pick)]
    g_ids, g_near = read_neighbours(args.graph)
    got = g_near[np.searchsorted(g_ids, ids[pick])]
    print(f"(a) recall@{args.k} of the graph vs exact, {args.sample} posts: "
          f"{_recall(got, truth):.3f} (exact search of the sample "
          f"{time.perf_counter() - started:.1f} s with the read)", flush=True)
    if args.nprobes and meta["alray.index"] == "ivf":
        index = build_index(feats, "ivf", int(meta["alray.nlist"]), int(meta["alray.seed"]),
                            min(len(ids), 40 * int(meta["alray.nlist"])))
        for nprobe in args.nprobes:
            index.nprobe = nprobe
            t0 = time.perf_counter()
            _, rows = index.search(feats[pick], args.k + 1)
            took = time.perf_counter() - t0
            near = [ids[[r for r in row if r != own and r >= 0][:args.k]]
                    for row, own in zip(rows, pick)]
            print(f"    nprobe {nprobe}: recall {_recall(near, truth):.3f}, "
                  f"{took / args.sample * 1e3:.2f} ms a query", flush=True)


def _recall(got, truth) -> float:
    return float(np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got, truth)]))


def steps(args, compute: ComputeConfig) -> None:
    import torch

    from alray.model import FusionNet, model_state
    from alray.pool.load import read_ids_and_labels
    from alray.scoring.resident import ResidentPool

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        state = model_state(FusionNet(ModelConfig()))
    whole = ScoreConfig(strategies=("margin",), query_size=20)
    knn = whole.replace(candidates=f"knn:{args.k}", neighbours=args.graph)
    all_ids, _ = read_ids_and_labels(args.pool, PoolConfig())
    pool = ResidentPool.open(args.pool, PoolConfig(), compute)
    try:
        t0 = time.perf_counter()
        pool.load()
        print(f"(b) resident pool read once: {time.perf_counter() - t0:.1f} s", flush=True)
        for n in args.labelled:
            labelled = np.random.default_rng(n).choice(all_ids, n, replace=False)
            rows = []
            for step in range(1, args.steps + 1):
                row = {}
                for name, score in (("whole", whole), ("knn", knn)):
                    t0 = time.perf_counter()
                    query = pool.score(state, score, labelled, step, carry=True)
                    row[name] = time.perf_counter() - t0
                row["ratio"] = row["whole"] / row["knn"]
                rows.append(row)
                print(f"    labelled {n:,}, step {step}: whole {row['whole']:.2f} s, "
                      f"knn {row['knn']:.2f} s ({row['ratio']:.1f}x), "
                      f"{query['margin'].num_rows} picked", flush=True)
            from alray.scoring.neighbours import knn_candidates
            near = len(knn_candidates(args.graph, args.k, np.sort(labelled)))
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            print(f"(b) labelled {n:,}: {near:,} knn candidates; median whole "
                  f"{med['whole']:.2f} s, knn {med['knn']:.2f} s, ratio "
                  f"{med['ratio']:.1f}x", flush=True)
    finally:
        pool.close()


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pool", required=True)
    p.add_argument("--graph", required=True, help="Where the graph is (or is written).")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--nprobe", type=int, default=16)
    p.add_argument("--nprobes", default="4,64",
                   type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--sample", type=int, default=1000)
    p.add_argument("--labelled", default="2000,10000",
                   type=lambda s: [int(x) for x in s.split(",") if x])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--actors", type=int, default=2)
    p.add_argument("--cpus", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dtype", default="float16", choices=["float32", "float16"])
    p.add_argument("--skip-build", action="store_true")
    return p.parse_args()


if __name__ == "__main__":
    main()
