"""Streaming exact top-k (alray.scoring.topk.TopK) vs a full np.lexsort, same process.

Prints markdown table rows: n, k, streaming seconds, lexsort seconds, ratio. The
lexsort baseline sorts the whole pool once per n (its cost does not depend on k) and
every streaming result is checked against it.

    PYTHONPATH=. .venv/bin/python bench/topk.py --sizes 2000000 10000000
"""
from __future__ import annotations

import argparse
import time

import numpy as np

from alray.scoring.topk import TopK


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000_000, 10_000_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[20, 1000, 20000])
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--levels", type=int, default=0,
                        help="round scores to this many distinct values (ties); 0 = none")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def make_pool(n: int, levels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Shuffled int64 ids and float64 scores, optionally with many ties."""
    rng = np.random.default_rng(seed)
    ids = rng.permutation(n).astype(np.int64)
    scores = rng.random(n)
    if levels:
        scores = np.floor(scores * levels) / levels
    return ids, scores


def stream(ids: np.ndarray, scores: np.ndarray, k: int, batch: int) -> np.ndarray:
    top = TopK(k)
    for start in range(0, len(ids), batch):
        top.update(ids[start:start + batch], scores[start:start + batch])
    return top.result()["id"]


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"batch {args.batch}, levels {args.levels or 'continuous'}\n")
    print("| n | k | streaming top-k (s) | full lexsort (s) | lexsort / streaming |")
    print("|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        ids, scores = make_pool(n, args.levels, args.seed)
        t0 = time.perf_counter()
        order = np.lexsort((ids, -scores))
        t_sort = time.perf_counter() - t0
        for k in args.ks:
            t0 = time.perf_counter()
            got = stream(ids, scores, k, args.batch)
            t_stream = time.perf_counter() - t0
            assert np.array_equal(got, ids[order[:k]]), (n, k)
            print(f"| {n:,} | {k:,} | {t_stream:.3f} | {t_sort:.3f} | "
                  f"{t_sort / t_stream:.1f}x |", flush=True)
        del ids, scores, order


if __name__ == "__main__":
    main()
