"""Routed posts -> the run's next open query (``alray online queue RUN``).

The service writes routed posts to ``RUN/online/routed-*.parquet``. They are new posts,
not in the run's pool, and the loop trains on pool rows; so queueing them does what a
post arriving in production means: the posts join the pool as one new shard
(``POOL/online/step-SSSSS.parquet``), the run records that pool change as its own (the
fingerprints are refreshed, the change listed in run.json), and they become the open
query of step S = the last completed step + 1, with their routing scores as the query's
scores. From there it is the assessor round trip: ``alray labels import RUN FILE``, then
``alray loop --run-dir RUN --resume``. Queued shards move to ``RUN/online/queued/``.

A routed post whose id is already in the pool, unlabelled, is the pool's row: the loop
trains on the pool row's embeddings. It is queued only when its routed embeddings are
the pool row's; otherwise it is refused (counted and named, moved with its shard), since
its label would silently train another embedding.

Order of writes (each atomic): the pool shard, run.json's fingerprints (the shard
recorded as the run's own change), the query, state.json (the commit point), then the
shards move. A kill anywhere before state.json leaves no open query and running the
command again finishes the step from the same shards: a kill between the pool shard and
run.json leaves exactly that shard as the pool's only change, which is taken as this
command's own (its posts are then the pool's, with the same embeddings).
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alray.errors import PoolSchemaError, StateError
from alray.pool.schema import QUERY_COLUMNS
from alray.serve.routing import ROUTED_DIR, ROUTED_PATTERN


def queue_routed(run_dir: str | os.PathLike) -> dict:
    """Make the routed posts of ``run_dir`` its open query; returns
    ``{"step", "queued", "dropped", "refused", "pool_shard", "query"}`` (``refused``:
    the ids in the pool with other embeddings, left out)."""
    from alray.loop.setup import reopen_run
    from alray.loop.state import RunState
    from alray.pool import io
    from alray.pool.load import read_ids_and_labels

    run = _reopen(run_dir)  # refuses a pool that changed behind the run's back
    state = run.read_state()
    if state.open_query is not None:
        raise StateError(f"{run.path}: the query of step {state.open_query} still waits "
                         f"for labels; import them (alray labels import {run.path} FILE) "
                         "and resume the run before queueing routed posts")
    if state.step < 0:
        raise StateError(f"{run.path}: the run has no model yet; run its first step first")
    shards = pending_shards(run.path)
    if not shards:
        raise StateError(f"{run.path / ROUTED_DIR}: no routed posts to queue")
    cols = run.config.columns
    routed = pa.concat_tables([io.read_table(p) for p in shards],
                              promote_options="permissive")
    routed = _unique(routed.rename_columns(["id" if n == cols.id_column else n
                                            for n in routed.column_names]))
    pool_ids, pool_labels = read_ids_and_labels(run.config.pool_uri, cols)
    labels = run.read_labels()
    done = set() if labels is None else set(labels.column("id").to_pylist())
    done |= set(pool_ids[pool_labels >= 0].tolist())  # the pool's labels are known
    ids = routed.column("id").to_pylist()
    keep = np.array([i not in done for i in ids], dtype=bool)
    routed = routed.filter(pa.array(keep))
    in_pool = np.isin(routed.column("id").to_numpy(zero_copy_only=False), pool_ids)
    refused = _not_the_pool_rows(run, routed.filter(pa.array(in_pool)))
    if refused:
        keep = ~np.isin(routed.column("id").to_numpy(zero_copy_only=False),
                        np.asarray(refused, dtype=pool_ids.dtype))
        routed, in_pool = routed.filter(pa.array(keep)), in_pool[keep]
    if routed.num_rows == 0:
        raise StateError(f"{run.path}: none of the {len(ids)} routed posts can be queued: "
                         f"labelled already, or ({len(refused)}) in the pool with other "
                         "embeddings" + _named(refused))
    step = state.step + 1
    new = routed.filter(pa.array(~in_pool))
    shard = _add_to_pool(run, new, step) if new.num_rows else None
    if shard is not None:  # recorded before anything points at the shard
        reopen_run(run_dir, allow_pool_change=True)
    query = _query_table(routed, step, cols.show_columns)
    run.write_query(query, step, csv=True)
    run.write_state(RunState(state.step, state.checkpoint, open_query=step))
    _move_queued(shards, run.path / ROUTED_DIR / "queued" / f"step-{step:05d}")
    return {"step": step, "queued": query.num_rows,
            "dropped": len(ids) - query.num_rows - len(refused), "refused": refused,
            "pool_shard": shard, "query": str(run.query_path(step, ".csv"))}


def _reopen(run_dir: str | os.PathLike):
    """The run, locked; the pool may differ from the run's record only by the shard an
    interrupted ``queue_routed`` of the next step wrote (then it is recorded now)."""
    from alray.loop.setup import fingerprints, reopen_run
    from alray.loop.state import RunDir
    from alray.pool import io

    run = RunDir.open(run_dir)
    own = f"online/{_shard_name(run.read_state().step + 1)}"
    old, new = run.meta.get("fingerprints", {}), fingerprints(run.config)
    changes = io.fingerprint_changes(old.get("pool", []), new["pool"])
    unchanged_val = not io.fingerprint_changes(old.get("val", []), new["val"])
    ours = changes == [f"{own}: added"] and unchanged_val
    return reopen_run(run_dir, allow_pool_change=ours)


def _shard_name(step: int) -> str:
    return f"step-{step:05d}.parquet"


def _not_the_pool_rows(run, routed: pa.Table) -> list:
    """Ids of ``routed`` (posts whose id is in the pool) whose embeddings differ from
    the pool row's: their labels would train the pool row's embeddings, not these."""
    from alray.pool.arrays import embedding_matrix
    from alray.pool.load import load_rows

    if routed.num_rows == 0:
        return []
    ids = routed.column("id").to_pylist()
    pool = load_rows(run.config.pool_uri, run.config.columns, ids=np.asarray(ids))
    position = {key: i for i, key in enumerate(pool.ids.tolist())}
    rows = np.array([position[key] for key in ids], dtype=np.int64)
    same = np.ones(len(ids), dtype=bool)
    for modality, column in run.config.columns.embedding_columns.items():
        dim = pool.features[modality].shape[1]
        if column not in routed.column_names:
            same &= ~pool.present[modality][rows]
            continue
        matrix, present = embedding_matrix(routed.column(column), dim, column)
        same &= present == pool.present[modality][rows]
        same &= (matrix == pool.features[modality][rows]).all(axis=1)
    return [key for key, ok in zip(ids, same) if not ok]


def _named(ids: list) -> str:
    return f": {', '.join(map(str, ids[:10]))}" + (" ..." if len(ids) > 10 else "") \
        if ids else ""


def pending_shards(run_path: Path) -> list[Path]:
    folder = Path(run_path) / ROUTED_DIR
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if ROUTED_PATTERN.fullmatch(p.name))


def _unique(table: pa.Table) -> pa.Table:
    """The first routing of each id (a post sent twice is asked once)."""
    ids = table.column("id").to_pylist()
    first = {}
    for row, key in enumerate(ids):
        first.setdefault(key, row)
    return table.take(pa.array(sorted(first.values()), pa.int64()))


def _add_to_pool(run, table: pa.Table, step: int) -> str:
    """Write ``table``'s pool columns, typed as the pool's first shard, as a new shard."""
    from alray.pool import io
    from alray.pool.pack import conform

    location = io.locate(run.config.pool_uri)
    if location.fs.get_file_info(location.path).type.name != "Directory":
        raise StateError(f"{run.config.pool_uri}: the run's pool is one file; routed "
                         "posts join a pool that is a directory of shards")
    cols = run.config.columns
    schema = io.open_parquet(io.pool_shards(run.config.pool_uri)[0]).schema_arrow
    # the shown columns too: every shard of the pool has them (plan_scoring checks)
    names = [cols.id_column, *cols.embedding_columns.values(), cols.label_column,
             *(c for c in cols.show_columns if c in schema.names)]
    table = _with_shown(table, cols.show_columns)
    table = table.rename_columns([cols.id_column if n == "id" else n
                                  for n in table.column_names])
    try:
        rows = conform(table, schema, names)  # list or packed, as the pool's first shard
    except (pa.ArrowException, KeyError, PoolSchemaError) as exc:
        raise StateError(f"routed posts do not fit the pool {run.config.pool_uri}: "
                         f"{exc}") from None
    uri = f"{run.config.pool_uri.rstrip('/')}/online/{_shard_name(step)}"
    io.write_table(rows, uri)
    return uri


def _query_table(routed: pa.Table, step: int, shown: tuple[str, ...] = ()) -> pa.Table:
    """The query of the routed posts, best first, with the run's shown columns (null
    where the service was started without them)."""
    order = pc.sort_indices(routed, [("score", "descending"), ("id", "ascending")])
    routed = _with_shown(routed.take(order), shown)
    n = routed.num_rows
    return pa.table({
        "id": routed.column("id"), "score": routed.column("score"),
        "rank": pa.array(np.arange(1, n + 1, dtype=np.int64)),
        "predicted_class": routed.column("predicted_class"),
        "predicted_prob": routed.column("predicted_prob"),
        "step": pa.array([step] * n, pa.int64()),
        "strategy": routed.column("strategy"),
        "least_sure_head": (routed.column("least_sure_head")
                            if "least_sure_head" in routed.column_names
                            else pa.nulls(n, pa.string())),
        **{c: routed.column(c) for c in shown}}).select([*QUERY_COLUMNS, *shown])


def _with_shown(table: pa.Table, shown: tuple[str, ...]) -> pa.Table:
    """``table`` with a text column of nulls for each shown column it lacks."""
    for column in shown:
        if column not in table.column_names:
            table = table.append_column(column, pa.nulls(table.num_rows, pa.string()))
    return table


def _move_queued(shards: list[Path], folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for path in shards:
        os.replace(path, folder / path.name)
