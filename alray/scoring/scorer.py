"""``BatchScorer``: one scoring actor's work, Ray Data's batch-inference pattern.

The constructor loads the checkpoint once; each call turns one pyarrow batch of pool
rows into the per-batch top-k candidates of every requested strategy. Only those
candidates leave the actor (k rows per strategy, not one score per row); the driver
merges them with ``TopK`` (exact: the global top k is the top k of the per-batch tops).

No Ray import at module level: the same class runs in-process (``use_ray=False``).
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pyarrow as pa

from alray.acquisition import compute_scores, needs_of
from alray.acquisition.registry import STRATEGIES
from alray.config import PoolConfig, ScoreConfig
from alray.errors import LabelsError
from alray.pool.arrays import UNLABELLED, arrays_from_table
from alray.scoring.topk import mask_excluded, select_top

OUTPUT_COLUMNS = ("strategy", "id", "score", "predicted_class", "predicted_prob")


def output_schema(id_type: pa.DataType = pa.int64()) -> pa.Schema:
    """The schema of ``BatchScorer`` output (the id type follows the pool's)."""
    return pa.schema([("strategy", pa.string()), ("id", id_type), ("score", pa.float64()),
                      ("predicted_class", pa.int64()), ("predicted_prob", pa.float64())])


class BatchScorer:
    """Callable class for ``Dataset.map_batches`` (or direct in-process calls).

    checkpoint: checkpoint directory, or a ``model_state`` (or a Ray ObjectRef to one:
    then only the driver reads the checkpoint). score / pool: ``ScoreConfig.to_dict()`` /
    ``PoolConfig.to_dict()``. dims: modality -> embedding dim. exclude: sorted array of
    ids never to return (or a Ray ObjectRef to one). num_threads: torch threads (set
    it to the CPUs the actor was given). device: "cpu" or "cuda". counter: a
    ``RowCounter`` actor handle told the rows of every batch. keep_all: return every
    row's score (for ``--scores-out``) instead of the batch's top-k. carry: append the
    candidates' pool columns (embeddings, label) to the output.
    """

    def __init__(self, checkpoint: str | Mapping, score: Mapping, pool: Mapping,
                 dims: Mapping, exclude=None, num_threads: int | None = None, device: str = "cpu",
                 keep_all: bool = False, carry: bool = False, counter=None):
        import torch

        from alray.model import MCDropout, load_model

        if num_threads:
            torch.set_num_threads(int(num_threads))
        exclude = _resolved(exclude)
        self.exclude = (np.zeros(0, np.int64) if exclude is None
                        else np.asarray(exclude))
        self.keep_all = keep_all
        self.carry = carry
        self.counter = counter  # a RowCounter actor: the driver's progress on Ray
        self.score = ScoreConfig.from_dict(score)
        self.pool = PoolConfig.from_dict(pool)
        self.dims = dict(dims)
        self.device = torch.device(device)
        self.model, self.config = load_model(_resolved(checkpoint), map_location=self.device)
        self.model.eval()
        self.needs = needs_of(self.score.strategies)
        self.mc = (MCDropout(self.model, self.score.mc_samples, self.score.seed)
                   if "mc" in self.needs else None)

    def __call__(self, batch: pa.Table | pa.RecordBatch) -> pa.Table:
        import torch

        from alray.model import as_tensors

        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        if self.counter is not None:
            self.counter.add.remote(batch.num_rows)  # fire and forget
        id_type = batch.schema.field(self.pool.id_column).type
        data = arrays_from_table(batch, self.pool, self.dims)
        keep = mask_excluded(data.ids, self.exclude)
        if not keep.all():
            data = data.take(keep)
            if self.carry:
                batch = batch.filter(pa.array(keep))
        if len(data) == 0:
            empty = output_schema(id_type).empty_table()
            return self._append_carried(empty, batch, np.zeros(0, np.int64)) if self.carry else empty
        head = self.score.head
        with torch.inference_mode():
            feats, pres = as_tensors(data.features, data.present, self.device)
            out = self.model(feats, pres)
            probs = torch.softmax(out.logits[head].float(), dim=1).cpu().numpy()
            inputs: dict[str, object] = {"probs": probs.astype(np.float64)}
            if self.mc is not None:
                stats = self.mc.statistics(feats, pres, head)
                inputs["mc_mean_probs"] = stats["mean_probs"].cpu().numpy().astype(np.float64)
                inputs["mc_mean_entropy"] = (stats["mean_entropy"].cpu().numpy()
                                             .astype(np.float64))
            if "loss_pred" in self.needs:
                inputs["loss_pred"] = (self.model.predict_loss(feats, pres).cpu().numpy()
                                       .astype(np.float64))
        if "labels" in self.needs:
            missing = int(np.count_nonzero(data.labels == UNLABELLED))
            if missing:
                oracles = [s for s in self.score.strategies if STRATEGIES[s].oracle]
                raise LabelsError(
                    f"oracle strategies {', '.join(oracles)} need a label on every "
                    f"candidate; {missing} of {len(data)} rows in a batch are unlabelled "
                    f"(first id {data.ids[data.labels == UNLABELLED][0]!r})")
            inputs["labels"] = data.labels
        inputs["ids"] = data.ids
        inputs["seed"] = self.score.seed
        predicted = probs.argmax(axis=1)
        extra = {"predicted_class": predicted.astype(np.int64),
                 "predicted_prob": probs[np.arange(len(probs)), predicted].astype(np.float64),
                 "row": np.arange(len(data))}
        parts = []
        for name in self.score.strategies:
            scores = compute_scores(name, inputs)
            k = len(data) if self.keep_all else self.score.query_size
            top = select_top(data.ids, scores, k, extra)
            table = pa.table({
                "strategy": pa.array([name] * len(top["id"]), pa.string()),
                "id": pa.array(top["id"], id_type),
                "score": pa.array(top["score"], pa.float64()),
                "predicted_class": pa.array(top["predicted_class"], pa.int64()),
                "predicted_prob": pa.array(top["predicted_prob"], pa.float64()),
            }, schema=output_schema(id_type))
            if self.carry:
                table = self._append_carried(table, batch, top["row"])
            parts.append(table)
        return pa.concat_tables(parts)

    def _append_carried(self, table: pa.Table, batch: pa.Table, rows: np.ndarray) -> pa.Table:
        names = [*self.pool.embedding_columns.values(), self.pool.label_column]
        carried = batch.select([c for c in names if c in batch.column_names])
        carried = carried.take(pa.array(rows, pa.int64()))
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


def _resolved(value):
    """``value``, or what it refers to when the driver put it in Ray's object store (an
    ObjectRef in constructor arguments is not resolved by Ray Data)."""
    if type(value).__name__ != "ObjectRef":
        return value
    import ray
    return ray.get(value)
