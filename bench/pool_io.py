"""Generate and validate time and peak memory for a pool of N rows.

    .venv/bin/python bench/pool_io.py --rows 250000
Each phase runs in a child process so its peak RSS is its own.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import shutil
import tempfile
import time


def _generate(out, rows, queue):
    from alray.pool.synthetic import GeneratorConfig
    from alray.pool.synthetic import generate_pool
    started = time.perf_counter()
    generate_pool(out, GeneratorConfig(rows=rows))
    queue.put((time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def _validate(out, rows, queue):
    from alray.pool.validate import validate_pool
    started = time.perf_counter()
    report = validate_pool(f"{out}/pool", n_classes=50)
    assert report.ok and report.summary.rows == rows
    queue.put((time.perf_counter() - started, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss))


def run(phase, *args):
    queue = mp.get_context("spawn").Queue()
    proc = mp.get_context("spawn").Process(target=phase, args=(*args, queue))
    proc.start()
    seconds, rss_kib = queue.get()
    proc.join()
    return seconds, rss_kib / 1024


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=250_000)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    base = args.dir or tempfile.mkdtemp(prefix="alray-bench-")
    out = f"{base}/pool{args.rows}"
    gen_s, gen_mb = run(_generate, out, args.rows)
    val_s, val_mb = run(_validate, out, args.rows)
    size = sum(p.stat().st_size for p in __import__("pathlib").Path(out).rglob("*.parquet"))
    print(json.dumps({"rows": args.rows, "generate_s": round(gen_s, 1),
                      "generate_peak_mib": round(gen_mb), "validate_s": round(val_s, 1),
                      "validate_peak_mib": round(val_mb), "pool_gib": round(size / 2**30, 2),
                      "validate_rows_per_s": round(args.rows / val_s)}))
    if not args.dir:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
