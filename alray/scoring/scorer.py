"""``BatchScorer``: one scoring actor's work, Ray Data's batch-inference pattern.

The constructor builds the model once from the plan's ``model_state`` (the driver read
the checkpoint); each call turns one pyarrow batch of pool rows into the per-batch top-k
candidates of every requested strategy. Only those
candidates leave the actor (k rows per strategy, not one score per row); the driver
merges them with ``TopK`` (exact: the global top k is the top k of the per-batch tops).

No Ray import at module level: the same class runs in-process (``ComputeConfig(local=True)``).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pyarrow as pa

from alray.acquisition import candidate_hashes, check_sampling, compute_scores, sampling_keys
from alray.config import PoolConfig, ScoreConfig
from alray.pool.arrays import PostArrays, arrays_from_table, pool_table
from alray.pool.normalize import id_type_of
from alray.scoring.outputs import BatchModel, predictions
from alray.scoring.topk import mask_excluded, select_balanced, select_top

OUTPUT_COLUMNS = ("strategy", "id", "score", "predicted_class", "predicted_prob",
                  "least_sure_head")


def output_schema(id_type: pa.DataType = pa.int64()) -> pa.Schema:
    """The schema of ``BatchScorer`` output (the id type follows the pool's)."""
    return pa.schema([("strategy", pa.string()), ("id", id_type), ("score", pa.float64()),
                      ("predicted_class", pa.int64()), ("predicted_prob", pa.float64()),
                      ("least_sure_head", pa.string())])


class BatchScorer:
    """Callable class for ``Dataset.map_batches`` (or direct in-process calls).

    Arguments are ``ScoringPlan.scorer_args()``: model (a ``model_state``, or a Ray
    ObjectRef to one), score and columns (``to_dict`` forms), dims, step, exclude (a
    sorted id array or a reference to one), keep_all, carry, candidate_max,
    candidate_ids (sorted ids, or a reference to them: only these rows are scored); plus
    num_threads (torch threads: the CPUs the actor was given), device ("cpu"/"cuda")
    and counter (a ``RowCounter`` actor told the rows of every batch).
    """

    def __init__(self, model, score: Mapping, columns: Mapping, dims: Mapping,
                 step: int = 0, exclude=None, keep_all: bool = False, carry: bool = False,
                 candidate_max: int | None = None, num_threads: int | None = None,
                 device: str = "cpu", counter=None, candidate_ids=None):
        import torch

        if num_threads:
            torch.set_num_threads(int(num_threads))
        self.score = ScoreConfig.from_dict(score)
        self.pool = PoolConfig.from_dict(columns)
        self.dims = dict(dims)
        self.step = int(step)
        exclude = resolved(exclude)
        self.exclude = np.zeros(0, np.int64) if exclude is None else np.asarray(exclude)
        self.keep_all, self.carry, self.counter = keep_all, carry, counter
        self.candidate_max = None if candidate_max is None else np.uint64(candidate_max)
        self.candidate_ids = resolved(candidate_ids)
        # with every score kept, rank sampling happens on the driver (merge_scores)
        check_sampling(self.score.strategies, self.score.sampling, streaming=not keep_all)
        self.model = BatchModel.from_state(resolved(model), self.score, self.dims, device,
                                           step=self.step)
        # the query needs a forward pass on its rows only (not with --scores-out, which
        # keeps every row, nor with class balancing, which needs every row's class)
        self.model_free = (self.model.needs <= {"ids"} and not self.keep_all
                           and not self.score.class_cap)

    def __call__(self, batch: pa.Table | pa.RecordBatch) -> pa.Table:
        """Ray Data's side: one pyarrow batch of pool rows -> its candidates."""
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        if self.counter is not None:
            self.counter.add.remote(batch.num_rows)  # fire and forget
        id_type = id_type_of(batch.schema.field(self.pool.id_column).type)  # one per pool
        out = self.score_arrays(arrays_from_table(batch, self.pool, self.dims), id_type)
        return with_shown(out, batch, self.pool) if self.pool.show_columns else out

    def score_arrays(self, data: PostArrays, id_type: pa.DataType) -> pa.Table:
        """The core, shared by the Ray Data adapter and the resident pool's actors
        (``alray.scoring.resident``): rows already decoded -> exclusions, this step's
        candidate subset, per-strategy top-k -> an ``output_schema`` table (plus the
        carried pool columns of its rows with ``carry``)."""
        keep = mask_excluded(data.ids, self.exclude)
        if self.candidate_max is not None:  # --candidates: this step's random subset
            keep &= candidate_hashes(data.ids, self.score.seed, self.step) <= self.candidate_max
        if self.candidate_ids is not None:  # knn:K: the labelled posts' neighbours only
            keep &= ~mask_excluded(data.ids, self.candidate_ids)
        if not keep.all():
            data = data.take(keep)
        if len(data) == 0:
            empty = output_schema(id_type).empty_table()
            return self._append_carried(empty, data, np.zeros(0, np.int64)) if self.carry else empty
        tops = self._model_free_tops(data) if self.model_free else self._tops(data)
        parts = []
        for name, top in tops:
            table = pa.table({
                "strategy": pa.array([name] * len(top["id"]), pa.string()),
                "id": pa.array(top["id"], id_type),
                "score": pa.array(top["score"], pa.float64()),
                "predicted_class": pa.array(top["predicted_class"], pa.int64()),
                "predicted_prob": pa.array(top["predicted_prob"], pa.float64()),
                "least_sure_head": pa.array(top["least_sure_head"], pa.string()),
            }, schema=output_schema(id_type))
            if self.carry:
                table = self._append_carried(table, data, top["row"])
            parts.append(table)
        return pa.concat_tables(parts)

    def _tops(self, data) -> list[tuple[str, dict]]:
        """(strategy, the batch's candidates) after one pass over every row."""
        outputs = self.model.outputs(data)
        extra = {**predictions(outputs.probs), "row": np.arange(len(data))}
        tops = []
        for name in self.score.strategies:
            top = self._candidates(data.ids, compute_scores(name, outputs.inputs), extra)
            top["least_sure_head"] = self.model.least_sure(outputs, top["row"])
            tops.append((name, top))
        return tops

    def _model_free_tops(self, data) -> list[tuple[str, dict]]:
        """Like ``_tops`` for strategies scored from the ids alone (random): rank every
        row first, then run the model on the kept rows only, for their predicted class
        and least-sure head. A row's outputs do not depend on the other rows (eval mode;
        torch's kernels may round the last float32 bit differently), so the candidates
        equal ``_tops``'s, at the cost of ~k forward rows a batch."""
        inputs = {"ids": data.ids, "seed": self.score.seed}
        rows = {"row": np.arange(len(data))}
        tops = [(name, self._candidates(data.ids, compute_scores(name, inputs), rows))
                for name in self.score.strategies]
        kept = np.unique(np.concatenate([top["row"] for _, top in tops]))
        outputs = self.model.outputs(data.take(kept))
        predicted = predictions(outputs.probs)
        for _, top in tops:
            at = np.searchsorted(kept, top["row"])
            top.update({name: values[at] for name, values in predicted.items()})
            top["least_sure_head"] = self.model.least_sure(outputs, at)
        return tops

    def _candidates(self, ids: np.ndarray, scores: np.ndarray, extra: dict) -> dict:
        """The rows of this batch that the driver's merge may need, keyed for ranking:
        the sampling key replaces the score (rank sampling keeps the raw score: its key
        needs the whole pool, see ``merge_scores``)."""
        cfg = self.score
        if self.keep_all:
            if cfg.sampling != "rank":
                scores = sampling_keys(scores, ids, cfg.sampling, cfg.sampling_beta,
                                       cfg.seed, self.step)
            return select_top(ids, scores, len(ids), extra)
        keys = sampling_keys(scores, ids, cfg.sampling, cfg.sampling_beta, cfg.seed,
                             self.step)
        if cfg.class_cap:
            return select_balanced(ids, keys, cfg.query_size, cfg.class_cap, extra)
        return select_top(ids, keys, cfg.query_size, extra)

    def _append_carried(self, table: pa.Table, data, rows: np.ndarray) -> pa.Table:
        # one schema whatever the shard (list, large_list, packed; int32 or float labels)
        carried = pool_table(_on_host(data.take(rows)), self.pool)
        carried = carried.drop_columns([self.pool.id_column])
        for field, column in zip(carried.schema, carried.columns):
            table = table.append_column(field, column)
        return table


class RowCounter:
    """Rows scored so far, counted by the actors; the driver polls it for its progress
    bar (the actors' outputs hold only top-k candidates, so they cannot be counted)."""

    def __init__(self):
        self.rows = 0

    def add(self, n: int) -> None:
        self.rows += int(n)

    def total(self) -> int:
        return self.rows


def with_shown(out: pa.Table, batch: pa.Table, pool: PoolConfig) -> pa.Table:
    """``out`` (rows of ``batch``, keyed by id) with the pool's ``show_columns`` of its
    rows appended, looked up by id (unique in a pool); one type per column whatever
    the shard (dictionaries decoded, large strings and binaries made plain)."""
    import pyarrow.compute as pc

    ids = batch.column(pool.id_column).cast(out.schema.field("id").type)
    at = pc.index_in(out.column("id"), value_set=ids)
    for name in pool.show_columns:
        column = batch.column(name).take(at)
        if pa.types.is_dictionary(column.type):
            column = column.cast(column.type.value_type)
        plain = {pa.large_string(): pa.string(), pa.large_binary(): pa.binary()}
        if column.type in plain:
            column = column.cast(plain[column.type])
        out = out.append_column(pa.field(name, column.type), column)
    return out


def _on_host(data: PostArrays) -> PostArrays:
    """``data`` with float32 numpy features (a resident pool may hold float16 or torch
    tensors in GPU memory); the query's few carried rows only."""
    features = {m: (f.float().cpu().numpy() if hasattr(f, "cpu") else
                    np.asarray(f, np.float32)) for m, f in data.features.items()}
    return PostArrays(data.ids, features, data.present, data.labels)


def resolved(value):
    """``value``, or what it refers to when the driver put it in Ray's object store (an
    ObjectRef in constructor arguments is not resolved by Ray Data)."""
    if type(value).__name__ != "ObjectRef":
        return value
    import ray
    return ray.get(value)
