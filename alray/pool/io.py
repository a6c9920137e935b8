"""Reading and writing pools and small tables, on local paths or pyarrow filesystem URIs.

Writes are atomic: everything goes to a temporary sibling first and is renamed into
place, so an interrupted write never leaves a half-written pool or table behind. On
local disks they are also durable: each file is fsynced before its rename and the
directory after it, so once a write returns, a power cut keeps it (the run directory's
commit protocol, docs/formats.md, relies on it).
"""
from __future__ import annotations

import errno
import os
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from alray.errors import EmptyPoolError, PoolSchemaError

PARQUET_SUFFIXES = (".parquet", ".pq", ".parq")


@dataclass(frozen=True)
class Location:
    """A path on a pyarrow filesystem (local when the user gave a plain path)."""

    fs: pafs.FileSystem
    path: str
    uri: str  # as the user wrote it: used in every message

    def child(self, name: str) -> "Location":
        return Location(self.fs, f"{self.path.rstrip('/')}/{name}", f"{self.uri.rstrip('/')}/{name}")


def locate(uri: str | os.PathLike) -> Location:
    """Resolve a local path or a URI (s3://, gs://, file://, ...) to a Location."""
    text = os.fspath(uri)
    if "://" in text:
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError) as exc:
            raise PoolSchemaError(f"{text}: cannot open filesystem: {exc}") from None
        return Location(fs, path, text)
    return Location(pafs.LocalFileSystem(), os.path.abspath(text), text)


def absolute_uri(uri: str) -> str:
    """A local path made absolute (runs and trials may work from another folder); URIs
    unchanged."""
    text = os.fspath(uri)
    return text if "://" in text else os.path.abspath(text)


def is_hidden(name: str) -> bool:
    # Spark, Hadoop and Ray write _SUCCESS, _metadata and .crc files next to shards
    return name.startswith((".", "_"))


def list_shards(loc: Location) -> tuple[list[Location], list[Location]]:
    """The Parquet shards of a pool (sorted by path) and the non-Parquet files among them.

    A pool is one Parquet file or a directory (searched recursively) of Parquet files.
    """
    info = loc.fs.get_file_info(loc.path)
    if info.type == pafs.FileType.NotFound:
        raise PoolSchemaError(f"{loc.uri}: no such file or directory")
    if info.type == pafs.FileType.File:
        return [loc], []
    selector = pafs.FileSelector(loc.path, recursive=True)
    shards, others = [], []
    for entry in sorted(loc.fs.get_file_info(selector), key=lambda e: e.path):
        if entry.type != pafs.FileType.File:
            continue
        rel = entry.path[len(loc.path):].lstrip("/")
        if any(is_hidden(part) for part in rel.split("/")):
            continue
        target = shards if entry.base_name.lower().endswith(PARQUET_SUFFIXES) else others
        target.append(Location(loc.fs, entry.path, f"{loc.uri.rstrip('/')}/{rel}"))
    return shards, others


def pool_shards(uri: str | os.PathLike) -> list[Location]:
    """The shards of a pool, refusing an empty pool or non-Parquet files among them."""
    loc = locate(uri)
    shards, others = list_shards(loc)
    if others:
        raise PoolSchemaError(f"{others[0].uri}: not a Parquet file (pool {loc.uri} "
                              f"must hold only .parquet shards)")
    if not shards:
        raise EmptyPoolError(f"{loc.uri}: the pool has no Parquet shards")
    return shards


def open_parquet(loc: Location, memory_map: bool = False) -> pq.ParquetFile:
    """``memory_map`` (local files only): read pages straight from the page cache instead
    of copying them into a buffer first. Packed vectors then decode ~1.6x faster
    (bench/decode.py); the mapped pages count in the process's RSS while the file is open
    (file-backed, reclaimable), which is why it is not the default."""
    try:
        if memory_map and _is_local(loc.fs):
            return pq.ParquetFile(pa.memory_map(loc.path))
        return pq.ParquetFile(loc.fs.open_input_file(loc.path))
    except (pa.ArrowException, OSError) as exc:
        raise PoolSchemaError(f"{loc.uri}: unreadable or corrupt Parquet file: {exc}") from None


