"""Score a pool: plan (``alray.scoring.plan``), run ``BatchScorer`` on Ray Data or in
this process, and merge.

``score_pool`` returns one query table per strategy; ``write_query`` writes them all to
one Parquet file atomically. The pool's label column is the ground truth (simulation);
posts already labelled by the loop are passed as ``exclude_ids`` and never returned.
The query does not depend on the batch size, the block size or the number of actors:
per-batch top-k with a total order (score, then id) merged exactly on the driver, and
MC dropout with fixed seeded masks. Ray must already be connected on the Ray path
(``alray.runtime.connect`` at the entry point).
"""
from __future__ import annotations

import dataclasses
import math
import os
import re
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Mapping

import pyarrow as pa

from alray.config import ComputeConfig, PoolConfig, ScoreConfig
from alray.errors import AlrayError, ConfigError, PoolSchemaError
from alray.pool import io
from alray.pool.normalize import read_schema
from alray.pool.schema import QUERY_COLUMNS
from alray.runtime import require_ray
from alray.scoring.merge import QueryMerger, merge_scores
from alray.scoring.plan import ScoringPlan, plan_scoring
from alray.scoring.scorer import BatchScorer, RowCounter

# an exclude list bigger than this travels through the object store, not the closure
PUT_THRESHOLD = 10_000
POLL_S = 0.5  # how often the Ray path's progress is read from the actors
FOOTER_ACTORS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
FILES_PER_FOOTER_ACTOR = 256

Progress = Callable[[int, int], None]


def score_pool(pool_uri: str, model: str | Mapping, score: ScoreConfig,
               columns: PoolConfig = PoolConfig(), exclude_ids: Iterable | None = None,
               compute: ComputeConfig = ComputeConfig(), step: int = 0,
               progress: Progress | None = None, scores_out: str | None = None,
               carry: bool = False) -> dict[str, pa.Table]:
    """strategy -> query table (id, score, rank, predicted_class, predicted_prob, strategy,
    least_sure_head), best first, ``score.query_size`` rows each.

    ``model``: a checkpoint directory or a ``model_state`` (the loop's model in memory),
    read on the driver only: the actors get it through the object store. ``step``: the
    loop step (fresh sampling noise and candidates). ``compute``: in this process
    (``local``) or on Ray, with its actors, CPUs, GPUs and batch size.
    The checks of ``plan_scoring`` run before any scoring; a corrupt shard is a
    PoolSchemaError naming the file. ``scores_out``: also write every candidate's
    score per strategy (the columns of ``output_schema``) as a Parquet directory there,
    atomically; the query is then merged from those files. ``carry``: each query table
    also holds the pool's embedding and label columns of its rows.
    """
    if carry and scores_out is not None:
        raise ConfigError("score_pool: carry and scores_out cannot be combined")
    plan = plan_scoring(pool_uri, model, score, columns, exclude_ids, step,
                        keep_all=scores_out is not None, carry=carry)
    plan = widen_for_cluster_margin(plan)
    if scores_out is not None:
        with io.atomic_directory(scores_out) as tmp:
            _run(plan, compute, progress, tmp)
        merger = merge_scores(scores_out, plan.score, step, plan.carries)
    else:
        merger = _run(plan, compute, progress, None)
    return cluster_round_robin(merger.queries(plan.id_type), score)


def widen_for_cluster_margin(plan: ScoringPlan) -> ScoringPlan:
    """With Cluster-Margin, ``plan`` asking for the exact top k_m (``cluster_margin`` x
    the query size) that ``cluster_round_robin`` then picks from; else ``plan``. Every
    scoring path (streaming, local, resident) goes through both."""
    score = plan.score
    if not score.cluster_margin:
        return plan
    left = plan.total_rows - plan.excluded_rows
    wide = score.replace(cluster_margin=0.0, query_size=min(left, math.ceil(
        score.cluster_margin * score.query_size)))
    return dataclasses.replace(plan, score=wide)


