"""Score a pool: validate, then run ``BatchScorer`` on Ray Data (or in-process) and merge.

``score_pool`` returns one query table per strategy; ``write_query`` writes them all to
one Parquet file atomically. The pool's label column is the ground truth (simulation);
posts already labelled by the loop are passed as ``exclude_ids`` and never returned.
The query does not depend on the batch size, the block size or the number of actors:
per-batch top-k with a total order (score, then id) merged exactly on the driver, and
MC dropout with fixed seeded masks.
"""
from __future__ import annotations

import os
import re
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alray.acquisition import check_names, needs_of
from alray.acquisition.registry import STRATEGIES
from alray.config import PoolConfig, ScoreConfig
from alray.errors import (
    AlrayError, ConfigError, LabelsError, PoolExhaustedError, PoolSchemaError)
from alray.pool import io
from alray.pool.schema import QUERY_COLUMNS, infer_dims
from alray.runtime import ensure_ray
from alray.scoring.scorer import BatchScorer, RowCounter
from alray.scoring.merge import QueryMerger, merge_scores
from alray.scoring.topk import sorted_ids

# an exclude list bigger than this travels through the object store, not the closure
PUT_THRESHOLD = 10_000
POLL_S = 0.5  # how often the Ray path's progress is read from the actors
FOOTER_ACTORS_ENV = "RAY_DATA_PARQUET_FOOTER_NUM_ACTORS"
FILES_PER_FOOTER_ACTOR = 256

Progress = Callable[[int, int], None]


def score_pool(pool_uri: str, checkpoint: str | Mapping, score: ScoreConfig,
               pool: PoolConfig = PoolConfig(), exclude_ids: Iterable | None = None,
               use_ray: bool = True, address: str | None = None,
               progress: Progress | None = None, scores_out: str | None = None,
               carry: bool = False) -> dict[str, pa.Table]:
    """strategy -> query table (id, score, rank, predicted_class, predicted_prob, strategy),
    best first, ``score.query_size`` rows each.

    ``checkpoint``: a checkpoint directory or a ``model_state`` (the loop's model in
    memory). It is read on the driver only: the Ray path's actors get the model through
    the object store, so on a cluster no other node needs to see the checkpoint.
    Raises ConfigError (unknown strategy or head, learning_loss without a loss module),
    CheckpointError (model does not fit the pool), LabelsError (oracle strategy on a pool
    without labels), PoolExhaustedError (fewer candidates than query_size) before any
    scoring, and PoolSchemaError naming the file for a corrupt shard.
    ``scores_out``: also write every candidate's score per strategy (long format: the
    columns of ``output_schema``) as a Parquet directory there, atomically; the query is
    then merged from those files.
    ``carry``: each query table also holds the pool's embedding and label columns of
    its rows (the loop trains on them without reading the pool again).
    """
    if carry and scores_out is not None:
        raise ConfigError("score_pool: carry and scores_out cannot be combined")
    plan = _prepare(pool_uri, checkpoint, score, pool, exclude_ids)
    plan["keep_all"] = scores_out is not None
    plan["carry"] = carry
    if scores_out is not None:
        with io.atomic_directory(scores_out) as tmp:
            plan["scores_dir"] = tmp
            _run(plan, use_ray, address, progress)
        merger = merge_scores(scores_out, score)
    else:
        merger = _run(plan, use_ray, address, progress)
    return merger.queries(plan["id_type"])


