"""``validate_pool``: stream a pool and report every breach of the pool contract."""
from __future__ import annotations

from collections import Counter
from typing import Mapping

import numpy as np
import pyarrow as pa

from alray.config import PoolConfig
from alray.pool import io
from alray.errors import PoolSchemaError
from alray.pool.ids import IdRegistry
from alray.pool.layout import is_packed, layout_name, packed_spec, packed_values
from alray.pool.schema import (PoolSummary, Problem, ValidationReport, is_embedding_type,
                               is_id_type, is_label_type)


class _Collector:
    """Keeps the first ``max_examples`` problems of each kind and counts all of them."""

    def __init__(self, max_examples: int):
        self.max_examples = max_examples
        self.problems: list[Problem] = []
        self.counts: Counter = Counter()

    def add(self, problem: Problem) -> None:
        self.counts[problem.kind] += 1
        if self.counts[problem.kind] <= self.max_examples:
            self.problems.append(problem)

    def rows(self, kind, file, rows, ids, column, message_of) -> None:
        """One problem per flagged row; ``rows`` are batch positions."""
        if len(rows) == 0:
            return
        room = self._room(kind)
        self.counts[kind] += len(rows)
        for r in rows[:room]:
            self.problems.append(Problem(kind, file, message_of(r), row=int(r + ids.first_row),
                                         id=ids.values[r], column=column))

    def _room(self, kind) -> int:
        return max(0, self.max_examples - self.counts[kind])


class _BatchIds:
    def __init__(self, values: np.ndarray, first_row: int):
        self.values, self.first_row = values, first_row


def validate_pool(uri: str, pool: PoolConfig | None = None, n_classes: int | None = None,
                  dims: Mapping[str, int] | None = None, max_examples: int = 20,
                  progress=None) -> ValidationReport:
    """Validate the pool at ``uri`` against the contract; never raises for bad data.

    ``dims`` (modality -> dimension) are checked when given, else inferred from the
    first shard that shows them. ``n_classes`` bounds the labels when given.
    ``progress(shard_index, n_shards, rows_so_far)`` is called after each shard.
    """
    pool = pool or PoolConfig()
    out = _Collector(max_examples)
    summary = PoolSummary(dims=dict(dims or {}), present={m: 0 for m in pool.modalities})
    loc = io.locate(uri)
    try:
        shards, others = io.list_shards(loc)
    except Exception as exc:  # noqa: BLE001 - any listing failure is the user's path
        out.add(Problem("unreadable file", loc.uri, str(exc).split(": ", 1)[-1]))
        return ValidationReport(loc.uri, summary, out.problems, out.counts)
    for other in others:
        out.add(Problem("not parquet", other.uri, "not a Parquet file among the pool's shards"))
    registry = IdRegistry()
    for index, shard in enumerate(shards):
        _validate_shard(index, shard, pool, n_classes, summary, registry, out)
        summary.shards += 1
        if progress:
            progress(index + 1, len(shards), summary.rows)
    _report_duplicates(registry, shards, pool, out)
    if summary.rows == 0 and not out.counts.get("unreadable file"):
        out.add(Problem("empty pool", loc.uri, "the pool has no rows"))
    return ValidationReport(loc.uri, summary, out.problems, out.counts)


def _validate_shard(index, shard, pool, n_classes, summary, registry, out) -> None:
    try:
        pf = io.open_parquet(shard)
    except Exception as exc:  # noqa: BLE001
        out.add(Problem("unreadable file", shard.uri, str(exc).split(": ", 1)[-1]))
        return
    schema = pf.schema_arrow
    columns = _check_columns(shard.uri, schema, pool, out)
    if columns is None:
        return
    for modality, column in pool.embedding_columns.items():
        summary.note_layout(modality, layout_name(schema.field(column)))
    summary.bytes += shard.fs.get_file_info(shard.path).size or 0
    first_row = 0
    try:
        for batch in _batches(pf, columns):
            ids = _check_ids(shard.uri, batch, pool, out, first_row)
            summary.id_type = summary.id_type or str(batch.schema.field(pool.id_column).type)
            registry.add(index, first_row, ids.values)
            _check_embeddings(shard.uri, batch, schema, pool, summary, out, ids)
            _check_labels(shard.uri, batch, pool, n_classes, summary, out, ids)
            summary.rows += batch.num_rows
            first_row += batch.num_rows
    except (pa.ArrowException, OSError) as exc:
        out.add(Problem("unreadable file", shard.uri, f"corrupt Parquet data: {exc}"))