def cluster_round_robin(queries: dict[str, pa.Table], score: ScoreConfig
                        ) -> dict[str, pa.Table]:
    """Cluster-Margin: each strategy's query filled round-robin over the clusters of its
    top-k_m candidates, smallest cluster first (``alray.acquisition.diversity``);
    ``queries`` unchanged when ``score`` asks for no Cluster-Margin."""
    if not score.cluster_margin:
        return queries
    from alray.acquisition.diversity import round_robin
    from alray.scoring.clusters import groups_of, read_clusters

    known_ids, known_groups = read_clusters(score.clusters)
    out = {}
    for name, table in queries.items():
        ids = table.column("id").to_numpy(zero_copy_only=False)
        picked = round_robin(table.column("score").to_numpy(), ids,
                             groups_of(ids, known_ids, known_groups, score.clusters),
                             score.query_size)
        table = table.take(pa.array(picked, pa.int64()))
        rank = table.schema.get_field_index("rank")
        out[name] = table.set_column(rank, "rank", pa.array(
            range(1, table.num_rows + 1), pa.int64()))
    return out


def _run(plan: ScoringPlan, compute: ComputeConfig, progress: Progress | None,
         scores_dir) -> QueryMerger:
    if compute.local:
        return _score_local(plan, compute, progress, scores_dir)
    return _score_ray(plan, compute, progress, scores_dir)


def _score_local(plan: ScoringPlan, compute: ComputeConfig, progress: Progress | None,
                 scores_dir) -> QueryMerger:
    scorer = BatchScorer(**plan.scorer_args())
    merger, done, n_written = QueryMerger(plan.score, plan.carries), 0, 0
    for shard in plan.shards:
        for batch in io.iter_batches(shard, list(plan.read_columns), compute.score_batch_size):
            try:
                out = scorer(pa.Table.from_batches([batch]))
            except PoolSchemaError as exc:
                raise PoolSchemaError(f"{shard.uri}: {exc}") from None
            if scores_dir is not None:
                io.write_shard(out, scores_dir, n_written)
                n_written += 1
            else:
                merger.absorb(out)
            done += batch.num_rows
            if progress:
                progress(done, plan.total_rows)
    return merger


def _score_ray(plan: ScoringPlan, compute: ComputeConfig, progress: Progress | None,
               scores_dir) -> QueryMerger:
    import ray

    require_ray()
    kwargs = plan.scorer_args()
    kwargs["model"] = ray.put(plan.model)
    for name in ("exclude", "candidate_ids"):  # big id arrays through the object store
        if kwargs[name] is not None and len(kwargs[name]) > PUT_THRESHOLD:
            kwargs[name] = ray.put(kwargs[name])
    gpu = compute.score_gpus_per_actor > 0  # torch threads: the CPUs an actor was given
    kwargs.update(num_threads=1 if gpu else max(1, int(compute.cpus_per_actor)),
                  device="cuda" if gpu else "cpu")
    counter = poller = None
    if progress:
        counter = ray.remote(num_cpus=0)(RowCounter).remote()
        kwargs["counter"] = counter
        poller = _Poller(counter, plan.total_rows, progress)
    merger = QueryMerger(plan.score, plan.carries)
    try:
        with footer_readers(len(plan.shards)):
            _execute(plan, compute, kwargs, merger, scores_dir)
    except Exception as exc:  # Ray wraps errors from read tasks and actors
        raise ray_error(exc, plan.shards) from None
    finally:
        if poller is not None:
            poller.stop()
            ray.kill(counter)
    if progress:
        progress(plan.total_rows, plan.total_rows)
    return merger


