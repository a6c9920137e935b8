"""The packed layout: `alray pool pack` round trips, readers of both layouts, refusals."""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import given, settings, strategies as st

from alray.cli import main
from alray.config import PoolConfig
from alray.errors import ConfigError, PoolSchemaError
from alray.pool import io
from alray.pool.arrays import arrays_from_table, embedding_matrix
from alray.pool.layout import DIM_KEY, DTYPE_KEY, pack_matrix, packed_field, packed_values
from alray.pool.load import load_rows
from alray.pool.pack import pack_pool
from alray.pool.schema import infer_dims
from alray.pool.validate import validate_pool
from tests.conftest import make_pool_table, write_pool

POOL = PoolConfig()
DIMS = {"image": 8, "text": 4}


def variable_lists(matrix: np.ndarray, missing: np.ndarray, value_type) -> pa.Array:
    """A ``list<value_type>`` column, null where ``missing``."""
    return pa.array([None if m else row.tolist() for row, m in zip(matrix, missing)],
                    pa.list_(value_type))


def list_pool(tmp_path, kind: str) -> str:
    """Three shards; kind: fixed32 (fixed_size_list<float32>), var64 (list<double>)."""
    tables = []
    for i in range(3):
        t = make_pool_table(100, seed=i, first_id=100 * i)
        if kind == "var64":
            for column in ("image_emb", "text_emb"):
                arr = t.column(column).combine_chunks()
                rng = np.random.default_rng(i)
                matrix = rng.standard_normal((len(arr), arr.type.list_size))  # float64
                missing = ~np.asarray(arr.is_valid())
                t = t.set_column(t.schema.get_field_index(column), column,
                                 variable_lists(matrix, missing, pa.float64()))
        tables.append(t.append_column("note", pa.array([f"n{k}" for k in range(100)])))
    return write_pool(tmp_path / f"pool-{kind}", tables)


def read_all(uri):
    return load_rows(uri, POOL, ids=np.arange(300))


@pytest.mark.parametrize("kind", ["fixed32", "var64"])
def test_round_trip_float32_gives_equal_arrays(tmp_path, kind):
    src = list_pool(tmp_path, kind)
    result = pack_pool(src, str(tmp_path / "packed"), "float32")
    assert (result["rows"], result["shards"], result["dims"]) == (300, 3, DIMS)
    before, after = read_all(src), read_all(str(tmp_path / "packed"))
    np.testing.assert_array_equal(before.ids, after.ids)
    np.testing.assert_array_equal(before.labels, after.labels)
    for m in DIMS:
        np.testing.assert_array_equal(before.present[m], after.present[m])
        np.testing.assert_array_equal(before.features[m], after.features[m])  # exact
        assert not after.features[m][~after.present[m]].any()  # nulls -> zeros
    # every other column, and the order of columns, unchanged
    old = pq.read_table(f"{src}/part-00001.parquet")
    new = pq.read_table(f"{tmp_path}/packed/part-00001.parquet")
    assert new.schema.names == old.schema.names
    for name in ("id", "label", "note"):
        assert new.column(name).equals(old.column(name))
    field = new.schema.field("image_emb")
    assert field.type == pa.binary(8 * 4)
    assert (field.metadata[DTYPE_KEY], field.metadata[DIM_KEY]) == (b"float32", b"8")
    assert infer_dims(str(tmp_path / "packed"), POOL) == DIMS


def test_float16_rounds_like_numpy_and_halves_the_bytes(tmp_path):
    src = list_pool(tmp_path, "fixed32")
    p32 = pack_pool(src, str(tmp_path / "p32"), "float32")
    p16 = pack_pool(src, str(tmp_path / "p16"), "float16")
    before, after = read_all(src), read_all(str(tmp_path / "p16"))
    for m in DIMS:
        assert after.features[m].dtype == np.float32
        np.testing.assert_array_equal(
            after.features[m], before.features[m].astype(np.float16).astype(np.float32))
    assert p16["bytes_out"] < 0.75 * p32["bytes_out"]
    # float16 -> float16 re-pack of a packed pool is lossless; float16 -> float32 too
    pack_pool(str(tmp_path / "p16"), str(tmp_path / "again"), "float32")
    again = read_all(str(tmp_path / "again"))
    np.testing.assert_array_equal(again.features["image"], after.features["image"])