def _batches(pf, columns, batch_size: int = 32768):
    """A row group at a time (``io.iter_batches``: pyarrow's ``iter_batches`` over a whole
    file keeps every batch's buffers alive until the file's end)."""
    for group in range(pf.metadata.num_row_groups):
        yield from pf.iter_batches(batch_size=batch_size, columns=columns, row_groups=[group])


def _check_columns(file, schema: pa.Schema, pool: PoolConfig, out) -> list[str] | None:
    """The columns to read from this shard, or None when nothing can be checked."""
    names = schema.names
    wanted = [pool.id_column, *pool.embedding_columns.values()]
    ok = True
    for column in wanted:
        if column not in names:
            out.add(Problem("missing column", file, f"missing (columns are {names})",
                            column=column))
            ok = False
    checks = [(pool.id_column, is_id_type, "an integer or text type"),
              # type null: pandas' column of None, the modality missing in every row
              *[(c, lambda t: is_embedding_type(t) or pa.types.is_null(t),
                 "a list of float32 or float64, or packed vectors "
                 "(fixed_size_binary, see `alray pool pack`)")
                for c in pool.embedding_columns.values()],
              (pool.label_column, is_label_type, "an integer class")]
    for column, accepts, expected in checks:
        if column in names and not accepts(schema.field(column).type):
            out.add(Problem("wrong type" if column != pool.label_column else "non-integer label",
                            file, f"type {schema.field(column).type}, expected {expected}",
                            column=column))
            ok = False
    for column in pool.embedding_columns.values():
        if column in names and is_packed(schema.field(column).type):
            try:
                packed_spec(schema.field(column))
            except PoolSchemaError as exc:
                out.add(Problem("wrong type", file, str(exc).split(": ", 1)[-1],
                                column=column))
                ok = False
    if not ok:
        return None
    return wanted + ([pool.label_column] if pool.label_column in names else [])


def _check_ids(file, batch, pool, out, first_row) -> _BatchIds:
    column = batch.column(pool.id_column)
    values = column.to_numpy(zero_copy_only=False)
    ids = _BatchIds(values, first_row)
    if column.null_count:
        rows = np.flatnonzero(~np.asarray(column.is_valid()))
        out.rows("null id", file, rows, ids, pool.id_column, lambda r: "null id")
    return ids


def _check_embeddings(file, batch, schema, pool, summary, out, ids) -> None:
    any_present = np.zeros(batch.num_rows, dtype=bool)
    for modality, column in pool.embedding_columns.items():
        array = batch.column(column)
        present = np.ones(len(array), bool) if array.null_count == 0 else \
            np.asarray(array.is_valid())
        any_present |= present
        summary.present[modality] += int(present.sum())
        if pa.types.is_null(array.type):  # pandas' column of None: missing in every row
            continue
        lengths = _lengths(array, schema.field(column))
        if modality not in summary.dims and present.any():
            summary.dims[modality] = int(lengths[np.argmax(present)])
        dim = summary.dims.get(modality)
        if dim is not None:
            wrong = np.flatnonzero(present & (lengths != dim))
            out.rows("wrong dimension", file, wrong, ids, column,
                     lambda r: f"{lengths[r]} values, expected {dim}")
        bad_rows = _non_finite_rows(array, lengths)
        out.rows("non-finite value", file, bad_rows, ids, column,
                 lambda r: "NaN or infinite value in the embedding")
    none = np.flatnonzero(~any_present)
    out.rows("no embedding", file, none, ids, ",".join(pool.embedding_columns.values()),
             lambda r: "every embedding is null (a post needs at least one modality)")


