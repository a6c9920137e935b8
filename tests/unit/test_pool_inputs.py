"""Real users' inputs at the pool boundary (no Ray): one id type whatever the writer, bad
numbers refused with file, row and id, duplicate ids named, labels files read strictly."""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv  # noqa: F401  (pa.csv)
import pyarrow.parquet as pq
import pytest
import torch

from alray.config import LoopConfig, ModelConfig, PoolConfig
from alray.errors import (CheckpointError, InputWarning, LabelsError, PoolSchemaError)
from alray.pool.arrays import arrays_from_table
from alray.pool.load import (load_labelled_file, load_rows, read_ids_and_labels,
                             read_labels_file)
from alray.pool.normalize import normalize_ids, normalize_labels, normalize_table
from tests.conftest import make_pool_table, write_pool

POOL = PoolConfig()
DIMS = {"image": 8, "text": 4}


# --- one id type and one label type ------------------------------------------------------
@pytest.mark.parametrize("array,expected", [
    (pa.array([1, 2], pa.int32()), pa.int64()),
    (pa.array([1, 2], pa.uint64()), pa.int64()),
    (pa.array([1, 2], pa.int8()).dictionary_encode(), pa.int64()),
    (pa.array(["a", "b"], pa.large_string()), pa.string()),
    (pa.array(["a", "b"]).dictionary_encode(), pa.string()),
    (pa.chunked_array([pa.array(["a"], pa.large_string())]), pa.string()),
])
def test_ids_become_int64_or_string(array, expected):
    out = normalize_ids(array)
    assert out.type == expected
    assert out.to_pylist() == array.to_pylist() if not pa.types.is_dictionary(array.type) \
        else out.to_pylist() == array.cast(array.type.value_type).to_pylist()


def test_ids_that_cannot_be_int64_or_are_not_ids_are_refused():
    with pytest.raises(PoolSchemaError, match="id 18446744073709551615 does not fit"):
        normalize_ids(pa.array([2 ** 64 - 1], pa.uint64()), where="p.parquet")
    with pytest.raises(PoolSchemaError, match="type double, expected integer or string"):
        normalize_ids(pa.array([1.5]))


def test_pandas_float_labels_with_nan_are_nullable_int64():
    labels = pa.array(np.array([1.0, np.nan, 3.0]), from_pandas=False)  # NaN, not null
    assert normalize_labels(labels).to_pylist() == [1, None, 3]
    assert normalize_labels(pa.array([1, None], pa.int32())).type == pa.int64()


def test_a_fractional_label_is_refused_with_row_and_id():
    with pytest.raises(PoolSchemaError, match=r"f.parquet: row 11 \(id 'b'\): column "
                                              r"label: label 2.7 is not an integer"):
        normalize_labels(pa.array([1.0, 2.7]), pa.array(["a", "b"]), where="f.parquet",
                         first_row=10)


def test_normalize_table_keeps_other_columns():
    table = pa.table({"id": pa.array(["x"], pa.large_string()), "v": [1.5],
                      "label": pa.array([2], pa.int32())})
    out = normalize_table(table)
    assert out.schema.types == [pa.string(), pa.float64(), pa.int64()]
    assert out.to_pylist() == [{"id": "x", "v": 1.5, "label": 2}]


def _pandas_pool(path, n=12, first=0, seed=0) -> str:
    rng = np.random.default_rng(seed)
    pd.DataFrame({
        "id": [f"{i:05d}" for i in range(first, first + n)],
        "image_emb": [rng.standard_normal(8).astype(np.float32) for _ in range(n)],
        "text_emb": [rng.standard_normal(4) for _ in range(n)],
        "label": pd.array([i % 3 if i % 4 else None for i in range(n)], dtype="Int64"),
    }).to_parquet(path)
    return str(path)


def test_string_and_large_string_shards_read_as_one_pool(tmp_path):
    """pandas writes large_string ids, older writers string: both shards, one id type."""
    (tmp_path / "pool").mkdir()
    _pandas_pool(tmp_path / "pool" / "a.parquet")
    table = make_pool_table(5, first_id=0).set_column(
        0, "id", pa.array([f"x{i}" for i in range(5)], pa.string()))
    pq.write_table(table, tmp_path / "pool" / "b.parquet")
    assert pq.read_schema(tmp_path / "pool" / "a.parquet").field("id").type == pa.large_string()
    ids, labels = read_ids_and_labels(str(tmp_path / "pool"), POOL)
    assert ids.dtype == object and len(ids) == 17 and ids[0] == "00000"
    rows = load_rows(str(tmp_path / "pool"), POOL, ids=np.array(["00003", "x1"], object))
    assert sorted(rows.ids.tolist()) == ["00003", "x1"]