def test_sliced_packed_batch_decodes_its_own_rows():
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((50, 6)).astype(np.float32)
    present = rng.random(50) > 0.3
    for dtype in ("float32", "float16"):
        packed = pack_matrix(matrix, present, dtype)
        part = packed.slice(17, 20)  # a Ray Data batch is a slice with an offset
        out, shown = embedding_matrix(part, 6, "e")
        want = matrix[17:37].astype(dtype).astype(np.float32)
        want[~present[17:37]] = 0.0
        np.testing.assert_array_equal(shown, present[17:37])
        np.testing.assert_array_equal(out, want)
        assert out.dtype == np.float32 and out.shape == (20, 6)
    whole = pack_matrix(matrix, np.ones(50, bool), "float32")
    view, _ = embedding_matrix(whole.slice(5, 10), 6, "e")
    assert not view.flags.owndata  # zero-copy over the Arrow buffer
    assert embedding_matrix(whole.slice(0, 0), 6, "e")[0].shape == (0, 6)


def test_width_that_fits_no_dtype_is_refused():
    packed = pack_matrix(np.zeros((3, 6), np.float32), np.ones(3, bool), "float32")
    with pytest.raises(PoolSchemaError, match="column e: packed vectors of 24 bytes"):
        embedding_matrix(packed, 5, "e")


def write_packed(path, field: pa.Field, n=10, dim=4):
    """A pool file with a hand-made packed ``image_emb`` field and a list ``text_emb``."""
    matrix = np.arange(n * dim, dtype=np.float32).reshape(n, dim)
    data = pack_matrix(matrix, np.ones(n, bool), "float32")
    data = pa.FixedSizeBinaryArray.from_buffers(field.type, n, data.buffers())
    base = make_pool_table(n, image_dim=dim, text_dim=2)
    schema = base.schema.set(1, field)
    table = pa.Table.from_arrays([base.column(0), data, base.column(2), base.column(3)],
                                 schema=schema)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    pq.write_table(table, path)
    return path


@pytest.mark.parametrize("metadata, message", [
    (None, "without the field metadata alray.dtype and alray.dim"),
    ({DTYPE_KEY: b"float64", DIM_KEY: b"2"}, "alray.dtype 'float64', expected one of"),
    ({DTYPE_KEY: b"float32", DIM_KEY: b"five"}, "alray.dim 'five' is not a positive"),
    ({DTYPE_KEY: b"float16", DIM_KEY: b"4"}, "16 bytes a vector, but alray.dim 4 x float16 is 8"),
])
def test_bad_metadata_is_refused_naming_file_and_column(tmp_path, metadata, message):
    path = write_packed(str(tmp_path / "pool" / "part-00000.parquet"),
                        pa.field("image_emb", pa.binary(16), metadata=metadata))
    with pytest.raises(PoolSchemaError) as info:
        infer_dims(str(tmp_path / "pool"), POOL)
    assert f"{path}: column image_emb: " in str(info.value) and message in str(info.value)
    report = validate_pool(str(tmp_path / "pool"))
    assert not report.ok and report.counts["wrong type"] == 1
    [problem] = [p for p in report.problems if p.kind == "wrong type"]
    assert (problem.file, problem.column) == (path, "image_emb") and message in str(problem)


def test_validate_checks_packed_dims_and_values(tmp_path):
    src = list_pool(tmp_path, "fixed32")
    pack_pool(src, str(tmp_path / "p16"), "float16")
    report = validate_pool(str(tmp_path / "p16"), n_classes=5)
    assert report.ok, [str(p) for p in report.problems]
    assert report.summary.dims == DIMS
    assert report.summary.layouts == {"image": "packed float16", "text": "packed float16"}
    assert report.to_dict()["summary"]["layouts"]["text"] == "packed float16"
    wrong = validate_pool(str(tmp_path / "p16"), dims={"image": 9, "text": 4})
    assert wrong.counts["wrong dimension"] > 0
    assert "8 values, expected 9" in str(wrong.problems[0])
    # a NaN and an infinity written into packed vectors are found by row and id
    matrix = np.ones((10, 4), np.float32)
    matrix[3, 1], matrix[7, 0] = np.nan, np.inf
    base = make_pool_table(10, image_dim=4, text_dim=2)
    table = base.set_column(1, packed_field("image_emb", 4, "float32"),
                            pack_matrix(matrix, np.ones(10, bool), "float32"))
    write_pool(tmp_path / "bad", [table])
    bad = validate_pool(str(tmp_path / "bad"))
    assert bad.counts["non-finite value"] == 2
    assert [(p.row, p.column) for p in bad.problems] == [(3, "image_emb"), (7, "image_emb")]


