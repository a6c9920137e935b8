"""Request bodies -> one checked table of posts (no Ray, no torch).

Every body becomes the same table: the id column (int64 or string) and one
``fixed_size_list<float32>[dim]`` column per modality, null where the post has none.
A body with any bad post is refused whole, with every problem named by the post's
index and id (``BadRequest``), so a client never has to guess which posts were scored.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Mapping

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

from alray.config import PoolConfig

JSON_TYPES = ("application/json",)
ARROW_TYPES = ("application/vnd.apache.arrow.stream", "application/vnd.apache.arrow.file")
PARQUET_TYPES = ("application/vnd.apache.parquet", "application/x-parquet")
MAX_LISTED = 100  # problems listed in an answer; all are counted


@dataclass
class BadRequest(Exception):
    """A 4xx answer: ``status``, one ``error`` line and the per-post ``problems``."""

    status: int
    error: str
    problems: list[dict] = field(default_factory=list)

    def body(self) -> dict:
        out = {"error": self.error}
        if self.problems:
            out["problems"] = self.problems[:MAX_LISTED]
            out["problem_count"] = len(self.problems)
        return out


@dataclass(frozen=True)
class Limits:
    """What one request may decode to, whatever its size on the wire: a compressed
    Parquet or Arrow body of a few MB can hold millions of posts. ``max_posts``: posts
    per request; ``max_decoded_bytes``: the decoded table's bytes (checked from the
    body's own metadata before decoding, then on what was decoded)."""

    max_posts: int = 20_000
    max_decoded_bytes: int = 256 << 20


def parse_posts(body: bytes, content_type: str, columns: PoolConfig,
                dims: Mapping[str, int], id_type: str, limits: Limits = Limits()
                ) -> pa.Table:
    """The checked posts table of a request body; ``BadRequest`` otherwise."""
    kind = (content_type or "").split(";")[0].strip().lower()
    if kind in JSON_TYPES or kind == "":
        table = _from_json(body, columns, dims, id_type, limits)
    elif kind in ARROW_TYPES or kind in PARQUET_TYPES:
        table = _from_arrow(_read_arrow(body, kind, limits), columns, dims, id_type)
    else:
        raise BadRequest(415, f"unsupported Content-Type {content_type!r}; send one of "
                              f"{', '.join(JSON_TYPES + ARROW_TYPES + PARQUET_TYPES)}")
    if table.num_rows == 0:
        raise BadRequest(400, "the request holds no posts")
    return table