# --- bad numbers -------------------------------------------------------------------------
def _with_value(table: pa.Table, row: int, value) -> pa.Table:
    matrix = np.asarray(table.column("image_emb").combine_chunks().values).reshape(-1, 8).copy()
    matrix[row, 3] = value
    values = pa.array(matrix.reshape(-1))
    valid = table.column("image_emb").combine_chunks().is_valid()
    column = pa.FixedSizeListArray.from_arrays(values, 8, mask=pc_invert(valid))
    return table.set_column(1, "image_emb", column)


def pc_invert(valid):
    import pyarrow.compute as pc
    return pc.invert(valid)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_embedding_is_refused_with_file_row_and_id(tmp_path, value):
    table = _with_value(make_pool_table(30, first_id=500), 7, value)
    table = table.set_column(3, "label", pa.array([1] * 30, pa.int64()))  # all labelled
    pool = write_pool(tmp_path / "pool", [make_pool_table(10, seed=3, first_id=0), table])
    with pytest.raises(PoolSchemaError) as info:
        load_rows(pool, POOL)
    text = str(info.value)
    assert "part-00001.parquet: row 7 (id 507): column image_emb" in text
    assert "NaN, infinite or null value" in text


def test_a_null_inside_a_vector_is_refused():
    inner = pa.array([1.0, None, 3.0, 4.0] + [0.5] * 4, pa.float32())
    column = pa.FixedSizeListArray.from_arrays(inner, 4)
    table = pa.table({"id": pa.array([10, 11]), "image_emb": column,
                      "text_emb": column})
    with pytest.raises(PoolSchemaError, match=r"row 0 of a batch \(id 10\): column image_emb"):
        arrays_from_table(table, POOL, {"image": 4, "text": 4})


def test_null_vectors_are_still_a_missing_modality():
    table = make_pool_table(40)  # about 20% of rows miss a modality
    arrays = arrays_from_table(table, POOL, DIMS)
    assert not arrays.present["image"].all()
    assert np.isfinite(arrays.features["image"]).all()


def test_a_non_finite_model_is_never_written(tmp_path):
    from alray.model import FusionNet, save_checkpoint

    config = ModelConfig(modality_dims={"image": 4, "text": 3},
                         branch_widths={"image": (4,), "text": (4,)}, fused_widths=(4,),
                         n_classes=3)
    model = FusionNet(config)
    with torch.no_grad():
        next(model.parameters())[0].fill_(float("nan"))
    with pytest.raises(CheckpointError, match="NaN or infinite"):
        save_checkpoint(tmp_path / "ckpt", model, config)
    assert not (tmp_path / "ckpt").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary left either


# --- duplicate ids -----------------------------------------------------------------------
def test_duplicate_id_across_shards_is_named(tmp_path):
    pool = write_pool(tmp_path / "pool", [make_pool_table(20, first_id=0),
                                          make_pool_table(20, seed=1, first_id=15)])
    with pytest.raises(PoolSchemaError, match=r"id 15 is in the pool twice: .*part-00000"
                                              r".parquet row 15 and .*part-00001.parquet "
                                              r"row 0"):
        load_rows(pool, POOL)


def test_one_duplicate_and_one_missing_id_do_not_cancel_out(tmp_path):
    pool = write_pool(tmp_path / "pool", [make_pool_table(20, first_id=0),
                                          make_pool_table(5, seed=1, first_id=3)])
    with pytest.raises(PoolSchemaError, match="id 3 is in the pool twice"):
        load_rows(pool, POOL, ids=np.array([3, 999]))


def test_missing_ids_are_counted_and_named(tmp_path):
    pool = write_pool(tmp_path / "pool", [make_pool_table(20)])
    with pytest.raises(LabelsError, match=r"2 of 3 requested ids are not in the pool "
                                          r"\(first: 998, 999\)"):
        load_rows(pool, POOL, ids=np.array([1, 999, 998]))


def test_an_id_requested_twice_is_refused(tmp_path):
    pool = write_pool(tmp_path / "pool", [make_pool_table(20)])
    with pytest.raises(LabelsError, match=r"1 requested ids are repeated \(first: id 4\)"):
        load_rows(pool, POOL, ids=np.array([4, 5, 4]))