def test_validate_cli_reports_layout_and_suggests_packing(tmp_path, monkeypatch):
    src = list_pool(tmp_path, "fixed32")
    runner = CliRunner()
    out = runner.invoke(main, ["validate", src, "--classes", "5"]).output
    assert "list layout" in out and "alray pool pack" not in out
    monkeypatch.setattr("alray.cli.pool.PACK_HINT_ROWS", 200)
    out = runner.invoke(main, ["validate", src, "--classes", "5"]).output
    assert f"alray pool pack {src} OUT" in out
    result = runner.invoke(main, ["pool", "pack", src, str(tmp_path / "p"), "--dtype",
                                  "float16"])
    assert result.exit_code == 0, result.output
    assert "300 rows in 3 shard(s), packed float16" in result.output
    out = runner.invoke(main, ["validate", str(tmp_path / "p"), "--classes", "5"]).output
    assert "packed float16 layout" in out and "alray pool pack" not in out
    again = runner.invoke(main, ["pool", "pack", src, str(tmp_path / "p")])
    assert again.exit_code == 2 and "exists; pass --overwrite" in again.output


def test_unpackable_values_are_refused_and_out_is_left_alone(tmp_path):
    table = make_pool_table(20, image_dim=4, text_dim=2)
    matrix = np.ones((20, 4), np.float32)
    matrix[5, 2] = 1e6  # beyond float16's range
    table = table.set_column(1, "image_emb", pa.FixedSizeListArray.from_arrays(
        pa.array(matrix.reshape(-1)), 4))
    src = write_pool(tmp_path / "pool", [table])
    with pytest.raises(PoolSchemaError, match=r"part-00000.parquet: row 5 \(id 5\): column "
                                              r"image_emb: a value beyond float16's range"):
        pack_pool(src, str(tmp_path / "out"), "float16")
    assert not os.path.exists(tmp_path / "out")
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".out")]  # no temp left
    matrix[5, 2] = np.nan
    table = table.set_column(1, "image_emb", pa.FixedSizeListArray.from_arrays(
        pa.array(matrix.reshape(-1)), 4))
    src = write_pool(tmp_path / "pool", [table])
    with pytest.raises(PoolSchemaError, match=r"row 5 \(id 5\): column image_emb: a NaN"):
        pack_pool(src, str(tmp_path / "out"), "float32")


def test_out_overlapping_in_and_bad_dtype_are_refused(tmp_path, small_pool):
    with pytest.raises(ConfigError, match="overlaps IN"):
        pack_pool(small_pool, small_pool)
    with pytest.raises(ConfigError, match="overlaps IN"):
        pack_pool(small_pool, f"{small_pool}/packed")
    with pytest.raises(ConfigError, match="dtype 'bfloat16'"):
        pack_pool(small_pool, str(tmp_path / "x"), "bfloat16")


def test_single_file_pool_and_write_path_keep_metadata(tmp_path):
    table = make_pool_table(30)
    pq.write_table(table, tmp_path / "one.parquet")
    pack_pool(str(tmp_path / "one.parquet"), str(tmp_path / "packed"), "float32")
    packed = io.read_table(str(tmp_path / "packed"))
    assert os.listdir(tmp_path / "packed") == ["part-00000.parquet"]
    # the atomic writers keep the field metadata and leave the bytes uncompressed
    io.write_table(packed, str(tmp_path / "copy.parquet"))
    meta = pq.ParquetFile(tmp_path / "copy.parquet").metadata
    column = meta.row_group(0).column(packed.schema.get_field_index("image_emb"))
    assert column.compression == "UNCOMPRESSED"
    copy = io.read_table(str(tmp_path / "copy.parquet"))
    assert copy.schema.field("image_emb").metadata == packed.schema.field("image_emb").metadata
    a = arrays_from_table(table, POOL, DIMS)
    b = arrays_from_table(copy, POOL, DIMS)
    np.testing.assert_array_equal(a.features["image"], b.features["image"])
    # metadata lost on the way (a driver's concatenation): the byte width still decodes
    bare = copy.cast(pa.schema([f.remove_metadata() for f in copy.schema]))
    np.testing.assert_array_equal(arrays_from_table(bare, POOL, DIMS).features["text"],
                                  a.features["text"])


def test_packed_values_is_the_stored_dtype():
    matrix = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    packed = pack_matrix(matrix, np.array([True, False, True]), "float16")
    values = packed_values(packed, 4, "e")
    assert values.dtype == np.float16 and values.shape == (3, 4)
    assert packed.null_count == 1 and not packed.is_valid()[1].as_py()


