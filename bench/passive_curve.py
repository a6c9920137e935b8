"""The passive learning curve of a pool: accuracy against labelled-set size, each point
a model fitted from scratch (the library's passive fit, ``train_passive``, the study's
settings unless ``--epochs`` says otherwise) on a seeded random labelled subset.

    .venv/bin/python bench/passive_curve.py --pool data/p/pool --val data/p/val \
        --sizes 2000,5000,10000,20000,40000,60000,80000,all --out data/curves/p

The subsets are nested: one seeded random order of the labelled posts (the loop's
``draw_labelled``), each size its first n posts, as a passive loop adds random labels.
After each size, ``OUT/curve.csv`` and ``OUT/curve.json`` are rewritten (atomically), so a
cut-short run keeps its points. The JSON also holds the isotonic-smoothed curve
(``stats.isotonic``, as the report smooths the pooled passive curve) and the labels at
which it reaches 95/98/99/100% of its final value (``stats.labels_to_reach``, linear
between the measured sizes: with sparse sizes these points are interpolations).
``--study`` adds the study's passive points for comparison (docs/reproduction.md).
"""
from __future__ import annotations

import argparse
import csv
import io as stdio
import json
import os
import time

import numpy as np

SHARES = (0.95, 0.98, 0.99, 1.0)
# the study's saved passive curve (100k-post pool, 5 seeds; /work/shared/STUDY.md)
STUDY = {"accuracy_at_2k": 0.49, "final": 0.63,
         "reach": {"0.95": 42_300, "0.98": 58_600, "0.99": 68_000, "1.0": 97_000}}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--pool", required=True)
    p.add_argument("--val", required=True)
    p.add_argument("--sizes", default="2000,5000,10000,20000,40000,60000,80000,all",
                   help="Comma-separated labelled-set sizes; 'all' = every labelled post.")
    p.add_argument("--seed", type=int, default=0, help="The subsets' order and the fits.")
    p.add_argument("--epochs", type=int, default=None,
                   help="Epochs per fit (default: TrainConfig's, the study's 45).")
    p.add_argument("--sample-budget", type=int, default=0,
                   help="Cut epochs for large sizes: a fit on n posts runs min(epochs, "
                        "max(--min-epochs, round(BUDGET / n))) epochs; 0 = every fit "
                        "runs --epochs (the study's protocol).")
    p.add_argument("--min-epochs", type=int, default=3)
    p.add_argument("--classes", type=int, default=None,
                   help="Class count (default: inferred from the labels).")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's).")
    p.add_argument("--out", required=True, help="Directory for curve.csv and curve.json.")
    return p.parse_args(argv)


def parse_sizes(text: str, available: int) -> list[int]:
    """``"2000,all"`` -> ``[2000, available]``: sorted, distinct, each in [1, available]."""
    sizes = set()
    for item in text.split(","):
        item = item.strip()
        n = available if item == "all" else int(item)
        if not 1 <= n <= available:
            raise SystemExit(f"--sizes: {item} is outside [1, {available:,}] "
                             f"(the pool's labelled posts)")
        sizes.add(n)
    return sorted(sizes)


def reach_points(sizes, accuracy, shares=SHARES) -> dict:
    """The isotonic-smoothed curve, its final value and, per share, the labels at which
    it first reaches ``share x final`` (``labels_to_reach``)."""
    from alray.experiments import stats

    fit = stats.isotonic(accuracy)
    final = float(fit[-1])
    reach = {f"{s:g}": stats.labels_to_reach(sizes, fit, s * final) for s in shares}
    return {"smoothed": [float(v) for v in fit], "final": final, "reach": reach}


def write_atomic(path: str, text: str) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def write_results(out: str, rows: list[dict], summary: dict) -> None:
    buf = stdio.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(os.path.join(out, "curve.csv"), buf.getvalue())
    write_atomic(os.path.join(out, "curve.json"), json.dumps(summary, indent=2) + "\n")


def nested_order(pool: str, columns, n: int, seed: int):
    """The first ``n`` posts of one seeded random order of the labelled posts, loaded."""
    from alray.pool.load import draw_labelled, load_rows_in_order, read_ids_and_labels

    ids, labels = read_ids_and_labels(pool, columns)
    picked, picked_labels = draw_labelled(ids, labels, n, seed, pool)
    return load_rows_in_order(pool, columns, picked,
                              dict(zip(picked.tolist(), picked_labels.tolist())))


def labelled_count(pool: str, columns) -> int:
    from alray.pool.load import read_ids_and_labels

    return int((read_ids_and_labels(pool, columns)[1] >= 0).sum())


def epochs_for(n: int, epochs: int, budget: int, min_epochs: int) -> int:
    """Epochs of a fit on ``n`` posts: ``epochs``, or with a sample budget
    ``min(epochs, max(min_epochs, round(budget / n)))`` (as many sample passes as
    ``budget`` allows, never fewer than ``min_epochs``)."""
    if not budget:
        return epochs
    return min(epochs, max(min_epochs, round(budget / n)))


def fit_point(data, n: int, model, train, val) -> dict:
    from alray.train.passive import train_passive

    started = time.perf_counter()
    metrics = train_passive(data.take(np.arange(n)), model, train, val)["metrics"]
    row = {"labels": n, "epochs": train.epochs,
           "seconds": round(time.perf_counter() - started, 1)}
    for head, m in metrics.items():
        row[f"{head}_accuracy"] = round(float(m["accuracy"]), 4)
    row["macro_f1"] = round(float(metrics["fused"]["macro_f1"]), 4)
    return row


def main(argv=None) -> None:
    args = parse_args(argv)
    import torch

    from alray.config import PoolConfig, TrainConfig
    from alray.pool.load import load_rows
    from alray.train.passive import model_for_pool

    if args.threads:
        torch.set_num_threads(args.threads)
    os.makedirs(args.out, exist_ok=True)
    columns = PoolConfig()
    sizes = parse_sizes(args.sizes, labelled_count(args.pool, columns))
    model = model_for_pool(args.pool, columns, args.classes, args.val)
    train = TrainConfig(seed=args.seed, **({"epochs": args.epochs} if args.epochs else {}))
    data = nested_order(args.pool, columns, sizes[-1], args.seed)
    val = load_rows(args.val, columns)
    rows = []
    for n in sizes:
        epochs = epochs_for(n, train.epochs, args.sample_budget, args.min_epochs)
        rows.append(fit_point(data, n, model, train.replace(epochs=epochs), val))
        print(json.dumps(rows[-1]), flush=True)
        summary = {"pool": args.pool, "val": args.val, "val_rows": len(val),
                   "seed": args.seed, "epochs": train.epochs,
                   "sample_budget": args.sample_budget, "min_epochs": args.min_epochs, "threads": torch.get_num_threads(),
                   "points": rows, "study": STUDY,
                   **reach_points([r["labels"] for r in rows],
                                  [r["fused_accuracy"] for r in rows])}
        write_results(args.out, rows, summary)
    print(json.dumps({"final": summary["final"], "reach": summary["reach"]}))


if __name__ == "__main__":
    main()
