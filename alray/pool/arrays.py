"""Pool rows as dense arrays: the bridge from Arrow batches to the model.

A ``PostArrays`` holds, for n posts, the ids, one ``(n, dim)`` float32 matrix per
modality (zeros where the modality is missing), one ``(n,)`` bool "present" mask per
modality, and the labels (``-1`` = not labelled). Conversion from Arrow reads the list
column's child buffer without a per-row Python loop.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pyarrow as pa

from alray.config import PoolConfig
from alray.errors import PoolSchemaError
from alray.pool import UNLABELLED
from alray.pool.layout import packed_values
from alray.pool.normalize import normalize_ids, normalize_labels



@dataclass
class PostArrays:
    ids: np.ndarray                      # (n,) int64 or object (str)
    features: dict[str, np.ndarray]      # modality -> (n, dim) float32, zeros where missing
    present: dict[str, np.ndarray]       # modality -> (n,) bool
    labels: np.ndarray                   # (n,) int64, UNLABELLED where null

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> "PostArrays":
        """Rows at ``index`` (integer positions or a boolean mask)."""
        return PostArrays(
            ids=self.ids[index],
            features={m: f[index] for m, f in self.features.items()},
            present={m: p[index] for m, p in self.present.items()},
            labels=self.labels[index])

    @staticmethod
    def concat(parts: list["PostArrays"]) -> "PostArrays":
        if not parts:
            raise ValueError("concat needs at least one PostArrays")
        mods = list(parts[0].features)
        return PostArrays(
            ids=np.concatenate([p.ids for p in parts]),
            features={m: np.concatenate([p.features[m] for p in parts]) for m in mods},
            present={m: np.concatenate([p.present[m] for p in parts]) for m in mods},
            labels=np.concatenate([p.labels for p in parts]))


def embedding_matrix(column: pa.Array | pa.ChunkedArray, dim: int, name: str = "embedding"
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(n, dim)`` float32 matrix and ``(n,)`` present mask of an embedding column.

    Null rows become zeros. Raises PoolSchemaError when a non-null row's length is not
    ``dim``. Handles list, large_list and fixed_size_list of float32/float64, packed
    ``fixed_size_binary`` vectors (alray/pool/layout.py; a zero-copy read-only view when
    float32 without nulls), and sliced arrays (Ray Data batches are slices).
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    n = len(column)
    present = np.ones(n, dtype=bool) if column.null_count == 0 else \
        np.asarray(column.is_valid().to_numpy(zero_copy_only=False), dtype=bool)
    if pa.types.is_fixed_size_binary(column.type):  # packed: a view, float16 widened
        out = packed_values(column, dim, name).astype(np.float32, copy=False)
    elif pa.types.is_fixed_size_list(column.type):
        if column.type.list_size != dim:
            raise PoolSchemaError(
                f"column {name}: fixed-size list of {column.type.list_size}, expected {dim}")
        values = column.values  # child covering the slice's rows, offset applied
        start = column.offset * dim
        flat = values.slice(start, n * dim) if len(values) != n * dim else values
        out = _float32(flat).reshape(n, dim)
    else:
        out = _variable_lists(column, dim, present, name)
    if not present.all():
        out = out.copy() if not out.flags.writeable else out
        out[~present] = 0.0
    return out, present


def _variable_lists(column: pa.Array, dim: int, present: np.ndarray, name: str) -> np.ndarray:
    n = len(column)
    offsets = column.offsets.to_numpy()  # n + 1 offsets into the full child array
    lengths = np.diff(offsets)
    bad = present & (lengths != dim)
    if bad.any():
        row = int(np.argmax(bad))
        raise PoolSchemaError(
            f"column {name}: row {row} of the batch has {int(lengths[row])} values, "
            f"expected {dim}")
    # convert only this slice's values, not the whole block's child array
    first, last = int(offsets[0]), int(offsets[-1])
    values = _float32(column.values.slice(first, last - first))
    offsets = offsets - first
    if len(values) == n * dim:  # no null row takes space: one reshape, no gather
        return values.reshape(n, dim)
    out = np.zeros((n, dim), dtype=np.float32)
    rows = np.flatnonzero(present)
    if len(rows):
        out[rows] = values[offsets[rows][:, None] + np.arange(dim)[None, :]]
    return out


def _float32(values: pa.Array) -> np.ndarray:
    if values.null_count:
        # a null inside an embedding is a NaN-like gap; keep it visible as NaN
        values = values.fill_null(float("nan"))
    arr = values.to_numpy(zero_copy_only=False)
    return arr.astype(np.float32, copy=False)


def labels_array(column: pa.Array | pa.ChunkedArray, ids=None, where: str = "",
                 first_row: int = 0) -> np.ndarray:
    """``(n,)`` int64 labels with UNLABELLED for nulls (and pandas' NaN); a label that is
    not an integer class (2.7, inf) is refused naming its row (and id, given ``ids``)."""
    column = normalize_labels(column, ids, where=where, first_row=first_row)
    if column.null_count:
        column = column.fill_null(UNLABELLED)
    return column.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)


def arrays_from_table(table: pa.Table | pa.RecordBatch, pool: PoolConfig,
                      dims: Mapping[str, int], where: str = "", first_row: int = 0
                      ) -> PostArrays:
    """Convert a pool table (or Ray Data pyarrow batch) to ``PostArrays``.

    ``dims`` maps each modality to its embedding dimension. The label column is
    optional (all UNLABELLED when absent). Ids become int64 or str whatever their Arrow
    type (``alray.pool.normalize``). A NaN, an infinity or a null inside a present
    vector is refused (PoolSchemaError naming ``where``, e.g. the file, the row counted
    from ``first_row`` and the id): bad numbers never reach a model.
    """
    names = table.schema.names
    ids = normalize_ids(table.column(pool.id_column), pool.id_column, where)
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    id_values = ids.to_numpy(zero_copy_only=False)
    features, present = {}, {}
    for modality, column in pool.embedding_columns.items():
        if column not in names:
            raise PoolSchemaError(f"missing embedding column {column!r} "
                                  f"(modality {modality}); columns are {names}")
        if pa.types.is_null(table.schema.field(column).type):  # pandas' column of None
            features[modality] = np.zeros((len(id_values), dims[modality]), np.float32)
            present[modality] = np.zeros(len(id_values), dtype=bool)
            continue
        features[modality], present[modality] = embedding_matrix(
            table.column(column), dims[modality], column)
        check_finite(features[modality], present[modality], id_values, column, where,
                     first_row)
    if pool.label_column in names:
        labels = labels_array(table.column(pool.label_column), id_values, where, first_row)
    else:
        labels = np.full(len(id_values), UNLABELLED, dtype=np.int64)
    return PostArrays(ids=id_values, features=features, present=present, labels=labels)


def check_finite(matrix: np.ndarray, present: np.ndarray, ids: np.ndarray, column: str,
                 where: str = "", first_row: int = 0) -> None:
    """Refuse a ``(n, dim)`` embedding matrix with a non-finite value in a present row.

    A null inside a vector arrives here as NaN. The message names the first bad row
    (counted from ``first_row``), its id and the count of bad rows.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        suspect = ~np.isfinite(matrix.sum(axis=1)) & present  # (n,): 2x faster than isfinite
    if not suspect.any():
        return
    rows = np.flatnonzero(suspect)  # a NaN or inf row, or a huge finite one that overflowed
    rows = rows[~np.isfinite(matrix[rows]).all(axis=1)]
    if not len(rows):
        return
    row, key = int(rows[0]), ids[int(rows[0])]
    key = key.item() if isinstance(key, np.generic) else key
    more = f" ({len(rows)} such rows in this batch)" if len(rows) > 1 else ""
    at = f"{where}: row {first_row + row}" if where else f"row {row} of a batch"
    raise PoolSchemaError(f"{at} (id {key!r}): column {column}: NaN, infinite or null value "
                          f"in the embedding{more}; fix or drop these rows (`alray validate` "
                          "lists them all)")


def pool_table(data: PostArrays, pool: PoolConfig) -> pa.Table:
    """``data`` as a pool table of one schema whatever the shards it came from: the id
    (int64 or string), each embedding as ``fixed_size_list<float32>[dim]`` (null where
    the modality is missing) and the label as int64 (null where unlabelled)."""
    n = len(data)
    columns = {pool.id_column: pa.array(data.ids, pa.int64() if data.ids.dtype.kind in "iu"
                                        else pa.string())}
    for modality, column in pool.embedding_columns.items():
        matrix, present = data.features[modality], data.present[modality]
        values = pa.array(np.ascontiguousarray(matrix, dtype=np.float32).reshape(-1))
        mask = None if present.all() else pa.array(~present)
        columns[column] = pa.FixedSizeListArray.from_arrays(values, matrix.shape[1], mask=mask)
    labels = data.labels
    columns[pool.label_column] = pa.array(labels, pa.int64(), mask=labels == UNLABELLED
                                          if n and (labels == UNLABELLED).any() else None)
    return pa.table(columns)
