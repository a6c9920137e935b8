"""The resident pool's plan: which rows each actor owns and whether they fit.

``plan_parts`` cuts a pool into disjoint, balanced row ranges (shard boundaries cut a
range into pieces) from the shards' footers alone; ``part_bytes``, ``node_allowance``
and ``fit_problem`` decide, before any actor starts, whether the parts fit the memory a
node may give them (``alray.scoring.resident`` explains why these pieces).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np

from alray.config import ComputeConfig
from alray.errors import ConfigError
from alray.pool import io

DTYPES = ("float32", "float16")
DEFAULT_SHARE = 0.5  # of a node's Ray "memory" resource, without resident_memory_mb
ROW_OVERHEAD = 8 + 8  # id and label bytes a row (string ids: counted by their text)


class ResidentMemoryError(ConfigError):
    """The resident pool does not fit the memory allowed."""


class ResidentFallback(UserWarning):
    """The loop streams the pool every step because a resident pool would not fit."""


@dataclass(frozen=True)
class Piece:
    """Rows ``[start, stop)`` of one shard."""

    shard: io.Location
    start: int
    stop: int


def check_compute(compute: ComputeConfig) -> None:
    """ConfigError naming every problem of the resident settings (``ComputeConfig``
    leaves them to the module that uses them)."""
    problems = []
    if compute.resident_dtype not in DTYPES:
        problems.append(f"resident_dtype must be one of {', '.join(DTYPES)}, got "
                        f"{compute.resident_dtype!r}")
    memory = compute.resident_memory_mb
    if memory is not None and (isinstance(memory, bool) or not isinstance(memory, int)
                               or memory <= 0):
        problems.append(f"resident_memory_mb must be an integer > 0 (or unset), got "
                        f"{memory!r}")
    if problems:
        raise ConfigError(f"ComputeConfig: {problems[0]}",
                          [f"ComputeConfig: {p}" for p in problems])


def plan_parts(shards: Iterable[io.Location], n_parts: int) -> list[list[Piece]]:
    """``n_parts`` disjoint row ranges covering every row once, sizes differing by at
    most one row (shard boundaries cut a part into pieces). Reads shard footers only."""
    rows = [(shard, io.open_parquet(shard).metadata.num_rows) for shard in shards]
    total = sum(n for _, n in rows)
    n_parts = max(1, min(n_parts, total))
    bounds = [total * i // n_parts for i in range(n_parts + 1)]
    parts: list[list[Piece]] = [[] for _ in range(n_parts)]
    first = 0
    for shard, n in rows:
        for i in range(n_parts):  # the parts overlapping [first, first + n)
            lo, hi = max(bounds[i], first), min(bounds[i + 1], first + n)
            if lo < hi:
                parts[i].append(Piece(shard, lo - first, hi - first))
        first += n
    return parts


def part_bytes(rows: int, dims: Mapping[str, int], dtype: str) -> int:
    """Bytes a part of ``rows`` rows holds: the matrices, a present mask per modality,
    ids and labels."""
    width = np.dtype(dtype).itemsize
    return rows * (sum(dims.values()) * width + len(dims) + ROW_OVERHEAD)


def node_allowance(compute: ComputeConfig) -> tuple[int, int]:
    """(bytes a node may hold, alive nodes) from ``resident_memory_mb`` or the smallest
    node's Ray ``memory`` resource."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if compute.resident_memory_mb is not None:
        return compute.resident_memory_mb * 2**20, max(1, len(nodes))
    memory = [n["Resources"].get("memory", 0) for n in nodes] or [0]
    return int(DEFAULT_SHARE * min(memory)), max(1, len(nodes))


def fit_problem(parts: list[list[Piece]], dims: Mapping[str, int], dtype: str,
                allowed: int, n_nodes: int) -> str | None:
    """Why the parts do not fit ``allowed`` bytes a node (None when they do): the
    parts are spread over ``n_nodes``, so a node holds ``ceil(parts / nodes)`` of the
    largest."""
    rows = [sum(p.stop - p.start for p in part) for part in parts]
    per_node = math.ceil(len(parts) / n_nodes)
    need = per_node * part_bytes(max(rows), dims, dtype)
    if need <= allowed:
        return None
    return (f"a resident pool of {sum(rows):,} rows x {sum(dims.values())} dims as {dtype} "
            f"needs {need / 2**20:,.0f} MiB on a node ({per_node} part(s) of up to "
            f"{max(rows):,} rows on each of {n_nodes} node(s)), more than the "
            f"{allowed / 2**20:,.0f} MiB allowed (--resident-memory, or float16, or "
            "more nodes)")


__all__ = ["DTYPES", "Piece", "ResidentFallback", "ResidentMemoryError", "check_compute",
           "fit_problem", "node_allowance", "part_bytes", "plan_parts"]