# --- JSON ------------------------------------------------------------------------------
def _load_json(body: bytes):
    """orjson first (about 9x faster on embeddings); the standard parser when orjson
    refuses, so that NaN and Infinity, which many clients write, reach the per-post
    checks and are named there instead of failing the whole body as malformed."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(400, f"malformed JSON body: {exc}") from None


def _from_json(body: bytes, columns: PoolConfig, dims, id_type: str,
               limits: Limits = Limits()) -> pa.Table:
    data = _load_json(body)
    # JSON true/false would pass numpy's conversion as 1/0: only a body without either
    # token may skip the per-value type check
    numbers_only = b"true" not in body and b"false" not in body
    if not isinstance(data, dict) or not isinstance(data.get("posts"), list):
        raise BadRequest(400, 'the body must be a JSON object {"posts": [...]}')
    extra = sorted(set(data) - {"posts"})
    if extra:
        raise BadRequest(400, f"unknown top-level field(s) {', '.join(extra)}; only "
                              '"posts" is allowed')
    posts = data["posts"]
    _check_rows(len(posts), limits)
    allowed = {columns.id_column, *columns.embedding_columns.values()}
    problems: list[dict] = []
    ids, vectors = [], {m: [] for m in columns.embedding_columns}
    for index, post in enumerate(posts):
        if not isinstance(post, dict):
            problems.append(_problem(index, None, None, "a post must be a JSON object"))
            ids.append(None)
            continue
        key = post.get(columns.id_column)
        for name in sorted(set(post) - allowed):
            problems.append(_problem(index, key, name, f"unknown field {name!r}; allowed: "
                                                       f"{', '.join(sorted(allowed))}"))
        ids.append(key)
        for modality, column in columns.embedding_columns.items():
            vectors[modality].append(_json_vector(post.get(column), dims[modality],
                                                  index, key, column, problems,
                                                  numbers_only))
    ids = _check_ids(ids, id_type, problems)
    table = pa.table({columns.id_column: ids, **{
        column: _fixed_list(vectors[m], dims[m])
        for m, column in columns.embedding_columns.items()}})
    _check_present(table, columns, problems)
    _raise_if_any(problems)
    return table


def _json_vector(value, dim: int, index: int, key, column: str, problems: list,
                 numbers_only: bool = False) -> np.ndarray | None:
    if value is None:
        return None
    if not isinstance(value, list):
        problems.append(_problem(index, key, column, "an embedding must be a list of "
                                                     "numbers or null"))
        return None
    if len(value) != dim:
        problems.append(_problem(index, key, column, f"{len(value)} values, expected {dim}"))
        return None
    vector = _numbers(value) if numbers_only else None
    if vector is None:
        if any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in value):
            problems.append(_problem(index, key, column, "an embedding holds a non-number"))
            return None
        try:
            vector = np.asarray(value, dtype=np.float64)
        except OverflowError:  # an integer literal beyond any float: refused below
            vector = np.full(dim, np.inf)
    with np.errstate(over="ignore"):  # beyond float32 becomes inf, refused just below
        vector = vector.astype(np.float32)
    if not np.isfinite(vector).all():
        problems.append(_problem(index, key, column, "NaN or infinite value (or beyond "
                                                     "float32's range)"))
        return None
    return vector


def _numbers(value: list) -> np.ndarray | None:
    """``value`` as float64 when numpy infers a flat numeric array (no strings, None or
    nested lists, which give another dtype or shape); None means: check value by value."""
    try:
        array = np.array(value)
    except (ValueError, OverflowError):
        return None
    if array.ndim != 1 or array.dtype.kind not in "fi":
        return None
    return array.astype(np.float64, copy=False)


def _fixed_list(rows: list, dim: int) -> pa.Array:
    present = np.array([r is not None for r in rows], dtype=bool)
    matrix = np.zeros((len(rows), dim), dtype=np.float32)
    if present.any():
        matrix[present] = np.stack([r for r in rows if r is not None])
    mask = None if present.all() else pa.array(~present)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim, mask=mask)


# --- Arrow IPC and Parquet ---------------------------------------------------------------
def _read_arrow(body: bytes, kind: str, limits: Limits = Limits()) -> pa.Table:
    """The table of an Arrow IPC or Parquet body, its size checked against ``limits``
    from the body's own metadata before anything is decompressed or decoded, then
    validated in full (offsets, lengths, UTF-8: a hostile body must not make later
    code read out of bounds)."""
    try:
        if kind in PARQUET_TYPES:
            table = _read_parquet(body, limits)
        else:
            table = _read_ipc(body, kind, limits)
    except (pa.ArrowException, OSError, ValueError, struct.error, IndexError) as exc:
        raise BadRequest(400, f"malformed {kind} body: {exc}") from None
    _check_rows(table.num_rows, limits)
    _check_bytes(table.nbytes, limits, "decoded")
    try:
        table.validate(full=True)
    except (pa.ArrowException, ValueError) as exc:
        raise BadRequest(422, f"invalid {kind} body (full validation): {exc}") from None
    return table


def _read_parquet(body: bytes, limits: Limits) -> pa.Table:
    """Row groups one at a time, after the footer's row counts and value counts fit."""
    file = pq.ParquetFile(pa.BufferReader(body))
    meta = file.metadata
    _check_rows(meta.num_rows, limits)
    declared = 0
    for g in range(meta.num_row_groups):
        group = meta.row_group(g)
        for c in range(group.num_columns):
            chunk = group.column(c)
            width = {"INT32": 4, "FLOAT": 4, "INT64": 8, "DOUBLE": 8}.get(
                chunk.physical_type, 0)
            # values (list elements included) x their width; text: its plain size
            declared += chunk.num_values * width + (0 if width else
                                                     chunk.total_uncompressed_size)
    _check_bytes(declared, limits, "declared (Parquet footer)")
    parts, rows, size = [], 0, 0
    for g in range(meta.num_row_groups):
        part = file.read_row_group(g)
        rows, size = rows + part.num_rows, size + part.nbytes
        _check_rows(rows, limits)  # a footer that lied is caught one row group later
        _check_bytes(size, limits, "decoded")
        parts.append(part)
    return pa.concat_tables(parts) if parts else file.schema_arrow.empty_table()