@contextmanager
def footer_readers(n_files: int) -> Iterator[None]:
    """Ray 2.60's Parquet reader lists a dataset's files through a pool of FooterReader
    actors, 32 by default: 32 worker processes started for every read, about 3 s of a
    1M-row scoring run on 2 cores (docs/benchmarks.md), for footers that one actor and
    its I/O threads read in milliseconds. One actor per 256 files here, at most 32; a
    value the user set in the environment wins."""
    if FOOTER_ACTORS_ENV in os.environ:
        yield
        return
    actors = min(32, max(1, -(-n_files // FILES_PER_FOOTER_ACTOR)))
    os.environ[FOOTER_ACTORS_ENV] = str(actors)
    try:
        yield
    finally:
        os.environ.pop(FOOTER_ACTORS_ENV, None)


def _execute(plan: ScoringPlan, compute: ComputeConfig, kwargs: dict,
             merger: QueryMerger, scores_dir) -> None:
    """Read, score in the actor pool, and merge the actors' candidates (or write every
    score with ``--scores-out``)."""
    import ray.data

    # a bad row an actor refuses (PoolSchemaError: NaN embedding, ...) reaches the user
    # as that error, not as Ray's UserCodeException around a traceback
    ray.data.DataContext.get_current().raise_original_map_exception = True
    paths = [s.path for s in plan.shards]
    # shards of other but compatible types (pandas' large_string beside string ids, ...)
    schema = read_schema([io.open_parquet(s).schema_arrow for s in plan.shards],
                         plan.columns.id_column, plan.columns.label_column,
                         list(plan.columns.embedding_columns.values()), list(plan.read_columns))
    ds = ray.data.read_parquet(paths, filesystem=plan.shards[0].fs,
                               **({"schema": schema} if schema is not None else {}))
    ds = ds.select_columns(list(plan.read_columns))
    ds = ds.map_batches(
        BatchScorer, fn_constructor_kwargs=kwargs, batch_size=compute.score_batch_size,
        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=compute.score_actors),
        num_cpus=compute.cpus_per_actor, num_gpus=compute.score_gpus_per_actor)
    if scores_dir is not None:
        ds.write_parquet(scores_dir.path, filesystem=scores_dir.fs)
        return
    for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
        merger.absorb(batch if isinstance(batch, pa.Table)
                      else pa.Table.from_batches([batch]))


class _Poller:
    """Reads the actors' row counter every ``POLL_S`` on a thread and reports it: the
    actors' outputs are top-k tables that Ray Data bundles, so they come back too
    rarely to show progress."""

    def __init__(self, counter, total: int, progress: Progress):
        import threading

        self.counter, self.total, self.progress = counter, total, progress
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import ray

        while not self._stop.wait(POLL_S):
            try:
                done = ray.get(self.counter.total.remote(), timeout=5)
            except Exception:  # a progress bar must never fail the scoring
                continue
            self.progress(min(done, self.total), self.total)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def ray_error(exc: Exception, shards) -> Exception:
    """An AlrayError for an exception Ray raised, naming the shard when Ray did."""
    cause, seen = exc, set()
    while cause is not None and id(cause) not in seen:  # Ray's RayTaskError(X) is an X
        seen.add(id(cause))
        if isinstance(cause, AlrayError):
            if type(cause).__module__.startswith("alray"):
                return cause
            # RayTaskError(X) subclasses X; rebuild a plain X from the original problems
            plain = next(c for c in type(cause).__mro__
                         if issubclass(c, AlrayError) and c.__module__.startswith("alray"))
            problems = getattr(cause, "problems", None) or [_last_line(str(cause))]
            return plain(problems[0], problems if len(problems) > 1 else None)
        cause = cause.__cause__ or cause.__context__
    text = str(exc)
    for shard in shards:
        if shard.path in text or os.path.basename(shard.path) in text:
            return PoolSchemaError(f"{shard.uri}: unreadable or corrupt Parquet file "
                                   f"({_root_error(text)})")
    return exc


def _root_error(text: str) -> str:
    """The original error line inside Ray's wrapped traceback (e.g. ``OSError: ...``)."""
    found = re.findall(r"^(\w*(?:Error|Exception|Invalid)\w*: .*)$", text, re.MULTILINE)
    found = [line.strip() for line in found if not line.startswith("Ray")]
    return found[-1] if found else _last_line(text)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1].strip() if lines else text


def write_query(tables: dict[str, pa.Table], out: str, step: int = 0,
                shown: tuple[str, ...] = ()) -> pa.Table:
    """Write every strategy's query into one Parquet file at ``out`` (atomic); returns it.

    Columns in ``QUERY_COLUMNS`` order, with ``step`` added, then the pool's ``shown``
    columns (``PoolConfig.show_columns``).
    """
    parts = []
    for table in tables.values():
        table = table.append_column("step", pa.array([step] * table.num_rows, pa.int64()))
        parts.append(table.select([*QUERY_COLUMNS, *shown]))
    if not parts:
        raise ConfigError("write_query: no query tables to write")
    table = pa.concat_tables(parts, promote_options="permissive")
    io.write_table(table, out)
    return table

