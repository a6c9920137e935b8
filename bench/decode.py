"""Decode rate of each embedding layout, one thread, against the memory-copy bound.

    .venv/bin/python bench/decode.py --rows 100000 --repeat 3 --cpu-time

Writes the same vectors (study dims 1024 + 300, ~15% of each modality null) as four
Parquet files with the pools' write options (no dictionary, no compression):
``fixed_size_list<float32>``, ``fixed_size_list<float16>``, packed float32 and packed
float16 (``alray pool pack``'s layout). For each, in one process and one thread:

- *decode*: ``io.iter_batches`` over the file, Arrow arrays only (for a packed column
  that is the whole decode: the matrix is a zero-copy view of the Arrow buffer);
- *decode, mmap*: the same with ``memory_map=True`` (pages read from the page cache
  without a first copy into a buffer);
- *matrix*: *decode* plus ``embedding_matrix`` of each column, i.e. the ``(n, dim)``
  float32 matrices a reader hands the model (float16 widened by numpy, nulls zeroed);
- *copy*: the physical bound: the file's bytes, already in memory, through
  ``np.frombuffer(...).copy()`` a row group's bytes at a time (fresh memory, as a decoder
  allocates it); *warm copy*: ``np.copyto`` into memory allocated and touched once (no
  page faults: the stricter bound).

GB/s counts the file's bytes. Each measurement runs ``--repeat`` times, round-robin over
the layouts so a noisy neighbour hits them alike; medians are printed, and each ratio to
a bound per round (median [min-max]). ``--cpu-time`` times by the process's CPU time: on
a shared machine the waits for a core drop out. Then this CPU's vector flags and fp32
matmul rate, so the numbers can be placed among machines of this kind.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from alray.pool import io
from alray.pool.arrays import embedding_matrix
from alray.pool.layout import pack_matrix, packed_field

DIMS = {"image_emb": 1024, "text_emb": 300}
LAYOUTS = ("list float32", "list float16", "packed float32", "packed float16")


def vectors(rows: int, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return {c: (rng.standard_normal((rows, d), dtype=np.float32), rng.random(rows) > 0.15)
            for c, d in DIMS.items()}


def column(name, matrix, present, layout) -> tuple[pa.Field, pa.Array]:
    """``matrix`` ``(n, dim)`` as a column of ``layout``, null where not ``present``."""
    kind, dtype = layout.split()
    if kind == "packed":
        return packed_field(name, matrix.shape[1], dtype), pack_matrix(matrix, present, dtype)
    values = pa.array(matrix.astype(dtype).reshape(-1))
    arr = pa.FixedSizeListArray.from_arrays(values, matrix.shape[1], mask=pa.array(~present))
    return pa.field(name, arr.type), arr


def write(path: str, data, layout: str) -> None:
    rows = len(data["image_emb"][0])
    fields, arrays = [pa.field("id", pa.int64())], [pa.array(np.arange(rows))]
    for name, (matrix, present) in data.items():
        field, arr = column(name, matrix, present, layout)
        fields.append(field)
        arrays.append(arr)
    table = pa.Table.from_arrays(arrays, schema=pa.schema(fields))
    pq.write_table(table, path, **io.write_options(table.schema))


CLOCK = time.perf_counter  # --cpu-time: time.process_time


def timed(fn) -> float:
    started = CLOCK()
    fn()
    return CLOCK() - started


def decode(path, memory_map=False):
    for _ in io.iter_batches(io.locate(path), batch_size=16384, memory_map=memory_map):
        pass


def to_matrices(path):
    for batch in io.iter_batches(io.locate(path), batch_size=16384):
        for name, dim in DIMS.items():
            embedding_matrix(batch.column(name), dim, name)


def copies(path) -> tuple[float, float]:
    """Seconds of the fresh copy and of the warm copy of the file's bytes, a row group's
    bytes at a time."""
    with open(path, "rb") as f:
        data = f.read()
    chunk = -(-len(data) // pq.ParquetFile(path).metadata.num_row_groups)
    parts = [np.frombuffer(data, np.uint8, count=min(chunk, len(data) - start), offset=start)
             for start in range(0, len(data), chunk)]
    dst = np.ones(chunk, np.uint8)

    def fresh():
        for part in parts:
            part.copy()

    def warm():
        for part in parts:
            np.copyto(dst[:len(part)], part)
    return timed(fresh), timed(warm)


def cpu_flags() -> str:
    """As ``lscpu | grep -o 'avx512[a-z]*\\|avx2' | sort -u``."""
    out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return " ".join(sorted(set(re.findall(r"avx512[a-z]*|avx2", out))))


def matmul_gflops(threads: int, clock=time.perf_counter, size: int = 2048,
                  repeat: int = 5) -> float:
    """Best of ``repeat`` fp32 ``size`` x ``size`` products; ``clock`` process_time gives
    GFLOP per CPU-second (meaningful with one thread)."""
    import torch
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        started = clock()
        torch.mm(a, b)
        best = min(best, clock() - started)
    return 2 * size ** 3 / best / 1e9


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    parser.add_argument("--cpu-time", action="store_true",
                        help="time by this process's CPU time, not wall time: on a machine "
                             "shared with other work, the waits for a core drop out")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.cpu_time else time.perf_counter
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    base = args.dir or tempfile.mkdtemp(prefix="alray-decode-")
    data = vectors(args.rows)
    paths = {layout: os.path.join(base, layout.replace(" ", "-") + ".parquet")
             for layout in LAYOUTS}
    for layout, path in paths.items():
        write(path, data, layout)
        decode(path)  # into the page cache
    del data
    kinds = ("decode", "decode, mmap", "matrix", "copy", "warm copy")
    times = {(layout, kind): [] for layout in LAYOUTS for kind in kinds}
    for _ in range(args.repeat):
        for layout, path in paths.items():
            fresh, warm = copies(path)
            times[layout, "copy"].append(fresh)
            times[layout, "warm copy"].append(warm)
            times[layout, "decode"].append(timed(lambda: decode(path)))
            times[layout, "decode, mmap"].append(timed(lambda: decode(path, True)))
            times[layout, "matrix"].append(timed(lambda: to_matrices(path)))
    print(f"rows {args.rows:,}, dims {DIMS}, one thread, "
          f"{'CPU' if args.cpu_time else 'wall'} time, {args.repeat} rounds: medians; "
          f"ratios per round, median [min-max]\n")
    print("| layout | file MiB | decode rows/s | decode, mmap rows/s | float32 matrix "
          "rows/s | copy / warm copy GB/s | decode / copy | decode, mmap / copy | "
          "decode, mmap / warm copy | matrix / copy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    result = {}

    def ratio(layout, bound, kind):
        r = [b / t for b, t in zip(times[layout, bound], times[layout, kind])]
        return f"{100 * statistics.median(r):.0f}% [{100 * min(r):.0f}-{100 * max(r):.0f}]"

    for layout, path in paths.items():
        size = os.path.getsize(path)
        med = {k: statistics.median(times[layout, k]) for k in kinds}
        result[layout] = {"file_bytes": size,
                          "seconds": {k: times[layout, k] for k in kinds}}
        print(f"| {layout} | {size / 2**20:,.0f} | {args.rows / med['decode']:,.0f} | "
              f"{args.rows / med['decode, mmap']:,.0f} | {args.rows / med['matrix']:,.0f} | "
              f"{size / med['copy'] / 1e9:.2f} / {size / med['warm copy'] / 1e9:.2f} | "
              f"{ratio(layout, 'copy', 'decode')} | {ratio(layout, 'copy', 'decode, mmap')} | "
              f"{ratio(layout, 'warm copy', 'decode, mmap')} | "
              f"{ratio(layout, 'copy', 'matrix')} |")
    for layout in LAYOUTS[1:]:
        for kind in ("decode", "matrix"):
            speed = [a / b for a, b in zip(times["list float32", kind], times[layout, kind])]
            print(f"\n{layout} vs list float32 ({kind}), per round: "
                  f"{statistics.median(speed):.1f}x [{min(speed):.1f}-{max(speed):.1f}]",
                  end="")
    print(f"\n\nCPU flags: {cpu_flags()}; fp32 matmul (2048^2, torch, best of 5): "
          f"{matmul_gflops(1):.0f} GFLOP/s on 1 thread, {matmul_gflops(2):.0f} on 2 (wall "
          f"time); {matmul_gflops(1, time.process_time):.0f} GFLOP per CPU-second on 1")
    print(json.dumps({"rows": args.rows, "cpu_time": args.cpu_time, **result}))
    if not args.dir:
        shutil.rmtree(base)


if __name__ == "__main__":
    main()
