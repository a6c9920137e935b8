"""The active-learning round, step after step, resumable from its run directory.

Step 0 trains the passive model on a seeded random initial set. Step s >= 1 scores the
pool with the model of step s-1, queries the top posts, labels them (the pool's labels in
simulation; assessors' answers, imported by ``alray labels import``, otherwise),
fine-tunes on the whole labelled set and evaluates on the validation pool.

Every step is a pure function of the committed state (weights, optimizer state,
labelled set in a fixed order, step number, seed): a resumed run redoes an interrupted
step bit for bit, so it ends with the labelled set and metrics of an uninterrupted run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from alray.config import ComputeConfig
from alray.errors import PoolExhaustedError, StateError
from alray.loop.state import RunDir, RunState, labels_schema
from alray.pool.arrays import PostArrays, arrays_from_table
from alray.pool.normalize import normalize_ids, normalize_table
from alray.pool.schema import QUERY_COLUMNS
from alray.seeds import derive_seed

Progress = Callable[[int, int, dict], None]  # (step, last step, metrics row)


@dataclass(frozen=True)
class Outcome:
    """How ``run_loop`` ended: finished | waiting_for_labels | pool_exhausted."""

    status: str
    step: int               # the last completed step
    metrics: pa.Table | None
    message: str = ""


def run_loop(run: RunDir, compute: ComputeConfig = ComputeConfig(),
             progress: Progress | None = None, steps: int | None = None,
             resident=None) -> Outcome:
    """Run (or resume) ``run`` up to step ``steps`` (default: the run's budget).

    ``resident``: a ``ResidentPool`` of the run's pool that someone else opened and
    closes (a sweep's, shared by its trials); every step scores with it."""
    from alray.train.service import start_training

    run.require_writable()  # before any work: a read-only RunDir cannot commit
    last = run.budget if steps is None else steps
    resources = ({} if compute.train_cpus_per_worker is None
                 else {"cpus_per_worker": compute.train_cpus_per_worker})
    service = start_training(
        local=compute.local, workers=compute.train_workers,
        use_gpu=compute.train_gpus_per_worker > 0, threads=compute.train_threads,
        storage_path=str((run.path / "ray_train").resolve()), **resources)
    session = None
    try:
        session = open_session(run, compute, service)
        if resident is not None:
            session.resident, session.owns_resident = resident, False
        run.set_budget(last)  # a resume without --steps goes on to the extended budget
        return session.advance(last, progress)
    finally:
        if session is not None:
            session.close()
        service.close()


def open_session(run: RunDir, compute: ComputeConfig, service) -> "Session":
    """A session on ``run`` with its validation rows, committed model and labelled set
    loaded."""
    from alray.pool.load import load_rows

    session = Session(run, compute, service, run.read_state())
    session.val = load_rows(run.config.val_uri, run.config.columns)
    if session.state.step >= 0:
        session.load_checkpoint(session.state.checkpoint)
    session.data = session.load_labelled()
    return session


class Session:
    """One process's work on a run: the labelled set and model kept in memory."""

    def __init__(self, run: RunDir, compute: ComputeConfig, service, state: RunState):
        self.run, self.config, self.compute, self.service = run, run.config, compute, service
        self.dims = dict(self.config.model.modality_dims)
        self.state = state
        self.val: PostArrays | None = None
        self.data: PostArrays | None = None
        self.weights, self.train_state = None, None
        self._pool_labelled = None  # assessors: the pool's own labelled ids, read once
        self.resident = None  # the scoring actors holding the pool (alray.scoring.resident)
        self.owns_resident = True  # False: a shared pool, closed by whoever opened it

    def close(self) -> None:
        if self.resident and self.owns_resident:
            self.resident.close()
        self.resident = None

    # --- the loop ----------------------------------------------------------------------
    def advance(self, last: int, progress: Progress | None) -> Outcome:
        self.last = last
        if self.state.step < 0:
            self._commit(0, self._initial_rows(), time.perf_counter(), 0.0, progress)
        while self.state.step < last:
            step, started = self.state.step + 1, time.perf_counter()
            new_rows = self._rows_of(step)
            score_s = 0.0
            if new_rows is None:
                if self.config.assessors and self.state.open_query == step:
                    raise StateError(
                        f"{self.run.path}: the query of step {step} waits for labels; "
                        f"import them with `alray labels import {self.run.path} FILE`, "
                        "then resume")
                try:
                    new_rows, score_s = self._query(step)
                except PoolExhaustedError as exc:
                    return self._outcome("pool_exhausted", str(exc))
                if new_rows is None:  # assessors: the query is out, stop here
                    return self._outcome(
                        "waiting_for_labels",
                        f"the query of step {step} is in {self.run.query_path(step, '.csv')}")
            self._commit(step, new_rows, started, score_s, progress)
        return self._outcome("finished")

    def _outcome(self, status: str, message: str = "") -> Outcome:
        metrics = self.run.read_metrics(up_to_step=self.state.step)
        return Outcome(status, self.state.step, metrics, message)

    def _rows_of(self, step: int) -> pa.Table | None:
        """Label rows already written for ``step`` (assessors' answers, or an
        interrupted simulated step), or None."""
        table = self.run.read_labels()
        if table is None:
            return None
        rows = table.filter(pc.equal(table.column("step"), step))
        return rows if rows.num_rows else None

    # --- step 0 -------------------------------------------------------------------------
    def _initial_rows(self) -> pa.Table:
        from alray.pool.load import load_rows_in_order
        from alray.train.passive import initial_ids

        rows = self._rows_of(0)
        if rows is None:
            cfg = self.config
            ids, labels = initial_ids(cfg.pool_uri, cfg.columns, cfg.initial, cfg.seed,
                                      cfg.initial_strategy)
            rows = self._label_rows(ids, labels, 0, "initial", ids.dtype)
            self._write_label_rows(0, rows)
        labels = dict(zip(rows.column("id").to_pylist(), rows.column("label").to_pylist()))
        self.data = load_rows_in_order(self.config.pool_uri, self.config.columns,
                                       rows.column("id").to_pylist(), labels)
        return rows

    # --- step s: score, query, label ----------------------------------------------------
    def _query(self, step: int) -> tuple[pa.Table | None, float]:
        from alray.scoring.pipeline import score_pool

        cfg, started = self.config, time.perf_counter()
        # the model in memory: no re-read of the checkpoint just written, and on a
        # cluster the scoring actors need no access to the run directory
        model = {"architecture": cfg.model.to_dict(), "weights": self.weights}
        if self.resident is None and self.compute.resident and not self.compute.local:
            from alray.scoring.resident import open_resident  # None: streaming (warned)

            self.resident = open_resident(cfg.pool_uri, cfg.columns, self.compute) or False
        # a fresh step gives every post fresh sampling noise (stochastic acquisition)
        if self.resident:  # the same query, the pool read once per session
            # a run that keeps its first blocks has its own actors cache their outputs (a
            # shared sweep pool serves trials whose first blocks differ: raw rows there)
            cache = cfg.train.freeze_first_block and self.owns_resident
            queries = self.resident.score(model, cfg.score, self._excluded(), step,
                                          carry=True, first_block=cache)
        else:
            queries = score_pool(cfg.pool_uri, model, cfg.score, cfg.columns,
                                 exclude_ids=self._excluded(), compute=self.compute,
                                 step=step, carry=True)
        query = queries[cfg.strategy]
        score_s = time.perf_counter() - started
        sent = query.append_column("step", pa.array([step] * query.num_rows, pa.int64()))
        # the pool's shown columns (a URL, a title) travel with the query for assessors
        self.run.write_query(sent.select([*QUERY_COLUMNS, *cfg.columns.show_columns]), step,
                             csv=cfg.assessors)
        if cfg.assessors:
            self.state = RunState(self.state.step, self.state.checkpoint, open_query=step)
            self.run.write_state(self.state)
            return None, score_s
        label_col = cfg.columns.label_column
        labels = (query.column(label_col).to_pylist() if label_col in query.column_names
                  else [None] * query.num_rows)
        ids = normalize_ids(query.column("id"))  # one id type in every run file
        rows = pa.table({
            "id": ids, "label": pa.array(labels, pa.int64()),
            "step": pa.array([step] * query.num_rows, pa.int64()),
            "source": pa.array(["oracle" if v is not None else "skipped" for v in labels]),
        }, schema=labels_schema(ids.type))
        self._write_label_rows(step, rows)
        self._append_data(query, rows)
        return rows, score_s

    def _excluded(self) -> np.ndarray:
        """Every id in the labels table (labelled or skipped), plus, with assessors, the
        pool's own labelled posts (nobody needs to label them again)."""
        from alray.pool.load import read_ids_and_labels

        table = self.run.read_labels(up_to_step=self.state.step)
        ids = table.column("id").to_numpy(zero_copy_only=False)
        if self.config.assessors:
            if self._pool_labelled is None:  # once a session: the pool cannot change in it
                pool_ids, pool_labels = read_ids_and_labels(self.config.pool_uri,
                                                            self.config.columns)
                self._pool_labelled = pool_ids[pool_labels >= 0]
            ids = np.concatenate([ids, self._pool_labelled])
        return ids

    def _append_data(self, query: pa.Table, rows: pa.Table) -> None:
        cols = self.config.columns
        table = query.rename_columns([cols.id_column if n == "id" else n
                                      for n in query.column_names])
        if cols.label_column in table.column_names:
            table = table.drop_columns([cols.label_column])
        table = table.append_column(cols.label_column, rows.column("label"))
        new = arrays_from_table(table, cols, self.dims)
        self.data = PostArrays.concat([self.data, new.take(new.labels >= 0)])

    # --- fine-tune, evaluate, commit ---------------------------------------------------
    def _commit(self, step: int, new_rows: pa.Table, started: float, score_s: float,
                progress: Progress | None) -> None:
        from alray.train import evaluate

        train_started = time.perf_counter()
        reply = self.service.run(self._request(step))
        train_s = time.perf_counter() - train_started
        model = self._model(reply["weights"])
        eval_started = time.perf_counter()
        scores = evaluate(model, self.val)
        eval_s = time.perf_counter() - eval_started
        checkpoint = self.run.checkpoint_dir(step)
        from alray.model import save_checkpoint
        save_checkpoint(self.run.path / checkpoint, model, self.config.model,
                        extra={"step": step, "labelled": len(self.data)},
                        train_state=reply["train_state"])
        row = self._metrics_row(step, new_rows, scores, score_s, train_s, eval_s, started)
        self._write_metrics_row(step, row)
        self.weights, self.train_state = reply["weights"], reply["train_state"]
        self.state = RunState(step=step, checkpoint=checkpoint, open_query=None)
        self.run.write_state(self.state)
        self.run.prune_checkpoints({self.run.checkpoint_dir(0), checkpoint})
        if progress is not None:
            progress(step, self.last, row)

    def _request(self, step: int) -> dict:
        from alray.train.worker import new_request

        cfg = self.config
        return new_request("fit" if step == 0 else "fine_tune", cfg.model, cfg.train,
                           self.data, self.weights, self.train_state,
                           derive_seed(cfg.seed, "fine_tune", step))

    def _model(self, weights):
        from alray.model.checkpoint import model_from_state

        return model_from_state(self.config.model, weights, f"step weights of {self.run.path}")

    def _metrics_row(self, step, new_rows, scores, score_s, train_s, eval_s, started) -> dict:
        sources = new_rows.column("source").to_pylist()
        row = {"step": step, "labelled": len(self.data),
               "queried": 0 if step == 0 else len(sources),
               "skipped": sources.count("skipped")}
        if not self.config.assessors:
            row["val_unreachable"] = self._val_unreachable()
        for head, values in scores.items():
            for name in ("accuracy", "macro_f1", "balanced_accuracy"):
                row[f"{head}_{name}"] = float(values[name])
        row.update(score_s=score_s, train_s=train_s, eval_s=eval_s,
                   step_s=time.perf_counter() - started)
        return row

    def _val_unreachable(self) -> int:
        """Validation posts whose class no post of the pool has: no query can ever
        teach it (rare classes; counted, not refused: ``check_inputs`` warned)."""
        if getattr(self, "_unreachable", None) is None:
            from alray.pool.load import read_ids_and_labels

            _, pool_labels = read_ids_and_labels(self.config.pool_uri, self.config.columns)
            classes = np.unique(pool_labels[pool_labels >= 0])
            val = self.val.labels[self.val.labels >= 0]
            self._unreachable = int((~np.isin(val, classes)).sum())
        return self._unreachable

    # --- files --------------------------------------------------------------------------
    def _write_label_rows(self, step: int, rows: pa.Table) -> None:
        old = self.run.read_labels(up_to_step=step - 1)
        rows = normalize_table(rows)  # runs written before ids were normalised too
        if old is not None:
            rows = pa.concat_tables([normalize_table(old).cast(rows.schema), rows])
        self.run.write_labels(rows)

    def _write_metrics_row(self, step: int, row: dict) -> None:
        old = self.run.read_metrics(up_to_step=step - 1)
        new = pa.Table.from_pylist([row])
        self.run.write_metrics(new if old is None else pa.concat_tables([old, new]))

    def load_checkpoint(self, checkpoint: str | None) -> None:
        from alray.model import load_checkpoint, load_train_state

        path = self.run.path / (checkpoint or "")
        if not checkpoint or not path.exists():
            raise StateError(f"{self.run.path / 'state.json'}: its checkpoint "
                             f"{checkpoint!r} is missing")
        model, _, _ = load_checkpoint(path)
        self.weights = model.state_dict()
        self.train_state = load_train_state(path)

    def load_labelled(self) -> PostArrays | None:
        """The labelled set, in the labels table's order (training shuffles positions,
        so the order is part of what makes a resumed step equal an uninterrupted one)."""
        from alray.pool.load import load_rows_in_order

        table = self.run.read_labels()
        if table is None or self.state.step < 0:
            return None
        table = table.filter(pc.is_valid(table.column("label")))
        labels = dict(zip(table.column("id").to_pylist(), table.column("label").to_pylist()))
        return load_rows_in_order(self.config.pool_uri, self.config.columns,
                                  table.column("id").to_pylist(), labels)

    @staticmethod
    def _label_rows(ids, labels, step: int, source: str, id_dtype) -> pa.Table:
        id_type = pa.from_numpy_dtype(id_dtype) if id_dtype != object else pa.string()
        return pa.table({"id": pa.array(ids, id_type), "label": pa.array(labels, pa.int64()),
                         "step": pa.array([step] * len(ids), pa.int64()),
                         "source": pa.array([source] * len(ids), pa.string())},
                        schema=labels_schema(id_type))


__all__ = ["Outcome", "Session", "open_session", "run_loop"]
