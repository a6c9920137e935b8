"""Loading the labelled part of a pool into memory (the labelled set stays small)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from alray.config import PoolConfig
from alray.errors import EmptyPoolError, LabelsError
from alray.pool import io
from alray.pool.arrays import PostArrays, arrays_from_table
from alray.pool.schema import infer_dims


def read_ids_and_labels(uri: str, pool: PoolConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(n,)`` ids and ``(n,)`` labels (-1 = unlabelled) of a pool, reading two columns."""
    table = io.read_table(uri, columns=[pool.id_column, pool.label_column])
    labels = table.column(pool.label_column).fill_null(-1).to_numpy(zero_copy_only=False)
    return (table.column(pool.id_column).to_numpy(zero_copy_only=False),
            np.asarray(labels).astype(np.int64))


def sample_labelled_ids(uri: str, pool: PoolConfig, n: int, seed: int) -> np.ndarray:
    """``n`` distinct labelled ids drawn uniformly without replacement, seeded."""
    ids, labels = read_ids_and_labels(uri, pool)
    return draw_labelled(ids, labels, n, seed, uri)[0]


def draw_labelled(ids: np.ndarray, labels: np.ndarray, n: int, seed: int, uri: str
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``n`` distinct labelled posts of ``(ids, labels)`` (as ``read_ids_and_labels``
    returns them), drawn uniformly without replacement, seeded: ``(ids, labels)``."""
    keep = labels >= 0
    if n > int(keep.sum()):
        raise EmptyPoolError(f"{uri}: {n:,} initial labels asked, the pool has "
                             f"{int(keep.sum()):,} labelled posts")
    order = np.argsort(ids[keep], kind="stable")  # independent of shard order
    picked = order[np.random.default_rng(seed).choice(len(order), n, replace=False)]
    return ids[keep][picked], labels[keep][picked]


def load_rows(uri: str, pool: PoolConfig, ids: np.ndarray | None = None,
              labels: dict | None = None) -> PostArrays:
    """Rows of the pool whose id is in ``ids`` (all labelled rows when None).

    ``labels`` (id -> class) overrides the pool's labels, e.g. from an assessors' file.
    Streams shard by shard; memory holds only the selected rows.
    """
    dims = infer_dims(uri, pool)
    wanted = None if ids is None else np.sort(np.asarray(ids))
    parts = []
    for shard in io.pool_shards(uri):
        for batch in io.iter_batches(shard):
            arrays = arrays_from_table(batch, pool, dims)
            keep = arrays.labels >= 0 if wanted is None else _isin(arrays.ids, wanted)
            if keep.any():
                parts.append(arrays.take(np.flatnonzero(keep)))
    if not parts:
        raise EmptyPoolError(f"{uri}: no rows selected")
    data = PostArrays.concat(parts)
    if labels is not None:
        data.labels = np.array([labels.get(_key(i), -1) for i in data.ids], dtype=np.int64)
    if wanted is not None and len(data) != len(wanted):
        missing = len(wanted) - len(data)
        raise LabelsError(f"{uri}: {missing:,} of {len(wanted):,} requested ids are not in the pool")
    return data


def _isin(ids: np.ndarray, wanted_sorted: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(wanted_sorted, ids)
    pos[pos == len(wanted_sorted)] = 0
    return wanted_sorted[pos] == ids


def _key(value):
    return value.item() if isinstance(value, np.generic) else value


def read_small_table(path: str) -> pa.Table:
    """A small table (labels, exclusions) from Parquet, or CSV by its ``.csv`` suffix."""
    if str(path).lower().endswith(".csv"):
        import pyarrow.csv as pacsv
        try:
            return pacsv.read_csv(path)
        except (pa.ArrowException, OSError) as exc:
            raise LabelsError(f"{path}: cannot read CSV: {exc}") from None
    return io.read_table(path)


def read_labels_file(path: str, id_column: str = "id", label_column: str = "label") -> dict:
    """id -> label from a Parquet or CSV file (nulls = skipped posts, left out)."""
    table = read_small_table(path)
    for column in (id_column, label_column):
        if column not in table.column_names:
            raise LabelsError(f"{path}: missing column {column!r} (columns are "
                              f"{table.column_names})")
    ids = table.column(id_column).to_pylist()
    values = table.column(label_column).to_pylist()
    return {i: int(v) for i, v in zip(ids, values) if v is not None}


def read_ids_file(path: str, id_column: str = "id") -> list:
    """The non-null ids of a Parquet or CSV file (e.g. posts already labelled)."""
    table = read_small_table(path)
    if id_column not in table.column_names:
        raise LabelsError(f"{path}: no {id_column!r} column (columns: {table.column_names})")
    return table.column(id_column).drop_null().to_pylist()