# --- labels files (alray train --labels) -------------------------------------------------
def _csv(path, lines):
    path.write_text("id,label\n" + "\n".join(lines) + "\n")
    return str(path)


def test_labels_file_refuses_fractions_and_repeats(tmp_path):
    file = _csv(tmp_path / "l.csv", ["1,2.7", "2,1", "2,0", "3,1", "3,1", "4,2.0"])
    with pytest.raises(LabelsError) as info:
        read_labels_file(file, n_classes=5)
    text = str(info.value)
    assert "3 problem(s) in 6 rows" in text
    assert "row 1, id 1: label '2.7' is not an integer class" in text
    assert "row 3, id 2: label 0 conflicts with label 1 on row 2" in text
    assert "row 5, id 3: duplicate of row 4" in text


def test_labels_file_keeps_text_ids_and_skips_empty_labels(tmp_path):
    file = _csv(tmp_path / "l.csv", ["007,1", "010,", "12,2.0"])
    assert read_labels_file(file, int_ids=False, n_classes=3) == {"007": 1, "12": 2}
    assert read_labels_file(file, int_ids=True, n_classes=3) == {7: 1, 12: 2}
    with pytest.raises(LabelsError, match="label 2 is out of range; the classes are 0..1"):
        read_labels_file(file, n_classes=2)


def test_train_labels_for_a_text_id_pool_keep_leading_zeros(tmp_path):
    pool = _pandas_pool(tmp_path / "pool.parquet")
    file = _csv(tmp_path / "l.csv", ["00003,2", "00010,0"])
    data = load_labelled_file(pool, POOL, file, n_classes=3)
    assert sorted(zip(data.ids.tolist(), data.labels.tolist())) == [("00003", 2),
                                                                    ("00010", 0)]


# --- validation classes the pool never has -----------------------------------------------
def test_validation_classes_missing_from_the_pool_warn_not_refuse(tmp_path):
    from alray.loop.setup import check_inputs

    pool = write_pool(tmp_path / "pool", [make_pool_table(50, classes=3)])
    val_table = make_pool_table(20, seed=1, first_id=1000, classes=5)
    val = write_pool(tmp_path / "val", [val_table])
    n_rare = int(np.isin(val_table.column("label").to_numpy(), [3, 4]).sum())
    model = ModelConfig(modality_dims=DIMS, branch_widths={"image": (4,), "text": (4,)},
                        fused_widths=(4,), n_classes=5)
    config = LoopConfig(pool_uri=pool, val_uri=val, initial=10, model=model)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_inputs(config)
    messages = [str(w.message) for w in caught if issubclass(w.category, InputWarning)]
    assert len(messages) == 1
    assert f"{n_rare} of 20 validation posts have classes the pool never has (3, 4)" \
        in messages[0]


def test_scoring_refuses_a_non_finite_embedding(tmp_path):
    from click.testing import CliRunner

    from alray.cli import main
    from alray.model import FusionNet, save_checkpoint

    bad = _with_value(make_pool_table(30, first_id=500), 4, np.nan)
    pool = write_pool(tmp_path / "pool", [make_pool_table(10), bad])
    config = ModelConfig(modality_dims=DIMS, branch_widths={"image": (4,), "text": (4,)},
                         fused_widths=(4,), n_classes=5)
    save_checkpoint(tmp_path / "ckpt", FusionNet(config), config)
    result = CliRunner().invoke(main, ["score", "--pool", pool, "--checkpoint",
                                       str(tmp_path / "ckpt"), "--out",
                                       str(tmp_path / "q.parquet"), "--local"])
    assert result.exit_code == 2, result.output
    assert "(id 504): column image_emb: NaN, infinite or null value" in result.output
    assert not (tmp_path / "q.parquet").exists()


# --- labels import of a far too long file ------------------------------------------------
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_labels_import_of_the_whole_pool_fails_from_the_row_count(tmp_path, suffix,
                                                                   monkeypatch):
    from alray.loop.assessors import import_labels
    from alray.pool import labels_file
    from tests.unit.test_assessors import make_run, snapshot

    run = make_run(tmp_path)  # its open query has 5 posts
    n = 5000
    table = pa.table({"id": np.arange(n), "label": np.arange(n) % 3})
    file = tmp_path / f"pool{suffix}"
    if suffix == ".csv":
        pa.csv.write_csv(table, file)
    else:
        pq.write_table(table, file)

    def never(*args, **kwargs):
        raise AssertionError("the rows were read")
    monkeypatch.setattr(labels_file, "read_columns", never)
    before = snapshot(run)
    with pytest.raises(LabelsError, match=rf"pool{suffix}: the file has 5,000 rows, the "
                                          "open query has 5"):
        import_labels(run, file)
    assert snapshot(run) == before