def read_table(uri: str | os.PathLike, columns: list[str] | None = None) -> pa.Table:
    """Read a whole (small) Parquet table or pool: labels files, queries, validation sets."""
    tables = []
    for shard in pool_shards(uri):
        pf = open_parquet(shard)
        try:
            tables.append(pf.read(columns=columns))
        except (pa.ArrowException, OSError) as exc:
            raise PoolSchemaError(f"{shard.uri}: unreadable or corrupt Parquet file: {exc}"
                                  ) from None
    try:
        return pa.concat_tables(tables, promote_options="permissive")
    except pa.ArrowException as exc:
        raise PoolSchemaError(f"{uri}: shards have incompatible schemas: {exc}") from None


def iter_batches(loc: Location, columns: list[str] | None = None,
                 batch_size: int = 65536, memory_map: bool = False
                 ) -> Iterator[pa.RecordBatch]:
    """Stream one shard in record batches (memory bounded by a row group, not the shard).

    One row group at a time: pyarrow 26's ``iter_batches`` over a whole file kept every
    batch's buffers until the end (a 50k-row shard of the default pool: 260 MiB of Arrow
    memory at the last batch, 78 MiB read group by group). ``memory_map``: as
    ``open_parquet``'s.
    """
    pf = open_parquet(loc, memory_map)
    try:
        for group in range(pf.metadata.num_row_groups):
            yield from pf.iter_batches(batch_size=batch_size, columns=columns,
                                       row_groups=[group])
    except (pa.ArrowException, OSError) as exc:
        raise PoolSchemaError(f"{loc.uri}: unreadable or corrupt Parquet file: {exc}") from None


def write_options(table_schema: pa.Schema) -> dict:
    """Parquet options for pools: no dictionary or compression on embedding columns
    (lists, or packed vectors as fixed-size binary).

    Random floats gain nothing from either, and plain pages decode ~1.5x faster.
    """
    lists = [f.name for f in table_schema
             if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
             or pa.types.is_large_list(f.type) or pa.types.is_fixed_size_binary(f.type)]
    others = [f.name for f in table_schema if f.name not in lists]
    compression = {name: "none" for name in lists}
    compression.update({name: "snappy" for name in others})
    return {"use_dictionary": others, "compression": compression,
            "row_group_size": 16384}


def _temp_sibling(loc: Location) -> Location:
    parent, _, name = loc.path.rstrip("/").rpartition("/")
    tmp = f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    return Location(loc.fs, f"{parent}/{tmp}", f"{loc.uri}.tmp")


def _replace(fs: pafs.FileSystem, src: str, dst: str, is_dir: bool) -> None:
    if isinstance(fs, pafs.LocalFileSystem) and not is_dir:
        os.replace(src, dst)  # atomic on POSIX
        return
    if fs.get_file_info(dst).type != pafs.FileType.NotFound:
        old = f"{dst}.old-{uuid.uuid4().hex[:8]}"
        fs.move(dst, old)
        fs.move(src, dst)
        (fs.delete_dir if is_dir else fs.delete_file)(old)
    else:
        fs.move(src, dst)


def _is_local(fs: pafs.FileSystem) -> bool:
    return isinstance(fs, pafs.LocalFileSystem)


