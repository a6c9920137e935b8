"""Embedding layouts: Arrow lists of floats, or packed ``fixed_size_binary`` vectors.

A *list* column (``list``, ``large_list`` or ``fixed_size_list`` of float32/float64) is
what most tools write. A *packed* column holds each vector's raw little-endian bytes as
one ``fixed_size_binary(dim x itemsize)`` value, and says what the bytes are in the
field's metadata::

    alray.dtype = float32 | float16
    alray.dim   = <dim>

Why packed: Parquet decodes a list value by value through repetition and definition
levels; a fixed-size binary value is one memcpy, and ``np.frombuffer`` then views the
page as an ``(n, dim)`` matrix without a copy. One thread decoded a 1024 + 300-dim pool
at ~70k rows/s as ``fixed_size_list<float32>`` and ~570k rows/s packed (issue #17, an
idle machine); ``bench/decode.py`` measured 6.4-8.1x, at 65-71% of the rate of a plain
copy of the same bytes (docs/benchmarks.md).

Decoding trusts the byte width, not the metadata: with the dimension known (from the
metadata, through ``infer_dims``), ``width / dim`` names the dtype unambiguously (2 bytes
float16, 4 float32), so a batch whose field metadata was dropped on the way (a driver's
concatenation, a query table) still decodes. Validation and ``infer_dims`` check that
metadata and width agree, and name the file and column when they do not.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from alray.errors import PoolSchemaError

DTYPE_KEY = b"alray.dtype"
DIM_KEY = b"alray.dim"
PACKED_DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
_BY_ITEMSIZE = {d.itemsize: name for name, d in PACKED_DTYPES.items()}


def is_list_embedding(t: pa.DataType) -> bool:
    """A list, large list or fixed-size list of float32/float64."""
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        return False
    return pa.types.is_float32(t.value_type) or pa.types.is_float64(t.value_type)


def is_packed(t: pa.DataType) -> bool:
    return pa.types.is_fixed_size_binary(t)


def packed_spec(field: pa.Field) -> tuple[str, int]:
    """``(dtype name, dim)`` of a packed field, from its metadata, checked against its
    byte width. Raises PoolSchemaError ``column NAME: ...`` (callers add the file)."""
    meta = field.metadata or {}
    if DTYPE_KEY not in meta or DIM_KEY not in meta:
        raise PoolSchemaError(
            f"column {field.name}: {field.type} without the field metadata "
            f"alray.dtype and alray.dim (write packed pools with `alray pool pack`)")
    dtype = meta[DTYPE_KEY].decode(errors="replace")
    if dtype not in PACKED_DTYPES:
        raise PoolSchemaError(f"column {field.name}: alray.dtype {dtype!r}, expected one of "
                              f"{', '.join(PACKED_DTYPES)}")
    try:
        dim = int(meta[DIM_KEY])
    except ValueError:
        dim = 0
    if dim < 1:
        raise PoolSchemaError(f"column {field.name}: alray.dim "
                              f"{meta[DIM_KEY].decode(errors='replace')!r} is not a "
                              f"positive integer")
    width = field.type.byte_width
    if width != dim * PACKED_DTYPES[dtype].itemsize:
        raise PoolSchemaError(
            f"column {field.name}: {width} bytes a vector, but alray.dim {dim} x "
            f"{dtype} is {dim * PACKED_DTYPES[dtype].itemsize}")
    return dtype, dim


def layout_name(field: pa.Field) -> str:
    """``list``, ``packed float32`` or ``packed float16`` (for reports)."""
    if is_packed(field.type):
        return f"packed {packed_spec(field)[0]}"
    return "list"


def packed_field(name: str, dim: int, dtype: str, metadata: dict | None = None) -> pa.Field:
    """The field of a packed column; other metadata of the original field is kept."""
    meta = {k: v for k, v in (metadata or {}).items() if k not in (DTYPE_KEY, DIM_KEY)}
    meta.update({DTYPE_KEY: dtype.encode(), DIM_KEY: str(dim).encode()})
    return pa.field(name, pa.binary(dim * PACKED_DTYPES[dtype].itemsize), nullable=True,
                    metadata=meta)


def packed_values(column: pa.Array, dim: int, name: str = "embedding") -> np.ndarray:
    """``(n, dim)`` view of a packed column's vectors in their stored dtype (float32 or
    float16): zero-copy over the data buffer from the array's offset (Ray Data batches
    are slices). The bytes under null rows are undefined (Parquet stores none for a null:
    after a read they may be another row's): mask them with the column's validity."""
    n, width = len(column), column.type.byte_width
    if width % dim or width // dim not in _BY_ITEMSIZE:
        raise PoolSchemaError(f"column {name}: packed vectors of {width} bytes, expected "
                              f"{dim} values of float16 ({2 * dim} bytes) or float32 "
                              f"({4 * dim} bytes)")
    dtype = PACKED_DTYPES[_BY_ITEMSIZE[width // dim]]
    data = column.buffers()[1]
    if n == 0 or data is None:
        return np.zeros((n, dim), dtype=dtype)
    flat = np.frombuffer(data, dtype=dtype, count=n * dim, offset=column.offset * width)
    return flat.reshape(n, dim)


def pack_matrix(matrix: np.ndarray, present: np.ndarray, dtype: str) -> pa.Array:
    """A ``fixed_size_binary`` array of ``matrix`` ``(n, dim)`` cast to ``dtype``, null
    where ``present`` ``(n,)`` is False (zeros here; a Parquet round trip does not keep
    them, see ``packed_values``). The bytes are not copied
    when ``matrix`` already has the dtype and is C-contiguous."""
    n, dim = matrix.shape
    values = np.ascontiguousarray(matrix, dtype=PACKED_DTYPES[dtype])
    validity = None
    if not present.all():
        validity = pa.array(present, pa.bool_()).buffers()[1]
    return pa.FixedSizeBinaryArray.from_buffers(
        pa.binary(dim * values.itemsize), n, [validity, pa.py_buffer(values)],
        null_count=int(n - present.sum()))
