"""One Arrow type per role at the pool boundary: ids are int64 or string, labels int64.

Real pools come from many writers: pandas 2 writes text as ``string``, pandas 3 as
``large_string``, fastparquet and Spark write their own choices, categorical columns
arrive as ``dictionary<...>``, and small ids as ``int32``. Two tables with the same ids
under different types cannot be joined or concatenated (``pa.concat_tables`` refuses
``string`` against ``large_string``), so every reader of ids and labels passes them
through this module and nothing downstream ever sees another type:

    ids:    int8..int64, uint8..uint64 (when it fits)      -> int64
            string, large_string, string_view, dictionary  -> string
    labels: any integer, integral float (pandas' float64 with NaN for missing labels;
            NaN is a missing label)                         -> int64, nullable

Anything else is refused with a ``PoolSchemaError`` that names the column (and, for a
non-integral label, the row and id).
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from alray.errors import PoolSchemaError

Column = pa.Array | pa.ChunkedArray


def id_type_of(t: pa.DataType) -> pa.DataType | None:
    """The canonical id type (int64 or string) for ids stored as ``t``; None if none."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t):
        return pa.int64()
    if pa.types.is_string(t) or pa.types.is_large_string(t) or _is_string_view(t):
        return pa.string()
    return None


def is_label_type(t: pa.DataType) -> bool:
    """Whether ``normalize_labels`` accepts labels stored as ``t`` (values still checked)."""
    if pa.types.is_dictionary(t):
        t = t.value_type
    return pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_null(t)


def normalize_ids(column: Column, name: str = "id", where: str = "") -> Column:
    """``column`` as int64 or string (chunked stays chunked); PoolSchemaError otherwise."""
    target = id_type_of(column.type)
    if target is None:
        raise PoolSchemaError(f"{_at(where)}column {name}: type {column.type}, expected "
                              "integer or string ids")
    if column.type == target:
        return column
    column = _decode(column)
    if column.type == target:
        return column
    try:
        return column.cast(target)  # safe: a uint64 beyond int64 fails, never wraps
    except pa.ArrowInvalid:
        values = column.to_numpy(zero_copy_only=False)
        big = values[values > np.iinfo(np.int64).max]
        raise PoolSchemaError(f"{_at(where)}column {name}: id {big[0]} does not fit int64 "
                              "(ids are int64 or string)") from None