def fsync_file(path: str | os.PathLike) -> None:
    """Flush a written local file's data to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a local directory's entries (a rename or new file in it) to the disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):  # filesystems without it
            raise
    finally:
        os.close(fd)


def write_table(table: pa.Table, uri: str | os.PathLike) -> None:
    """Write one Parquet file atomically (temp file, fsync, rename, fsync of the
    directory: on a local disk it survives a power cut once this returns)."""
    loc = locate(uri)
    parent = loc.path.rstrip("/").rpartition("/")[0]
    loc.fs.create_dir(parent, recursive=True)
    tmp = _temp_sibling(loc)
    try:
        pq.write_table(table, tmp.path, filesystem=loc.fs, **write_options(table.schema))
        if _is_local(loc.fs):
            fsync_file(tmp.path)
        _replace(loc.fs, tmp.path, loc.path, is_dir=False)
        if _is_local(loc.fs):
            fsync_dir(parent)
    except BaseException:
        _silently_delete(loc.fs, tmp.path, is_dir=False)
        raise


@contextmanager
def atomic_directory(uri: str | os.PathLike) -> Iterator[Location]:
    """Yield a temporary directory; on success it replaces ``uri`` whole, else vanishes."""
    loc = locate(uri)
    parent = loc.path.rstrip("/").rpartition("/")[0]
    loc.fs.create_dir(parent, recursive=True)
    tmp = _temp_sibling(loc)
    loc.fs.create_dir(tmp.path, recursive=True)
    try:
        yield Location(loc.fs, tmp.path, loc.uri)
        if _is_local(loc.fs):
            fsync_dir(tmp.path)  # its files were fsynced as written (write_shard)
        _replace(loc.fs, tmp.path, loc.path, is_dir=True)
        if _is_local(loc.fs):
            fsync_dir(parent)
    except BaseException:
        _silently_delete(loc.fs, tmp.path, is_dir=True)
        raise


def _silently_delete(fs: pafs.FileSystem, path: str, is_dir: bool) -> None:
    try:
        (fs.delete_dir if is_dir else fs.delete_file)(path)
    except (OSError, pa.ArrowException):
        pass  # best effort: the original error matters more


def write_shard(table: pa.Table, directory: Location, index: int) -> None:
    """Write shard ``index`` into a (temporary) pool directory."""
    path = f"{directory.path}/part-{index:05d}.parquet"
    pq.write_table(table, path, filesystem=directory.fs, **write_options(table.schema))
    if _is_local(directory.fs):
        fsync_file(path)


def write_json(path: str | os.PathLike, data) -> None:
    """Write a small local JSON file atomically (temp file, fsync, rename, fsync of the
    directory)."""
    import json

    text = json.dumps(data, indent=2, sort_keys=True, default=str)
    path = os.fspath(path)
    tmp = f"{os.path.dirname(path) or '.'}/.{os.path.basename(path)}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(os.path.dirname(path) or ".")
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def fingerprint(uri: str | os.PathLike) -> list[dict]:
    """What identifies a pool's content cheaply: per shard its relative name, size,
    modification time and a hash of its Parquet footer (row counts, offsets, statistics).

    Reading footers only, so it costs milliseconds on pools of any size.
    """
    import hashlib

    loc = locate(uri)
    root = loc.path.rstrip("/")
    entries = []
    for shard in pool_shards(uri):
        info = shard.fs.get_file_info(shard.path)
        with shard.fs.open_input_file(shard.path) as f:
            f.seek(max(0, info.size - 8))
            tail = f.read(8)
            footer_len = int.from_bytes(tail[:4], "little") if len(tail) == 8 else 0
            f.seek(max(0, info.size - 8 - footer_len))
            footer = f.read(footer_len + 8)
        name = shard.path[len(root):].lstrip("/") or os.path.basename(shard.path)
        entries.append({"file": name, "size": info.size, "mtime_ns": info.mtime_ns,
                        "footer_sha256": hashlib.sha256(footer).hexdigest()})
    return entries


def fingerprint_changes(old: list[dict], new: list[dict]) -> list[str]:
    """Human-readable differences between two ``fingerprint`` results."""
    before = {e["file"]: e for e in old}
    after = {e["file"]: e for e in new}
    changes = [f"{name}: removed" for name in sorted(set(before) - set(after))]
    changes += [f"{name}: added" for name in sorted(set(after) - set(before))]
    for name in sorted(set(before) & set(after)):
        differs = [k for k in ("size", "footer_sha256", "mtime_ns")
                   if before[name].get(k) != after[name].get(k)]
        if differs:
            changes.append(f"{name}: {', '.join(differs)} changed")
    return changes
