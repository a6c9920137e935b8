"""The driver's side of scoring: merge ``BatchScorer`` outputs into one query per strategy.

With ``score.class_balance`` the query per strategy is class-balanced (``BalancedTopK``);
its ``score`` column then holds the key the query was ranked by (the sampling key when
``score.sampling`` is not ``top``), and ``rank`` the position in the query.

With ``carry``, the scorer also returns the pool columns (embeddings, label) of its
candidates; the merger keeps them for the current top-k only, so the loop gets the
query's rows without a second pass over the pool.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from alray.acquisition import check_sampling, rank_keys
from alray.config import ScoreConfig
from alray.pool import io
from alray.scoring.scorer import OUTPUT_COLUMNS, output_schema
from alray.scoring.topk import new_top

SLOT = "_slot"  # row of a candidate in the carried-columns stash


class QueryMerger:
    """Running exact top-k per strategy over scorer output tables (any order)."""

    def __init__(self, score: ScoreConfig, carry: bool = False):
        self.score = score
        self.tops = {name: self._new_top() for name in score.strategies}
        self.carry = carry
        self.stash: pa.Table | None = None

    def _new_top(self):
        return new_top(self.score.query_size, self.score.class_cap)

    def absorb(self, table: pa.Table) -> None:
        """Add one scorer output table (rows of several strategies)."""
        if table.num_rows == 0:
            return
        strategy = table.column("strategy").to_numpy(zero_copy_only=False)
        ids = table.column("id").to_numpy(zero_copy_only=False)
        extra = {"predicted_class": table.column("predicted_class").to_numpy(),
                 "predicted_prob": table.column("predicted_prob").to_numpy(),
                 "least_sure_head": table.column("least_sure_head").to_numpy(
                     zero_copy_only=False)}
        if self.carry:
            extra[SLOT] = self._stash(table)
        scores = table.column("score").to_numpy()
        for name, top in self.tops.items():
            rows = strategy == name
            if rows.any():
                top.update(ids[rows], scores[rows], {k: v[rows] for k, v in extra.items()})
        if self.carry and self.stash.num_rows > 4 * sum(len(t) for t in self.tops.values()) + 4096:
            self._compact()

    def _stash(self, table: pa.Table) -> np.ndarray:
        carried = table.drop_columns(list(OUTPUT_COLUMNS))
        start = 0 if self.stash is None else self.stash.num_rows
        # "permissive": a shown text column may be all null (type null) in one shard
        self.stash = carried if self.stash is None else pa.concat_tables(
            [self.stash, carried], promote_options="permissive")
        return np.arange(start, start + table.num_rows, dtype=np.int64)

    def _compact(self) -> None:
        """Keep only the stash rows some strategy's top-k still points at."""
        # every kept candidate, not only the query: a balanced top-k keeps more rows
        results = {name: dict(top.to_dict()["rows"] or {}) for name, top in self.tops.items()}
        used = np.unique(np.concatenate([r[SLOT] for r in results.values() if r]))
        self.stash = self.stash.take(pa.array(used)).combine_chunks()
        for name, rows in results.items():
            top = self._new_top()
            if not rows:
                self.tops[name] = top
                continue
            rows[SLOT] = np.searchsorted(used, rows[SLOT])
            top.update(rows.pop("id"), rows.pop("score"), rows)
            self.tops[name] = top

    def candidates(self, id_type: pa.DataType) -> pa.Table:
        """Every candidate some strategy still keeps, as one scorer output table (with
        the carried columns): what a resident actor sends to the driver's merger. The
        kept rows, not the query: merging them again is exact (a balanced top-k keeps
        more rows than its query, ``topk``)."""
        parts = []
        for name, top in self.tops.items():
            rows = top.to_dict()["rows"]
            if not rows:
                continue
            n = len(rows["id"])
            table = pa.table({
                "strategy": pa.array([name] * n, pa.string()),
                "id": pa.array(rows["id"], id_type),
                "score": pa.array(rows["score"], pa.float64()),
                "predicted_class": pa.array(rows["predicted_class"], pa.int64()),
                "predicted_prob": pa.array(rows["predicted_prob"], pa.float64()),
                "least_sure_head": pa.array(rows["least_sure_head"], pa.string()),
            }, schema=output_schema(id_type))
            if self.carry:
                carried = self.stash.take(pa.array(rows[SLOT], pa.int64()))
                for field, column in zip(carried.schema, carried.columns):
                    table = table.append_column(field, column)
            parts.append(table)
        return pa.concat_tables(parts) if parts else output_schema(id_type).empty_table()

    def queries(self, id_type: pa.DataType) -> dict[str, pa.Table]:
        """strategy -> (id, score, rank, predicted_class, predicted_prob, strategy,
        least_sure_head [, carried pool columns]), in query order."""
        return {name: self._query_table(name, top, id_type) for name, top in self.tops.items()}

    def _query_table(self, name: str, top, id_type: pa.DataType) -> pa.Table:
        rows = top.result()
        n = len(rows["id"])
        table = pa.table({
            "id": pa.array(rows["id"], id_type),
            "score": pa.array(rows["score"], pa.float64()),
            "rank": pa.array(rows["rank"], pa.int64()),
            "predicted_class": pa.array(rows.get("predicted_class", np.zeros(0, np.int64)),
                                        pa.int64()),
            "predicted_prob": pa.array(rows.get("predicted_prob", np.zeros(0)), pa.float64()),
            "strategy": pa.array([name] * n, pa.string()),
            "least_sure_head": pa.array(rows.get("least_sure_head", np.zeros(0, object)),
                                        pa.string()),
        })
        if self.carry and self.stash is not None:
            carried = self.stash.take(pa.array(rows[SLOT], pa.int64()))
            for field, column in zip(carried.schema, carried.columns):
                table = table.append_column(field, column)
        return table


def merge_scores(scores_dir, score: ScoreConfig, step: int = 0,
                 carry: bool = False) -> QueryMerger:
    """The exact top-k per strategy of a written ``--scores-out`` directory (``carry``:
    its files also hold pool columns, the shown ones, kept for the query).

    Rank sampling is done here: every score is on hand, so each post's global rank is.
    """
    check_sampling(score.strategies, score.sampling, streaming=False)
    merger = QueryMerger(score, carry)
    tables = (pa.Table.from_batches([batch]) for shard in io.pool_shards(scores_dir)
              for batch in io.iter_batches(shard))
    if score.sampling == "rank":
        tables = [_rank_keyed(list(tables), score, step)]
    for table in tables:
        merger.absorb(table)
    return merger


def _rank_keyed(tables: list[pa.Table], score: ScoreConfig, step: int) -> pa.Table:
    """Every strategy's scores replaced by its rank-sampling keys over the whole pool."""
    if not tables:
        return pa.table({})
    table = pa.concat_tables(tables)
    strategy = table.column("strategy").to_numpy(zero_copy_only=False)
    ids = table.column("id").to_numpy(zero_copy_only=False)
    keys = table.column("score").to_numpy().copy()
    for name in score.strategies:
        rows = strategy == name
        keys[rows] = rank_keys(keys[rows], ids[rows], score.sampling_beta, score.seed, step)
    return table.set_column(table.schema.get_field_index("score"), "score",
                            pa.array(keys, pa.float64()))
