"""Label Studio: a query as tasks to label, and Label Studio's exports back as answers.

Export (``write_label_studio``): one task per queried post. Its ``data`` holds the post's
id (``alray_id``; Label Studio keeps its own task ``id``, and its JSON-MIN and CSV
exports write that ``id`` over a data field of the same name), the rank and acquisition
score (sortable in the data manager) and the query's pass-through columns (url, title,
...). The model's answer is a ``predictions`` entry, shown to the assessor as a
pre-annotation: the top class, with the class probability as the prediction's score.
Beside the tasks, the labelling config: one single-choice ``Choices`` named ``class``
whose choices show the class names (a ``--class-names`` file, one name a line, or the
numbers) and carry the class index as their ``alias``. Label Studio writes the alias
into every annotation and export, so answers come back as class indices whatever the
names are (renaming a class in the project's config cannot shift the labels).

Import (``read_answers``): Label Studio's three table-like exports, told apart by
content: JSON (tasks with an ``annotations`` list), JSON-MIN (one record per annotation)
and CSV (one row per annotation, with ``annotation_id`` and ``alray_id`` columns). Both
JSON-MIN and CSV drop skipped annotations; JSON marks them ``was_cancelled``. Per task:

- skipped (cancelled) annotations and annotations without a class do not vote; a task
  with no vote is skipped (alray records it as ``skipped``, like a post left out of a CSV);
- one or more votes: the majority class wins; a tie between the most voted classes is
  refused and listed with its Label Studio task id and alray id, and nothing is imported.

The result is one (id, label) row per answered task, in file order, which
``alray.loop.assessors`` checks exactly as it checks a CSV (unknown ids, ids of earlier
queries, labels out of range, duplicates and conflicts between tasks of the same post).
Choices are read as class indices; with ``class_names`` a choice equal to a name maps
to its index (a project whose config was written by hand with names and no aliases).
"""
from __future__ import annotations

import csv
import json
import math
import os
import re
import uuid
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from alray.errors import ConfigError, LabelsError
from alray.pool.schema import QUERY_COLUMNS

ALRAY_ID = "alray_id"          # the post's id in a task's data
ALRAY_RANK = "alray_rank"
ALRAY_SCORE = "alray_score"    # the acquisition score (higher: more worth labelling)
FROM_NAME = "class"            # the Choices control
DEFAULT_OBJECT = "post"        # the object tag when the query has no pass-through column
TASKS_SUFFIX = ".label-studio.json"
CONFIG_SUFFIX = ".label-studio.xml"
# keys Label Studio's JSON-MIN/CSV exports write beside the data fields
EXPORT_KEYS = ("id", "annotator", "annotation_id", "created_at", "updated_at", "lead_time",
               "agreement")
