"""The resident pool: long-lived scoring actors that read their part of the pool once.

Why these pieces (measured on the 2-core development machine, docs/benchmarks.md,
"Resident pool"): a loop step re-read and re-decoded the whole pool through Ray Data
although only ~20 KB of weights change between steps. On the default 250k pool, a margin
step took 19.5 s streaming and 5.7 s resident (3.4x), BALD K=20 67.9 s and 43.5 s, each
within 0.88-0.94x of the forward passes alone timed in the same actors: what is left of
a step is the model's arithmetic. The actors hold 1.003x rows x dims x bytes (RSS 1.40x
for two actors with their runtimes). Here each actor owns a disjoint, balanced range of
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

Memory (``alray.scoring.parts``): before any actor exists, each part's bytes (rows x
dims x bytes, plus ids, labels and masks) are set against what a node may hold
(``resident_memory_mb``, else half of the node's Ray ``memory`` resource); parts are
spread over nodes. A pool that does not fit is refused (``ResidentMemoryError``) or, for
the loop, streamed with a ``ResidentFallback`` warning saying why. A part is decoded a
batch at a time into preallocated matrices, with Arrow's system allocator, whose freed
buffers go back to the system. An actor that dies is restarted by Ray (the step's calls
retried) and reads its own part again on its first call.
"""
from __future__ import annotations

import warnings
from typing import Mapping

import numpy as np
import pyarrow as pa

from alray.config import ComputeConfig, PoolConfig, ScoreConfig
from alray.errors import ConfigError, PoolSchemaError
from alray.pool import io
from alray.pool.arrays import PostArrays, arrays_from_table
from alray.pool.normalize import id_type_of
from alray.pool.schema import infer_dims
from alray.scoring.first_block import first_block_key, first_block_rows, spill, with_carried
from alray.scoring.merge import QueryMerger
from alray.scoring.parts import (Piece, ResidentFallback, ResidentMemoryError,
                                 check_compute, fit_problem, node_allowance, part_bytes,
                                 plan_parts)
from alray.scoring.scorer import BatchScorer, resolved, with_shown
from alray.scoring.topk import mask_excluded

# the system allocator: glibc gives a decode's freed buffers back (malloc_trim); Arrow's
# mimalloc kept ~60% of a part's size on top of it (a 20k-row pool's second part: 82 MiB
# of RSS for 51 MiB held, 55 MiB with the system allocator)
ACTOR_ENV = {"env_vars": {"ARROW_DEFAULT_MEMORY_POOL": "system"}}
READ_ROWS = 8192  # rows a decode batch when a part is read


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
        self.scored = 0  # score calls this process answered (every caller's: a sweep's trials)
        # with a cached first block: its weights' key, and the raw rows (memory-mapped)
        self.first_block: str | None = None
        self.raw: PostArrays | None = None

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
                "rss": _rss(), "loads": self.loads, "scored": self.scored,
                "pid": os.getpid(), "first_block": self.first_block}

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
        self.first_block, self.raw = None, None
        _give_back_memory()

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
        args, carry = self._first_blocks(args)
        data, table, args = self._candidate_rows(args)
        scorer = BatchScorer(**args, num_threads=self.num_threads, device=self.device)
        scorer.model.use_cached(self.first_block is not None)
        shown = self.pool.show_columns
        merger = QueryMerger(scorer.score, scorer.carry or bool(shown))
        for start in range(0, len(data), batch_size):
            out = scorer.score_arrays(data.take(slice(start, start + batch_size)),
                                      self.id_type)
            if shown:  # the shown columns (a URL, a title) of its rows, kept as Arrow
                out = with_shown(out, table.slice(start, batch_size), self.pool)
            merger.absorb(out)
        self.scored += 1
        kept = merger.candidates(self.id_type or pa.int64())
        # the carried embeddings are the raw ones (the loop trains on them), not the cache
        return with_carried(kept, self.raw, self.raw_order, self.pool) if carry else kept

    def _first_blocks(self, args: Mapping) -> tuple[dict, bool]:
        """``(args for BatchScorer, carry the raw rows after the merge)``. With
        ``first_block_cache`` the part holds its rows' first-block outputs for this
        model's first blocks (computed once per key, the raw rows spilled to a mapped
        file); without, the raw rows (read again if a cache replaced them)."""
        args = dict(args)
        if not args.pop("first_block_cache", False):
            if self.first_block is not None:
                self._read()
            return args, False
        args["model"] = state = resolved(args["model"])
        key = first_block_key(state)
        if key != self.first_block:
            if self.first_block is not None:  # other first blocks: from the raw rows
                self._read()
            raw = self.data
            self.data = first_block_rows(raw, state, self.dtype, self.device)
            self.raw = PostArrays(raw.ids, spill(raw.features), raw.present, raw.labels)
            self.raw_order = np.argsort(raw.ids, kind="stable")
            self.first_block = key
            del raw
            _give_back_memory()
        carry = bool(args.get("carry"))
        return {**args, "carry": False}, carry

    def _candidate_rows(self, args: Mapping) -> tuple:
        """``(rows, shown columns, args)`` to score this step: with knn candidates only
        their rows, picked by id before any batch reaches the model (what makes a knn
        step cheap), and the resolved ids passed on; else the whole part."""
        wanted = resolved(args.get("candidate_ids"))
        if wanted is None:
            return self.data, self.shown, args
        rows = np.flatnonzero(~mask_excluded(self.data.ids, wanted))
        shown = self.shown.take(pa.array(rows)) if self.shown is not None else None
        return self.data.take(rows), shown, {**args, "candidate_ids": wanted}

    def forward_seconds(self, args: Mapping, batch_size: int) -> float:
        return forward_seconds(self, args, batch_size)