def normalize_labels(column: Column, ids: Column | np.ndarray | None = None,
                     name: str = "label", where: str = "", first_row: int = 0) -> pa.Array:
    """``(n,)`` int64 labels, null where missing (null or NaN); non-integral,
    infinite or out-of-int64 values are refused naming the row (and id, given ``ids``)."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not is_label_type(column.type):
        raise PoolSchemaError(f"{_at(where)}column {name}: type {column.type}, expected "
                              "integer class labels")
    column = _decode(column)
    if pa.types.is_null(column.type):
        return pa.nulls(len(column), pa.int64())
    if pa.types.is_floating(column.type):
        return _integral_labels(column, ids, name, where, first_row)
    if column.type == pa.int64():
        return column
    try:
        return column.cast(pa.int64())
    except pa.ArrowInvalid:
        raise PoolSchemaError(f"{_at(where)}column {name}: a label does not fit int64"
                              ) from None


def normalize_table(table: pa.Table | pa.RecordBatch, id_column: str = "id",
                    label_column: str | None = "label", where: str = ""
                    ) -> pa.Table | pa.RecordBatch:
    """``table`` with its id (and label, when present) column normalised."""
    names = table.schema.names
    out = table
    if id_column in names:
        ids = normalize_ids(table.column(id_column), id_column, where)
        if ids is not table.column(id_column):
            out = _replace(out, id_column, ids)
    if label_column and label_column in names and out.schema.field(label_column).type != pa.int64():
        labels = normalize_labels(table.column(label_column), out.column(id_column)
                                  if id_column in names else None, label_column, where)
        out = _replace(out, label_column, labels)
    return out


def read_schema(schemas: list[pa.Schema], id_column: str, label_column: str,
                embedding_columns: list[str], columns: list[str]) -> pa.Schema | None:
    """One schema every shard can be read as, for readers that need it up front (Ray
    Data's ``read_parquet`` unifies the shards' schemas and refuses ``dictionary``
    against ``large_string``, ``int32`` against ``int64``, ``list`` against
    ``large_list``); None when the shards already agree on ``columns``.

    The id becomes int64 or string; an embedding that differs becomes
    ``list<float32>`` (the model reads float32 anyway); a label that differs becomes
    float64 when any shard holds floats (NaN = unlabelled), else int64.
    """
    fields = []
    for name in columns:
        types = [s.field(name).type for s in schemas if name in s.names]
        if not types:
            continue
        if all(t == types[0] for t in types):
            fields.append(pa.field(name, types[0]))
        elif name == id_column:
            kinds = {id_type_of(t) for t in types}
            if len(kinds) != 1 or None in kinds:
                raise PoolSchemaError(f"column {name}: the shards hold ids of types "
                                      f"{sorted(set(map(str, types)))}: integers in some, "
                                      "text in others")
            fields.append(pa.field(name, kinds.pop()))
        elif name in embedding_columns:
            fields.append(pa.field(name, pa.list_(pa.float32())))
        elif name == label_column:
            floats = any(pa.types.is_floating(t) for t in types)
            fields.append(pa.field(name, pa.float64() if floats else pa.int64()))
        else:
            try:
                fields.append(pa.unify_schemas([pa.schema([pa.field(name, t)]) for t in types],
                                               promote_options="permissive").field(name))
            except pa.ArrowException:
                raise PoolSchemaError(f"column {name}: the shards hold it as "
                                      f"{sorted(set(map(str, types)))}, which do not "
                                      "unify") from None
    if all(name not in s.names or s.field(name).type == f.type
           for s in schemas for f in fields for name in [f.name]):
        return None
    return pa.schema(fields)


def _integral_labels(column: pa.Array, ids, name: str, where: str, first_row: int
                     ) -> pa.Array:
    values = column.to_numpy(zero_copy_only=False).astype(np.float64)  # nulls -> NaN
    missing = np.isnan(values)
    bad = ~missing & ~((values == np.round(values)) & (np.abs(values) < 2.0 ** 63))
    if bad.any():
        row = int(np.argmax(bad))
        shown = "" if ids is None else f" (id {_id_at(ids, row)!r})"
        raise PoolSchemaError(f"{_at(where)}row {first_row + row}{shown}: column {name}: "
                              f"label {float(values[row])!r} is not an integer class")
    out = np.where(missing, 0, values).astype(np.int64)
    return pa.array(out, pa.int64(), mask=missing if missing.any() else None)


def _decode(column: Column) -> Column:
    if pa.types.is_dictionary(column.type):
        column = column.cast(column.type.value_type)
    if _is_string_view(column.type) or pa.types.is_large_string(column.type):
        column = column.cast(pa.string())
    return column


def _replace(table, name: str, column):
    index = table.schema.get_field_index(name)
    if isinstance(table, pa.RecordBatch):
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        arrays = [column if i == index else table.column(i) for i in range(table.num_columns)]
        schema = table.schema.set(index, pa.field(name, column.type))
        return pa.RecordBatch.from_arrays(arrays, schema=schema)
    return table.set_column(index, pa.field(name, column.type), column)


def _id_at(ids, row: int):
    if isinstance(ids, np.ndarray):
        value = ids[row]
        return value.item() if isinstance(value, np.generic) else value
    return ids[row].as_py()


def _is_string_view(t: pa.DataType) -> bool:
    return getattr(pa.types, "is_string_view", lambda _t: False)(t)


def _at(where: str) -> str:
    return f"{where}: " if where else ""


__all__ = ["id_type_of", "is_label_type", "normalize_ids", "normalize_labels",
           "normalize_table", "read_schema"]
