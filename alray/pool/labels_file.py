"""Labels files (an id and a label column, CSV or Parquet): read, parsed, checked strictly.

One reader and one set of rules for every command that takes a labels file
(``alray labels import``, ``alray train --labels``):

- CSV columns are read as text, so nothing is guessed: text ids keep their leading
  zeros ("007" is not 7), and one bad cell is a row problem, not an unreadable file.
- An id is an integer when the pool's ids are integers, else its text.
- A label is an integer class in ``[0, n_classes)``; an integral float ("2.0": tools
  export floats) is accepted, ``2.7`` is not.
- A repeated id is refused (a conflict when the labels differ), never "last one wins".
- Every problem is reported at once with file, row and id (``MAX_EXAMPLES`` per kind).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from alray.errors import LabelsError
from alray.pool.sheets import unescape

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


# --- reading -----------------------------------------------------------------------------
def check_suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in CSV_SUFFIXES + PARQUET_SUFFIXES:
        raise LabelsError(f"{path}: unknown labels file type {suffix or '(no suffix)'!r}; "
                          "give a .csv or .parquet file")
    if not path.is_file():
        raise LabelsError(f"{path}: no such labels file")
    return suffix


def count_rows(path: Path) -> int:
    """Data rows of a labels file without loading it: the Parquet footer, or a streamed
    count of a CSV's records (block by block; memory stays at one block)."""
    try:
        if check_suffix(path) in PARQUET_SUFFIXES:
            with pq.ParquetFile(path) as file:
                return file.metadata.num_rows
        with pacsv.open_csv(path, convert_options=pacsv.ConvertOptions(
                column_types={}, include_columns=[])) as reader:
            return sum(batch.num_rows for batch in reader)
    except (pa.ArrowException, OSError) as exc:
        raise LabelsError(f"{path}: unreadable labels file: {exc}") from None


def read_columns(path: Path, id_column: str, label_column: str) -> tuple[list, list]:
    """The raw id and label values of ``path``, as Python objects, in file order."""
    suffix = check_suffix(path)
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
    """The id and label columns of a CSV as text; only an empty cell is null ("NA" could
    be a text id)."""
    with pacsv.open_csv(path) as head:  # the first block: enough for the header
        _require_columns(path, head.schema.names, wanted)
    convert = pacsv.ConvertOptions(
        column_types={name: pa.string() for name in wanted}, include_columns=wanted,
        null_values=[""], strings_can_be_null=True)
    return pacsv.read_csv(path, convert_options=convert)


def _read_parquet(path: Path, wanted: list[str]) -> pa.Table:
    """The id and label columns of a Parquet file (pyarrow or fastparquet made)."""
    with pq.ParquetFile(path) as file:
        _require_columns(path, file.schema_arrow.names, wanted)
        return file.read(columns=wanted)


# --- checking ----------------------------------------------------------------------------
class Problems:
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


Member = Callable[[object, int, Problems], None]  # (id, row, problems): report foreign ids


def check_rows(raw_ids: list, raw_labels: list, file: str, int_ids: bool, n_classes: int,
               member: Member | None = None, skip_null_labels: bool = False) -> dict:
    """id -> label of a clean file; else a ``LabelsError`` listing every problem.

    ``member`` checks that an id may be labelled at all (the open query's ids);
    ``skip_null_labels``: a row without a label is a skipped post, left out.
    """
    problems = Problems(file)
    answers, first = {}, {}  # first: id -> (row, label) of its first appearance
    for row, (raw_id, raw_label) in enumerate(zip(raw_ids, raw_labels), start=1):
        key, id_problem = parse_id(raw_id, int_ids)
        if skip_null_labels and _is_null(raw_label):
            label, label_problem = None, None
        else:
            label, label_problem = parse_label(raw_label, n_classes)
        if id_problem:
            shown = raw_id if id_problem[0] == "bad id" else None
            problems.add(id_problem[0], row, shown, id_problem[1])
        elif member is not None:
            member(key, row, problems)
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
    return {k: v for k, v in answers.items() if v is not None} if skip_null_labels \
        else answers


def _check_repeat(key, row: int, label, first: tuple, problems: Problems) -> None:
    first_row, first_label = first
    if label == first_label:
        problems.add("duplicate", row, key, f"duplicate of row {first_row} (label {label!r})")
    else:
        problems.add("conflict", row, key, f"label {label!r} conflicts with label "
                                           f"{first_label!r} on row {first_row}")


def _is_null(value) -> bool:
    return value is None or (isinstance(value, str) and not value.strip()) or (
        isinstance(value, float) and math.isnan(value))


def parse_id(value, int_ids: bool) -> tuple[object, tuple[str, str] | None]:
    """The id as the pool holds it (int or str), or a (kind, text) problem."""
    if value is None or value == "" or (isinstance(value, float) and math.isnan(value)):
        return None, ("no id", "no id")
    if not int_ids:
        # the pool's ids are text: an integer id in the file is its decimal text; a
        # text id alray escaped for spreadsheets (alray.pool.sheets) is read back as is
        return (unescape(value), None) if isinstance(value, str) else (str(value), None)
    number = as_integer(value)
    if number is None:
        return None, ("bad id", "not an integer id (the pool's ids are integers)")
    return number, None


def parse_label(value, n_classes: int) -> tuple[int | None, tuple[str, str] | None]:
    """The class as an int, or a (kind, text) problem."""
    classes = f"the classes are 0..{n_classes - 1}"
    if _is_null(value):
        return None, ("null label", "no label; remove the row to skip the post")
    number = as_integer(value)
    if number is None:
        return None, ("bad label", f"label {value!r} is not an integer class; {classes}")
    if not 0 <= number < n_classes:
        return None, ("out of range", f"label {number} is out of range; {classes}")
    return number, None


def as_integer(value) -> int | None:
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


__all__ = ["KINDS", "MAX_EXAMPLES", "Problems", "as_integer", "check_rows", "count_rows",
           "parse_id", "parse_label", "read_columns"]
