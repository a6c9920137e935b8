"""The resident pool: long-lived scoring actors that read their part of the pool once.

Why these pieces (measured on the 2-core development machine, docs/benchmarks.md,
"Resident pool"): a loop step re-read and re-decoded the whole pool through Ray Data
although only ~20 KB of weights change between steps; reading and decoding, not the
model, bounded a one-pass strategy. Here each actor owns a disjoint, balanced range of
rows (``plan_parts``), reads and decodes it on its first call (no constructor does I/O,
so an actor Ray restarts re-reads only its part) and keeps it as float32 or float16
matrices (a GPU actor: in GPU memory). Each step the driver plans as the streaming path
does (``plan_scoring``: every check), puts the model state in the object store once, and
every actor scores its rows with ``BatchScorer.score_arrays`` (the streaming path's own
core: exclusions, the step's candidate subset, MC dropout with fixed seeded masks,
sampling keys, class balance), merges its batches with ``QueryMerger`` and sends back
the candidates it kept, with their carried columns; the driver merges them with
``QueryMerger`` again. Merging top-k's is exact (``alray.scoring.topk``), so the query
is the streaming path's, ids and order.

Memory: before any actor exists, each part's bytes (rows x dims x bytes, plus ids,
labels and masks) are set against what a node may hold (``resident_memory_mb``, else
half of the node's Ray ``memory`` resource); parts are spread over nodes. A pool that
does not fit is refused (``ResidentMemoryError``) or, for the loop, streamed with a
``ResidentFallback`` warning saying why.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa

from alray.config import ComputeConfig, PoolConfig, ScoreConfig
from alray.errors import ConfigError, PoolSchemaError
from alray.pool import io
from alray.pool.arrays import PostArrays, arrays_from_table
from alray.pool.normalize import id_type_of
from alray.pool.schema import infer_dims
from alray.scoring.merge import QueryMerger
from alray.scoring.scorer import BatchScorer, with_shown

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


class ResidentPart:
    """One actor's rows, read on first use and kept (a Ray actor in the package, so
    workers can import it). Arguments are plain data; the constructor does no I/O."""

    def __init__(self, pieces: list[Piece], columns: Mapping, dims: Mapping[str, int],
                 dtype: str = "float32", device: str = "cpu", num_threads: int = 1):
        self.pieces, self.pool = list(pieces), PoolConfig.from_dict(columns)
        self.dims, self.dtype, self.device = dict(dims), dtype, device
        self.num_threads = num_threads
        self.data: PostArrays | None = None
        self.shown: pa.Table | None = None  # the id and shown columns, row for row
        self.id_type: pa.DataType | None = None
        self.loads = 0  # how many times this process read its part (1, or 0 before)

    def load(self) -> dict:
        """Read and decode the part once; later calls return at once."""
        if self.data is None:
            self._read()
        return self.info()

    def info(self) -> dict:
        import os

        held = sum(f.nbytes for f in self.data.features.values()) if self.data else 0
        if self.data is not None:
            held += self.data.ids.nbytes + self.data.labels.nbytes + sum(
                p.nbytes for p in self.data.present.values())
        return {"rows": 0 if self.data is None else len(self.data), "bytes": held,
                "rss": _rss(), "loads": self.loads,
                "pid": os.getpid()}

    def _read(self) -> None:
        rows = sum(p.stop - p.start for p in self.pieces)
        self._check_device_memory(rows)
        feats = {m: np.empty((rows, d), self.dtype) for m, d in self.dims.items()}
        present = {m: np.zeros(rows, bool) for m in self.dims}
        labels = np.empty(rows, np.int64)
        ids, shown, at = [], [], 0
        for piece in self.pieces:
            for first, table in _read_piece(piece, self.pool):
                data = arrays_from_table(table, self.pool, self.dims, piece.shard.uri, first)
                n = len(data)
                for m in self.dims:
                    feats[m][at:at + n] = data.features[m]
                    present[m][at:at + n] = data.present[m]
                labels[at:at + n] = data.labels
                ids.append(data.ids)
                if self.pool.show_columns:
                    shown.append(table.select([self.pool.id_column,
                                               *self.pool.show_columns]))
                self.id_type = self.id_type or id_type_of(
                    table.schema.field(self.pool.id_column).type)
                at += n
        assert at == rows, (at, rows)
        if self.device != "cpu":
            import torch

            feats = {m: torch.as_tensor(f).to(self.device) for m, f in feats.items()}
        self.data = PostArrays(np.concatenate(ids) if ids else np.zeros(0, np.int64),
                               feats, present, labels)
        self.shown = (pa.concat_tables(shown, promote_options="permissive").combine_chunks()
                      if shown else None)
        self.loads += 1

    def _check_device_memory(self, rows: int) -> None:
        if self.device == "cpu":
            return
        import torch

        free, _ = torch.cuda.mem_get_info()
        need = part_bytes(rows, self.dims, self.dtype)
        if need > 0.9 * free:
            raise ResidentMemoryError(
                f"a resident part of {rows:,} rows needs {need / 2**20:,.0f} MiB of GPU "
                f"memory, {free / 2**20:,.0f} MiB free: more actors or float16")

    def score(self, args: Mapping, batch_size: int) -> pa.Table:
        """This part's kept candidates for one step (``ScoringPlan.scorer_args()``,
        the model and exclusions possibly object-store references)."""
        self.load()
        scorer = BatchScorer(**args, num_threads=self.num_threads, device=self.device)
        shown = self.pool.show_columns
        merger = QueryMerger(scorer.score, scorer.carry or bool(shown))
        for start in range(0, len(self.data), batch_size):
            out = scorer.score_arrays(self.data.take(slice(start, start + batch_size)),
                                      self.id_type)
            if shown:  # the shown columns (a URL, a title) of its rows, kept as Arrow
                out = with_shown(out, self.shown.slice(start, batch_size), self.pool)
            merger.absorb(out)
        return merger.candidates(self.id_type or pa.int64())


def _rss() -> int:
    """This process's resident set size in bytes (Linux; 0 elsewhere)."""
    import os

    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _read_piece(piece: Piece, pool: PoolConfig):
    """(first row in the shard, table) for the row groups of ``piece``, sliced to it."""
    pf = io.open_parquet(piece.shard)
    names = pf.schema_arrow.names
    columns = [pool.id_column, *pool.embedding_columns.values()]
    columns += [pool.label_column] if pool.label_column in names else []
    columns += list(pool.show_columns)
    first = 0
    try:
        for group in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(group).num_rows
            lo, hi = max(piece.start, first), min(piece.stop, first + n)
            if lo < hi:
                table = pf.read_row_group(group, columns=columns)
                yield lo, table.slice(lo - first, hi - lo)
            first += n
    except (pa.ArrowException, OSError) as exc:
        raise PoolSchemaError(f"{piece.shard.uri}: unreadable or corrupt Parquet file: "
                              f"{exc}") from None