def _give_back_memory() -> None:
    """Return the decode's freed buffers to the system: Arrow's pool and glibc keep them
    otherwise (measured: 325 MiB of RSS for a 51 MiB part, 105 MiB after this)."""
    import ctypes

    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def forward_seconds(part: "ResidentPart", args: Mapping, batch_size: int) -> float:
    """For benchmarks: seconds of the model's forward passes alone (MC dropout included)
    over the part's rows, in the part's own process and threads: no exclusions, top-k,
    merge or carried columns. What a step cannot avoid."""
    import time

    part.load()
    args, _ = part._first_blocks(args)
    scorer = BatchScorer(**args, num_threads=part.num_threads, device=part.device)
    scorer.model.use_cached(part.first_block is not None)
    started = time.perf_counter()
    for start in range(0, len(part.data), batch_size):
        scorer.model.outputs(part.data.take(slice(start, start + batch_size)))
    return time.perf_counter() - started


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
            at = first
            for batch in (pf.iter_batches(READ_ROWS, row_groups=[group], columns=columns)
                          if lo < hi else ()):  # a batch at a time: a small transient
                b_lo, b_hi = max(lo, at), min(hi, at + batch.num_rows)
                if b_lo < b_hi:
                    yield b_lo, pa.Table.from_batches([batch.slice(b_lo - at, b_hi - b_lo)])
                at += batch.num_rows
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
                            max_task_retries=-1, scheduling_strategy="SPREAD",
                            runtime_env=ACTOR_ENV)(ResidentPart)
        threads = 1 if gpu else max(1, int(compute.cpus_per_actor))
        actors = [remote.remote(part, columns.to_dict(), dims, compute.resident_dtype,
                                "cuda" if gpu else "cpu", threads) for part in parts]
        return cls(str(pool_uri), columns, compute, tuple(s.path for s in shards), parts,
                   actors, dims)

    def load(self) -> list[dict]:
        """Have every actor read its part now (else the first ``score`` does)."""
        import ray

        return ray.get([a.load.remote() for a in self.actors])

    def forward_seconds(self, model: Mapping, score: ScoreConfig,
                        first_block: bool = False) -> float:
        """For benchmarks: the slowest actor's seconds of forward passes alone
        (``forward_seconds``), every actor at once, as in a step."""
        import ray

        from alray.scoring.plan import plan_scoring

        args = plan_scoring(self.pool_uri, model, score, self.columns).scorer_args()
        args["model"] = ray.put(args["model"])
        args["first_block_cache"] = first_block
        return max(ray.get([a.forward_seconds.remote(args, self.compute.score_batch_size)
                            for a in self.actors]))

    def info(self) -> list[dict]:
        """Per actor: rows, bytes held, process RSS, loads, score calls, pid."""
        import ray

        return ray.get([a.info.remote() for a in self.actors])

    def score(self, model: str | Mapping, score: ScoreConfig, exclude_ids=None,
              step: int = 0, carry: bool = False, first_block: bool = False
              ) -> dict[str, pa.Table]:
        """strategy -> query table, as ``score_pool`` on this pool returns it.
        ``first_block``: the actors cache the model's first blocks' outputs
        (``alray.scoring.first_block``; for runs that keep them, one cache at a time)."""
        import ray

        from alray.scoring.pipeline import (PUT_THRESHOLD, cluster_round_robin, ray_error,
                                            widen_for_cluster_margin)
        from alray.scoring.plan import plan_scoring

        plan = widen_for_cluster_margin(plan_scoring(
            self.pool_uri, model, score, self.columns, exclude_ids, step, carry=carry))
        if tuple(s.path for s in plan.shards) != self.shards:
            raise ConfigError(f"{self.pool_uri}: the pool's shards changed since the "
                              "resident pool read them; open a new one")
        args = plan.scorer_args()
        args["model"] = ray.put(plan.model)  # once, for every actor
        args["first_block_cache"] = first_block
        for name in ("exclude", "candidate_ids"):  # big id arrays: once, for every actor
            if args[name] is not None and len(args[name]) > PUT_THRESHOLD:
                args[name] = ray.put(args[name])
        merger = QueryMerger(plan.score, plan.carries)
        try:
            for table in ray.get([a.score.remote(args, self.compute.score_batch_size)
                                  for a in self.actors]):
                merger.absorb(table)
        except Exception as exc:  # Ray wraps the actors' errors
            raise ray_error(exc, plan.shards) from None
        return cluster_round_robin(merger.queries(plan.id_type), score)

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