def _prepare(pool_uri, checkpoint, score: ScoreConfig, pool: PoolConfig, exclude_ids) -> dict:
    """Every check that can fail before the pool is scored."""
    from alray.model import check_fits, load_model, model_state

    check_names(score.strategies)
    needs = needs_of(score.strategies)
    shards = io.pool_shards(pool_uri)
    dims = infer_dims(pool_uri, pool)
    model, config = load_model(checkpoint)
    source = "the model in memory" if isinstance(checkpoint, Mapping) else str(checkpoint)
    check_fits(config, dims, None, source)
    if score.head not in model.head_names:
        raise ConfigError(f"head {score.head!r}: {source} has heads "
                          f"{', '.join(model.head_names)}")
    if "loss_pred" in needs and not config.learning_loss:
        raise ConfigError(f"strategy learning_loss needs a model trained with a "
                          f"loss-prediction module; {source} has none")
    state = checkpoint if isinstance(checkpoint, Mapping) else model_state(model)
    del model
    columns = [pool.id_column, *pool.embedding_columns.values()]
    names = io.open_parquet(shards[0]).schema_arrow.names
    has_labels = pool.label_column in names
    if has_labels:
        columns.append(pool.label_column)
    exclude = sorted_ids(exclude_ids) if exclude_ids is not None else np.zeros(0, np.int64)
    total, excluded_present, labelled, id_type = 0, 0, 0, None
    subset = _CandidateSubset(score) if score.candidates else None
    for shard in shards:
        pf = io.open_parquet(shard)
        total += pf.metadata.num_rows
        shard_cols = [pool.id_column] + ([pool.label_column] if has_labels and
                                         pool.label_column in pf.schema_arrow.names else [])
        try:
            table = pf.read(columns=shard_cols)
        except (pa.ArrowException, OSError) as exc:
            raise PoolSchemaError(f"{shard.uri}: unreadable or corrupt Parquet file: "
                                  f"{exc}") from None
        ids = table.column(pool.id_column)
        id_type = id_type or ids.type
        if len(exclude):
            excluded_present += int(pc.sum(pc.is_in(
                ids, value_set=pa.array(exclude))).as_py() or 0)
        if pool.label_column in table.column_names:
            labelled += len(table) - table.column(pool.label_column).null_count
        if subset is not None:
            subset.add(ids.to_numpy(zero_copy_only=False), exclude)
    oracles = [s for s in score.strategies if STRATEGIES[s].oracle]
    if oracles and labelled == 0:
        raise LabelsError(f"oracle strategies {', '.join(oracles)} need the true labels, "
                          f"and the pool {pool_uri} has none (column "
                          f"{pool.label_column!r})")
    candidates = total - excluded_present
    if score.query_size > candidates:
        raise PoolExhaustedError(
            f"query size {score.query_size} is larger than the {candidates} unlabelled "
            f"posts left in {pool_uri} ({total} rows, {excluded_present} already labelled)")
    return {"pool_uri": str(pool_uri), "model": state, "score": score,
            "pool": pool, "shards": shards, "dims": dims, "columns": columns,
            "exclude": exclude, "total": total, "id_type": id_type or pa.int64(),
            "candidate_max": subset.threshold() if subset is not None else None}


class _CandidateSubset:
    """``--candidates N``: the N unlabelled posts with the smallest candidate hashes, a
    seeded uniform subset, new each step. The driver finds the N-th smallest hash from
    the id column it reads anyway; the scorers then keep the rows at or below it."""

    def __init__(self, score: ScoreConfig):
        self.n, self.seed, self.step = score.candidates, score.seed, score.sampling_step
        self.kept = np.zeros(0, np.uint64)

    def add(self, ids: np.ndarray, exclude: np.ndarray) -> None:
        from alray.acquisition import candidate_hashes
        from alray.scoring.topk import mask_excluded

        hashes = candidate_hashes(ids[mask_excluded(ids, exclude)], self.seed, self.step)
        self.kept = np.concatenate([self.kept, hashes])
        if len(self.kept) > self.n:  # keep O(N) whatever the pool size
            self.kept = np.partition(self.kept, self.n - 1)[:self.n]

    def threshold(self) -> int | None:
        """The largest kept hash; None when the subset is the whole unlabelled pool."""
        if len(self.kept) < self.n:
            return None
        return int(self.kept.max())


def _run(plan: dict, use_ray: bool, address: str | None, progress: Progress | None
         ) -> QueryMerger:
    return _score_ray(plan, address, progress) if use_ray else _score_local(plan, progress)