class ResidentPool:
    """The driver's handle: the actors of one pool, scoring step after step.

    ``open`` checks memory and starts the actors (they read nothing yet); ``score``
    returns what ``score_pool`` returns; ``close`` ends the actors.
    """

    def __init__(self, pool_uri: str, columns: PoolConfig, compute: ComputeConfig,
                 shards: tuple[str, ...], parts: list[list[Piece]], actors: list,
                 dims: Mapping[str, int]):
        self.pool_uri, self.columns, self.compute = pool_uri, columns, compute
        self.shards, self.parts, self.actors, self.dims = shards, parts, actors, dict(dims)

    @classmethod
    def open(cls, pool_uri: str, columns: PoolConfig = PoolConfig(),
             compute: ComputeConfig = ComputeConfig()) -> "ResidentPool":
        """Plan the parts, check they fit (ResidentMemoryError) and start the actors."""
        import ray

        from alray.runtime import require_ray

        check_compute(compute)
        require_ray()
        dims = infer_dims(pool_uri, columns)
        shards = io.pool_shards(pool_uri)
        parts = plan_parts(shards, compute.score_actors)
        gpu = compute.score_gpus_per_actor > 0
        if not gpu:  # a GPU part is checked against the device's memory when it loads
            problem = fit_problem(parts, dims, compute.resident_dtype,
                                  *node_allowance(compute))
            if problem:
                raise ResidentMemoryError(problem)
        remote = ray.remote(num_cpus=compute.cpus_per_actor,
                            num_gpus=compute.score_gpus_per_actor, max_restarts=-1,
                            max_task_retries=-1, scheduling_strategy="SPREAD")(ResidentPart)
        threads = 1 if gpu else max(1, int(compute.cpus_per_actor))
        actors = [remote.remote(part, columns.to_dict(), dims, compute.resident_dtype,
                                "cuda" if gpu else "cpu", threads) for part in parts]
        return cls(str(pool_uri), columns, compute, tuple(s.path for s in shards), parts,
                   actors, dims)

    def load(self) -> list[dict]:
        """Have every actor read its part now (else the first ``score`` does)."""
        import ray

        return ray.get([a.load.remote() for a in self.actors])

    def info(self) -> list[dict]:
        """Per actor: rows, bytes held, process RSS, loads, pid."""
        import ray

        return ray.get([a.info.remote() for a in self.actors])

    def score(self, model: str | Mapping, score: ScoreConfig, exclude_ids=None,
              step: int = 0, carry: bool = False) -> dict[str, pa.Table]:
        """strategy -> query table, as ``score_pool`` on this pool returns it."""
        import ray

        from alray.scoring.pipeline import PUT_THRESHOLD, _unwrap
        from alray.scoring.plan import plan_scoring

        plan = plan_scoring(self.pool_uri, model, score, self.columns, exclude_ids, step,
                            carry=carry)
        if tuple(s.path for s in plan.shards) != self.shards:
            raise ConfigError(f"{self.pool_uri}: the pool's shards changed since the "
                              "resident pool read them; open a new one")
        args = plan.scorer_args()
        args["model"] = ray.put(plan.model)  # once, for every actor
        if len(plan.exclude) > PUT_THRESHOLD:
            args["exclude"] = ray.put(plan.exclude)
        merger = QueryMerger(plan.score, plan.carries)
        try:
            for table in ray.get([a.score.remote(args, self.compute.score_batch_size)
                                  for a in self.actors]):
                merger.absorb(table)
        except Exception as exc:  # Ray wraps the actors' errors
            raise _unwrap(exc, plan.shards) from None
        return merger.queries(plan.id_type)

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []


def open_resident(pool_uri: str, columns: PoolConfig, compute: ComputeConfig
                  ) -> ResidentPool | None:
    """The loop's choice: a resident pool when ``compute`` asks for one (on Ray) and it
    fits; None (stream every step) otherwise, with a ``ResidentFallback`` warning when it
    was asked for but does not fit."""
    if compute.local or not compute.resident:
        return None
    try:
        return ResidentPool.open(pool_uri, columns, compute)
    except ResidentMemoryError as exc:
        warnings.warn(ResidentFallback(f"{exc}; streaming the pool through Ray Data "
                                       "every step instead"), stacklevel=2)
        return None


__all__ = ["Piece", "check_compute", "ResidentFallback", "ResidentMemoryError", "ResidentPart",
           "ResidentPool", "open_resident", "part_bytes", "plan_parts"]
