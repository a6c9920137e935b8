"""Routing within a budget, shared by every replica through one ``Coordinator`` actor.

The threshold is the (1 - budget) quantile of a fixed-size reservoir sample (Vitter's
algorithm R, seeded) of the routing strategy's scores: seeded from a calibration pool
when one is given, then fed by the traffic, so memory stays bounded and the threshold
follows a drifting score distribution. Replicas decide with the threshold of their
previous report (at most one batch old), so deciding never waits for the actor.

The coordinator is also the only writer of routed posts (``RUN/online/routed-*.parquet``,
each written temp-then-rename) and the keeper of the model version: it reads
RUN/state.json at most every ``poll_s`` and bumps the version when the loop has
committed a new checkpoint, or when ``POST /reload`` asks.

A crash loses nothing a client was told. Routed posts are appended to a journal
(``RUN/online/journal.arrows``, an Arrow IPC stream, fsynced per batch) before the
replica answers ``route_to_assessors: true``; Ray restarts the actor (and retries the
call in flight), and the new one writes what the journal holds as a shard before anything
else. Why a journal in the coordinator rather than a file per batch written by the
replicas: the same durability (one fsync per batch with routed posts), one writer, and
shards of ``flush_rows`` posts instead of one small file per batch. A restarted
coordinator starts with the calibration's threshold again, and takes the model version
the replicas report (it cannot be behind them).
"""
from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

from alray import seeds
from alray.serve.config import ServeConfig

ROUTED_DIR = "online"
ROUTED_PATTERN = re.compile(r"routed-(\d{6})\.parquet")
JOURNAL = "journal.arrows"


class Reservoir:
    """A seeded uniform sample of at most ``size`` of the scores seen so far."""

    def __init__(self, size: int, seed: int):
        self.size = int(size)
        self.values = np.empty(0, dtype=np.float64)
        self.seen = 0
        self._rng = seeds.rng(seed, "reservoir")

    def add(self, scores: np.ndarray) -> None:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        room = max(0, self.size - len(self.values))
        self.values = np.concatenate([self.values, scores[:room]])
        rest = scores[room:]
        if len(rest):
            # item j (0-based, over all items seen) replaces a random slot with
            # probability size / (j + 1): algorithm R, one draw per item
            positions = self.seen + room + np.arange(len(rest))
            slots = self._rng.integers(0, positions + 1)
            hit = slots < self.size
            self.values[slots[hit]] = rest[hit]
        self.seen += len(scores)

    def quantile(self, q: float) -> float | None:
        return float(np.quantile(self.values, q)) if len(self.values) else None


