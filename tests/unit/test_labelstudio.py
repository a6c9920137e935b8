"""Label Studio tasks out, Label Studio exports back in (alray.loop.labelstudio), no Ray.

The fixtures in tests/fixtures/label_studio/ are a real server's exports, written by
``bench/label_studio_roundtrip.py --fixtures`` (Label Studio 1.23): the query of step 1
of a 10-class run with ``--show-columns title,url`` (``query.parquet``), the tasks and
config alray wrote for it, and the
project exported as JSON, JSON_MIN and CSV after these answers: rank 1 skipped, rank 2
left alone, rank 3 answered by three annotators (2 to 1), the rest by one each
(``expected.json``: alray id -> class, null = skipped); ``export-tie.json`` is the JSON
export taken when rank 3 had only its two disagreeing annotations.
"""
from __future__ import annotations

import copy
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from alray.config import LoopConfig, ModelConfig
from alray.errors import ConfigError, LabelsError, StateError
from alray.loop.assessors import import_labels
from alray.loop.labelstudio import (ALRAY_ID, is_export, read_answers, read_class_names,
                                    write_label_studio, write_run_query)
from alray.loop.state import RunDir, RunState, labels_schema

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "label_studio"
EXPORTS = ["export.json", "export-min.json", "export.csv"]
N_CLASSES = 10
NAMES = ["arts", "business", "cooking", "fashion", "gaming", "health", "music",
         "politics", "science", "sport"]
INITIAL = [1, 2, 3]       # labelled at step 0 (not in the fixture's query)
EARLIER = [20, 21]        # sent at step 1 when the fixture's query is step 2's


def expected() -> dict:
    return {int(k): v for k, v in json.loads((FIXTURES / "expected.json").read_text()).items()}


def fixture_query(step: int = 1) -> pa.Table:
    query = pq.read_table(FIXTURES / "query.parquet")
    return query.set_column(query.schema.get_field_index("step"), "step",
                            pa.array([step] * query.num_rows, pa.int64()))


def make_run(root: Path, open_step: int = 1) -> Path:
    """A 10-class run whose open query is the fixture's (as step ``open_step``)."""
    model = ModelConfig(modality_dims={"image": 4, "text": 3},
                        branch_widths={"image": (4,), "text": (4,)},
                        fused_widths=(4,), n_classes=N_CLASSES)
    path = root / "run"
    run = RunDir.create(path, LoopConfig(pool_uri="pool.parquet", val_uri="val.parquet",
                                         initial=3, model=model), fingerprints={})
    rows = {"id": INITIAL, "label": [0, 1, 2], "step": [0] * 3, "source": ["initial"] * 3}
    if open_step == 2:
        earlier = fixture_query(1).slice(0, 2).set_column(0, "id", pa.array(EARLIER))
        run.write_query(earlier, step=1, csv=True)
        rows = {k: v + extra for (k, v), extra in zip(rows.items(), [
            EARLIER, [4, None], [1, 1], ["assessor", "skipped"]])}
    run.write_labels(pa.table(rows, schema=labels_schema(pa.int64())))
    run.write_query(fixture_query(open_step), step=open_step, csv=True)
    run.write_state(RunState(step=open_step - 1, checkpoint=None, open_query=open_step))
    return path


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path)


def recorded(run: Path, step: int = 1) -> dict:
    table = pq.read_table(run / "labels.parquet").to_pylist()
    return {row["id"]: row["label"] for row in table if row["step"] == step}


def refused(run: Path, file: Path, **kwargs) -> str:
    before = (run / "labels.parquet").read_bytes()
    with pytest.raises(LabelsError) as info:
        import_labels(run, file, **kwargs)
    assert (run / "labels.parquet").read_bytes() == before
    return str(info.value)


def edited_json(tmp_path: Path, edit, name: str = "edited.json") -> Path:
    """The real JSON export, changed by ``edit(tasks)``, as a new file."""
    tasks = json.loads((FIXTURES / "export.json").read_text())
    edit(tasks)
    path = tmp_path / name
    path.write_text(json.dumps(tasks))
    return path


def by_rank(tasks: list, rank: int) -> dict:
    return next(t for t in tasks if t["data"]["alray_rank"] == rank)


def vote(choice: str, cancelled: bool = False) -> dict:
    result = [] if cancelled else [{"from_name": "class", "to_name": "title",
                                    "type": "choices", "value": {"choices": [choice]}}]
    return {"result": result, "was_cancelled": cancelled, "completed_by": 9}


