"""Scoring throughput: naive single process vs alray's local path vs alray on Ray Data.

    .venv/bin/python bench/score.py --rows 250000 --strategy bald
    .venv/bin/python bench/score.py --rows 1000000 --strategy margin

The pool is generated once (study dims) under --dir. The naive baseline reads the same
shards with pyarrow, runs K full forward passes with ordinary per-element dropout (or
one pass), scores every row and fully sorts. All rows are printed as markdown.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from alray.acquisition import compute_scores
from alray.config import GeneratorConfig, ModelConfig, PoolConfig, ScoreConfig
from alray.model import FusionNet, save_checkpoint
from alray.model.fusion import as_tensors
from alray.pool import io
from alray.pool.arrays import arrays_from_table
from alray.pool.synthetic import generate_pool
from alray.scoring.pipeline import score_pool


def naive(pool: str, ckpt_model: FusionNet, strategy: str, k: int, batch: int) -> np.ndarray:
    model = ckpt_model.eval()
    for m in model.modules():  # per-element dropout masks, as a plain implementation does
        if isinstance(m, torch.nn.Dropout):
            m.train()
    dims = {"image": 1024, "text": 300}
    all_ids, all_scores = [], []
    for shard in io.pool_shards(pool):
        for rb in io.iter_batches(shard, batch_size=batch):
            data = arrays_from_table(rb, PoolConfig(), dims)
            with torch.inference_mode():
                f, p = as_tensors(data.features, data.present, "cpu")
                if strategy == "bald":
                    samples = torch.stack([torch.softmax(model(f, p).logits["fused"], 1)
                                           for _ in range(k)])
                    mean = samples.mean(0).double().numpy()
                    ent = -(samples * torch.log(samples.clamp_min(1e-12))).sum(2).mean(0)
                    s = compute_scores("bald", {"mc_mean_probs": mean,
                                                "mc_mean_entropy": ent.double().numpy()})
                else:
                    model.eval()
                    probs = torch.softmax(model(f, p).logits["fused"], 1).double().numpy()
                    s = compute_scores(strategy, {"probs": probs})
            all_ids.append(data.ids)
            all_scores.append(s)
    ids, scores = np.concatenate(all_ids), np.concatenate(all_scores)
    return ids[np.lexsort((ids, -scores))[:20]]


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=250_000)
    ap.add_argument("--strategy", default="bald")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "alray-bench-score"))
    args = ap.parse_args()
    pool_dir = f"{args.dir}/pool{args.rows}"
    if not os.path.exists(pool_dir):
        generate_pool(pool_dir, GeneratorConfig(rows=args.rows, val_rows=0))
    pool = f"{pool_dir}/pool"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FusionNet(ModelConfig())
    ckpt = f"{args.dir}/model.ckpt"
    save_checkpoint(ckpt, model, model.config)
    gib = sum(s.fs.get_file_info(s.path).size for s in io.pool_shards(pool)) / 2**30
    cfg = ScoreConfig(strategies=(args.strategy,), mc_samples=args.k,
                      batch_size=args.batch_size, num_cpus_per_actor=0.5)
    torch.set_num_threads(2)
    runs = [("naive single process", lambda: naive(pool, model, args.strategy, args.k,
                                                   args.batch_size)),
            ("alray local path", lambda: score_pool(pool, ckpt, cfg, use_ray=False)),
            ("alray Ray Data, 1 actor x 1 CPU", lambda: score_pool(
                pool, ckpt, cfg.replace(actors=1, num_cpus_per_actor=1.0), use_ray=True)),
            ("alray Ray Data, 2 actors x 0.5 CPU", lambda: score_pool(
                pool, ckpt, cfg.replace(actors=2, num_cpus_per_actor=0.5), use_ray=True))]
    print(f"| {args.strategy} | rows | seconds | rows/s | GB/s read | vs naive |")
    print("|---|---:|---:|---:|---:|---:|")
    base = None
    for name, fn in runs:
        seconds, _ = timed(fn)
        base = base or seconds
        print(f"| {name} | {args.rows:,} | {seconds:.1f} | {args.rows / seconds:,.0f} | "
              f"{gib * 1.0737 / seconds:.2f} | {base / seconds:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