def test_a_new_run_refuses_duplicate_ids_in_the_pool(tmp_path):
    from alray.loop.setup import check_inputs

    pool = write_pool(tmp_path / "pool", [make_pool_table(30), make_pool_table(10, seed=1,
                                                                              first_id=25)])
    val = write_pool(tmp_path / "val", [make_pool_table(20, seed=2, first_id=1000)])
    model = ModelConfig(modality_dims=DIMS, branch_widths={"image": (4,), "text": (4,)},
                        fused_widths=(4,), n_classes=5)
    with pytest.raises(LabelsError, match=r"pool: 5 ids occur more than once \(first: 25\)"):
        check_inputs(LoopConfig(pool_uri=pool, val_uri=val, initial=10, model=model))


def test_read_schema_unifies_shards_only_when_they_differ():
    from alray.pool.normalize import read_schema

    names = ["id", "image_emb", "label"]
    one = pa.schema([("id", pa.int64()), ("image_emb", pa.list_(pa.float32(), 4)),
                     ("label", pa.int64())])
    assert read_schema([one, one], "id", "label", ["image_emb"], names) is None
    other = pa.schema([("id", pa.int32()), ("image_emb", pa.large_list(pa.float64())),
                       ("label", pa.float64())])
    assert read_schema([one, other], "id", "label", ["image_emb"], names) == pa.schema(
        [("id", pa.int64()), ("image_emb", pa.list_(pa.float32())), ("label", pa.float64())])
    text = pa.schema([("id", pa.string())])
    with pytest.raises(PoolSchemaError, match="integers in some, text in others"):
        read_schema([one, text], "id", "label", ["image_emb"], ["id"])


def _pool_with_a_none_column(tmp_path, column: str) -> None:
    """A pandas pool of two shards, the second with new ids and ``column`` all None
    (pandas writes it as Arrow type null); it must validate."""
    from alray.pool.validate import validate_pool

    (tmp_path / "pool").mkdir()
    _pandas_pool(tmp_path / "pool" / "a.parquet")
    frame = pd.read_parquet(tmp_path / "pool" / "a.parquet")
    frame["id"] = [f"new{i}" for i in range(len(frame))]
    frame[column] = [None] * len(frame)
    frame.to_parquet(tmp_path / "pool" / "b.parquet")
    assert pq.read_schema(tmp_path / "pool" / "b.parquet").field(column).type == pa.null()
    report = validate_pool(str(tmp_path / "pool"), n_classes=3)
    assert report.ok, [str(p) for p in report.problems]


def test_a_pandas_shard_without_any_label_is_a_valid_unlabelled_shard(tmp_path):
    """pandas writes a label column of None only as Arrow type null."""
    _pool_with_a_none_column(tmp_path, "label")
    ids, labels = read_ids_and_labels(str(tmp_path / "pool"), POOL)
    assert (labels[ids.tolist().index("new0"):] == -1).all()


def test_a_pandas_shard_without_any_text_embedding_is_a_missing_modality(tmp_path):
    """pandas writes an embedding column of None only as Arrow type null."""
    _pool_with_a_none_column(tmp_path, "text_emb")
    rows = load_rows(str(tmp_path / "pool"), POOL, ids=np.array(["new1", "00001"], object))
    new = rows.ids.tolist().index("new1")
    assert not rows.present["text"][new] and rows.present["text"][1 - new]
    assert rows.present["image"].all() and not rows.features["text"][new].any()


def test_huge_finite_values_are_not_taken_for_infinities():
    from alray.pool.arrays import check_finite

    matrix = np.full((3, 4), 3e38, np.float32)  # each row's sum overflows float32
    check_finite(matrix, np.ones(3, bool), np.arange(3), "image_emb")
    matrix[2, 1] = np.inf
    with pytest.raises(PoolSchemaError, match=r"row 2 of a batch \(id 2\)"):
        check_finite(matrix, np.ones(3, bool), np.arange(3), "image_emb")
    check_finite(matrix, np.array([True, True, False]), np.arange(3), "image_emb")
