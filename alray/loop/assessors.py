"""Importing assessors' answers to the open query of a run (``alray labels import``).

In assessor mode the loop writes step S's query to ``RUN/queries/step-SSSSS.csv`` and
stops with ``state.open_query = S``. Assessors label it in their tool and hand back a CSV
or Parquet file with an id and a label column. ``import_labels`` checks the whole file,
reports every problem at once (file, row, id) and changes nothing unless the file is
clean; then it appends one row per query post to ``RUN/labels.parquet`` in one atomic
write: the answered posts with source ``assessor``, the others with source ``skipped``
and a null label. state.json is left alone: the resumed loop finds step S's rows in
labels.parquet and trains on them.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc

from alray.errors import LabelsError, StateError
from alray.loop import labelstudio
from alray.loop.state import RunDir, labels_schema
from alray.pool import labels_file
from alray.pool.labels_file import MAX_EXAMPLES, Problems as _Problems  # noqa: F401

FAST_FAIL_SLACK = 1000  # rows beyond twice the query that still get a row-by-row report


def import_labels(run_dir: str | os.PathLike, file: str | os.PathLike,
                  id_column: str | None = None, label_column: str | None = None,
                  class_names: list[str] | None = None) -> dict:
    """Record the assessors' answers in ``file`` to the open query of ``run_dir``.

    ``file`` is a CSV or Parquet file (id, label) or a Label Studio export (JSON,
    JSON-MIN or CSV; ``alray.loop.labelstudio``: majority of annotators, ties refused,
    choices that are names mapped by ``class_names``), checked the same way.

    Returns ``{"step", "labelled", "skipped", "file"}``. Raises ``StateError`` when no
    query waits for labels or the open one was already answered, ``LabelsError`` (all
    problems listed) when the file is unreadable or any row is wrong; then nothing on
    disk changed.
    """
    # the lock first: a second import is refused while this one runs, then sees its rows
    run = RunDir.open(run_dir, write=True)
    step, query, labels = _open_query(run)
    columns = run.config.columns
    id_column, label_column = id_column or columns.id_column, label_column or columns.label_column
    id_type = query.schema.field("id").type
    raw_ids, raw_labels = _read_answers(Path(file), id_column, label_column, id_type,
                                        query.num_rows, class_names)
    context = _Context(file=str(file), step=step, n_classes=run.config.model.n_classes,
                       int_ids=pa.types.is_integer(id_type),
                       query_ids=set(query.column("id").to_pylist()),
                       labelled=_labelled_index(labels),
                       earlier=lambda: _earlier_query_ids(run, step))
    answers = _check_rows(raw_ids, raw_labels, context)
    rows = _new_rows(query, answers, step, labels.schema)
    run.write_labels(pa.concat_tables([labels, rows]))
    n_labelled = len(answers)
    return {"step": step, "labelled": n_labelled, "skipped": rows.num_rows - n_labelled,
            "file": str(file)}


# --- the run's side ------------------------------------------------------------------
def _open_query(run: RunDir) -> tuple[int, pa.Table, pa.Table]:
    """The open step, its query in rank order, and the labels table (maybe empty)."""
    step = run.read_state().open_query
    if step is None:
        raise StateError(f"no query is waiting for labels in {run.path}")
    query = run.read_query(step).sort_by("rank")
    labels = run.read_labels()
    if labels is None:
        labels = labels_schema(query.schema.field("id").type).empty_table()
    answered = pc.sum(pc.equal(labels.column("step"), step)).as_py() or 0
    if answered:
        raise StateError(f"{run.path}: the query of step {step} was already answered "
                         f"({answered} rows of step {step} in {run.labels_path}); resume "
                         "the run to train on them and send the next query")
    return step, query, labels


def _labelled_index(labels: pa.Table) -> dict:
    """id -> (step, source) of every id the labels table holds."""
    return {i: (s, src) for i, s, src in zip(labels.column("id").to_pylist(),
                                             labels.column("step").to_pylist(),
                                             labels.column("source").to_pylist())}


def _earlier_query_ids(run: RunDir, step: int) -> dict:
    """id -> step of every post sent in a query before ``step``."""
    found = {}
    for path in sorted((run.path / "queries").glob("step-*.parquet")):
        match = re.fullmatch(r"step-(\d+)\.parquet", path.name)
        if match and int(match.group(1)) < step:
            earlier = int(match.group(1))
            for i in run.read_query(earlier).column("id").to_pylist():
                found.setdefault(i, earlier)
    return found


def _new_rows(query: pa.Table, answers: dict, step: int, schema: pa.Schema) -> pa.Table:
    """One labels row per query post, in rank order: answered or skipped."""
    ids = query.column("id").to_pylist()
    return pa.table({
        "id": pa.array(ids, schema.field("id").type),
        "label": pa.array([answers.get(i) for i in ids], pa.int64()),
        "step": pa.array([step] * len(ids), pa.int64()),
        "source": pa.array(["assessor" if i in answers else "skipped" for i in ids],
                           pa.string()),
    }, schema=schema)


# --- reading the file ----------------------------------------------------------------
def _read_answers(path: Path, id_column: str, label_column: str, id_type: pa.DataType,
                  query_rows: int | None = None, class_names: list[str] | None = None
                  ) -> tuple[list, list]:
    """The raw id and label values of ``path``, as Python objects, in file order.

    A file far longer than the query (the whole pool instead of the answer: more than
    ``2 * query + FAST_FAIL_SLACK`` rows) is refused from its row count (Parquet footer,
    streamed CSV count) before any row becomes a Python object; a shorter wrong file
    gets the full row-by-row report."""
    if labelstudio.is_export(path):  # one (id, majority label) row per answered task
        return labelstudio.read_answers(path, class_names)
    if query_rows is not None:
        n_rows = labels_file.count_rows(path)
        if n_rows > 2 * query_rows + FAST_FAIL_SLACK:
            raise LabelsError(f"{path}: the file has {n_rows:,} rows, the open query has "
                              f"{query_rows:,}; is this the right file?")
    return labels_file.read_columns(path, id_column, label_column)


# --- checking the rows ---------------------------------------------------------------
@dataclass
class _Context:
    """What a row is checked against."""

    file: str
    step: int
    n_classes: int
    int_ids: bool
    query_ids: set
    labelled: dict                # id -> (step, source)
    earlier: Callable[[], dict]   # id -> step of earlier queries, read only when needed
    _earlier: dict | None = field(default=None, repr=False)

    def earlier_step(self, key) -> int | None:
        if self._earlier is None:
            self._earlier = self.earlier()
        return self._earlier.get(key)


def _check_rows(raw_ids: list, raw_labels: list, ctx: _Context) -> dict:
    """id -> label of a clean file; else a ``LabelsError`` listing every problem."""
    return labels_file.check_rows(
        raw_ids, raw_labels, ctx.file, ctx.int_ids, ctx.n_classes,
        member=lambda key, row, problems: _check_membership(key, row, ctx, problems))


def _check_membership(key, row: int, ctx: _Context, problems: _Problems) -> None:
    """Only ids of the open query can be answered; say where any other id comes from."""
    if key in ctx.query_ids:
        return
    only = f"only the {len(ctx.query_ids)} posts of the query of step {ctx.step} can be labelled"
    if key in ctx.labelled:
        step, source = ctx.labelled[key]
        done = "skipped" if source == "skipped" else f"already labelled ({source})"
        problems.add("labelled", row, key, f"{done} at step {step}; {only}")
    elif (earlier := ctx.earlier_step(key)) is not None:
        problems.add("earlier query", row, key,
                     f"in the query of step {earlier}, not of step {ctx.step}; {only}")
    else:
        problems.add("unknown", row, key, f"unknown id, not in the query of step {ctx.step}")


__all__ = ["import_labels"]
