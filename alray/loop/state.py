"""A loop's run directory: everything a run needs to resume, written so a kill loses nothing.

Layout (docs/formats.md)::

    RUN/run.json                 format, version, frozen LoopConfig, pool fingerprints
    RUN/state.json               the commit point: last completed step, its checkpoint,
                                 the query open for assessors
    RUN/labels.parquet           id, label, step, source (initial|oracle|assessor|skipped)
    RUN/metrics.parquet          one row per completed step
    RUN/queries/step-NNNNN.parquet (and .csv in assessor mode)
    RUN/checkpoints/step-NNNNN/  the passive model (step 0) and the latest step

Every file is replaced by write-temp-then-rename. ``state.json`` is written last in a
step: rows of labels.parquet and metrics.parquet from a step after ``state.step`` are an
interrupted step's and are recomputed (simulation) or kept (assessors' answers).

One process writes a run at a time: ``create`` and ``open(write=True)`` take the run's
lock (``alray.loop.lock``, ``RUN/writer.lock``) and only its holder writes or removes
leftovers of killed writes; a plain ``open`` reads and never changes a file.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from alray import __version__
from alray.config import LoopConfig
from alray.errors import ConfigError, StateError
from alray.loop.lock import RunLock
from alray.pool import io, sheets

FORMAT = "alray-run"
VERSION = 2  # 2: the step budget lives beside the frozen config, not in it
SOURCES = ("initial", "oracle", "assessor", "skipped")
TIMING_SUFFIX = "_s"  # metrics columns ending so are wall times, not results


@dataclass(frozen=True)
class RunState:
    """step: last completed step (-1: none yet); checkpoint: its directory, relative to
    the run; open_query: the step whose query waits for assessors' labels."""

    step: int = -1
    checkpoint: str | None = None
    open_query: int | None = None


def labels_schema(id_type: pa.DataType) -> pa.Schema:
    return pa.schema([("id", id_type), ("label", pa.int64()), ("step", pa.int64()),
                      ("source", pa.string())])