# --- export ------------------------------------------------------------------------
def query_with_fields(ids=(7, 5, 9), id_type=pa.int64()) -> pa.Table:
    n = len(ids)
    return pa.table({
        "id": pa.array(list(ids), id_type), "score": [0.25, float("nan"), 0.125],
        "rank": [3, 1, 2], "predicted_class": [4, 0, 9], "predicted_prob": [0.5, 0.25, 0.75],
        "step": [2] * n, "strategy": ["margin"] * n, "least_sure_head": ["text"] * n,
        "title": ["seven", "five", "nine"], "image_url": ["http://x/7.png", None, "http://x/9.png"]})


def test_tasks_hold_the_post_and_the_model_prediction(tmp_path):
    paths = write_label_studio(query_with_fields(), tmp_path / "step-00002", class_names=NAMES)
    assert paths == {"tasks": tmp_path / "step-00002.label-studio.json",
                     "config": tmp_path / "step-00002.label-studio.xml"}
    tasks = json.loads(paths["tasks"].read_text())
    assert [t["data"][ALRAY_ID] for t in tasks] == [5, 9, 7]  # rank order
    first = tasks[0]
    assert first["data"] == {"alray_id": 5, "alray_rank": 1, "alray_score": None,  # NaN
                             "title": "five", "image_url": None}
    (prediction,) = first["predictions"]
    assert prediction["score"] == 0.25 and prediction["model_version"] == "alray step 2 margin"
    assert prediction["result"] == [{"from_name": "class", "to_name": "title",
                                     "type": "choices", "value": {"choices": ["0"]}}]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "step-00002.label-studio.json", "step-00002.label-studio.xml"]  # no temp files


def test_config_choices_show_names_and_carry_indices(tmp_path):
    paths = write_label_studio(query_with_fields(), tmp_path / "q", class_names=NAMES)
    view = ET.fromstring(paths["config"].read_text())
    choices = view.find("Choices")
    assert choices.get("name") == "class" and choices.get("toName") == "title"
    assert choices.get("choice") == "single" and choices.get("required") == "true"
    assert [(c.get("value"), c.get("alias")) for c in choices] == [
        (name, str(i)) for i, name in enumerate(NAMES)]
    objects = {tag.get("name"): tag.tag for tag in view if tag.get("name") and tag.tag != "Choices"}
    assert objects == {"title": "Text", "image_url": "Image"}


def test_numbered_classes_and_a_directory_as_out(tmp_path):
    query = query_with_fields().select(["id", "score", "rank", "predicted_class",
                                        "predicted_prob", "step", "strategy"])
    paths = write_label_studio(query, tmp_path, n_classes=10)
    assert paths["tasks"] == tmp_path / "step-00002.label-studio.json"
    view = ET.fromstring(paths["config"].read_text())
    assert [c.get("value") for c in view.find("Choices")] == [str(i) for i in range(10)]
    assert view.find("Text").get("value") == "$alray_id"  # no pass-through: the id shown


def test_string_ids_stay_text(tmp_path):
    paths = write_label_studio(query_with_fields(("007", "5", "x"), pa.string()), tmp_path / "q",
                               n_classes=10)
    assert [t["data"][ALRAY_ID] for t in json.loads(paths["tasks"].read_text())] == \
        ["5", "x", "007"]


@pytest.mark.parametrize("kwargs,match", [({}, "class count or class names"),
                                          ({"n_classes": 3, "class_names": NAMES},
                                           "10 class names given for 3 classes")])