class RoutedWriter:
    """Buffers routed posts and writes them as numbered Parquet shards in ``directory``;
    every buffered post is in the journal first (fsynced), and a journal left by a crash
    is written as a shard when the writer starts."""

    def __init__(self, directory: Path, next_index: int):
        self.directory, self.next_index = directory, next_index
        self.parts: list[pa.Table] = []
        self.rows = 0
        self.since = time.monotonic()
        self._journal = None  # (file, IPC writer, schema) while posts are buffered
        self.replayed = 0

    @classmethod
    def open(cls, directory: str | os.PathLike) -> "RoutedWriter":
        """The writer of ``directory``: created if needed, numbering after its shards
        (never overwriting one), a journal left by a crash written out first."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        found = [int(m.group(1)) for p in directory.iterdir()
                 if (m := ROUTED_PATTERN.fullmatch(p.name))]
        writer = cls(directory, max(found, default=-1) + 1)
        writer.replayed = writer._replay()
        return writer

    def add(self, table: pa.Table) -> None:
        """Buffer ``table``; it is on disk (fsynced) when this returns."""
        if self._journal is not None and not table.schema.equals(self._journal[2]):
            self.flush()  # another schema: one journal holds one
        if self._journal is None:
            self._open_journal(table.schema)
        sink, writer, _ = self._journal
        writer.write_table(table)
        sink.flush()
        os.fsync(sink.fileno())
        if not self.parts:
            self.since = time.monotonic()
        self.parts.append(table)
        self.rows += table.num_rows

    def due(self, rows: int, seconds: float) -> bool:
        return self.rows >= rows or (self.rows > 0 and time.monotonic() - self.since >= seconds)

    def flush(self) -> str | None:
        from alray.pool import io

        if not self.parts:
            return None
        path = self.directory / f"routed-{self.next_index:06d}.parquet"
        io.write_table(pa.concat_tables(self.parts, promote_options="permissive"), path)
        self.next_index += 1
        self.parts, self.rows = [], 0
        self._close_journal()  # after the shard: a crash in between writes them twice
        return str(path)

    def _open_journal(self, schema: pa.Schema) -> None:
        sink = open(self.directory / JOURNAL, "wb")
        self._journal = (sink, pa.ipc.new_stream(sink, schema), schema)
        _fsync_dir(self.directory)

    def _close_journal(self) -> None:
        if self._journal is not None:
            sink, writer, _ = self._journal
            writer.close()
            sink.close()
            self._journal = None
        (self.directory / JOURNAL).unlink(missing_ok=True)

    def _replay(self) -> str | None:
        """The shard of the posts a crashed writer journaled; a torn last batch (the
        crash came while it was written, so no client was answered) is left out."""
        path = self.directory / JOURNAL
        if not path.exists():
            return None
        batches = []
        try:
            with pa.ipc.open_stream(pa.memory_map(str(path))) as reader:
                for batch in reader:
                    batches.append(batch)
        except (pa.ArrowException, OSError, ValueError):
            pass
        for batch in batches:
            self.parts.append(pa.Table.from_batches([batch]))
            self.rows += batch.num_rows
        if not self.parts:
            self._close_journal()
            return None
        return self.flush()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def latest_checkpoint(run_dir: str) -> str | None:
    """The checkpoint RUN/state.json names (absolute), or None before the first step."""
    from alray.loop.state import RunDir

    state = RunDir.open(run_dir).read_state()
    return str(Path(run_dir, state.checkpoint).resolve()) if state.checkpoint else None


class Coordinator:
    """The replicas' shared state (a Ray actor): threshold, counts, model version, and
    the writer of routed posts. Its methods take and return plain data."""

    def __init__(self, config: dict, checkpoint: str, calibration: np.ndarray | None = None):
        self.config = ServeConfig.from_dict(config)
        self.reservoir = Reservoir(self.config.reservoir_size, self.config.seed)
        if calibration is not None and len(calibration):
            self.reservoir.add(calibration)
        self.calibrated = int(self.reservoir.seen)
        self.posts_seen = self.posts_routed = 0
        self.checkpoint, self.version = str(checkpoint), 0
        self.reload_error: str | None = None
        self.replicas: dict[str, tuple[int, float]] = {}  # id -> (version, last report)
        run = self.config.run_dir
        self.writer = RoutedWriter.open(Path(run, ROUTED_DIR)) if run else None
        self._run_checkpoint = latest_checkpoint(run) if run else None
        self._polled = time.monotonic()

    # --- routing ------------------------------------------------------------------------
    def threshold(self) -> float | None:
        if self.reservoir.seen < self.config.warmup_posts:
            return None
        return self.reservoir.quantile(1.0 - self.config.route_budget)

    def observe(self, scores: np.ndarray, routed: pa.Table | None) -> float | None:
        """Record a batch's routing scores and its routed posts; the new threshold."""
        self.reservoir.add(scores)
        self.posts_seen += len(scores)
        if routed is not None and routed.num_rows:
            self.posts_routed += routed.num_rows
            if self.writer is not None:
                self.writer.add(routed)
        if self.writer is not None and self.writer.due(self.config.flush_rows,
                                                       self.config.flush_s):
            self.writer.flush()
        return self.threshold()

    def flush(self) -> str | None:
        return self.writer.flush() if self.writer is not None else None

    def tick(self) -> None:
        """Called every second by the service's driver: flushes routed posts that waited
        ``flush_s`` and looks for a new checkpoint even when no traffic comes."""
        self.current()
        if self.writer is not None and self.writer.due(self.config.flush_rows,
                                                       self.config.flush_s):
            self.writer.flush()

    # --- the model version --------------------------------------------------------------
    def current(self, replica: str | None = None, loaded: int | None = None,
                checkpoint: str | None = None) -> dict:
        """The checkpoint replicas should serve; ``replica`` reports the version (and
        checkpoint) it has. A replica ahead of the coordinator means the coordinator was
        restarted: it takes the replica's version, so versions never go back."""
        if replica is not None:
            self.replicas[replica] = (loaded if loaded is not None else -1, time.monotonic())
            if loaded is not None and checkpoint is not None and loaded > self.version:
                self.checkpoint, self.version = str(checkpoint), int(loaded)
        if self.config.run_dir and time.monotonic() - self._polled >= self.config.poll_s:
            self._poll_run()
        return {"checkpoint": self.checkpoint, "version": self.version}

    def reload(self, checkpoint: str | None = None) -> dict:
        """Serve ``checkpoint`` (or the run's latest) from now on: a new version."""
        if checkpoint is None:
            if not self.config.run_dir:
                raise ValueError("no checkpoint given and the service has no run "
                                 "directory to take the latest from")
            checkpoint = latest_checkpoint(self.config.run_dir)
            self._run_checkpoint = checkpoint
        return self._switch(str(checkpoint))

    def replicas_on(self, version: int, within_s: float) -> tuple[int, int]:
        """(replicas that reported ``version`` or later, replicas heard from lately)."""
        now = time.monotonic()
        live = [v for v, at in self.replicas.values() if now - at <= within_s]
        return sum(v >= version for v in live), len(live)

    def _poll_run(self) -> None:
        self._polled = time.monotonic()
        try:
            latest = latest_checkpoint(self.config.run_dir)
        except Exception:  # a half-written run: keep serving, look again next time
            return
        if latest and latest != self._run_checkpoint:
            self._run_checkpoint = latest
            self._switch(latest)

    def _switch(self, checkpoint: str) -> dict:
        self.checkpoint, self.version = checkpoint, self.version + 1
        return {"checkpoint": self.checkpoint, "version": self.version}

    def note_reload_error(self, text: str | None) -> None:
        self.reload_error = text

    def info(self) -> dict:
        return {"checkpoint": self.checkpoint, "model_version": self.version,
                "threshold": self.threshold(), "posts_seen": self.posts_seen,
                "posts_routed": self.posts_routed, "calibration_posts": self.calibrated,
                "reservoir": len(self.reservoir.values), "reload_error": self.reload_error,
                "routed_dir": str(self.writer.directory) if self.writer else None}


