"""The scoring plan: everything a scoring run needs, checked and frozen before any work.

``plan_scoring`` reads the pool's id (and label) columns once and finds every problem
that can stop a run before the pool is scored: unknown strategies or heads, a model that
does not fit the pool, oracle strategies without labels, fewer candidates than the query
size, excluded ids that are not in the pool. The plan it returns is immutable; a runner
(streaming or resident) only reads it, and ``scorer_args`` is the plain data that
crosses a Ray boundary to the scoring actors.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alray.acquisition import candidate_hashes, check_names
from alray.acquisition.registry import STRATEGIES
from alray.config import PoolConfig, ScoreConfig
from alray.errors import InputWarning, LabelsError, PoolExhaustedError, PoolSchemaError
from alray.pool import io
from alray.pool.normalize import normalize_ids
from alray.pool.schema import QUERY_COLUMNS, infer_dims
from alray.scoring.outputs import check_serves
from alray.scoring.topk import mask_excluded, sorted_ids


@dataclass(frozen=True)
class ScoringPlan:
    """One scoring run. ``step``: the loop step (fresh sampling noise and a fresh
    candidate subset each step). ``exclude``: sorted ids never returned.
    ``candidate_max``: score only rows whose candidate hash is at most this
    (``score.candidates``; None = every unlabelled row). ``candidate_ids``: with
    ``knn:K``, the sorted ids of this step's candidates, the labelled posts' nearest
    neighbours (``alray.scoring.neighbours``); only they are scored. ``keep_all``: every row's score
    comes back (``--scores-out``), not the per-batch top-k. ``carry``: the query rows
    come back with their pool columns (the loop trains on them without a second read).
    The pool's ``columns.show_columns`` always come back with the query rows."""

    pool_uri: str
    shards: tuple
    columns: PoolConfig
    score: ScoreConfig
    step: int
    model: Mapping
    dims: Mapping[str, int]
    read_columns: tuple[str, ...]
    exclude: np.ndarray
    total_rows: int
    excluded_rows: int
    id_type: pa.DataType
    candidate_max: int | None
    keep_all: bool = False
    carry: bool = False
    candidate_ids: np.ndarray | None = None

    def scorer_args(self) -> dict:
        """``BatchScorer``'s constructor arguments as plain data (the model and the
        exclusions may be swapped for object-store references by a runner)."""
        return {"model": self.model, "score": self.score.to_dict(),
                "columns": self.columns.to_dict(), "dims": dict(self.dims),
                "step": self.step, "exclude": self.exclude, "keep_all": self.keep_all,
                "carry": self.carry, "candidate_max": self.candidate_max,
                "candidate_ids": self.candidate_ids}

    @property
    def carries(self) -> bool:
        """Whether the scorers' outputs hold pool columns the merge keeps for the
        query: the carried ones, or the shown ones."""
        return self.carry or bool(self.columns.show_columns)


def plan_scoring(pool_uri: str, model: str | Mapping, score: ScoreConfig,
                 columns: PoolConfig = PoolConfig(), exclude_ids: Iterable | None = None,
                 step: int = 0, keep_all: bool = False, carry: bool = False) -> ScoringPlan:
    """The checked plan (module docstring). ``model``: a checkpoint directory or a
    ``model_state`` (read here, on the driver only). Raises ConfigError,
    CheckpointError, LabelsError, PoolExhaustedError, PoolSchemaError."""
    from alray.model import check_fits, load_model, model_state

    check_names(score.strategies)
    shards = io.pool_shards(pool_uri)
    dims = infer_dims(pool_uri, columns)
    net, config = load_model(model)
    source = "the model in memory" if isinstance(model, Mapping) else str(model)
    check_fits(config, dims, None, source)
    check_serves(config, score, source)
    state = model if isinstance(model, Mapping) else model_state(net)
    exclude = sorted_ids(exclude_ids) if exclude_ids is not None else np.zeros(0, np.int64)
    near = None
    if score.knn:  # SEALS: the labelled posts' neighbours, fresh as labels arrive
        from alray.scoring.neighbours import knn_candidates
        near = knn_candidates(score.neighbours, score.knn, exclude)
    census = _census(shards, columns, exclude, score, step, near)
    _check_census(census, score, pool_uri, exclude)
    read = [columns.id_column, *columns.embedding_columns.values()]
    if census["has_labels"]:
        read.append(columns.label_column)
    read += columns.show_columns
    return ScoringPlan(
        pool_uri=str(pool_uri), shards=tuple(shards), columns=columns, score=score,
        step=int(step), model=state, dims=dims, read_columns=tuple(read), exclude=exclude,
        total_rows=census["total"], excluded_rows=census["excluded"],
        id_type=census["id_type"] or pa.int64(), candidate_max=census["candidate_max"],
        keep_all=keep_all, carry=carry, candidate_ids=near)


