"""Loading the labelled part of a pool into memory (the labelled set stays small)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from alray.config import PoolConfig
from alray.errors import EmptyPoolError, LabelsError, PoolSchemaError
from alray.pool import io
from alray.pool.arrays import PostArrays, arrays_from_table, labels_array
from alray.pool.normalize import normalize_ids
from alray.pool.schema import infer_dims
from alray.seeds import rng


def read_ids_and_labels(uri: str, pool: PoolConfig) -> tuple[np.ndarray, np.ndarray]:
    """``(n,)`` ids (int64 or str, whatever the Arrow type) and ``(n,)`` labels
    (-1 = unlabelled) of a pool, reading two columns shard by shard."""
    ids, labels = [], []
    for shard in io.pool_shards(uri):
        table = io.read_table(shard.uri, columns=[pool.id_column, pool.label_column])
        column = normalize_ids(table.column(pool.id_column), pool.id_column, shard.uri)
        ids.append(column.to_numpy())
        labels.append(labels_array(table.column(pool.label_column), ids[-1], shard.uri))
    id_values = ids[0] if len(ids) == 1 else np.concatenate(ids)
    return id_values, (labels[0] if len(labels) == 1 else np.concatenate(labels))


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
    picked = order[rng(seed, "initial").choice(len(order), n, replace=False)]
    return ids[keep][picked], labels[keep][picked]


def load_rows(uri: str, pool: PoolConfig, ids: np.ndarray | None = None,
              labels: dict | None = None) -> PostArrays:
    """Rows of the pool whose id is in ``ids`` (all labelled rows when None).

    ``labels`` (id -> class) overrides the pool's labels, e.g. from an assessors' file.
    Streams shard by shard; memory holds only the selected rows. A requested id found
    twice in the pool, or asked twice, and a NaN or infinity in a selected row's
    embedding, are refused naming the id (and file and row).
    """
    dims = infer_dims(uri, pool)
    wanted = None if ids is None else _unique_sorted(np.asarray(ids), "requested ids")
    parts, where = [], []
    for shard in io.pool_shards(uri):
        first_row = 0
        for batch in io.iter_batches(shard):
            arrays = arrays_from_table(batch, pool, dims, shard.uri, first_row)
            keep = arrays.labels >= 0 if wanted is None else _isin(arrays.ids, wanted)
            if keep.any():
                rows = np.flatnonzero(keep)
                parts.append(arrays.take(rows))
                where += [(shard.uri, first_row + int(r)) for r in rows]
            first_row += batch.num_rows
    if not parts:
        raise EmptyPoolError(f"{uri}: no rows selected")
    data = PostArrays.concat(parts)
    _refuse_duplicates(data.ids, where, uri)
    if labels is not None:
        data.labels = np.array([labels.get(_key(i), -1) for i in data.ids], dtype=np.int64)
    if wanted is not None and len(data) != len(wanted):
        missing = wanted[~_isin(wanted, np.sort(data.ids))]
        shown = ", ".join(repr(_key(i)) for i in missing[:5])
        raise LabelsError(f"{uri}: {len(missing):,} of {len(wanted):,} requested ids are "
                          f"not in the pool (first: {shown})")
    return data


def repeated_ids(ids: np.ndarray) -> np.ndarray:
    """The distinct ids that occur more than once in ``(n,)`` ids, sorted."""
    ids = np.sort(ids)
    return np.unique(ids[1:][ids[1:] == ids[:-1]])


def _unique_sorted(ids: np.ndarray, what: str) -> np.ndarray:
    ids = np.sort(ids)
    repeated = repeated_ids(ids)
    if len(repeated):
        raise LabelsError(f"{len(repeated):,} {what} are repeated (first: id "
                          f"{_key(repeated[0])!r})")
    return ids


def _refuse_duplicates(ids: np.ndarray, where: list, uri: str) -> None:
    """Refuse an id selected from two rows of the pool, naming both places."""
    order = np.argsort(ids, kind="stable")
    same = np.flatnonzero(ids[order][1:] == ids[order][:-1])
    if len(same):
        first, second = int(order[same[0]]), int(order[same[0] + 1])
        raise PoolSchemaError(
            f"{uri}: id {_key(ids[first])!r} is in the pool twice: {where[first][0]} row "
            f"{where[first][1]} and {where[second][0]} row {where[second][1]} "
            f"({len(same):,} duplicated ids among the rows read; ids must be unique, "
            "`alray validate` lists them all)")


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


def read_labels_file(path: str, id_column: str = "id", label_column: str = "label",
                     int_ids: bool = True, n_classes: int | None = None) -> dict:
    """id -> label from a Parquet or CSV file, checked as strictly as ``alray labels
    import`` (``alray.pool.labels_file``): ids parsed as the pool holds them
    (``int_ids``; text ids keep leading zeros), ``2.7`` or a class outside
    ``[0, n_classes)`` refused, a repeated id refused; a row without a label is a
    skipped post, left out. Every problem is listed at once (LabelsError)."""
    from pathlib import Path

    from alray.pool import labels_file

    raw_ids, raw_labels = labels_file.read_columns(Path(path), id_column, label_column)
    return labels_file.check_rows(raw_ids, raw_labels, str(path), int_ids,
                                  n_classes if n_classes is not None else 2 ** 62,
                                  skip_null_labels=True)


def pool_has_int_ids(uri: str, pool: PoolConfig) -> bool:
    """Whether the pool's ids are integers (from the first shard's schema)."""
    from alray.pool.normalize import id_type_of

    schema = io.open_parquet(io.pool_shards(uri)[0]).schema_arrow
    if pool.id_column not in schema.names:
        raise PoolSchemaError(f"{uri}: no id column {pool.id_column!r} (columns are "
                              f"{schema.names})")
    return id_type_of(schema.field(pool.id_column).type) == pa.int64()


def load_labelled_file(uri: str, pool: PoolConfig, path: str,
                       n_classes: int | None = None) -> PostArrays:
    """The pool's rows labelled by the labels file ``path`` (``read_labels_file``)."""
    labels = read_labels_file(path, pool.id_column, pool.label_column,
                              pool_has_int_ids(uri, pool), n_classes)
    if not labels:
        raise EmptyPoolError(f"{path}: no labelled rows")
    ids = np.asarray(list(labels), dtype=np.int64 if isinstance(next(iter(labels)), int)
                     else object)
    return load_rows(uri, pool, ids=ids, labels=labels)