def _read_ipc(body: bytes, kind: str, limits: Limits) -> pa.Table:
    """An Arrow IPC stream (or the stream inside an IPC file, after its magic; the
    file's footer is not trusted), read only when the rows and the decompressed
    bytes its messages declare fit ``limits``."""
    data = pa.py_buffer(body)
    if kind.endswith(".file"):
        if body[:6] != b"ARROW1":
            raise ValueError("not an Arrow IPC file (no ARROW1 magic)")
        data = data.slice(8)
    messages = pa.ipc.MessageReader.open_stream(data)
    rows = size = 0
    while True:
        try:
            message = messages.read_next_message()
        except StopIteration:
            break
        if message.type in ("record batch", "dictionary"):
            n, decoded = _ipc_message_size(message.metadata.to_pybytes(), message.body)
            rows += n if message.type == "record batch" else 0
            size += decoded
            _check_rows(rows, limits)
            _check_bytes(size, limits, "declared (Arrow IPC messages)")
    return pa.ipc.open_stream(data).read_all()


def _ipc_message_size(meta: bytes, body: pa.Buffer | None) -> tuple[int, int]:
    """(rows, bytes once decompressed) of a record batch or dictionary batch message,
    read from its flatbuffer (Arrow's Message.fbs) without decoding anything."""
    def table(pos: int) -> tuple[int, list[int]]:
        vtable = pos - struct.unpack_from("<i", meta, pos)[0]
        size = struct.unpack_from("<H", meta, vtable)[0]
        return pos, [struct.unpack_from("<H", meta, vtable + 4 + 2 * i)[0]
                     for i in range((size - 4) // 2)]

    def field_at(tab, i: int) -> int | None:
        pos, offsets = tab
        return pos + offsets[i] if i < len(offsets) and offsets[i] else None

    def child(tab, i: int) -> int | None:
        at = field_at(tab, i)
        return None if at is None else at + struct.unpack_from("<I", meta, at)[0]

    message = table(struct.unpack_from("<I", meta, 0)[0])
    header_type = meta[field_at(message, 1)] if field_at(message, 1) is not None else 0
    batch = table(child(message, 2))
    if header_type == 2:  # DictionaryBatch: its RecordBatch is field 1
        batch = table(child(batch, 1))
    elif header_type != 3:
        raise ValueError(f"unexpected Arrow IPC message type {header_type}")
    rows = struct.unpack_from("<q", meta, field_at(batch, 0))[0] \
        if field_at(batch, 0) is not None else 0
    compressed = field_at(batch, 3) is not None
    buffers = child(batch, 2)
    count = struct.unpack_from("<I", meta, buffers)[0] if buffers is not None else 0
    raw = body.to_pybytes() if (compressed and body is not None) else b""
    decoded = 0
    for i in range(count):
        offset, length = struct.unpack_from("<qq", meta, buffers + 4 + 16 * i)
        if rows < 0 or offset < 0 or length < 0:
            raise ValueError("negative length in an Arrow IPC message")
        if compressed and length >= 8:
            declared = struct.unpack_from("<q", raw, offset)[0]  # -1: stored as is
            decoded += length - 8 if declared == -1 else declared
        else:
            decoded += length
    return rows, decoded


def _check_rows(rows: int, limits: Limits) -> None:
    if rows > limits.max_posts:
        raise BadRequest(413, f"the body holds {rows:,} posts or more, over the limit of "
                              f"{limits.max_posts:,} per request (--max-posts); split it")


def _check_bytes(size: int, limits: Limits, what: str) -> None:
    if size > limits.max_decoded_bytes:
        raise BadRequest(413, f"the body's {what} size is {size:,} bytes, over the limit "
                              f"of {limits.max_decoded_bytes:,} (--max-decoded-mb); "
                              "split it")


def _from_arrow(table: pa.Table, columns: PoolConfig, dims, id_type: str) -> pa.Table:
    allowed = [columns.id_column, *columns.embedding_columns.values()]
    extra = [c for c in table.column_names if c not in allowed]
    if extra or columns.id_column not in table.column_names:
        raise BadRequest(400, f"columns {table.column_names}: need {columns.id_column!r} "
                              f"and at most {', '.join(allowed[1:])}"
                              + (f"; unknown: {', '.join(extra)}" if extra else ""))
    problems: list[dict] = []
    ids = _check_ids(table.column(columns.id_column).to_pylist(), id_type, problems)
    out = {columns.id_column: ids}
    for modality, column in columns.embedding_columns.items():
        if column not in table.column_names:
            out[column] = pa.nulls(table.num_rows, pa.list_(pa.float32(), dims[modality]))
            continue
        out[column] = _arrow_vectors(table.column(column), dims[modality], column,
                                     ids.to_pylist(), problems)
    table = pa.table(out)
    _check_present(table, columns, problems)
    _raise_if_any(problems)
    return table


def _arrow_vectors(column: pa.ChunkedArray, dim: int, name: str, ids: list,
                   problems: list) -> pa.Array:
    from alray.pool.arrays import embedding_matrix
    from alray.pool.schema import is_embedding_type

    column = column.combine_chunks()
    if not is_embedding_type(column.type):
        raise BadRequest(400, f"column {name}: type {column.type}, expected a list of "
                              "float32 or float64")
    if pa.types.is_fixed_size_list(column.type) and column.type.list_size != dim:
        column = column.cast(pa.list_(column.type.value_type))  # rows reported below
    lengths = np.asarray(column.value_lengths().fill_null(dim).to_numpy(zero_copy_only=False))
    wrong = lengths != dim
    for i in np.flatnonzero(wrong):
        problems.append(_problem(int(i), ids[i], name, f"{int(lengths[i])} values, "
                                                       f"expected {dim}"))
    keep = ~wrong
    matrix = np.zeros((len(column), dim), dtype=np.float32)
    present = np.zeros(len(column), dtype=bool)
    good = column.filter(pa.array(keep)) if wrong.any() else column
    matrix[keep], present[keep] = embedding_matrix(good, dim, name)  # nulls inside -> NaN
    for i in np.flatnonzero(present & ~np.isfinite(matrix).all(axis=1)):
        problems.append(_problem(int(i), ids[i], name, "NaN, null or infinite value (or "
                                                       "beyond float32's range)"))
    mask = None if present.all() else pa.array(~present)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), dim, mask=mask)