def test_score_reads_packed_pools_like_list_pools(tmp_path):
    """The same query from the list pool and its float32 packing (the CLI, in process)."""
    from tests.unit.test_scorer import build_checkpoint

    checkpoint = build_checkpoint(tmp_path / "model")
    src = list_pool(tmp_path, "fixed32")
    pack_pool(src, str(tmp_path / "p32"), "float32")
    pack_pool(src, str(tmp_path / "p16"), "float16")
    queries = {}
    for name, pool in (("list", src), ("p32", str(tmp_path / "p32")),
                       ("p16", str(tmp_path / "p16"))):
        out = str(tmp_path / f"q-{name}.parquet")
        result = CliRunner().invoke(main, ["score", "--local", "--pool", pool,
                                           "--checkpoint", checkpoint, "--strategy",
                                           "margin,entropy", "--query-size", "10",
                                           "--out", out, "--show", "0"])
        assert result.exit_code == 0, result.output
        queries[name] = pq.read_table(out)
    assert queries["p32"].column("id").equals(queries["list"].column("id"))
    assert queries["p32"].column("score").equals(queries["list"].column("score"))
    assert queries["p16"].num_rows == queries["list"].num_rows


def test_conform_packs_rows_joining_a_packed_pool():
    """The service's routed posts (fixed-size float32 lists) join a packed pool's types."""
    from alray.pool.pack import conform, packed_schema

    rows = make_pool_table(6)
    schema = packed_schema(rows.schema, POOL, DIMS, "float16", "pool")
    out = conform(rows, schema, ["id", "image_emb", "text_emb", "label"])
    assert out.schema.field("image_emb").metadata[DTYPE_KEY] == b"float16"
    got = arrays_from_table(out, POOL, DIMS)
    want = arrays_from_table(rows, POOL, DIMS)
    np.testing.assert_array_equal(got.present["text"], want.present["text"])
    np.testing.assert_array_equal(got.features["text"],
                                  want.features["text"].astype(np.float16).astype(np.float32))
    assert conform(rows, rows.schema, ["id", "image_emb"]).equals(rows.select([0, 1]))
    huge = rows.set_column(1, "image_emb", pa.FixedSizeListArray.from_arrays(
        pa.array(np.full(6 * 8, 1e6, np.float32)), 8))
    with pytest.raises(PoolSchemaError, match="beyond float16's range"):
        conform(huge, schema, ["id", "image_emb"])


def test_the_service_reads_packed_arrow_bodies():
    from alray.serve.posts import BadRequest, parse_posts

    dims = {"image": 3, "text": 2}
    matrix = np.array([[1, 2, 3], [4, 5, 6]], np.float32)
    packed = pack_matrix(matrix, np.array([True, False]), "float16")
    table = pa.table({"id": pa.array([7, 8], pa.int64()), "image_emb": packed,
                      "text_emb": pa.array([[0.5, 1.0], [1.5, 2.0]], pa.list_(pa.float32()))})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    body = sink.getvalue().to_pybytes()
    out = parse_posts(body, "application/vnd.apache.arrow.stream", POOL, dims, "int64")
    assert out.column("image_emb").to_pylist() == [[1, 2, 3], None]
    with pytest.raises(BadRequest, match="packed vectors of 6 bytes, expected 2"):
        parse_posts(body, "application/vnd.apache.arrow.stream", POOL,
                    {"image": 2, "text": 2}, "int64")


def test_memory_mapped_reads_give_the_same_batches(tmp_path, small_pool):
    pack_pool(small_pool, str(tmp_path / "p"), "float32")
    for shard in io.pool_shards(str(tmp_path / "p")):
        plain = list(io.iter_batches(shard, batch_size=40))
        mapped = list(io.iter_batches(shard, batch_size=40, memory_map=True))
        assert len(plain) == len(mapped) and all(a.equals(b) for a, b in zip(plain, mapped))
    with pytest.raises(PoolSchemaError, match="unreadable"):
        io.open_parquet(io.locate(str(tmp_path / "missing.parquet")), memory_map=True)


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 40), dim=st.integers(1, 9),
       dtype=st.sampled_from(["float32", "float16"]), seed=st.integers(0, 2**32 - 1),
       cut=st.tuples(st.integers(0, 40), st.integers(0, 40)))
def test_pack_then_decode_is_the_cast_for_any_slice(n, dim, dtype, seed, cut):
    """Property: decoding any slice of a packed array gives the slice's rows cast to the
    dtype and back to float32, zeros (and present=False) where null."""
    rng = np.random.default_rng(seed)
    matrix = (rng.standard_normal((n, dim)) * 100).astype(np.float32)  # (n, dim)
    present = rng.random(n) > 0.3                                        # (n,)
    start = min(cut[0], n)
    length = min(cut[1], n - start)
    part = pack_matrix(matrix, present, dtype).slice(start, length)
    out, shown = embedding_matrix(part, dim, "e")
    want = matrix[start:start + length].astype(dtype).astype(np.float32)
    want[~present[start:start + length]] = 0.0
    assert out.shape == (length, dim) and out.dtype == np.float32
    np.testing.assert_array_equal(shown, present[start:start + length])
    np.testing.assert_array_equal(out, want)