def read_ids_file(path: str, id_column: str = "id") -> list:
    """The non-null ids of a Parquet or CSV file (e.g. posts already labelled)."""
    table = read_small_table(path)
    if id_column not in table.column_names:
        raise LabelsError(f"{path}: no {id_column!r} column (columns: {table.column_names})")
    return table.column(id_column).drop_null().to_pylist()


def load_rows_in_order(uri: str, pool: PoolConfig, ids, labels: dict | None = None
                       ) -> PostArrays:
    """The rows of ``ids`` in that order (training shuffles positions, so the order is
    part of what makes two runs on the same labelled set equal); ``labels`` as
    ``load_rows``'s."""
    ids = list(ids)
    data = load_rows(uri, pool, ids=np.asarray(ids), labels=labels)
    position = {value: i for i, value in enumerate(data.ids.tolist())}
    return data.take(np.array([position[i] for i in ids], dtype=np.int64))


def infer_class_count(uris, pool: PoolConfig) -> int:
    """One more than the largest label of the pools at ``uris``; LabelsError when
    they hold fewer than two classes' worth of labels."""
    top = -1
    for uri in uris:
        top = max(top, int(read_ids_and_labels(uri, pool)[1].max(initial=-1)))
    if top < 1:
        raise LabelsError(f"{', '.join(map(str, uris))}: cannot infer the class count from "
                          "the labels; give --classes")
    return top + 1