# --- checks shared by both ---------------------------------------------------------------
def _check_ids(ids: list, id_type: str, problems: list) -> pa.Array:
    """The ids as an Arrow array of the service's id type; problems for bad ones."""
    seen: dict = {}
    clean = []
    for index, key in enumerate(ids):
        ok = (isinstance(key, int) and not isinstance(key, bool)) if id_type == "int64" \
            else isinstance(key, str) and key != ""
        if key is None:
            problems.append(_problem(index, None, "id", "missing id"))
        elif not ok:
            want = "an integer" if id_type == "int64" else "a non-empty string"
            problems.append(_problem(index, key, "id", f"the id must be {want}"))
        elif key in seen:
            problems.append(_problem(index, key, "id", f"duplicate of post {seen[key]}"))
        else:
            seen[key] = index
            clean.append(key)
            continue
        clean.append(None)
    try:
        return pa.array(clean, pa.int64() if id_type == "int64" else pa.string())
    except (pa.ArrowException, OverflowError):
        raise BadRequest(422, "an id is out of the int64 range", problems) from None


def _check_present(table: pa.Table, columns: PoolConfig, problems: list) -> None:
    names = list(columns.embedding_columns.values())
    none = np.ones(table.num_rows, dtype=bool)
    for name in names:
        none &= ~np.asarray(table.column(name).is_valid().to_numpy(zero_copy_only=False),
                            dtype=bool)
    reported = {p["index"] for p in problems}
    ids = table.column(columns.id_column).to_pylist()
    for i in np.flatnonzero(none):
        if int(i) not in reported:  # a rejected vector already explains the gap
            problems.append(_problem(int(i), ids[i], ",".join(names),
                                     "every embedding is missing"))


def _problem(index: int, key, column: str | None, text: str) -> dict:
    if key is None or isinstance(key, bool) or (isinstance(key, int)
                                                and -2**63 <= key < 2**64):
        plain = key
    else:  # an int beyond 64 bits (JSON encoders refuse it), a float, a long text
        plain = key if isinstance(key, str) else repr(key)
        plain = plain if len(plain) <= 64 else plain[:60] + "..."
    return {"index": index, "id": plain, "field": column, "problem": text}


def _raise_if_any(problems: list) -> None:
    if problems:
        problems.sort(key=lambda p: p["index"])
        raise BadRequest(422, f"{len(problems)} problem(s) in the posts; nothing was "
                              "scored", problems)
