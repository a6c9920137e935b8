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

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from alray.errors import LabelsError, StateError
from alray.loop.state import RunDir, labels_schema

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
MAX_EXAMPLES = 20  # problem lines shown per kind; the rest are counted

# problem kinds, in the order they are reported
KINDS = {
    "no id": "rows without an id",
    "bad id": "rows whose id is not an integer",
    "labelled": "rows with an already labelled or skipped id",
    "earlier query": "rows with an id from an earlier query",
    "unknown": "rows with an id not in the query",
    "null label": "rows without a label",
    "bad label": "rows whose label is not an integer",
    "out of range": "rows whose label is out of range",
    "duplicate": "duplicate rows",
    "conflict": "rows with conflicting labels",
}


def import_labels(run_dir: str | os.PathLike, file: str | os.PathLike,
                  id_column: str | None = None, label_column: str | None = None) -> dict:
    """Record the assessors' answers in ``file`` to the open query of ``run_dir``.

    Returns ``{"step", "labelled", "skipped", "file"}``. Raises ``StateError`` when no
    query waits for labels or the open one was already answered, ``LabelsError`` (all
    problems listed) when the file is unreadable or any row is wrong; then nothing on
    disk changed.
    """
    run = RunDir.open(run_dir)
    step, query, labels = _open_query(run)
    columns = run.config.columns
    id_column, label_column = id_column or columns.id_column, label_column or columns.label_column
    id_type = query.schema.field("id").type
    raw_ids, raw_labels = _read_answers(Path(file), id_column, label_column, id_type)
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
def _read_answers(path: Path, id_column: str, label_column: str, id_type: pa.DataType
                  ) -> tuple[list, list]:
    """The raw id and label values of ``path``, as Python objects, in file order."""
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + PARQUET_SUFFIXES:
        raise LabelsError(f"{path}: unknown labels file type {suffix or '(no suffix)'!r}; "
                          "give a .csv or .parquet file")
    if not path.is_file():
        raise LabelsError(f"{path}: no such labels file")
    wanted = [id_column, label_column]
    reader = _read_csv if suffix in CSV_SUFFIXES else _read_parquet
    try:
        table = reader(path, wanted)
    except (pa.ArrowException, OSError) as exc:
        raise LabelsError(f"{path}: unreadable labels file: {exc}") from None
    return table.column(id_column).to_pylist(), table.column(label_column).to_pylist()


def _require_columns(path: Path, names: list[str], wanted: list[str]) -> None:
    for role, name in zip(("id", "label"), wanted):
        if name not in names:
            raise LabelsError(f"{path}: no {role} column {name!r} (columns: "
                              f"{', '.join(map(str, names)) or 'none'}); name the file's "
                              f"{role} column with {role}_column")


def _read_csv(path: Path, wanted: list[str]) -> pa.Table:
    """Read the id and label columns of a CSV as text, so nothing is guessed.

    Text ids keep their leading zeros ("007" is not 7); integer ids and labels are
    parsed row by row in ``_check_rows``, so one bad cell is a row problem, not a file
    that cannot be read. Only an empty cell is null ("NA" could be a text id).
    """
    with pacsv.open_csv(path) as head:  # the first block: enough for the header
        _require_columns(path, head.schema.names, wanted)
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in wanted}, include_columns=wanted,
        null_values=[""], strings_can_be_null=True)
    return pacsv.read_csv(path, convert_options=convert)


def _read_parquet(path: Path, wanted: list[str]) -> pa.Table:
    """Read the id and label columns of a Parquet file (pyarrow or fastparquet made)."""
    with pq.ParquetFile(path) as file:
        _require_columns(path, file.schema_arrow.names, wanted)
        return file.read(columns=wanted)


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


class _Problems:
    """Problems by kind; renders at most ``MAX_EXAMPLES`` lines of each kind."""

    def __init__(self, file: str):
        self.file = file
        self.by_kind: dict[str, list[str]] = {kind: [] for kind in KINDS}

    def add(self, kind: str, row: int, key, text: str) -> None:
        where = f"row {row}, id {key!r}" if key is not None else f"row {row}"
        self.by_kind[kind].append(f"{self.file}: {where}: {text}")

    def __len__(self) -> int:
        return sum(len(lines) for lines in self.by_kind.values())

    def raise_if_any(self, n_rows: int) -> None:
        if not len(self):
            return
        header = (f"{self.file}: {len(self)} problem(s) in {n_rows} rows (rows counted "
                  "from 1 after the header); nothing was imported")
        lines = [header]
        for kind, found in self.by_kind.items():
            lines += found[:MAX_EXAMPLES]
            if len(found) > MAX_EXAMPLES:
                lines.append(f"{self.file}: ... and {len(found) - MAX_EXAMPLES} more "
                             f"{KINDS[kind]}")
        raise LabelsError(header, lines)


def _check_rows(raw_ids: list, raw_labels: list, ctx: _Context) -> dict:
    """id -> label of a clean file; else a ``LabelsError`` listing every problem."""
    problems = _Problems(ctx.file)
    answers, first = {}, {}  # first: id -> (row, label) of its first appearance
    for row, (raw_id, raw_label) in enumerate(zip(raw_ids, raw_labels), start=1):
        key, id_problem = _parse_id(raw_id, ctx.int_ids)
        label, label_problem = _parse_label(raw_label, ctx.n_classes)
        if id_problem:
            shown = raw_id if id_problem[0] == "bad id" else None
            problems.add(id_problem[0], row, shown, id_problem[1])
        else:
            _check_membership(key, row, ctx, problems)
        if label_problem:
            problems.add(label_problem[0], row, key, label_problem[1])
        if key is None:
            continue
        if key in first:
            _check_repeat(key, row, label if label is not None else raw_label, first[key],
                          problems)
        else:
            first[key] = (row, label if label is not None else raw_label)
            answers[key] = label
    problems.raise_if_any(len(raw_ids))
    return answers


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


def _check_repeat(key, row: int, label, first: tuple, problems: _Problems) -> None:
    first_row, first_label = first
    if label == first_label:
        problems.add("duplicate", row, key, f"duplicate of row {first_row} (label {label!r})")
    else:
        problems.add("conflict", row, key, f"label {label!r} conflicts with label "
                                           f"{first_label!r} on row {first_row}")


def _parse_id(value, int_ids: bool) -> tuple[object, tuple[str, str] | None]:
    """The id as the query holds it (int or str), or a (kind, text) problem."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None, ("no id", "no id")
    if not int_ids:
        # the pool's ids are text: an integer id in the file is its decimal text
        return (value, None) if isinstance(value, str) else (str(value), None)
    number = _as_integer(value)
    if number is None:
        return None, ("bad id", "not an integer id (the pool's ids are integers)")
    return number, None


def _parse_label(value, n_classes: int) -> tuple[int | None, tuple[str, str] | None]:
    """The class as an int, or a (kind, text) problem."""
    classes = f"the classes are 0..{n_classes - 1}"
    if value is None or (isinstance(value, str) and not value.strip()) or (
            isinstance(value, float) and math.isnan(value)):
        return None, ("null label", "no label; remove the row to skip the post")
    number = _as_integer(value)
    if number is None:
        return None, ("bad label", f"label {value!r} is not an integer class; {classes}")
    if not 0 <= number < n_classes:
        return None, ("out of range", f"label {number} is out of range; {classes}")
    return number, None


def _as_integer(value) -> int | None:
    """An int from an int, an integral float ("2.0" too: tools export floats), or text."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                return None
    try:
        number = int(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if number == value else None


__all__ = ["import_labels"]