RESERVED = {*EXPORT_KEYS, FROM_NAME, ALRAY_ID, ALRAY_RANK, ALRAY_SCORE}
IMAGE_NAME = re.compile(r"(^|_)(image|img|picture|photo|thumbnail)(_|$)", re.IGNORECASE)
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --- export ------------------------------------------------------------------------
def read_class_names(path: str | os.PathLike) -> list[str]:
    """Class names from a text file, one a line (class 0 first); blank lines at the end
    are ignored, blank or repeated names inside are refused."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise ConfigError(f"{path}: unreadable class names file: {exc}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    names = [line.strip() for line in lines]
    problems = [f"{path}: line {i}: blank class name" for i, n in enumerate(names, 1) if not n]
    seen: dict[str, int] = {}
    for i, name in enumerate(names, 1):
        if name and name in seen:
            problems.append(f"{path}: line {i}: class name {name!r} repeats line {seen[name]}")
        seen.setdefault(name, i)
    if not names:
        problems.append(f"{path}: no class names")
    if problems:
        raise ConfigError(problems[0], problems)
    return names


def write_label_studio(query: pa.Table, out: str | os.PathLike, *,
                       n_classes: int | None = None,
                       class_names: list[str] | None = None) -> dict[str, Path]:
    """Write ``query`` as Label Studio tasks and the labelling config beside them.

    ``out`` is a prefix (``RUN/queries/step-00002`` gives ``step-00002.label-studio.json``
    and ``step-00002.label-studio.xml``) or an existing directory (the prefix is then
    ``DIR/step-NNNNN`` from the query's step). Classes come from ``class_names`` (class
    i is ``class_names[i]``) or are numbered ``0..n_classes-1``. Both files are written
    temp-then-rename. Returns ``{"tasks": path, "config": path}``.
    """
    names = _class_names(n_classes, class_names)
    shown = pass_through_columns(query)
    prefix = _prefix(Path(out), query)
    paths = {"tasks": prefix.with_name(prefix.name + TASKS_SUFFIX),
             "config": prefix.with_name(prefix.name + CONFIG_SUFFIX)}
    tasks = query_tasks(query, len(names), (shown or [DEFAULT_OBJECT])[0])
    _write_text(paths["tasks"], json.dumps(tasks, indent=2, ensure_ascii=False, default=str))
    _write_text(paths["config"], label_config(names, shown, _image_columns(query, shown)))
    return paths


def pass_through_columns(query: pa.Table) -> list[str]:
    """The query's columns that are not alray's own: shown to the assessor as task data."""
    shown = [name for name in query.column_names if name not in QUERY_COLUMNS]
    bad = [name for name in shown if name in RESERVED or not FIELD_NAME.fullmatch(name)]
    if bad:
        raise ConfigError(f"pass-through column(s) {', '.join(map(repr, bad))} cannot be "
                          "Label Studio task data: names must be letters, digits and _ "
                          f"and not one of {', '.join(sorted(RESERVED))}")
    return shown


def label_config(class_names: list[str], shown: list[str], images: set[str] = frozenset()
                 ) -> str:
    """The labelling config: a header with the post's id, rank and score; each shown
    column (an ``Image`` for ``images``, else ``Text``); one single ``Choices``."""
    view = ET.Element("View")
    ET.SubElement(view, "Header", value=f"Post ${ALRAY_ID} (rank ${ALRAY_RANK}, "
                                        f"acquisition score ${ALRAY_SCORE})")
    objects = shown or [DEFAULT_OBJECT]
    for name in objects:
        value = f"${name}" if shown else f"${ALRAY_ID}"
        if shown:
            ET.SubElement(view, "Header", value=name, size="6")
        ET.SubElement(view, "Image" if name in images else "Text", name=name, value=value)
    choices = ET.SubElement(view, "Choices", name=FROM_NAME, toName=objects[0],
                            choice="single", showInline="false", required="true")
    for index, name in enumerate(class_names):
        ET.SubElement(choices, "Choice", value=name, alias=str(index))
    ET.indent(view)
    return ET.tostring(view, encoding="unicode") + "\n"


def query_tasks(query: pa.Table, n_classes: int, to_name: str = DEFAULT_OBJECT
                ) -> list[dict]:
    """One Label Studio task per query row (rank order): data and the model's prediction."""
    rows = query.sort_by("rank").to_pylist() if "rank" in query.column_names \
        else query.to_pylist()
    shown = pass_through_columns(query)
    tasks = []
    for row in rows:
        data = {ALRAY_ID: row["id"], ALRAY_RANK: row.get("rank"),
                ALRAY_SCORE: _shown(row.get("score"))}
        data.update({name: _finite(row[name]) for name in shown})
        task = {"data": data}
        predicted = row.get("predicted_class")
        if predicted is not None and 0 <= predicted < n_classes:
            task["predictions"] = [{
                "model_version": f"alray step {row.get('step')} {row.get('strategy')}",
                "score": _finite(row.get("predicted_prob")),
                "result": [{"from_name": FROM_NAME, "to_name": to_name, "type": "choices",
                            "value": {"choices": [str(predicted)]}}]}]
        tasks.append(task)
    return tasks


