"""The service's request parsing and its streaming threshold, without Ray."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from alray.config import PoolConfig
from alray.serve.posts import BadRequest, parse_posts
from alray.serve.routing import Reservoir

DIMS = {"image": 3, "text": 2}


def parse(body, ctype="application/json", id_type="int64"):
    if isinstance(body, dict):
        body = json.dumps(body).encode()
    return parse_posts(body, ctype, PoolConfig(), DIMS, id_type)


def test_json_posts_become_fixed_size_columns_with_nulls():
    table = parse({"posts": [{"id": 1, "image_emb": [1, 2, 3], "text_emb": None},
                             {"id": 2, "text_emb": [0.5, 0.25]}]})
    assert table.column("id").to_pylist() == [1, 2]
    assert table.schema.field("image_emb").type == pa.list_(pa.float32(), 3)
    assert table.column("image_emb").to_pylist() == [[1, 2, 3], None]
    assert table.column("text_emb").to_pylist() == [None, [0.5, 0.25]]


def test_every_problem_is_named_by_index_and_id():
    with pytest.raises(BadRequest) as caught:
        parse(b'{"posts": [{"id": 1, "image_emb": [1, 2]}, {"id": 2, "x": 1, '
              b'"text_emb": [Infinity, 1]}, {"id": 2, "image_emb": [1, 2, 3]}, '
              b'{"id": true, "text_emb": [1, 1]}]}')
    err = caught.value
    assert err.status == 422
    found = {(p["index"], p["field"]) for p in err.problems}
    # a rejected vector explains the missing embedding: no second problem for it
    assert found == {(0, "image_emb"), (1, "x"), (1, "text_emb"), (2, "id"), (3, "id")}


def test_arrow_body_checks_rows_like_json():
    values = pa.array([1.0, 2.0, 3.0, 1.0, float("nan"), 3.0, 4.0, 5.0], pa.float64())
    image = pa.ListArray.from_arrays(pa.array([0, 3, 6, 8]), values)
    table = pa.table({"id": pa.array([7, 8, 9], pa.int64()), "image_emb": image})
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    with pytest.raises(BadRequest) as caught:
        parse(sink.getvalue().to_pybytes(), "application/vnd.apache.arrow.stream")
    problems = {(p["index"], p["id"]): p["problem"] for p in caught.value.problems}
    assert set(problems) == {(1, 8), (2, 9)}
    assert "NaN" in problems[(1, 8)] and "2 values, expected 3" in problems[(2, 9)]


@pytest.mark.parametrize("body,ctype,status", [
    (b"{", "application/json", 400), (b"[]", "application/json", 400),
    (b'{"posts": [], "x": 1}', "application/json", 400),
    (b'{"posts": []}', "application/json", 400), (b"a,b", "text/csv", 415),
    (b"garbage", "application/vnd.apache.parquet", 400)])
def test_malformed_bodies(body, ctype, status):
    with pytest.raises(BadRequest) as caught:
        parse(body, ctype)
    assert caught.value.status == status and caught.value.body()["error"]


def test_string_ids():
    table = parse({"posts": [{"id": "a", "text_emb": [1, 2]}]}, id_type="string")
    assert table.schema.field("id").type == pa.string()


def test_reservoir_quantile_follows_the_stream_and_is_seeded():
    rng = np.random.default_rng(0)
    data = rng.standard_normal(200_000)
    first, second = Reservoir(5000, seed=3), Reservoir(5000, seed=3)
    for chunk in np.array_split(data, 37):
        first.add(chunk)
        second.add(chunk)
    assert first.seen == 200_000 and len(first.values) == 5000
    np.testing.assert_array_equal(first.values, second.values)
    assert abs(first.quantile(0.98) - np.quantile(data, 0.98)) < 0.1
    shifted = Reservoir(1000, seed=0)
    shifted.add(np.zeros(1000))
    shifted.add(np.ones(50_000))  # the distribution moved: the sample follows it
    assert shifted.quantile(0.5) == 1.0


@pytest.mark.parametrize("vector,problem", [
    (b"[1, true, 2]", "non-number"), (b'[1, "2", 3]', "non-number"),
    (b"[[1], [2], [3]]", "non-number"), (b"[1, null, 3]", "non-number"),
    (b"[1, NaN, 3]", "NaN"), (b"[1, 2, 1e300]", "NaN or infinite"),
    (b"[1, 2, 1" + b"0" * 40 + b"]", "NaN or infinite")])
def test_each_kind_of_bad_json_vector_is_named(vector, problem):
    # the fast numeric path must refuse exactly what the value-by-value check refuses
    with pytest.raises(BadRequest) as caught:
        parse(b'{"posts": [{"id": 5, "text_emb": [1, 2]}, {"id": 6, "image_emb": '
              + vector + b"}]}")
    (found,) = caught.value.problems
    assert (found["index"], found["id"], found["field"]) == (1, 6, "image_emb")
    assert problem in found["problem"], found


def test_json_numbers_keep_their_values_on_the_fast_path():
    table = parse(b'{"posts": [{"id": 1, "image_emb": [1, -2.5, 3e-3], '
                  b'"text_emb": [0, 7]}]}')
    assert table.column("image_emb").to_pylist() == [
        pytest.approx([1.0, -2.5, 0.003])]
    assert table.column("text_emb").to_pylist() == [[0.0, 7.0]]
