"""A resident loop step with the cached first block against without, in the same run.

    OMP_NUM_THREADS=1 .venv/bin/python bench/freeze_first_block.py \\
        --pool /tmp/fresh/data/demo/pool --model /tmp/fresh/data/demo/passive.ckpt \\
        --strategies margin,bald --steps 3

Two resident pools of the same pool in one embedded Ray (2 CPUs), ``--actors`` actors of
``--cpus`` CPUs each: one scores the raw rows (the default), the other was asked for the
cached first block (``ResidentPool.score(..., first_block=True)``, what a
``--freeze-first-block`` loop asks). Per strategy and step the two are timed in turn,
the same model (a passive checkpoint, or random weights), 20-post queries with the
embeddings carried, as a loop step asks; the queries are compared (ids in order, largest
score difference). ``--compute`` also times the forward passes alone in the actors
(``ResidentPool.forward_seconds``). Memory: bytes held and RSS per actor, both pools.
The arithmetic per row is printed from the model's shapes (multiply-adds): the bound on
what the cache can save.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))

from alray.config import ComputeConfig, ModelConfig, PoolConfig, ScoreConfig  # noqa: E402
from alray.scoring.resident import ResidentPool  # noqa: E402


def main() -> None:
    args = parse()
    import ray

    from decode import cpu_flags
    from resident import matmul_rate

    from alray.runtime import connect

    state, config = model(args.model)
    print(f"CPU flags: {cpu_flags()}; fp32 matmul {matmul_rate(2):.0f} GFLOP/s on 2 "
          f"threads; load average {os.getloadavg()[0]:.1f}")
    arithmetic(config, args.k)
    connect()
    compute = ComputeConfig(score_actors=args.actors, score_cpus_per_actor=args.cpus,
                            score_batch_size=args.batch, resident_dtype=args.dtype)
    print(f"pool {args.pool}, {ray.cluster_resources().get('CPU'):g} CPUs, "
          f"2 resident pools of {args.actors} x {args.cpus} CPU ({args.dtype}), "
          f"batch {args.batch}")
    raw, cached = (ResidentPool.open(args.pool, PoolConfig(), compute) for _ in range(2))
    try:
        rows = run(args, state, raw, cached)
        memory(raw.info(), cached.info())
    finally:
        raw.close()
        cached.close()
    report(rows, args)


def model(path: str | None):
    """(model_state, ModelConfig): the checkpoint's, or the study's model at random."""
    import torch

    from alray.model import FusionNet, load_model, model_state

    if path:
        net, config = load_model(path)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net, config = FusionNet(ModelConfig()), ModelConfig()
    return model_state(net), config


def arithmetic(config: ModelConfig, k: int) -> None:
    """Multiply-adds per row, plain and MC dropout (the fused head), raw and cached."""
    first = sum(config.modality_dims[m] * w[0] for m, w in config.branch_widths.items())
    after = 0
    for m, widths in config.branch_widths.items():
        after += sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    concat = sum(w[-1] for w in config.branch_widths.values())
    fused = (concat, *config.fused_widths)
    after += sum(a * b for a, b in zip(fused[:-1], fused[1:]))
    fused_head = config.fused_widths[-1] * config.n_classes
    heads = sum(w[-1] for w in config.branch_widths.values()) * config.n_classes \
        if config.heads == "multi" else 0
    plain_raw, plain_cached = first + after + fused_head + heads, after + fused_head + heads
    mc_raw, mc_cached = first + k * (after + fused_head), k * (after + fused_head)
    print(f"multiply-adds per row: plain {plain_raw:,} raw / {plain_cached:,} cached "
          f"({plain_raw / plain_cached:.2f}x; first blocks {first / plain_raw:.0%} of a "
          f"pass); plain + MC K={k} {plain_raw + mc_raw:,} / {plain_cached + mc_cached:,} "
          f"({(plain_raw + mc_raw) / (plain_cached + mc_cached):.2f}x)")


def run(args, state, raw: ResidentPool, cached: ResidentPool) -> list[dict]:
    started = time.perf_counter()
    raw.load(), cached.load()
    print(f"reading both pools: {time.perf_counter() - started:.1f} s")
    warm = ScoreConfig(strategies=("margin",), query_size=20)
    for name, pool, first in (("raw", raw, False), ("cached", cached, True)):
        started = time.perf_counter()  # builds each actor's model; the cache is made here
        pool.score(state, warm, None, 0, carry=True, first_block=first)
        print(f"step 0 (margin), {name}: {time.perf_counter() - started:.2f} s", flush=True)
    rows = []
    for strategy in args.strategies.split(","):
        score = ScoreConfig(strategies=(strategy,), query_size=20, mc_samples=args.k)
        for step in range(1, args.steps + 1):
            rows.append(one_step(strategy, step, score, state, raw, cached, args.compute))
    return rows


def one_step(strategy, step, score, state, raw, cached, compute: bool) -> dict:
    row = {"strategy": strategy, "step": step}
    queries = {}
    for name, pool, first in (("raw", raw, False), ("cached", cached, True)):
        started = time.perf_counter()
        queries[name] = pool.score(state, score, None, step, carry=True,
                                   first_block=first)[strategy]
        row[name] = time.perf_counter() - started
        row[f"{name}_compute"] = (pool.forward_seconds(state, score, first_block=first)
                                  if compute else float("nan"))
    a, b = queries["raw"], queries["cached"]
    row["same_ids"] = a.column("id").to_pylist() == b.column("id").to_pylist()
    row["score_diff"] = float(np.max(np.abs(a.column("score").to_numpy()
                                            - b.column("score").to_numpy())))
    row["same_carried"] = a.column("image_emb").equals(b.column("image_emb"))
    print(f"  {strategy} step {step}: raw {row['raw']:.2f} s, cached {row['cached']:.2f} s "
          f"({row['raw'] / row['cached']:.2f}x); forward alone {row['raw_compute']:.2f} / "
          f"{row['cached_compute']:.2f} s; same ids {row['same_ids']}, largest score "
          f"difference {row['score_diff']:.2g}, same carried embeddings "
          f"{row['same_carried']}", flush=True)
    return row


def memory(raw: list[dict], cached: list[dict]) -> None:
    for name, info in (("raw", raw), ("cached", cached)):
        held, rss = sum(i["bytes"] for i in info), sum(i["rss"] for i in info)
        print(f"  {name}: {sum(i['rows'] for i in info):,} rows, held "
              f"{held / 2**20:,.0f} MiB, actors' RSS {rss / 2**20:,.0f} MiB "
              f"(per actor {', '.join(format(i['rss'] / 2**20, ',.0f') for i in info)} MiB)")
    held = sum(i["bytes"] for i in cached) / sum(i["bytes"] for i in raw)
    rss = sum(i["rss"] for i in cached) / sum(i["rss"] for i in raw)
    print(f"  cached / raw: held {held:.3f}x, RSS {rss:.3f}x")


def report(rows: list[dict], args) -> None:
    """Medians over the steps; ratios per step (same strategy, same step)."""
    print(f"\n| {args.pool}, K={args.k} | raw s | cached s | raw / cached | forward alone "
          "raw / cached s | same ids | largest score difference |")
    print("|---|---:|---:|---:|---:|---|---:|")
    for strategy in dict.fromkeys(r["strategy"] for r in rows):
        mine = [r for r in rows if r["strategy"] == strategy]
        med = lambda key: statistics.median(r[key] for r in mine)  # noqa: E731
        ratio = statistics.median(r["raw"] / r["cached"] for r in mine)
        print(f"| {strategy}, steps 1-{len(mine)} (median) | {med('raw'):.2f} | "
              f"{med('cached'):.2f} | **{ratio:.2f}x** | {med('raw_compute'):.2f} / "
              f"{med('cached_compute'):.2f} | {all(r['same_ids'] for r in mine)} | "
              f"{max(r['score_diff'] for r in mine):.2g} |")


def parse():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", default="/tmp/fresh/data/demo/pool")
    parser.add_argument("--model", default="", help="a checkpoint (else random weights)")
    parser.add_argument("--strategies", default="margin,bald")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--cpus", type=float, default=0.25)
    parser.add_argument("--batch", type=int, default=4096)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16"])
    parser.add_argument("--compute", action="store_true",
                        help="also time the forward passes alone in the actors")
    return parser.parse_args()


if __name__ == "__main__":
    main()