class RunDir:
    """Reads and atomically writes the files of one run directory (writes only with the
    run's lock: a ``RunDir`` from ``create`` or ``open(write=True)``)."""

    def __init__(self, path: str | os.PathLike, meta: dict, lock: RunLock | None = None):
        self.path = Path(path)
        self.meta = meta
        self.config = LoopConfig.from_dict(meta["config"])
        self._lock = lock

    # --- creating and opening -------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike, config: LoopConfig, fingerprints: dict,
               steps: int = 100) -> "RunDir":
        """A new run in ``path`` (which must be absent or empty), locked by this process."""
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            _refuse_create(path)
        meta = {"format": FORMAT, "version": VERSION, "alray": __version__,
                "config": config.to_dict(), "fingerprints": fingerprints,
                "steps": int(steps)}
        # built aside, locked, and renamed into place: a kill leaves either no run or a
        # whole one, and the lock is held from the moment the run exists
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            lock = RunLock.acquire(tmp)
            (tmp / "queries").mkdir()
            (tmp / "checkpoints").mkdir()
            cls(tmp, meta, lock).write_state(RunState())
            io.write_json(tmp / "run.json", meta)
            io.fsync_dir(tmp)
            try:
                os.rename(tmp, path)  # replaces an empty directory, never a full one
            except OSError as exc:
                lock.release()
                if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
                    _refuse_create(path)  # another process created a run there meanwhile
                raise StateError(f"{path}: cannot create the run: {exc.strerror}") from None
            lock.moved_to(path)
            io.fsync_dir(path.parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return cls(path, meta, lock)

    @staticmethod
    def exists(path: str | os.PathLike) -> bool:
        return (Path(path) / "run.json").exists()

    @classmethod
    def open(cls, path: str | os.PathLike, write: bool = False) -> "RunDir":
        """The run in ``path``: read-only (changes nothing on disk), or with
        ``write=True`` locked by this process, its killed writes' leftovers removed; a
        ``StateError`` naming the holder if another process writes the run."""
        path = Path(path)
        lock = None
        if write:
            _read_json(path / "run.json", "run description")  # a run, before it is locked
            lock = RunLock.acquire(path)
        meta = _read_json(path / "run.json", "run description")
        if meta.get("format") != FORMAT:
            raise StateError(f"{path / 'run.json'}: not an alray run directory "
                             f"(format {meta.get('format')!r})")
        if meta.get("version") != VERSION:
            raise StateError(f"{path / 'run.json'}: run format version {meta.get('version')}"
                             f" (written by alray {meta.get('alray')}); this alray "
                             f"{__version__} reads version {VERSION}")
        try:
            run = cls(path, meta, lock)
        except (ConfigError, TypeError) as exc:
            raise StateError(f"{path / 'run.json'}: corrupt frozen config: {exc}") from None
        if write:
            run.remove_leftovers()
        return run

    @property
    def writable(self) -> bool:
        """Whether this process holds the run's lock through this ``RunDir``."""
        return self._lock is not None and self._lock.held

    def require_writable(self) -> None:
        if not self.writable:
            raise StateError(f"{self.path}: opened read-only; a write needs the run's "
                             "lock (RunDir.open(path, write=True))")

    def close(self) -> None:
        """Drop this ``RunDir``'s hold on the lock (released once no ``RunDir`` of this
        process holds it); reading still works."""
        self._lock = None

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def remove_leftovers(self) -> None:
        """Delete temporary files a killed write left behind (never a committed file).
        Only the lock holder may: another process's files in flight look the same."""
        self.require_writable()
        for folder in (self.path, self.path / "queries", self.path / "checkpoints"):
            for entry in [*folder.glob(".*.tmp*"), *folder.glob(".*.old")]:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)

    @property
    def budget(self) -> int:
        """The last step the run is to reach (a resumed run may extend it)."""
        return int(self.meta.get("steps", 0))

    def set_budget(self, steps: int) -> None:
        """Record a new step budget in run.json."""
        self.require_writable()
        if steps != self.budget:
            self.meta = {**self.meta, "steps": int(steps)}
            io.write_json(self.path / "run.json", self.meta)

    def check_config(self, asked: LoopConfig) -> None:
        """Refuse to resume with options that differ from the frozen ones."""
        diffs = self.config.differences(asked)
        if diffs:
            raise StateError(f"{self.path}: the run was started with other options; "
                             "resume without them or start a new run",
                             [f"{self.path}: resuming with other options than the run "
                              "was started with (frozen -> asked):"]
                             + [f"  {d}" for d in diffs])

    # --- state ------------------------------------------------------------------------
    def read_state(self) -> RunState:
        data = _read_json(self.path / "state.json", "run state")
        try:
            return RunState(**data)
        except TypeError as exc:
            raise StateError(f"{self.path / 'state.json'}: corrupt run state: {exc}") from None

    def write_state(self, state: RunState) -> None:
        self.require_writable()
        io.write_json(self.path / "state.json", asdict(state))

    # --- labels and metrics -----------------------------------------------------------
    @property
    def labels_path(self) -> Path:
        return self.path / "labels.parquet"

    def read_labels(self, up_to_step: int | None = None) -> pa.Table | None:
        """The labels table (rows with step <= ``up_to_step`` when given), or None."""
        table = _read_parquet(self.labels_path, "labels")
        if table is None or up_to_step is None:
            return table
        return table.filter(pc.less_equal(table.column("step"), up_to_step))

    def write_labels(self, table: pa.Table) -> None:
        self.require_writable()
        io.write_table(table, self.labels_path)

    def read_metrics(self, up_to_step: int | None = None) -> pa.Table | None:
        table = _read_parquet(self.path / "metrics.parquet", "metrics")
        if table is None or up_to_step is None:
            return table
        return table.filter(pc.less_equal(table.column("step"), up_to_step))

    def write_metrics(self, table: pa.Table) -> None:
        self.require_writable()
        io.write_table(table, self.path / "metrics.parquet")

    # --- queries and checkpoints --------------------------------------------------------
    def query_path(self, step: int, suffix: str = ".parquet") -> Path:
        return self.path / "queries" / f"step-{step:05d}{suffix}"

    def write_query(self, table: pa.Table, step: int, csv: bool = False) -> None:
        self.require_writable()
        io.write_table(table, self.query_path(step))
        if csv:
            tmp = self.query_path(step, ".csv.tmp")
            tmp = tmp.with_name(f".{tmp.name}")
            sheets.write_csv(table, tmp)  # text cells escaped: no formulas
            io.fsync_file(tmp)
            os.replace(tmp, self.query_path(step, ".csv"))
            io.fsync_dir(tmp.parent)

    def read_query(self, step: int) -> pa.Table:
        table = _read_parquet(self.query_path(step), f"query of step {step}")
        if table is None:
            raise StateError(f"{self.query_path(step)}: the query of step {step} is missing")
        return table

    def checkpoint_dir(self, step: int) -> str:
        return f"checkpoints/step-{step:05d}"

    def prune_checkpoints(self, keep: set[str]) -> None:
        """Delete checkpoint directories not in ``keep`` (relative names)."""
        self.require_writable()
        for entry in (self.path / "checkpoints").iterdir():
            if f"checkpoints/{entry.name}" not in keep and entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)


def _refuse_create(path: Path) -> None:
    if (path / "run.json").exists():
        raise StateError(f"{path} already holds a run; add --resume to continue "
                         "it, or choose another --run-dir")
    raise StateError(f"{path} is not empty and holds no run; choose an empty or "
                     "new --run-dir")


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise StateError(f"{path}: missing {what}; is {path.parent} a run directory?"
                         ) from None
    except (OSError, ValueError) as exc:
        raise StateError(f"{path}: corrupt {what}: {exc}") from None
    if not isinstance(data, dict):
        raise StateError(f"{path}: corrupt {what}: not a JSON object")
    return data


def _read_parquet(path: Path, what: str) -> pa.Table | None:
    if not path.exists():
        return None
    try:
        return pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise StateError(f"{path}: corrupt {what} file: {exc}") from None


__all__ = ["FORMAT", "VERSION", "SOURCES", "RunDir", "RunState", "labels_schema"]
