"""Which ``--nprobe`` for ``alray neighbours --index ivf``: what an approximate graph
changes in the ``knn:K`` candidates a loop step scores, against the exact graph.

    OMP_NUM_THREADS=1 .venv/bin/python bench/nprobe.py --pool data/study100k-w0/pool \\
        --exact data/study100k-w0/neighbours.parquet --nprobes 4,16,64,128 \\
        --labelled 2000,10000 --out /tmp/nprobe

``--exact`` is a flat graph of the same pool (``alray neighbours --index flat``, same
``--dims``/``--seed``). For each nprobe an IVF graph is built in this process
(``build_neighbours(..., local)``: the same library call as the CLI) and compared:
recall@K over every post (the share of each exact list found), and for seeded random
labelled sets the candidate set that ``knn:K`` would score (``knn_candidates``): the share
of the exact candidates found, the candidates' count, and their overlap. Search seconds
are the build's own.
"""
from __future__ import annotations

import argparse
import os

import numpy as np


def main() -> None:
    args = parse()
    from alray.config import ComputeConfig
    from alray.scoring.neighbours import build_neighbours, knn_candidates, read_neighbours

    from decode import cpu_flags
    from resident import matmul_rate

    print(f"flags {cpu_flags()}, fp32 matmul {matmul_rate(2):.0f} GFLOP/s on 2 threads, "
          f"load {os.getloadavg()[0]:.1f}", flush=True)
    ids, exact = read_neighbours(args.exact)
    k = args.k
    rng = np.random.default_rng(args.seed)
    labelled = {n: np.sort(rng.choice(ids, n, replace=False)) for n in args.labelled}
    exact_cands = {n: knn_candidates(args.exact, k, lab) for n, lab in labelled.items()}
    os.makedirs(args.out, exist_ok=True)
    print("| nprobe | lists | search s | recall@%d | " % k + " | ".join(
        f"exact candidates found, {n:,} labelled (count approx / exact)"
        for n in args.labelled) + " |", flush=True)
    for nprobe in args.nprobes:
        path = os.path.join(args.out, f"ivf-nprobe{nprobe}.parquet")
        s = build_neighbours(args.pool, path, k, dims=args.dims, seed=args.seed_graph,
                             index="ivf", nprobe=nprobe, compute=ComputeConfig(local=True))
        got_ids, got = read_neighbours(path)
        assert np.array_equal(got_ids, ids), "the two graphs list different posts"
        recall = np.mean([len(np.intersect1d(a[:k], b[:k])) / k for a, b in zip(got, exact)])
        cells = []
        for n, lab in labelled.items():
            approx = knn_candidates(path, k, lab)
            found = len(np.intersect1d(approx, exact_cands[n])) / len(exact_cands[n])
            cells.append(f"{found:.3f} ({len(approx):,} / {len(exact_cands[n]):,})")
        print(f"| {nprobe} | {s['nlist']} | {s['search_s']:.1f} | {recall:.3f} | "
              + " | ".join(cells) + " |", flush=True)


def parse():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pool", required=True)
    p.add_argument("--exact", required=True, help="A flat graph of the same pool.")
    p.add_argument("--nprobes", default="4,16,64,128",
                   type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--labelled", default="2000,10000",
                   type=lambda s: [int(v) for v in s.split(",")])
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--dims", type=int, default=64)
    p.add_argument("--seed-graph", type=int, default=0, help="The graph's --seed.")
    p.add_argument("--seed", type=int, default=0, help="The labelled sets' draw.")
    p.add_argument("--out", default="/tmp/nprobe")
    return p.parse_args()


if __name__ == "__main__":
    main()
