"""Importing assessors' answers into a run directory (alray.loop.assessors), no Ray."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.csv  # noqa: F401  (pa.csv)
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from alray.config import LoopConfig, ModelConfig
from alray.errors import LabelsError, StateError
from alray.loop.assessors import MAX_EXAMPLES, import_labels
from alray.loop.state import RunDir, RunState, labels_schema
from alray.pool.schema import QUERY_COLUMNS

N_CLASSES = 5
# written out of rank order on purpose: imported rows must come out in rank order
INT_QUERY = {"id": [10, 11, 12, 13, 14], "rank": [3, 1, 5, 2, 4]}
INT_RANK_ORDER = [11, 13, 10, 14, 12]
STR_QUERY = {"id": ["007", "010", "0", "abc", "12"], "rank": [1, 2, 3, 4, 5]}
INITIAL = {int: [1, 2, 3], str: ["001", "002", "003"]}


def _config() -> LoopConfig:
    model = ModelConfig(modality_dims={"image": 4, "text": 3},
                        branch_widths={"image": (4,), "text": (4,)},
                        fused_widths=(4,), n_classes=N_CLASSES)
    return LoopConfig(pool_uri="pool.parquet", val_uri="val.parquet", initial=3, model=model)


def _query_table(ids: list, ranks: list, step: int, id_type: pa.DataType) -> pa.Table:
    n = len(ids)
    data = {"id": pa.array(ids, id_type), "score": pa.array([0.5] * n),
            "rank": pa.array(ranks, pa.int64()),
            "predicted_class": pa.array([0] * n, pa.int64()),
            "predicted_prob": pa.array([0.3] * n), "step": pa.array([step] * n, pa.int64()),
            "strategy": pa.array(["margin"] * n),
            "least_sure_head": pa.array(["image"] * n)}
    return pa.table({name: data[name] for name in QUERY_COLUMNS})


def _label_rows(ids, labels, step, sources, id_type) -> pa.Table:
    return pa.table({"id": pa.array(ids, id_type), "label": pa.array(labels, pa.int64()),
                     "step": pa.array([step] * len(ids), pa.int64()),
                     "source": pa.array(sources)}, schema=labels_schema(id_type))


def make_run(root: Path, kind=int, open_step: int = 1) -> Path:
    """A run waiting for labels of step ``open_step`` (1: the first query; 2: after a
    step-1 query of ids 20 (labelled), 21 (skipped) and 22 (sent, never recorded))."""
    id_type = pa.int64() if kind is int else pa.string()
    path = root / "run"
    run = RunDir.create(path, _config(), fingerprints={})
    labels = _label_rows(INITIAL[kind], [0, 1, 2], 0, ["initial"] * 3, id_type)
    query = STR_QUERY if kind is str else INT_QUERY
    if open_step == 2:
        earlier = [20, 21, 22] if kind is int else ["020", "021", "022"]
        run.write_query(_query_table(earlier, [1, 2, 3], 1, id_type), step=1, csv=True)
        labels = pa.concat_tables([labels, _label_rows(earlier[:2], [3, None], 1,
                                                       ["assessor", "skipped"], id_type)])
    run.write_labels(labels)
    run.write_query(_query_table(query["id"], query["rank"], open_step, id_type),
                    step=open_step, csv=True)
    run.write_state(RunState(step=open_step - 1, checkpoint=None, open_query=open_step))
    return path


@pytest.fixture
def run(tmp_path) -> Path:
    return make_run(tmp_path)


def snapshot(run: Path) -> dict:
    return {name: (run / name).read_bytes() for name in ("labels.parquet", "state.json")}


def new_rows(run: Path, step: int = 1) -> list[dict]:
    table = pq.read_table(run / "labels.parquet")
    return [row for row in table.to_pylist() if row["step"] == step]


def write_csv(path: Path, header: str, lines: list[str]) -> Path:
    path.write_text("\n".join([header, *lines]) + "\n")
    return path


def write_file(path: Path, ids: list, labels: list, engine: str = "pyarrow") -> Path:
    """The answers as CSV or Parquet (by ``path``'s suffix; Parquet by ``engine``)."""
    if path.suffix == ".csv":
        return write_csv(path, "id,label", [f"{i},{'' if v is None else v}"
                                             for i, v in zip(ids, labels)])
    if engine == "fastparquet":
        import fastparquet
        fastparquet.write(str(path), pd.DataFrame({"id": ids, "label": labels}),
                          write_index=False)
    else:
        pq.write_table(pa.table({"id": ids, "label": labels}), path)
    return path


def refused(run: Path, file: Path, error=LabelsError, **kwargs) -> str:
    """Import ``file``, expect ``error``, check nothing changed; the error's text."""
    before = snapshot(run)
    with pytest.raises(error) as info:
        import_labels(run, file, **kwargs)
    assert snapshot(run) == before
    return str(info.value)


# --- success -----------------------------------------------------------------------
@pytest.mark.parametrize("suffix,engine", [(".csv", None), (".parquet", "pyarrow"),
                                           (".parquet", "fastparquet"), (".pq", "pyarrow")])
def test_full_answer_is_appended_in_rank_order(run, tmp_path, suffix, engine):
    state_before = (run / "state.json").read_bytes()
    answers = {10: 0, 11: 1, 12: 2, 13: 3, 14: 4}
    file = write_file(tmp_path / f"answers{suffix}", list(answers), list(answers.values()),
                      engine)
    summary = import_labels(run, file)
    assert summary == {"step": 1, "labelled": 5, "skipped": 0, "file": str(file)}
    rows = new_rows(run)
    assert [r["id"] for r in rows] == INT_RANK_ORDER
    assert all(r["label"] == answers[r["id"]] and r["source"] == "assessor" for r in rows)
    assert len(new_rows(run, step=0)) == 3  # the initial labels are kept
    assert (run / "state.json").read_bytes() == state_before
    assert pq.read_schema(run / "labels.parquet").equals(labels_schema(pa.int64()))


@pytest.mark.parametrize("engine", ["pyarrow", "fastparquet"])
def test_partial_answer_records_skipped_posts(run, tmp_path, engine):
    file = write_file(tmp_path / "answers.parquet", [12, 10], [4, 0], engine)
    assert import_labels(run, file) == {"step": 1, "labelled": 2, "skipped": 3,
                                        "file": str(file)}
    rows = {r["id"]: (r["label"], r["source"]) for r in new_rows(run)}
    assert rows == {10: (0, "assessor"), 12: (4, "assessor"), 11: (None, "skipped"),
                    13: (None, "skipped"), 14: (None, "skipped")}


def test_header_only_file_skips_the_whole_query(run, tmp_path):
    file = write_csv(tmp_path / "answers.csv", "id,label", [])
    assert import_labels(run, file)["skipped"] == 5


def test_string_ids_keep_leading_zeros_from_csv(tmp_path):
    run = make_run(tmp_path, kind=str)
    file = write_csv(tmp_path / "answers.csv", "id,label,note",
                     ["007,1,x", "0,2,", "12,3,y", "abc,4,z"])
    assert import_labels(run, file)["labelled"] == 4
    rows = {r["id"]: (r["label"], r["source"]) for r in new_rows(run)}
    assert rows == {"007": (1, "assessor"), "010": (None, "skipped"), "0": (2, "assessor"),
                    "abc": (4, "assessor"), "12": (3, "assessor")}
    assert pq.read_schema(run / "labels.parquet").field("id").type == pa.string()


def test_string_id_without_its_zeros_is_unknown(tmp_path):
    run = make_run(tmp_path, kind=str)
    file = write_csv(tmp_path / "answers.csv", "id,label", ["7,1"])
    message = refused(run, file)
    assert f"{file}: row 1, id '7': unknown id, not in the query of step 1" in message


def test_fastparquet_string_ids(tmp_path):
    run = make_run(tmp_path, kind=str)
    file = write_file(tmp_path / "a.parquet", ["010", "abc"], [0, 1], "fastparquet")
    assert import_labels(run, file)["labelled"] == 2


def test_loop_exported_query_csv_with_a_label_column(run, tmp_path):
    """Assessors may hand back the query CSV itself with a label column added."""
    query = pq.read_table(run / "queries" / "step-00001.parquet")
    file = tmp_path / "back.csv"
    answered = query.append_column("label", pa.array([1, None, 2, 3, 4], pa.int64()))
    answered = answered.filter(pa.array([True, False, True, True, True]))
    pa.csv.write_csv(answered, file)
    assert import_labels(run, file)["labelled"] == 4


def test_other_column_names_and_integral_floats(run, tmp_path):
    file = write_csv(tmp_path / "answers.csv", "post,class", ["10,2.0", " 11 , 3 "])
    summary = import_labels(run, file, id_column="post", label_column="class")
    assert summary["labelled"] == 2
    assert {r["id"]: r["label"] for r in new_rows(run) if r["label"] is not None} == {10: 2,
                                                                                      11: 3}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(answered=st.dictionaries(st.sampled_from(INT_QUERY["id"]),
                                st.integers(0, N_CLASSES - 1)),
       suffix=st.sampled_from([".csv", ".parquet"]))
def test_any_subset_answered_covers_the_query(answered, suffix):
    with tempfile.TemporaryDirectory() as root:
        run = make_run(Path(root))
        file = write_file(Path(root) / f"answers{suffix}", list(answered),
                          list(answered.values()))
        summary = import_labels(run, file)
        assert summary["labelled"] == len(answered)
        assert summary["labelled"] + summary["skipped"] == len(INT_QUERY["id"])
        rows = new_rows(run)
        assert [r["id"] for r in rows] == INT_RANK_ORDER
        assert {r["id"]: r["label"] for r in rows if r["source"] == "assessor"} == answered


# --- refused files: message names file, row and id; nothing changes -------------------
def test_unknown_id(run, tmp_path):
    file = write_csv(tmp_path / "a.csv", "id,label", ["10,1", "99,2"])
    assert f"{file}: row 2, id 99: unknown id, not in the query of step 1" in refused(run, file)


def test_id_already_labelled_initially(run, tmp_path):
    file = write_csv(tmp_path / "a.csv", "id,label", ["2,1"])
    message = refused(run, file)
    assert f"{file}: row 1, id 2: already labelled (initial) at step 0" in message
    assert "only the 5 posts of the query of step 1 can be labelled" in message


def test_id_from_an_earlier_step(tmp_path):
    run = make_run(tmp_path, open_step=2)
    file = write_csv(tmp_path / "a.csv", "id,label", ["20,1", "21,1", "22,1", "10,1"])
    message = refused(run, file)
    assert f"{file}: row 1, id 20: already labelled (assessor) at step 1" in message
    assert f"{file}: row 2, id 21: skipped at step 1" in message
    assert f"{file}: row 3, id 22: in the query of step 1, not of step 2" in message
    assert "row 4" not in message


@pytest.mark.parametrize("cell,expected", [
    ("5", "label 5 is out of range; the classes are 0..4"),
    ("-1", "label -1 is out of range; the classes are 0..4"),
    ("", "no label; remove the row to skip the post"),
    ("2.5", "label '2.5' is not an integer class; the classes are 0..4"),
    ("cat", "label 'cat' is not an integer class"),
])
def test_bad_label_in_csv(run, tmp_path, cell, expected):
    file = write_csv(tmp_path / "a.csv", "id,label", ["10,1", f"12,{cell}"])
    assert f"{file}: row 2, id 12: {expected}" in refused(run, file)


@pytest.mark.parametrize("engine", ["pyarrow", "fastparquet"])
def test_null_and_out_of_range_labels_in_parquet(run, tmp_path, engine):
    file = write_file(tmp_path / "a.parquet", [10, 11, 12], [1.0, None, 7.0], engine)
    message = refused(run, file)
    assert f"{file}: row 2, id 11: no label" in message
    assert f"{file}: row 3, id 12: label 7 is out of range" in message


def test_bad_and_missing_ids_for_an_integer_pool(run, tmp_path):
    file = write_csv(tmp_path / "a.csv", "id,label", ["x1,1", ",2"])
    message = refused(run, file)
    assert f"{file}: row 1, id 'x1': not an integer id" in message
    assert f"{file}: row 2: no id" in message


def test_duplicate_and_conflict(run, tmp_path):
    file = write_csv(tmp_path / "a.csv", "id,label", ["10,1", "11,2", "10,1", "11,3"])
    message = refused(run, file)
    assert f"{file}: row 3, id 10: duplicate of row 1 (label 1)" in message
    assert f"{file}: row 4, id 11: label 3 conflicts with label 2 on row 2" in message


def test_every_problem_is_reported_at_once(run, tmp_path):
    file = write_csv(tmp_path / "a.csv", "id,label",
                     ["99,1", "10,9", "11,", "12,1", "12,2", "13,0", "13,0", "1,0"])
    before = snapshot(run)
    with pytest.raises(LabelsError) as info:
        import_labels(run, file)
    assert snapshot(run) == before
    problems = info.value.problems
    assert problems[0] == (f"{file}: 6 problem(s) in 8 rows (rows counted from 1 after "
                           "the header); nothing was imported")
    assert len(problems) == 7
    for row in (1, 2, 3, 5, 7, 8):
        assert sum(f"{file}: row {row}," in p for p in problems) == 1
    assert str(info.value) == "\n".join(problems)


def test_long_lists_are_cut_with_a_count(run, tmp_path):
    file = write_csv(tmp_path / "a.csv", "id,label",
                     [f"{1000 + i},1" for i in range(MAX_EXAMPLES + 7)])
    problems = refused(run, file).splitlines()
    assert len(problems) == 1 + MAX_EXAMPLES + 1
    assert problems[-1] == f"{file}: ... and 7 more rows with an id not in the query"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_missing_label_column(run, tmp_path, suffix):
    file = tmp_path / f"a{suffix}"
    table = pa.table({"id": [10], "class": [1]})
    pa.csv.write_csv(table, file) if suffix == ".csv" else pq.write_table(table, file)
    message = refused(run, file)
    assert f"{file}: no label column 'label' (columns: id, class)" in message


def test_missing_id_column(run, tmp_path):
    file = write_csv(tmp_path / "a.csv", "post,label", ["10,1"])
    assert f"{file}: no id column 'id' (columns: post, label)" in refused(run, file)


def test_missing_file(run, tmp_path):
    file = tmp_path / "nowhere.csv"
    assert f"{file}: no such labels file" in refused(run, file)


def test_unreadable_file(run, tmp_path):
    file = tmp_path / "a.parquet"
    file.write_bytes(b"not parquet at all")
    assert f"{file}: unreadable labels file" in refused(run, file)
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    assert f"{empty}: unreadable labels file" in refused(run, empty)


def test_unknown_suffix(run, tmp_path):
    file = tmp_path / "a.xlsx"
    file.write_bytes(b"")
    assert f"{file}: unknown labels file type '.xlsx'" in refused(run, file)


def test_no_open_query(tmp_path):
    path = make_run(tmp_path)
    RunDir.open(path, write=True).write_state(RunState(step=1, checkpoint=None, open_query=None))
    file = write_file(tmp_path / "a.csv", [10], [1])
    assert refused(path, file, StateError) == f"no query is waiting for labels in {path}"


def test_already_answered(run, tmp_path):
    file = write_file(tmp_path / "a.csv", [10], [1])
    import_labels(run, file)
    message = refused(run, file, StateError)
    assert "the query of step 1 was already answered" in message
