"""Scoring throughput: naive single process vs alray's local path vs alray on Ray Data.

    .venv/bin/python bench/score.py --rows 250000 --strategy bald
    .venv/bin/python bench/score.py --rows 1000000 --strategy margin
    .venv/bin/python bench/score.py --rows 4000000 --strategy margin --no-naive --memory

The pool is generated once (study dims) under --dir. The naive baseline reads the same
shards with pyarrow, runs K full forward passes with ordinary per-element dropout (or
one pass), scores every row and fully sorts. All rows are printed as markdown.

``--paths`` picks the runs, in that order (naive, local, ray1 = ``ScoreConfig()``'s
layout: 1 actor x 1 CPU, one torch thread; ray2 = 2 actors x 0.5 CPU, one thread each);
``--repeat N`` runs the whole
sequence N times in this one process (compare runs of one process only: the machine is
shared). The embedded Ray is started before the timed runs. ``--memory`` samples, every 0.2 s during each run, the resident memory (RSS,
and its private part RssAnon) of this process (the driver) and of every Ray Data
scoring actor (a process whose title names ``MapWorker``/``BatchScorer``), from /proc,
and prints the driver's peak and the largest per-actor peak. An actor's RSS includes
the object-store pages it maps (blocks are read zero-copy); RssAnon does not. The
driver's RSS never shrinks back within a process: put the Ray paths first in --paths
to read the Ray path's driver peak without the local path's.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

import procs

from alray.acquisition import compute_scores
from alray.config import ComputeConfig, ModelConfig, PoolConfig, ScoreConfig
from alray.pool.synthetic import GeneratorConfig
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


ACTOR_MARKERS = ("MapWorker", "BatchScorer")


def _actor_pids() -> list[int]:
    """Scoring actors started by this process's Ray (descendants of this process): other
    Ray sessions on the same machine are not counted."""
    me = os.getpid()
    return [pid for pid in procs.pids()
            if any(m in procs.title(pid) for m in ACTOR_MARKERS)
            and procs.descends_from(pid, me)]


class MemorySampler(procs.Sampler):
    """Peak RSS of the driver and of each scoring actor, sampled every ``interval`` s."""

    def __init__(self, interval: float = 0.2, actors: bool = True):
        super().__init__(self._sample, interval)
        self.watch_actors = actors
        self.ignore = set(_actor_pids())  # a previous run's actors, still being torn down
        self.driver = (0, 0)
        self.actors: dict[int, tuple[int, int]] = {}

    def _sample(self) -> None:
        me = procs.rss(os.getpid())
        if me:
            self.driver = tuple(map(max, self.driver, me))
        for pid in (_actor_pids() if self.watch_actors else ()):
            if pid in self.ignore:
                continue
            rss = procs.rss(pid)
            if rss:
                self.actors[pid] = tuple(map(max, self.actors.get(pid, (0, 0)), rss))

    def summary(self) -> str:
        gib = lambda b: f"{b / 2**30:.2f}"  # noqa: E731
        if self.actors:
            rss = max(v[0] for v in self.actors.values())
            anon = max(v[1] for v in self.actors.values())
            actors = f"{gib(rss)} / {gib(anon)} ({len(self.actors)} actors)"
        else:
            actors = "-"
        return f"{gib(self.driver[0])} / {gib(self.driver[1])} | {actors}"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=250_000)
    ap.add_argument("--strategy", default="bald")
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "alray-bench-score"))
    ap.add_argument("--paths", default="naive,local,ray1,ray2",
                    help="comma list of naive, local, ray1, ray2")
    ap.add_argument("--no-naive", action="store_true",
                    help="skip the naive baseline (minutes at 4M rows)")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--memory", action="store_true",
                    help="peak RSS of the driver and of each scoring actor")
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
    cfg = ScoreConfig(strategies=(args.strategy,), mc_samples=args.k)
    torch.set_num_threads(2)
    default = ComputeConfig(score_batch_size=args.batch_size)
    local = default.replace(local=True)
    ray2 = default.replace(score_actors=2, score_cpus_per_actor=0.5)
    every = {
        "naive": ("naive single process", lambda: naive(pool, model, args.strategy, args.k,
                                                        args.batch_size)),
        "local": ("alray local path", lambda: score_pool(pool, ckpt, cfg, compute=local)),
        "ray1": (f"alray Ray Data, {default.score_actors} actor x {default.cpus_per_actor:g} "
                 f"CPU (ComputeConfig defaults)",
                 lambda: score_pool(pool, ckpt, cfg, compute=default)),
        "ray2": ("alray Ray Data, 2 actors x 0.5 CPU",
                 lambda: score_pool(pool, ckpt, cfg, compute=ray2)),
    }
    chosen = [p.strip() for p in args.paths.split(",") if p.strip()]
    if args.no_naive:
        chosen = [p for p in chosen if p != "naive"]
    unknown = set(chosen) - set(every)
    if unknown:
        ap.error(f"unknown --paths {sorted(unknown)}; choose from {sorted(every)}")
    if any(k.startswith("ray") for k in chosen):
        from alray.runtime import connect
        connect()  # Ray's own start-up is paid once per process: not timed
    head = (f"| {args.strategy} | rows | seconds | s per 1M rows | rows/s | GB/s read | "
            f"vs naive | vs local | load 1 min |")
    align = "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    if args.memory:
        head += " driver peak RSS / anon GiB | actor peak RSS / anon GiB |"
        align += "---:|---:|"
    print(head)
    print(align, flush=True)
    for _ in range(args.repeat):  # ratios against this round's naive and local runs
        done: list[tuple] = []  # (path, name, seconds, load, memory)
        for key in chosen:
            name, fn = every[key]
            sampler = MemorySampler(actors=key.startswith("ray")) if args.memory else None
            if sampler:
                with sampler:
                    seconds, _ = timed(fn)
            else:
                seconds, _ = timed(fn)
            done.append((key, name, seconds, f"{os.getloadavg()[0]:.1f}",
                         sampler.summary() if sampler else None))
        base = {key: seconds for key, _, seconds, *_ in done if key in ("naive", "local")}
        for key, name, seconds, load, memory in done:
            ratios = " | ".join(f"{base[r] / seconds:.2f}x" if r in base else "-"
                                for r in ("naive", "local"))
            line = (f"| {name} | {args.rows:,} | {seconds:.1f} | "
                    f"{seconds / args.rows * 1e6:.1f} | {args.rows / seconds:,.0f} | "
                    f"{gib * 1.0737 / seconds:.2f} | {ratios} | {load} |")
            if memory:
                line += f" {memory} |"
            print(line, flush=True)


if __name__ == "__main__":
    main()
