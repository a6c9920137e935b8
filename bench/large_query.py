"""Large queries: streaming top-k and class-balanced top-k against a full sort, same run.

For each pool size n and query size k, the pool is cut into batches of ``--batch`` rows
(one actor's batch); each batch gives its candidates (``select_top``, or
``select_balanced`` for the class-balanced query) and the driver merges them (``TopK``,
``BalancedTopK``). Times: the per-batch selection summed over batches (the actors'
work), the driver's merge, and the full-sort baseline that ranks the whole pool at once
(``np.lexsort``; for the balanced query, the same rounds-then-fill order on the whole
pool). Every streamed query is checked against its baseline. Predicted classes follow
a Zipf(1) histogram over ``--classes`` classes (long-tailed, like the study's topics);
the balanced query uses ``--share`` (cap = ceil(share x k) posts per class).
Also times the softmax sampling keys (Gumbel noise from the ids) per n.

    PYTHONPATH=. .venv/bin/python bench/large_query.py --sizes 2000000 10000000
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np

from alray.acquisition import sampling_keys
from alray.scoring.topk import (
    BalancedTopK, TopK, _balanced_order, select_balanced, select_top)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[2_000_000, 10_000_000])
    parser.add_argument("--ks", type=int, nargs="+", default=[20, 2000, 20000])
    parser.add_argument("--batch", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=50)
    parser.add_argument("--share", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def make_pool(n: int, classes: int, seed: int):
    """Shuffled int64 ids, float64 scores, Zipf-distributed predicted classes."""
    rng = np.random.default_rng(seed)
    prior = 1.0 / np.arange(1, classes + 1)
    return (rng.permutation(n).astype(np.int64), rng.random(n),
            rng.choice(classes, size=n, p=prior / prior.sum()).astype(np.int64))


def stream(ids, scores, classes, k: int, cap: int, batch: int):
    """(query ids, seconds selecting per batch, seconds merging on the driver)."""
    top = BalancedTopK(k, cap) if cap else TopK(k)
    t_select = t_merge = 0.0
    for a in range(0, len(ids), batch):
        t0 = time.perf_counter()
        extra = {"predicted_class": classes[a:a + batch]}
        if cap:
            rows = select_balanced(ids[a:a + batch], scores[a:a + batch], k, cap, extra)
        else:
            rows = select_top(ids[a:a + batch], scores[a:a + batch], k, extra)
        t1 = time.perf_counter()
        top.update(rows.pop("id"), rows.pop("score"), rows)
        t_merge += time.perf_counter() - t1
        t_select += t1 - t0
    return top.result()["id"], t_select, t_merge


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def main(argv=None) -> None:
    args = parse_args(argv)
    print(f"batch {args.batch}, {args.classes} Zipf classes, share {args.share}\n")
    print("| n | k | query | per-batch select (s) | driver merge (s) | streamed total (s) "
          "| full sort (s) | sort / streamed |")
    print("|---:|---:|---|---:|---:|---:|---:|---:|")
    for n in args.sizes:
        ids, scores, classes = make_pool(n, args.classes, args.seed)
        _, t_keys = timed(lambda: sampling_keys(scores, ids, "softmax", 1.0, args.seed))
        order, t_sort = timed(lambda: np.lexsort((ids, -scores)))
        for k in args.ks:
            cap = max(1, math.ceil(args.share * k))
            rows = {"id": ids, "score": scores, "predicted_class": classes}
            for name, c in (("top-k", 0), (f"balanced, cap {cap}", cap)):
                got, t_sel, t_mrg = stream(ids, scores, classes, k, c, args.batch)
                if c:
                    want, t_base = timed(lambda: ids[_balanced_order(rows, k, c)])
                else:
                    want, t_base = ids[order[:k]], t_sort
                assert np.array_equal(got, want), (n, k, name)
                total = t_sel + t_mrg
                print(f"| {n:,} | {k:,} | {name} | {t_sel:.3f} | {t_mrg:.3f} | {total:.3f} | "
                      f"{t_base:.3f} | {t_base / total:.1f}x |", flush=True)
        print(f"\nn {n:,}: softmax sampling keys (Gumbel noise from ids) {t_keys:.3f} s\n",
              flush=True)
        del ids, scores, classes, order


if __name__ == "__main__":
    main()
