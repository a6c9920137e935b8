"""The service's request parsing and its streaming threshold, without Ray."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from alray.config import PoolConfig
from alray.serve.posts import BadRequest, Limits, parse_posts
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
    (b"garbage", "application/vnd.apache.parquet", 400),
    (b"[" * 100_000, "application/json", 400),  # nested beyond any parser's recursion
    (b'{"posts": [{"id": 1, "text_emb": ' + b"[" * 5000 + b"]" * 5000 + b"}]}",
     "application/json", 400)])
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


# --- a hostile client: bodies that decode to far more than they weigh -------------------
def _ipc(table: pa.Table, kind: str = "stream", compression=None) -> bytes:
    sink = pa.BufferOutputStream()
    new = pa.ipc.new_stream if kind == "stream" else pa.ipc.new_file
    with new(sink, table.schema,
             options=pa.ipc.IpcWriteOptions(compression=compression)) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _many_posts(n: int) -> pa.Table:
    return pa.table({"id": pa.array(np.arange(n, dtype=np.int64)),
                     "text_emb": pa.FixedSizeListArray.from_arrays(
                         pa.array(np.zeros(2 * n, dtype=np.float32)), 2)})


def test_a_small_parquet_body_of_two_million_posts_is_refused_before_decoding():
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(_many_posts(2_000_000), sink, compression="zstd")
    body = sink.getvalue().to_pybytes()
    assert len(body) < 3 * 2**20  # under any body limit: the posts are what counts
    with pytest.raises(BadRequest) as caught:
        parse(body, "application/vnd.apache.parquet")
    assert caught.value.status == 413 and "2,000,000 posts" in caught.value.error
    with pytest.raises(BadRequest) as caught:  # few enough posts, too many bytes
        parse_posts(body, "application/vnd.apache.parquet", PoolConfig(), DIMS, "int64",
                    Limits(max_posts=10**7, max_decoded_bytes=2**20))
    assert caught.value.status == 413 and "--max-decoded-mb" in caught.value.error


@pytest.mark.parametrize("kind", ["stream", "file"])
@pytest.mark.parametrize("compression", [None, "zstd", "lz4"])
def test_arrow_bodies_are_sized_from_their_messages_before_decoding(kind, compression):
    body = _ipc(_many_posts(50_000), kind, compression)
    ctype = f"application/vnd.apache.arrow.{kind}"
    with pytest.raises(BadRequest) as caught:
        parse_posts(body, ctype, PoolConfig(), DIMS, "int64", Limits(max_posts=1000))
    assert caught.value.status == 413 and "--max-posts" in caught.value.error
    # 50,000 x (8 + 8) bytes declared: refused before a byte is decompressed
    with pytest.raises(BadRequest) as caught:
        parse_posts(body, ctype, PoolConfig(), DIMS, "int64",
                    Limits(max_posts=10**6, max_decoded_bytes=500_000))
    assert caught.value.status == 413 and "800,000 bytes" in caught.value.error
    table = parse_posts(body, ctype, PoolConfig(), DIMS, "int64", Limits(max_posts=10**6))
    assert table.num_rows == 50_000


def test_json_bodies_count_posts_too():
    body = json.dumps({"posts": [{"id": i, "text_emb": [1, 2]} for i in range(30)]})
    with pytest.raises(BadRequest) as caught:
        parse_posts(body.encode(), "application/json", PoolConfig(), DIMS, "int64",
                    Limits(max_posts=20))
    assert caught.value.status == 413


def test_an_arrow_body_is_validated_in_full():
    # invalid UTF-8 in a string id: passes the reader's own checks, fails the full one
    data = pa.py_buffer(b"\xff\xfe")
    offsets = pa.py_buffer(np.array([0, 2], dtype=np.int32).tobytes())
    ids = pa.Array.from_buffers(pa.string(), 1, [None, offsets, data])
    text = pa.FixedSizeListArray.from_arrays(pa.array([1.0, 2.0], pa.float32()), 2)
    body = _ipc(pa.table({"id": ids, "text_emb": text}))
    with pytest.raises(BadRequest) as caught:
        parse(body, "application/vnd.apache.arrow.stream", id_type="string")
    assert caught.value.status == 422 and "validation" in caught.value.error


def test_a_truncated_arrow_body_is_malformed():
    body = _ipc(_many_posts(10), compression="zstd")
    with pytest.raises(BadRequest) as caught:
        parse(body[: len(body) // 2], "application/vnd.apache.arrow.stream")
    assert caught.value.status == 400


@pytest.mark.parametrize("post", [
    b'{"id": 5, "image_emb": [1, 2, 1' + b"0" * 400 + b"]}",      # beyond any float
    b'{"id": 1' + b"0" * 400 + b', "image_emb": [1, 2]}',          # beyond any integer
    b'{"id": 1' + b"0" * 30 + b', "image_emb": [1, 2, 3]}'])
def test_huge_integer_literals_are_a_422_whose_answer_encodes(post):
    import orjson

    with pytest.raises(BadRequest) as caught:
        parse(b'{"posts": [' + post + b"]}")
    assert caught.value.status == 422
    orjson.dumps(caught.value.body())  # the answer itself must encode (else a 500)


DAMAGED_PARQUET = (  # a valid 4-post body with 4 bytes changed by a seeded fuzzer
    "eNqVVM9vEkEUfrvL0rGhEQyz2U04ENNuMKGVNrZpDQYGWmiVRkpiKb3oUlbEQIuAtvHUeOpBPRgPxpPx2Bj/"
    "Bk/+FR56MJ579qC+N8uPRquJk53HzHvf+773ZnYpitIs9/EYjxc443AJIFxQAMAhUyWzQ6bGgYe5GUdMkPu5"
    "P7IAMaVmKk4ohNHxSRUtU1TtKyBZmqcLCCOyKICu1A5TGE7jg/MQ5zucn3CepJH2MrfjiPZoTR95ycKhAbEz"
    "OykUSpOQdkw2qGna0efvqHePrxZ4QOolSM93mtLHAqSoK8AmGAQn2GQY9WiYpJngc3Hsp6/JBpHB6jRlqLFz"
    "vLIGM6Kh1e9rujIWT/28CJp+FHyhA3ZuPZ8H09/deeC2HO4HHphSTbVRm4JCBFPmVZP13IPeXbdV5Sr3F5Lk"
    "9Jm+ZqPb4ypwhvAxt+m23N0eoS80Wk7d/St8fGprBDeYFbGSNkR4wJoHf9AiYa4azHilGG8Vu2izs3dmxfHc"
    "gFgAT0GFJOb7LRuoVSJhHsnisGCpOlBD3qDxRTFOFPuHYr9X/n1tf2hdsRmzcnSFfbXxvtqo4d/lwsaxarxW"
    "7W+a/Uz7vxs7Tz5g5fAVwvcFjDe6wWxmvNTBipgBUSrdLl/3btD8oF2l8bSeEUJsCG/cEmJfZOoiJ0RdZOvS"
    "l0HAOi2yQqxJx+hXeKFlidyWe0m1SNQEWc7IfX2EXyFTkXwUyjd7lXKtuTW32asQavkhZi51B/niQAzxGTEc"
    "ksTZKjWrkj7r9vFZcZPyFwmykRuKeHhZWlauZP21/Oa1Wm6pWS2vSYmsxFXEAJUoItU+5a1LktVRf2JYT76Z"
    "2C4nBvn5fr6URLI71Dqe5yqdq0weNrGSk0Vl6qP6hqVl2tse/0pf7waY0bbTefTY7U3vtNvTTqeztx994na6"
    "jb3d6NzCTGJm1krid+g98BG/4iL++f0C/bz0Kg==")


def test_a_damaged_parquet_footer_is_a_400_not_a_crashed_replica(tmp_path):
    """pyarrow aborts the process when Python reads this body's column chunk metadata
    (a size-statistics histogram of the wrong length); the service must answer 400."""
    import base64
    import subprocess
    import sys
    import zlib

    path = tmp_path / "body.parquet"
    path.write_bytes(zlib.decompress(base64.b64decode(DAMAGED_PARQUET)))
    code = ("import sys\n"
            "from alray.config import PoolConfig\n"
            "from alray.serve.posts import BadRequest, parse_posts\n"
            "try:\n"
            f"    parse_posts(open({str(path)!r}, 'rb').read(), 'application/vnd.apache.parquet',"
            " PoolConfig(), {'image': 3, 'text': 2}, 'string')\n"
            "except BadRequest as exc:\n"
            "    print(exc.status)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert (out.returncode, out.stdout.strip()) == (0, "400"), out.stderr[-800:]


def test_an_arrow_column_name_that_is_not_utf8_is_malformed():
    table = _many_posts(3).append_column("zzzz", pa.array([1, 2, 3]))
    body = _ipc(table).replace(b"zzzz", b"\xff\xfe\xfd\xfc")
    with pytest.raises(BadRequest) as caught:
        parse(body, "application/vnd.apache.arrow.stream")
    assert caught.value.status == 400
