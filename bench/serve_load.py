"""Load test of the online service on loopback, against the batch path in the same run.

    .venv/bin/python bench/serve_load.py --seconds 10 --clients 1,16,64 --formats arrow,json

A study-sized random-weight model (``ModelConfig()``: 1024-d image, 300-d text, 50
classes), posts of study dims, ``--posts`` posts per request (a comma list: one table
row per size). For each request size, body format and client count: ``--seconds`` of
closed-loop load (each client sends its next request when the answer arrives), then
posts/s, p50/p99 latency, non-200 answers, and the CPU time each process spent per
request (from /proc: the HTTP proxy, the replica, everything else of this Ray, and
this process, which runs the clients). The batch
path (``score_pool`` local path, same checkpoint, same strategy) scores a pool of
``--pool-rows`` random posts first; its rows/s is the reference. Bounded: stops by itself.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import socket
import tempfile
import time

import numpy as np
import pyarrow as pa

import procs


def study_checkpoint(path: str) -> str:
    import torch

    from alray.config import ModelConfig
    from alray.model import FusionNet, save_checkpoint

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = FusionNet(ModelConfig())
    return str(save_checkpoint(path, model, model.config))


def random_posts(n: int, seed: int, first_id: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)

    def column(dim):
        values = rng.standard_normal((n, dim), dtype=np.float32).reshape(-1)
        return pa.FixedSizeListArray.from_arrays(pa.array(values), dim)
    return pa.table({"id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
                     "image_emb": column(1024), "text_emb": column(300)})


def batch_rows_per_s(directory: str, checkpoint: str, rows: int, strategy: str) -> float:
    import torch

    from alray.config import ScoreConfig
    from alray.pool import io
    from alray.scoring.pipeline import score_pool

    pool = os.path.join(directory, "pool")
    if not os.path.exists(pool):
        for i, start in enumerate(range(0, rows, 16384)):
            part = random_posts(min(16384, rows - start), seed=i, first_id=start)
            io.write_table(part, os.path.join(pool, f"part-{i:05d}.parquet"))
    torch.set_num_threads(2)
    config = ScoreConfig(strategies=(strategy,))
    score_pool(pool, checkpoint, config, use_ray=False)  # warm the page cache
    started = time.perf_counter()
    score_pool(pool, checkpoint, config, use_ray=False)
    return rows / (time.perf_counter() - started)


def bodies(kind: str, posts: int, n_bodies: int) -> tuple[list[bytes], str]:
    import json

    out = []
    for i in range(n_bodies):
        table = random_posts(posts, seed=1000 + i, first_id=10**9 + i * posts)
        if kind == "json":
            out.append(json.dumps({"posts": table.to_pylist()}).encode())
        else:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            out.append(sink.getvalue().to_pybytes())
    ctype = "application/json" if kind == "json" else "application/vnd.apache.arrow.stream"
    return out, ctype


async def load(url: str, payloads: list[bytes], ctype: str, clients: int,
               seconds: float) -> tuple[list[float], int, int]:
    """Closed-loop load for ``seconds``: (latencies of 200 answers, requests, errors)."""
    import aiohttp

    latencies, errors, sent = [], 0, 0
    deadline = time.perf_counter() + seconds
    headers = {"Content-Type": ctype}  # the answer in the body's format
    if ctype != "application/json":
        headers["Accept"] = ctype

    async def client(k: int, session) -> None:
        nonlocal errors, sent
        i = k
        while time.perf_counter() < deadline:
            body = payloads[i % len(payloads)]
            i += clients
            started = time.perf_counter()
            async with session.post(f"{url}/score", data=body, headers=headers) as reply:
                await reply.read()
                sent += 1
                if reply.status == 200:
                    latencies.append(time.perf_counter() - started)
                else:
                    errors += 1
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.gather(*(client(k, session) for k in range(clients)))
    return latencies, sent, errors


CPU_ROLES = {"ray::ProxyActor": "proxy", "ray::ServeReplica": "replica"}


def cpu_by_role() -> dict[str, float]:
    """CPU seconds so far of this process ("clients"), the proxy, the replicas and the
    rest of the Ray this process started ("other")."""
    me, out = os.getpid(), {"clients": 0.0, "proxy": 0.0, "replica": 0.0, "other": 0.0}
    for pid in procs.descendants(me):
        name = "clients" if pid == me else next(
            (short for prefix, short in CPU_ROLES.items()
             if procs.role(pid).startswith(prefix)), "other")
        out[name] += procs.cpu_seconds(pid)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="load per level")
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--formats", default="arrow,json")
    ap.add_argument("--posts", default="64", help="posts per request (comma list)")
    ap.add_argument("--pool-rows", type=int, default=65536)
    ap.add_argument("--strategy", default="margin")
    ap.add_argument("--replica-cpus", type=float, default=2.0)
    ap.add_argument("--batch-requests", type=int, default=16)
    ap.add_argument("--dir", default=os.path.join(tempfile.gettempdir(), "alray-bench-serve"))
    args = ap.parse_args()
    os.makedirs(args.dir, exist_ok=True)
    checkpoint = study_checkpoint(os.path.join(args.dir, "model.ckpt"))
    batch = batch_rows_per_s(args.dir, checkpoint, args.pool_rows, args.strategy)
    print(f"batch path (score_pool local, {args.strategy}): {batch:,.0f} rows/s")

    from alray.runtime import connect
    from alray.config import ScoreConfig
    from alray.serve.config import ServeConfig
    from alray.serve.runner import start_service

    connect()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    service = start_service(ServeConfig(
        checkpoint=checkpoint, score=ScoreConfig(strategies=(args.strategy,)), port=port,
        num_cpus=args.replica_cpus, max_batch_requests=args.batch_requests,
        max_body_mb=256))
    rows = []
    try:
        for posts in (int(p) for p in args.posts.split(",")):
            for kind in args.formats.split(","):
                payloads, ctype = bodies(kind, posts, 64)
                asyncio.run(load(service.url, payloads, ctype, 1, 2.0))  # warm-up
                for clients in (int(c) for c in args.clients.split(",")):
                    before = cpu_by_role()
                    lat, sent, errors = asyncio.run(load(service.url, payloads, ctype,
                                                         clients, args.seconds))
                    after = cpu_by_role()
                    cpu = {k: 1000 * (after[k] - before[k]) / max(sent, 1) for k in after}
                    rate = len(lat) * posts / args.seconds
                    p50, p99 = (np.percentile(lat, [50, 99]) * 1000) if lat else (np.nan,) * 2
                    rows.append((posts, kind, clients, sent, errors, rate, p50, p99, cpu))
                    print(f"{posts:>5} posts {kind:>5} {clients:>3} clients: {sent:>6} "
                          f"requests, {errors} errors, {rate:>8,.0f} posts/s "
                          f"({rate / batch:.2f}x batch), p50 {p50:.1f} ms, p99 {p99:.1f} ms,"
                          f" CPU ms/request " + ", ".join(f"{k} {v:.1f}" for k, v in cpu.items()),
                          flush=True)
    finally:
        service.stop()
    print("\n| posts/request | body | clients | requests | errors | posts/s | vs batch | "
          "p50 ms | p99 ms | CPU ms/request: proxy / replica / other Ray / clients |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for posts, kind, clients, sent, errors, rate, p50, p99, cpu in rows:
        print(f"| {posts} | {kind} | {clients} | {sent:,} | {errors} | {rate:,.0f} | "
              f"{rate / batch:.2f}x | {p50:.1f} | {p99:.1f} | {cpu['proxy']:.1f} / "
              f"{cpu['replica']:.1f} / {cpu['other']:.1f} / {cpu['clients']:.1f} |")
    print(f"\nbatch path: {batch:,.0f} rows/s ({args.pool_rows:,} rows, {args.strategy})")


if __name__ == "__main__":
    main()
