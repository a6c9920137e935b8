"""Export: a query as Label Studio tasks (with the model's pre-annotation) and the
labelling config beside them; see ``alray.loop.labelstudio``."""
from __future__ import annotations

import json
import math
import os
import re
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pyarrow as pa

from alray.errors import ConfigError, StateError
from alray.loop.labelstudio.fields import (ALRAY_ID, ALRAY_RANK, ALRAY_SCORE, CONFIG_SUFFIX,
                                           DEFAULT_OBJECT, FROM_NAME, RESERVED, TASKS_SUFFIX)
from alray.loop.state import RunDir
from alray.pool.schema import QUERY_COLUMNS

IMAGE_NAME = re.compile(r"(^|_)(image|img|picture|photo|thumbnail)(_|$)", re.IGNORECASE)
FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


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
    """The query's columns that are not alray's own: shown to the assessor as task data.
    Only plain values are shown: an embedding (list), struct or binary column a scorer
    carried along is left out of the tasks."""
    shown = [f.name for f in query.schema if f.name not in QUERY_COLUMNS
             and not (pa.types.is_nested(f.type) or pa.types.is_binary(f.type)
                      or pa.types.is_large_binary(f.type))]
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


def write_run_query(run_dir: str | os.PathLike, step: int | None = None,
                    class_names: list[str] | None = None) -> dict[str, Path]:
    """The query of ``step`` of a run (default: the one waiting for labels) written for
    Label Studio beside it: ``RUN/queries/step-NNNNN.label-studio.json`` and ``.xml``,
    with the run's class count, under the run's writer lock (its files go into the run)."""
    run = RunDir.open(run_dir, write=True)  # it writes into RUN/queries: one writer
    if step is None:
        step = run.read_state().open_query
        if step is None:
            raise StateError(f"no query is waiting for labels in {run.path}; give the step")
    return write_label_studio(run.read_query(step), run.query_path(step, ""),
                              n_classes=run.config.model.n_classes, class_names=class_names)
