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

from alray.acquisition import (
    candidate_hashes, check_sampling, compute_scores, least_sure_head, needs_of,
    sampling_keys)
from alray.acquisition.registry import STRATEGIES
from alray.config import PoolConfig, ScoreConfig
from alray.errors import ConfigError, LabelsError
from alray.pool.arrays import UNLABELLED, arrays_from_table
from alray.scoring.topk import mask_excluded, select_balanced, select_top

OUTPUT_COLUMNS = ("strategy", "id", "score", "predicted_class", "predicted_prob",
                  "least_sure_head")


def output_schema(id_type: pa.DataType = pa.int64()) -> pa.Schema:
    """The schema of ``BatchScorer`` output (the id type follows the pool's)."""
    return pa.schema([("strategy", pa.string()), ("id", id_type), ("score", pa.float64()),
                      ("predicted_class", pa.int64()), ("predicted_prob", pa.float64()),
                      ("least_sure_head", pa.string())])


def _predictions(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Each row's predicted class and its probability, from ``(n, c)`` probabilities."""
    predicted = probs.argmax(axis=1)
    return {"predicted_class": predicted.astype(np.int64),
            "predicted_prob": probs[np.arange(len(probs)), predicted].astype(np.float64)}


class BatchScorer:
    """Callable class for ``Dataset.map_batches`` (or direct in-process calls).

    checkpoint: checkpoint directory, or a ``model_state`` (or a Ray ObjectRef to one:
    then only the driver reads the checkpoint). score / pool: ``ScoreConfig.to_dict()`` /
    ``PoolConfig.to_dict()``. dims: modality -> embedding dim. exclude: sorted array of
    ids never to return (or a Ray ObjectRef to one). num_threads: torch threads (set
    it to the CPUs the actor was given). device: "cpu" or "cuda". counter: a
    ``RowCounter`` actor handle told the rows of every batch. keep_all: return every
    row's score (for ``--scores-out``) instead of the batch's top-k. carry: append the
    candidates' pool columns (embeddings, label) to the output. candidate_max: score
    only the rows whose ``candidate_hashes`` are at most this (``--candidates``).
    """

    def __init__(self, checkpoint: str | Mapping, score: Mapping, pool: Mapping,
                 dims: Mapping, exclude=None, num_threads: int | None = None, device: str = "cpu",
                 keep_all: bool = False, carry: bool = False, counter=None,
                 candidate_max: int | None = None):
        import torch

        from alray.model import MCDropout, load_model

        if num_threads:
            torch.set_num_threads(int(num_threads))
        exclude = _resolved(exclude)
        self.candidate_max = None if candidate_max is None else np.uint64(candidate_max)
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
        # with every score kept, rank sampling happens on the driver (merge_scores)
        check_sampling(self.score.strategies, self.score.sampling, streaming=not keep_all)
        self.modality_heads = tuple(h for h in self.model.head_names if h in self.dims)
        if "heads" in self.needs and not self.modality_heads:
            raise ConfigError("strategy head_disagreement needs a model with one head per "
                              "modality (heads='multi'); this one has only "
                              f"{', '.join(self.model.head_names)}")
        self.mc = (MCDropout(self.model, self.score.mc_samples, self.score.seed)
                   if "mc" in self.needs else None)
        # the query needs a forward pass on its rows only (not with --scores-out, which
        # keeps every row, nor with class balancing, which needs every row's class)
        self.model_free = (self.needs <= {"ids"} and not self.keep_all
                           and not self.score.class_cap)

    def __call__(self, batch: pa.Table | pa.RecordBatch) -> pa.Table:
        if isinstance(batch, pa.RecordBatch):
            batch = pa.Table.from_batches([batch])
        if self.counter is not None:
            self.counter.add.remote(batch.num_rows)  # fire and forget
        id_type = batch.schema.field(self.pool.id_column).type
        data = arrays_from_table(batch, self.pool, self.dims)
        keep = mask_excluded(data.ids, self.exclude)
        if self.candidate_max is not None:  # --candidates: this step's random subset
            keep &= candidate_hashes(data.ids, self.score.seed,
                                     self.score.sampling_step) <= self.candidate_max
        if not keep.all():
            data = data.take(keep)
            if self.carry:
                batch = batch.filter(pa.array(keep))
        if len(data) == 0:
            empty = output_schema(id_type).empty_table()
            return self._append_carried(empty, batch, np.zeros(0, np.int64)) if self.carry else empty
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
                table = self._append_carried(table, batch, top["row"])
            parts.append(table)
        return pa.concat_tables(parts)

    def _tops(self, data) -> list[tuple[str, dict]]:
        """(strategy, the batch's candidates) after one pass over every row."""
        probs, inputs = self.score_inputs(data)
        extra = {**_predictions(probs), "row": np.arange(len(data))}
        tops = []
        for name in self.score.strategies:
            top = self._candidates(data.ids, compute_scores(name, inputs), extra)
            top["least_sure_head"] = self._least_sure(top["row"])
            tops.append((name, top))
        return tops

    def _model_free_tops(self, data) -> list[tuple[str, dict]]:
        """Like ``_tops`` for strategies scored from the ids alone (random): rank every
        row first, then run the model on the kept rows only, for their predicted class
        and least-sure head. A row's outputs do not depend on the other rows (eval mode),
        so the candidates equal ``_tops``'s, at the cost of ~k forward rows a batch."""
        inputs = {"ids": data.ids, "seed": self.score.seed}
        rows = {"row": np.arange(len(data))}
        tops = [(name, self._candidates(data.ids, compute_scores(name, inputs), rows))
                for name in self.score.strategies]
        kept = np.unique(np.concatenate([top["row"] for _, top in tops]))
        predicted = _predictions(self.score_inputs(data.take(kept))[0])
        for _, top in tops:
            at = np.searchsorted(kept, top["row"])
            top.update({name: values[at] for name, values in predicted.items()})
            top["least_sure_head"] = self._least_sure(at)
        return tops

    def score_inputs(self, data) -> tuple[np.ndarray, dict]:
        """One forward pass (plus MC dropout when needed) over ``data`` (PostArrays):
        the scored head's probabilities and every input of ``compute_scores`` for the
        requested strategies (the online service computes its scores with it too)."""
        import torch

        from alray.model import as_tensors

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
            if "heads" in self.needs:
                inputs.update(self._head_inputs(out.logits, data.present))
        # least_sure_head is wanted for the query's rows only: kept for _least_sure
        self._modality_outputs = ({h: out.logits[h] for h in self.modality_heads},
                                  data.present)
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
        return probs, inputs

    def _candidates(self, ids: np.ndarray, scores: np.ndarray, extra: dict) -> dict:
        """The rows of this batch that the driver's merge may need, keyed for ranking:
        the sampling key replaces the score (rank sampling keeps the raw score: its key
        needs the whole pool, see ``merge_scores``)."""
        cfg = self.score
        if self.keep_all:
            if cfg.sampling != "rank":
                scores = sampling_keys(scores, ids, cfg.sampling, cfg.sampling_beta,
                                       cfg.seed, cfg.sampling_step)
            return select_top(ids, scores, len(ids), extra)
        keys = sampling_keys(scores, ids, cfg.sampling, cfg.sampling_beta, cfg.seed,
                             cfg.sampling_step)
        if cfg.class_cap:
            return select_balanced(ids, keys, cfg.query_size, cfg.class_cap, extra)
        return select_top(ids, keys, cfg.query_size, extra)

    def _head_inputs(self, logits: Mapping, present: Mapping) -> dict[str, np.ndarray]:
        """Every head's probabilities from the forward pass already made, stacked
        ``(n, heads, c)`` in ``head_names`` order, and where each head means something."""
        import torch

        if not self.modality_heads:
            return {}
        names = self.model.head_names
        probs = torch.stack([torch.softmax(logits[h].float(), dim=1) for h in names], dim=1)
        n = probs.shape[0]
        present_cols = [np.ones(n, bool) if h not in self.dims else np.asarray(present[h], bool)
                        for h in names]
        return {"head_probs": probs.cpu().numpy().astype(np.float64),
                "head_present": np.stack(present_cols, axis=1)}

    def _least_sure(self, rows: np.ndarray) -> np.ndarray:
        """``(len(rows),)`` the modality whose head is least sure of each of this batch's
        ``rows`` (None with one modality), from the forward pass ``score_inputs`` made."""
        import torch

        if not self.modality_heads:
            return np.full(len(rows), None, dtype=object)
        logits, present = self._modality_outputs
        index = torch.as_tensor(np.asarray(rows, np.int64))
        probs = torch.stack([torch.softmax(logits[h][index].float(), dim=1)
                             for h in self.modality_heads], dim=1)
        shown = np.stack([np.asarray(present[h], bool)[rows] for h in self.modality_heads],
                         axis=1)
        return least_sure_head(probs.cpu().numpy().astype(np.float64), shown,
                               self.modality_heads)

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
