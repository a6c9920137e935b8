"""Binary request bodies (Arrow IPC, Parquet) -> a table, sized before it is decoded.

The body limit counts bytes on the wire, and a 2.5 MB zstd Parquet body holds 2 million
posts. So what a body declares is checked against ``Limits`` before anything is
decompressed or decoded: for Arrow IPC every record batch and dictionary message's rows
and buffer sizes (decompressed sizes included) read from its flatbuffer header; for
Parquet the footer's rows and per-column value counts, then the decoded size after each
row group. The decoded table is validated in full (offsets, lengths, UTF-8) before any
of it is used. Every failure is a ``BadRequest`` (400 malformed, 413 too big, 422
invalid), never another exception: a hostile body must not make a 500, nor crash the
replica (see ``_read_parquet``).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

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


def read_bulk(body: bytes, kind: str, limits: Limits = Limits()) -> pa.Table:
    """The table of an Arrow IPC or Parquet body, its size checked against ``limits``
    from the body's own metadata before anything is decompressed or decoded, then
    validated in full (offsets, lengths, UTF-8: a hostile body must not make later
    code read out of bounds)."""
    try:
        if kind in PARQUET_TYPES:
            table = _read_parquet(body, limits)
        else:
            table = _read_ipc(body, kind, limits)
        table.column_names  # names that are not UTF-8 fail here, as malformed
    except (pa.ArrowException, OSError, ValueError, TypeError, struct.error,
            IndexError) as exc:  # a damaged message header included
        raise BadRequest(400, f"malformed {kind} body: {exc}") from None
    check_rows(table.num_rows, limits)
    _check_bytes(table.nbytes, limits, "decoded")
    try:
        table.validate(full=True)
    except (pa.ArrowException, ValueError) as exc:
        raise BadRequest(422, f"invalid {kind} body (full validation): {exc}") from None
    return table


def _read_parquet(body: bytes, limits: Limits) -> pa.Table:
    """Row groups one at a time, after the footer's row counts and value counts fit.

    ``scan_contents`` first: it reads every column chunk's metadata and pages through
    C++ code that reports a damaged one as an error (it decodes into a small scratch
    buffer and keeps nothing). Without it, pyarrow's Python accessor of a column chunk's
    metadata (``row_group(g).column(c)``) *aborts the process* on some damaged footers
    (a size-statistics histogram of the wrong length: pyarrow 26, found by fuzzing).
    """
    file = pq.ParquetFile(pa.BufferReader(body))
    meta = file.metadata
    check_rows(meta.num_rows, limits)
    if file.scan_contents(batch_size=1024) != meta.num_rows:
        raise ValueError("the row groups do not hold the rows the footer declares")
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
        check_rows(rows, limits)  # a footer that lied is caught one row group later
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
            check_rows(rows, limits)
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
    raw = memoryview(body) if (compressed and body is not None) else b""
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


def check_rows(rows: int, limits: Limits) -> None:
    if rows > limits.max_posts:
        raise BadRequest(413, f"the body holds {rows:,} posts or more, over the limit of "
                              f"{limits.max_posts:,} per request (--max-posts); split it")


def _check_bytes(size: int, limits: Limits, what: str) -> None:
    if size > limits.max_decoded_bytes:
        raise BadRequest(413, f"the body's {what} size is {size:,} bytes, over the limit "
                              f"of {limits.max_decoded_bytes:,} (--max-decoded-mb); "
                              "split it")


__all__ = ["ARROW_TYPES", "PARQUET_TYPES", "BadRequest", "Limits", "check_rows",
           "read_bulk"]