def _census(shards, columns: PoolConfig, exclude: np.ndarray, score: ScoreConfig,
            step: int, near: np.ndarray | None = None) -> dict:
    """Rows, excluded rows present, labelled rows and the id type, from the id (and
    label) columns; with ``score.candidates`` also this step's candidate threshold, or
    with ``near`` (knn candidates) how many of them are in the pool."""
    total = excluded = labelled = present = 0
    id_type, has_labels = None, False
    subset = _CandidateSubset(score, step) if score.candidates and not score.knn else None
    for shard in shards:
        pf = io.open_parquet(shard)
        total += pf.metadata.num_rows
        names = pf.schema_arrow.names
        check_shown(columns, names, shard.uri)
        has_labels = has_labels or columns.label_column in names
        wanted = [columns.id_column] + ([columns.label_column]
                                        if columns.label_column in names else [])
        try:
            table = pf.read(columns=wanted)
        except (pa.ArrowException, OSError) as exc:
            raise PoolSchemaError(f"{shard.uri}: unreadable or corrupt Parquet file: "
                                  f"{exc}") from None
        ids = normalize_ids(table.column(columns.id_column), columns.id_column, shard.uri)
        id_type = id_type or ids.type  # int64 or string, whatever each shard holds
        if len(exclude):
            excluded += int(pc.sum(pc.is_in(ids, value_set=pa.array(exclude))).as_py() or 0)
        if columns.label_column in table.column_names:
            labelled += len(table) - table.column(columns.label_column).null_count
        if subset is not None:
            subset.add(ids.to_numpy(zero_copy_only=False), exclude)
        if near is not None:
            present += int((~mask_excluded(ids.to_numpy(zero_copy_only=False), near)).sum())
    return {"total": total, "excluded": excluded, "labelled": labelled,
            "id_type": id_type, "has_labels": has_labels, "near": present,
            "candidate_max": subset.threshold() if subset is not None else None}


def _check_census(census: dict, score: ScoreConfig, pool_uri: str,
                  exclude: np.ndarray) -> None:
    oracles = [s for s in score.strategies if STRATEGIES[s].oracle]
    if oracles and census["labelled"] == 0:
        raise LabelsError(f"oracle strategies {', '.join(oracles)} need the true labels, "
                          f"and the pool {pool_uri} has none")
    if len(exclude) and census["excluded"] == 0:
        raise LabelsError(f"none of the {len(exclude):,} excluded ids is in the pool "
                          f"{pool_uri} (first: {exclude[0]!r}); is it the right pool or "
                          "the right id column?")
    if 0 < census["excluded"] < len(exclude):
        warnings.warn(InputWarning(
            f"{len(exclude) - census['excluded']:,} of the {len(exclude):,} excluded ids "
            f"are not in the pool {pool_uri}"), stacklevel=3)
    candidates = census["total"] - census["excluded"]
    if score.knn and score.query_size > census["near"]:
        # refused, not filled: a fill from elsewhere would no longer be the SEALS pool
        raise PoolExhaustedError(
            f"query size {score.query_size} is larger than the {census['near']} "
            f"candidates of --candidates knn:{score.knn} (the nearest neighbours of "
            f"{len(exclude):,} labelled posts in {score.neighbours}); raise K")
    if score.query_size > candidates:
        raise PoolExhaustedError(
            f"query size {score.query_size} is larger than the {candidates} unlabelled "
            f"posts left in {pool_uri} ({census['total']} rows, {census['excluded']} "
            "already labelled)")


def check_shown(columns: PoolConfig, names, where: str) -> None:
    """PoolSchemaError unless every shown column is among ``names`` (a shard's columns)
    and none takes the name of a query column."""
    clash = [c for c in columns.show_columns if c in QUERY_COLUMNS]
    if clash:
        raise PoolSchemaError(f"--show-columns {', '.join(clash)}: a query already has a "
                              f"column of that name ({', '.join(QUERY_COLUMNS)})")
    missing = [c for c in columns.show_columns if c not in names]
    if missing:
        raise PoolSchemaError(
            f"{where}: no column {', '.join(map(repr, missing))} to show (--show-columns); "
            f"its columns: {', '.join(names)}")


class _CandidateSubset:
    """``--candidates N``: the N unlabelled posts with the smallest candidate hashes, a
    seeded uniform subset, new each step. The planner finds the N-th smallest hash from
    the id column it reads anyway; the scorers then keep the rows at or below it."""

    def __init__(self, score: ScoreConfig, step: int):
        self.n, self.seed, self.step = score.candidates, score.seed, step
        self.kept = np.zeros(0, np.uint64)

    def add(self, ids: np.ndarray, exclude: np.ndarray) -> None:
        hashes = candidate_hashes(ids[mask_excluded(ids, exclude)], self.seed, self.step)
        self.kept = np.concatenate([self.kept, hashes])
        if len(self.kept) > self.n:  # keep O(N) whatever the pool size
            self.kept = np.partition(self.kept, self.n - 1)[:self.n]

    def threshold(self) -> int | None:
        """The largest kept hash; None when the subset is the whole unlabelled pool."""
        if len(self.kept) < self.n:
            return None
        return int(self.kept.max())


__all__ = ["ScoringPlan", "check_shown", "plan_scoring"]