def _lengths(array: pa.Array, field: pa.Field) -> np.ndarray:
    if is_packed(array.type):  # the metadata was checked with the shard's columns
        return np.full(len(array), packed_spec(field)[1], dtype=np.int64)
    if pa.types.is_fixed_size_list(array.type):
        return np.full(len(array), array.type.list_size, dtype=np.int64)
    return np.diff(array.offsets.to_numpy()).astype(np.int64)


def _non_finite_rows(array: pa.Array, lengths: np.ndarray) -> np.ndarray:
    """Batch positions of rows holding a NaN, an infinity or a null inside the vector."""
    if is_packed(array.type):
        bad = ~np.isfinite(packed_values(array, int(lengths[0]))).all(axis=1) \
            if len(array) else np.zeros(0, bool)
        return np.flatnonzero(bad & np.asarray(array.is_valid()))
    if pa.types.is_fixed_size_list(array.type):
        dim = array.type.list_size
        start = array.offset * dim
        values = array.values.slice(start, len(array) * dim)
        offsets = np.arange(len(array) + 1, dtype=np.int64) * dim
    else:
        offsets = array.offsets.to_numpy().astype(np.int64)
        values = array.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
        offsets = offsets - offsets[0]
    flat = values.to_numpy(zero_copy_only=False)
    bad = ~np.isfinite(flat)  # nulls inside a vector arrive as NaN
    if not bad.any():
        return np.empty(0, dtype=np.int64)
    rows = np.searchsorted(offsets, np.flatnonzero(bad), side="right") - 1
    rows = np.unique(rows)
    if array.null_count:  # values under a null row are not part of the pool
        rows = rows[np.asarray(array.is_valid())[rows]]
    return rows


def _check_labels(file, batch, pool, n_classes, summary, out, ids) -> None:
    if pool.label_column not in batch.schema.names:
        return
    column = batch.column(pool.label_column)
    valid = np.ones(len(column), bool) if column.null_count == 0 else \
        np.asarray(column.is_valid())
    values = column.to_numpy(zero_copy_only=False)
    if values.dtype.kind == "f":
        valid &= ~np.isnan(values)  # pandas writes missing integer labels as NaN
        whole = np.zeros(len(values), bool)
        whole[valid] = np.isfinite(values[valid]) & (values[valid] == np.round(values[valid]))
        frac = np.flatnonzero(valid & ~whole)
        out.rows("non-integer label", file, frac, ids, pool.label_column,
                 lambda r: f"label {values[r]} is not an integer class")
        valid &= whole
    labels = np.where(valid, values, 0).astype(np.int64)
    upper = n_classes if n_classes is not None else np.iinfo(np.int64).max
    wrong = np.flatnonzero(valid & ((labels < 0) | (labels >= upper)))
    bound = f"[0, {n_classes})" if n_classes is not None else "[0, inf)"
    out.rows("label out of range", file, wrong, ids, pool.label_column,
             lambda r: f"label {labels[r]} outside {bound}")
    good = valid & (labels >= 0) & (labels < upper)
    summary.labelled += int(valid.sum())
    summary.classes.update(dict(zip(*np.unique(labels[good], return_counts=True))))


def _report_duplicates(registry, shards, pool, out) -> None:
    def read_ids(shard_index):
        return io.read_table(shards[shard_index].uri, columns=[pool.id_column]) \
            .column(pool.id_column).to_numpy(zero_copy_only=False)

    for value, where in registry.duplicates(read_ids):
        first = f"{shards[where[0][0]].uri} row {where[0][1]}"
        for shard, row in where[1:]:
            out.add(Problem("duplicate id", shards[shard].uri,
                            f"duplicate id, first seen at {first}", row=row, id=value,
                            column=pool.id_column))