def test_export_needs_consistent_classes(tmp_path, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        write_label_studio(query_with_fields(), tmp_path / "q", **kwargs)


def test_reserved_or_odd_pass_through_names_are_refused(tmp_path):
    query = query_with_fields().append_column("annotator", pa.array(["a"] * 3)) \
        .append_column("my field", pa.array(["b"] * 3))
    with pytest.raises(ConfigError, match="'annotator', 'my field'"):
        write_label_studio(query, tmp_path / "q", n_classes=10)


def test_embeddings_carried_along_are_not_task_data(tmp_path):
    query = query_with_fields().append_column(
        "image_emb", pa.array([[0.5, 0.25]] * 3, pa.list_(pa.float32())))
    paths = write_label_studio(query, tmp_path / "q", n_classes=10)
    assert all("image_emb" not in t["data"] for t in json.loads(paths["tasks"].read_text()))
    assert "image_emb" not in paths["config"].read_text()


def test_class_names_file(tmp_path):
    good = tmp_path / "names.txt"
    good.write_text("cat\n dog \n\n\n")
    assert read_class_names(good) == ["cat", "dog"]
    bad = tmp_path / "bad.txt"
    bad.write_text("cat\n\ndog\ncat\n")
    with pytest.raises(ConfigError) as info:
        read_class_names(bad)
    assert info.value.problems == [f"{bad}: line 2: blank class name",
                                   f"{bad}: line 4: class name 'cat' repeats line 1"]


def test_a_run_query_is_written_beside_it(run):
    paths = write_run_query(run, class_names=NAMES)  # the open query: step 1
    assert paths["tasks"] == run / "queries" / "step-00001.label-studio.json"
    tasks = json.loads(paths["tasks"].read_text())
    assert [t["data"][ALRAY_ID] for t in tasks] == fixture_query().sort_by("rank").column(
        "id").to_pylist()
    assert len(ET.fromstring(paths["config"].read_text()).find("Choices")) == N_CLASSES
    import_labels(run, FIXTURES / "export.json")  # the .json beside it is not a query file
    (run / "state.json").write_text(json.dumps({"step": 1, "checkpoint": None,
                                                "open_query": None}))  # as if resumed
    with pytest.raises(StateError, match="no query is waiting for labels"):
        write_run_query(run)
    assert write_run_query(run, step=1, class_names=None)["config"].exists()


def test_written_tasks_match_what_the_round_trip_imported(tmp_path):
    """The fixture tasks were written by this code from the fixture query."""
    tasks = json.loads((FIXTURES / "step-00001.label-studio.json").read_text())
    query = fixture_query().sort_by("rank")
    assert [t["data"][ALRAY_ID] for t in tasks] == query.column("id").to_pylist()
    assert [t["predictions"][0]["result"][0]["value"]["choices"] for t in tasks] == \
        [[str(c)] for c in query.column("predicted_class").to_pylist()]


# --- import of the real exports ----------------------------------------------------
@pytest.mark.parametrize("name", EXPORTS)
def test_each_export_imports_as_annotated(run, name):
    summary = import_labels(run, FIXTURES / name)
    want = expected()
    assert recorded(run) == want
    assert summary["labelled"] == sum(v is not None for v in want.values())
    assert summary["skipped"] == sum(v is None for v in want.values()) == 2
    rows = pq.read_table(run / "labels.parquet").to_pylist()
    assert [r["source"] for r in rows if r["step"] == 1 and r["label"] is None] == \
        ["skipped", "skipped"]


@pytest.mark.parametrize("name", EXPORTS)
def test_exports_are_detected_by_content(name):
    assert is_export(FIXTURES / name)


def test_a_plain_csv_is_not_an_export(tmp_path):
    plain = tmp_path / "answers.csv"
    plain.write_text("id,label\n1,2\n")
    assert not is_export(plain)


def test_csv_export_saved_again_with_a_byte_order_mark(run, tmp_path):
    """A spreadsheet that re-saves the CSV export adds a BOM: still Label Studio's CSV."""
    path = tmp_path / "resaved.csv"
    path.write_bytes(b"\xef\xbb\xbf" + (FIXTURES / "export.csv").read_bytes())
    assert is_export(path)
    import_labels(run, path)
    assert recorded(run) == expected()


@pytest.mark.parametrize("name", EXPORTS)
def test_majority_of_three_annotators(name):
    ids, labels = read_answers(FIXTURES / name)
    tasks = json.loads((FIXTURES / "export.json").read_text())
    disputed = by_rank(tasks, 3)
    votes = [a["result"][0]["value"]["choices"][0] for a in disputed["annotations"]]
    assert len(votes) == 3 and len(set(votes)) == 2
    majority = max(set(votes), key=votes.count)
    ids = [str(i) for i in ids]  # the CSV's ids are text until the checks parse them
    assert labels[ids.index(str(disputed["data"][ALRAY_ID]))] == int(majority)


def test_tie_is_refused_with_its_task(run):
    tasks = json.loads((FIXTURES / "export-tie.json").read_text())
    tied = next(t for t in tasks if len(t["annotations"]) == 2)
    text = refused(run, FIXTURES / "export-tie.json")
    assert "1 task(s) with tied annotators" in text
    assert f"Label Studio task {tied['id']} (alray id {tied['data'][ALRAY_ID]})" in text


def test_every_tie_is_listed(run, tmp_path):
    def two_ties(tasks):
        for rank in (4, 5):
            by_rank(tasks, rank)["annotations"] = [vote("1"), vote("2"), vote("2"), vote("1"),
                                                   vote("3", cancelled=True)]
    text = refused(run, edited_json(tmp_path, two_ties))
    assert "2 task(s) with tied annotators" in text and text.count("tie between") == 2


def test_skips_do_not_vote(run, tmp_path):
    def skip_then_answer(tasks):
        by_rank(tasks, 1)["annotations"].append(vote("6"))  # rank 1 was skipped once
        by_rank(tasks, 4)["annotations"] += [vote("", cancelled=True)] * 3
    import_labels(run, edited_json(tmp_path, skip_then_answer))
    tasks = json.loads((FIXTURES / "export.json").read_text())
    got = recorded(run)
    assert got[by_rank(tasks, 1)["data"][ALRAY_ID]] == 6
    assert got[by_rank(tasks, 4)["data"][ALRAY_ID]] == expected()[by_rank(tasks, 4)["data"][ALRAY_ID]]


def test_names_map_back_with_class_names(run, tmp_path):
    """A project whose hand-made config has names and no aliases."""
    def named(tasks):
        for task in tasks:
            for annotation in task["annotations"]:
                for result in annotation["result"]:
                    result["value"]["choices"] = [NAMES[int(result["value"]["choices"][0])]]
    path = edited_json(tmp_path, named)
    assert "label 'arts' is not an integer class" in refused(run, path) or \
        "is not an integer class" in refused(run, path)
    import_labels(run, path, class_names=NAMES)
    assert recorded(run) == expected()


def test_no_class_answer_at_all_is_refused(run, tmp_path):
    def renamed(tasks):
        for task in tasks:
            for annotation in task["annotations"]:
                for result in annotation["result"]:
                    result["from_name"] = "label"
    assert "answers the 'class' choices" in refused(run, edited_json(tmp_path, renamed))


@pytest.mark.parametrize("content", ["{not json", '"text"', "[1, 2]"])
def test_unreadable_or_foreign_json(run, tmp_path, content):
    path = tmp_path / "x.json"
    path.write_text(content)
    text = refused(run, path)
    assert "Label Studio export" in text


# --- the same row checks as a CSV --------------------------------------------------
def test_bad_rows_are_all_reported(run, tmp_path):
    def spoil(tasks):
        by_rank(tasks, 4)["data"][ALRAY_ID] = 999999            # unknown
        by_rank(tasks, 5)["data"][ALRAY_ID] = INITIAL[0]        # already labelled
        by_rank(tasks, 6)["annotations"] = [vote("12")]         # out of range
        by_rank(tasks, 7)["annotations"] = [vote("cat")]        # not a class
        del by_rank(tasks, 8)["data"][ALRAY_ID]                 # a task made by hand
        twin = copy.deepcopy(by_rank(tasks, 9))                 # the query imported twice
        twin["annotations"] = [vote(str((int(twin["annotations"][0]["result"][0]["value"]
                                             ["choices"][0]) + 1) % N_CLASSES))]
        tasks.append(twin)
    text = refused(run, edited_json(tmp_path, spoil))
    for phrase in ["unknown id", "already labelled (initial) at step 0",
                   "label 12 is out of range", "label 'cat' is not an integer class",
                   "no id", "conflicts with label"]:
        assert phrase in text, phrase


def test_duplicate_task_with_the_same_answer(run, tmp_path):
    def twice(tasks):
        tasks.append(copy.deepcopy(by_rank(tasks, 9)))
    assert "duplicate of row" in refused(run, edited_json(tmp_path, twice))


def test_id_of_an_earlier_query(tmp_path):
    run = make_run(tmp_path, open_step=2)
    def earlier(tasks):
        by_rank(tasks, 4)["data"][ALRAY_ID] = 20   # labelled at step 1
        by_rank(tasks, 5)["data"][ALRAY_ID] = 21   # skipped at step 1
    text = refused(run, edited_json(tmp_path, earlier))
    assert "already labelled (assessor) at step 1" in text and "skipped at step 1" in text


def test_csv_export_bad_cells(run, tmp_path):
    """The CSV export goes through the same checks: a multi-choice cell, an unknown id."""
    lines = (FIXTURES / "export.csv").read_text().splitlines()
    header = lines[0].split(",")
    cells = lines[-1].split(",")
    cells[header.index('"class"')] = '"[""1"", ""2""]"'
    cells[header.index('"alray_id"')] = "424242"
    path = tmp_path / "spoilt.csv"
    path.write_text("\n".join(lines[:-1] + [",".join(cells)]) + "\n")
    text = refused(run, path)
    assert "unknown id" in text and "label '1, 2' is not an integer class" in text
