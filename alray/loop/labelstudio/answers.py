"""Import: Label Studio's JSON, JSON-MIN and CSV exports as (alray id, class) answers,
one per answered task, the majority of its annotators; see ``alray.loop.labelstudio``."""
from __future__ import annotations

import csv
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from alray.errors import LabelsError
from alray.loop.labelstudio.fields import ALRAY_ID, CONFIG_SUFFIX, FROM_NAME


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
        with open(path, newline="", encoding="utf-8-sig") as f:
            header = next(csv.reader(f), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return ALRAY_ID in header and "annotation_id" in header


def read_answers(path: str | os.PathLike, class_names: list[str] | None = None
                 ) -> tuple[list, list]:
    """(alray ids, labels) of the answered tasks of a Label Studio export, in file order.

    Labels are the majority choice of each task (integer texts as exported, or class
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
        records = json.loads(path.read_text(encoding="utf-8-sig"))
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
        with open(path, newline="", encoding="utf-8-sig") as f:
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