def _class_names(n_classes: int | None, class_names: list[str] | None) -> list[str]:
    if class_names is None:
        if n_classes is None or n_classes < 1:
            raise ConfigError("Label Studio export needs the class count or class names")
        return [str(i) for i in range(n_classes)]
    if n_classes is not None and len(class_names) != n_classes:
        raise ConfigError(f"{len(class_names)} class names given for {n_classes} classes")
    return list(class_names)


def _image_columns(query: pa.Table, shown: list[str]) -> set[str]:
    """Shown columns that hold image links, by name (``image_url``, ``thumbnail``...)."""
    return {name for name in shown if IMAGE_NAME.search(name)
            and pa.types.is_string(query.schema.field(name).type)}


def _prefix(out: Path, query: pa.Table) -> Path:
    if not out.is_dir():
        return out
    steps = set(query.column("step").to_pylist()) if "step" in query.column_names else set()
    return out / (f"step-{steps.pop():05d}" if len(steps) == 1 else "query")


def _shown(score):
    """A score as the assessor reads it: 6 significant digits (the query file keeps all)."""
    score = _finite(score)
    return float(f"{score:.6g}") if isinstance(score, float) else score


def _finite(value):
    """JSON has no NaN: a non-finite float becomes null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _write_text(path: Path, text: str) -> None:
    """Write a small text file atomically (temp sibling, fsync, rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


# --- import ------------------------------------------------------------------------
@dataclass
class _Task:
    """One Label Studio task of an export: its ids and its annotators' choices."""

    task_id: object
    alray_id: object
    votes: list = field(default_factory=list)


def is_export(path: Path) -> bool:
    """Whether ``path`` is read as a Label Studio export: a .json file, or a .csv whose
    header has Label Studio's ``annotation_id`` and alray's ``alray_id`` columns."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return True
    if suffix != ".csv" or not path.is_file():
        return False
    try:
        with open(path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return ALRAY_ID in header and "annotation_id" in header


def read_answers(path: str | os.PathLike, class_names: list[str] | None = None
                 ) -> tuple[list, list]:
    """(alray ids, labels) of the answered tasks of a Label Studio export, in file order.

    Labels are the majority choice of each task (integers texts as exported, or class
    indices mapped from ``class_names``); the caller checks them like a CSV's. Raises
    ``LabelsError`` for an unreadable file, an export without any ``class`` answer, or
    tied tasks (all listed).
    """
    path = Path(path)
    if not path.is_file():
        raise LabelsError(f"{path}: no such labels file")
    tasks = _read_json(path) if path.suffix.lower() == ".json" else _read_csv(path)
    index = {name: i for i, name in enumerate(class_names or [])}
    ids, labels, ties = [], [], []
    for task in tasks:
        votes = Counter(_class_of(vote, index) for vote in task.votes)
        if not votes:
            continue  # skipped by every annotator, or not annotated: recorded as skipped
        (top, n), *others = votes.most_common()
        tied = [top] + [label for label, count in others if count == n]
        if len(tied) > 1:
            ties.append(f"{path}: Label Studio task {task.task_id} (alray id "
                        f"{task.alray_id!r}): tie between classes "
                        f"{', '.join(map(str, tied))} ({n} vote(s) each)")
            continue
        ids.append(task.alray_id)
        labels.append(top)
    if ties:
        header = (f"{path}: {len(ties)} task(s) with tied annotators (the majority "
                  "decides; ties are not guessed); add an annotation that breaks each tie "
                  "or delete one, export again; nothing was imported")
        raise LabelsError(header, [header] + ties)
    return ids, labels


def _class_of(vote: str, index: dict) -> object:
    """An integer choice is a class index (alray's configs alias each choice to its
    index); another is looked up among the class names, or kept for the checks to name."""
    try:
        return int(vote)
    except ValueError:
        return index.get(vote, vote)


def _read_json(path: Path) -> list[_Task]:
    """Tasks of a JSON export (``annotations`` per task) or a JSON-MIN export (a record
    per annotation, data fields flattened, the choice under ``class``)."""
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise LabelsError(f"{path}: unreadable Label Studio export: {exc}") from None
    if isinstance(records, dict):
        records = [records]
    if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
        raise LabelsError(f"{path}: not a Label Studio export (a JSON list of tasks)")
    if any("annotations" in r or "completions" in r for r in records):
        return _full_tasks(path, records)
    return _grouped(path, records, lambda r: r.get(FROM_NAME))


def _full_tasks(path: Path, records: list[dict]) -> list[_Task]:
    tasks, n_annotations = [], 0
    for record in records:
        data = record.get("data") if isinstance(record.get("data"), dict) else {}
        task = _Task(record.get("id"), data.get(ALRAY_ID))
        for annotation in record.get("annotations", record.get("completions")) or []:
            if annotation.get("was_cancelled") or annotation.get("skipped"):
                continue
            n_annotations += 1
            choices = [r.get("value", {}).get("choices") for r in annotation.get("result") or []
                       if r.get("from_name") == FROM_NAME and r.get("type") == "choices"]
            vote = _vote(choices[0]) if choices else None
            if vote is not None:
                task.votes.append(vote)
        tasks.append(task)
    _require_answers(path, n_annotations, tasks)
    return tasks


def _read_csv(path: Path) -> list[_Task]:
    """Tasks of a CSV export: a row per (not skipped) annotation; lists as JSON text."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelsError(f"{path}: unreadable Label Studio CSV export: {exc}") from None
    for row in rows:  # the CSV writes an empty cell for null
        for key in (ALRAY_ID, FROM_NAME):
            if row.get(key) == "":
                row[key] = None
    return _grouped(path, rows, lambda r: _json_text(r.get(FROM_NAME)))


def _grouped(path: Path, records: list[dict], choice) -> list[_Task]:
    """Tasks from one record per annotation, grouped by Label Studio's task ``id``."""
    tasks: dict[object, _Task] = {}
    for row, record in enumerate(records):
        key = record.get("id", f"row {row + 1}")
        task = tasks.setdefault(key, _Task(key, record.get(ALRAY_ID)))
        vote = _vote(choice(record))
        if vote is not None:
            task.votes.append(vote)
    _require_answers(path, len(records), list(tasks.values()))
    return list(tasks.values())


def _require_answers(path: Path, n_annotations: int, tasks: list[_Task]) -> None:
    """Annotations but no ``class`` choice anywhere: not a project of alray's config."""
    if n_annotations and not any(task.votes for task in tasks):
        raise LabelsError(f"{path}: none of the {n_annotations} annotation(s) answers the "
                          f"{FROM_NAME!r} choices; label with the config alray wrote "
                          f"(*{CONFIG_SUFFIX}) or rename the project's Choices to "
                          f"{FROM_NAME!r}")


def _vote(value) -> str | None:
    """One annotator's choice as text; None when none was made. Several choices (a
    hand-made multiple-choice config) come back joined, for the checks to refuse."""
    if isinstance(value, dict):
        value = value.get("choices")
    if isinstance(value, list):
        if not value:
            return None
        value = value[0] if len(value) == 1 else ", ".join(map(str, value))
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return str(value).strip()


def _json_text(value):
    """A CSV cell holding a list or object (JSON text) decoded; any other cell as is."""
    if isinstance(value, str) and value[:1] in ("[", "{"):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


__all__ = ["ALRAY_ID", "CONFIG_SUFFIX", "FROM_NAME", "TASKS_SUFFIX", "is_export",
           "label_config", "pass_through_columns", "query_tasks", "read_answers",
           "read_class_names", "write_label_studio"]