def _score_local(plan: dict, progress: Progress | None) -> QueryMerger:
    score: ScoreConfig = plan["score"]
    scorer = BatchScorer(plan["model"], score.to_dict(), plan["pool"].to_dict(),
                         plan["dims"], exclude=plan["exclude"], keep_all=plan["keep_all"],
                         candidate_max=plan["candidate_max"],
                         carry=plan["carry"])
    n_written = 0
    merger, done = QueryMerger(score, plan["carry"]), 0
    for shard in plan["shards"]:
        for batch in io.iter_batches(shard, plan["columns"], score.batch_size):
            try:
                out = scorer(pa.Table.from_batches([batch]))
            except PoolSchemaError as exc:
                raise PoolSchemaError(f"{shard.uri}: {exc}") from None
            if plan["keep_all"]:
                io.write_shard(out, plan["scores_dir"], n_written)
                n_written += 1
            else:
                merger.absorb(out)
            done += batch.num_rows
            if progress:
                progress(done, plan["total"])
    return merger


def _score_ray(plan: dict, address: str | None, progress: Progress | None
               ) -> QueryMerger:
    import ray

    score: ScoreConfig = plan["score"]
    ensure_ray(address)
    exclude = plan["exclude"]
    if len(exclude) > PUT_THRESHOLD:
        exclude = ray.put(exclude)
    threads = max(1, int(score.num_cpus_per_actor)) if score.num_gpus_per_actor == 0 else 1
    kwargs = {"checkpoint": ray.put(plan["model"]), "score": score.to_dict(),
              "pool": plan["pool"].to_dict(), "dims": plan["dims"], "exclude": exclude,
              "num_threads": threads,
              "device": "cuda" if score.num_gpus_per_actor > 0 else "cpu",
              "keep_all": plan["keep_all"], "carry": plan["carry"],
              "candidate_max": plan["candidate_max"]}
    counter = poller = None
    if progress:
        counter = ray.remote(num_cpus=0)(RowCounter).remote()
        kwargs["counter"] = counter
        poller = _Poller(counter, plan["total"], progress)
    paths = [s.path for s in plan["shards"]]
    fs = plan["shards"][0].fs
    merger = QueryMerger(score, plan["carry"])
    try:
        with footer_readers(len(paths)):
            _execute(plan, paths, fs, kwargs, merger)
    except Exception as exc:  # Ray wraps errors from read tasks and actors
        raise _unwrap(exc, plan["shards"]) from None
    finally:
        if poller is not None:
            poller.stop()
            ray.kill(counter)
    if progress:
        progress(plan["total"], plan["total"])
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


def _execute(plan: dict, paths: list[str], fs, kwargs: dict, merger: QueryMerger) -> None:
    """Read, score in the actor pool, and merge the actors' candidates (or write every
    score with ``--scores-out``)."""
    import ray.data

    score: ScoreConfig = plan["score"]
    ds = ray.data.read_parquet(paths, filesystem=fs)
    ds = ds.select_columns(plan["columns"])
    ds = ds.map_batches(
        BatchScorer, fn_constructor_kwargs=kwargs, batch_size=score.batch_size,
        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=score.actors),
        num_cpus=score.num_cpus_per_actor, num_gpus=score.num_gpus_per_actor)
    if plan["keep_all"]:
        out = plan["scores_dir"]
        ds.write_parquet(out.path, filesystem=out.fs)
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


def _unwrap(exc: Exception, shards) -> Exception:
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


def write_query(tables: dict[str, pa.Table], out: str, step: int = 0) -> pa.Table:
    """Write every strategy's query into one Parquet file at ``out`` (atomic); returns it.

    Columns in ``QUERY_COLUMNS`` order, with ``step`` added.
    """
    parts = []
    for table in tables.values():
        table = table.append_column("step", pa.array([step] * table.num_rows, pa.int64()))
        parts.append(table.select(list(QUERY_COLUMNS)))
    if not parts:
        raise ConfigError("write_query: no query tables to write")
    table = pa.concat_tables(parts)
    io.write_table(table, out)
    return table