def routed_rows(table: pa.Table, result: dict, routed: np.ndarray, config: ServeConfig,
                threshold: float, checkpoint: str) -> pa.Table:
    """The routed posts as pool rows (id, embeddings, null label) and why they went."""
    rows = table.filter(pa.array(routed))
    n = rows.num_rows
    strategy = config.route_strategy
    return rows.append_column(config.columns.label_column, pa.nulls(n, pa.int64())).append_column(
        "strategy", pa.array([strategy] * n, pa.string())).append_column(
        "score", pa.array(result[f"score_{strategy}"][routed])).append_column(
        "threshold", pa.array([threshold] * n, pa.float64())).append_column(
        "predicted_class", pa.array(result["predicted_class"][routed])).append_column(
        "predicted_prob", pa.array(result["predicted_prob"][routed])).append_column(
        "checkpoint", pa.array([checkpoint] * n, pa.string())).append_column(
        "routed_at", pa.array([time.time()] * n, pa.float64()))


def calibration_scores(pool_uri: str, model, config: ServeConfig) -> np.ndarray:
    """The routing strategy's scores of a seeded sample of up to ``calibration_rows``
    posts of ``pool_uri``: whole row groups drawn at random, then rows among them."""
    from alray.pool import io

    rng = seeds.rng(config.seed, "calibration")
    groups = [(shard, g) for shard in io.pool_shards(pool_uri)
              for g in range(io.open_parquet(shard).metadata.num_row_groups)]
    columns = [config.columns.id_column, *config.columns.embedding_columns.values()]
    parts, rows = [], 0
    for i in rng.permutation(len(groups)):
        shard, group = groups[i]
        part = io.open_parquet(shard).read_row_group(group, columns=columns)
        parts.append(part)
        rows += part.num_rows
        if rows >= config.calibration_rows:
            break
    if not parts:
        return np.zeros(0)
    table = pa.concat_tables(parts)
    if table.num_rows > config.calibration_rows:
        keep = np.sort(rng.choice(table.num_rows, config.calibration_rows, replace=False))
        table = table.take(pa.array(keep))
    scores = []
    for start in range(0, table.num_rows, 4096):
        batch = table.slice(start, 4096)
        scores.append(model.predict(batch)[f"score_{config.route_strategy}"])
    return np.concatenate(scores)
