"""Pass-through fields in the online service (issue 20, item 1): a post's shown fields
(``--show-columns`` on ``alray serve``) travel into the routed posts, and ``alray online
queue`` puts them into the query and the new pool shard. Without Ray."""
from __future__ import annotations

import io as bytes_io
import json

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from alray.config import PoolConfig
from alray.serve.bodies import BadRequest
from alray.serve.config import ServeConfig
from alray.serve.posts import parse_posts
from alray.serve.routing import RoutedWriter, routed_rows
from tests.conftest import make_pool_table, write_pool

DIMS = {"image": 8, "text": 4}
SHOWN = PoolConfig(show_columns=("url", "title"))


def post(i: int, **fields) -> dict:
    return {"id": i, "image_emb": [0.5] * 8, "text_emb": None, **fields}


def test_json_posts_keep_their_shown_fields_or_null():
    body = json.dumps({"posts": [post(1, url="https://x.test/1", title="one"),
                                 post(2, url="https://x.test/2")]}).encode()
    table = parse_posts(body, "application/json", SHOWN, DIMS, "int64")
    assert table.column("url").to_pylist() == ["https://x.test/1", "https://x.test/2"]
    assert table.column("title").to_pylist() == ["one", None]
    plain = parse_posts(json.dumps({"posts": [post(3)]}).encode(), "application/json",
                        PoolConfig(), DIMS, "int64")
    assert plain.column_names == ["id", "image_emb", "text_emb"]


def test_a_shown_field_must_be_a_text_and_an_unknown_one_is_refused():
    with pytest.raises(BadRequest) as bad:
        parse_posts(json.dumps({"posts": [post(1, url=3)]}).encode(), "application/json",
                    SHOWN, DIMS, "int64")
    assert "a shown field must be a text or null" in str(bad.value.body())
    with pytest.raises(BadRequest) as bad:
        parse_posts(json.dumps({"posts": [post(1, url="u")]}).encode(),
                    "application/json", PoolConfig(), DIMS, "int64")
    assert "unknown field 'url'" in str(bad.value.body())


def test_arrow_posts_keep_their_shown_columns():
    table = make_pool_table(5, seed=1).drop_columns(["label"])
    table = table.append_column("title", pa.array([f"t{i}" for i in range(5)],
                                                  pa.large_string()))
    sink = bytes_io.BytesIO()
    pq.write_table(table, sink)
    parsed = parse_posts(sink.getvalue(), "application/vnd.apache.parquet", SHOWN, DIMS,
                         "int64")
    assert parsed.column("title").to_pylist() == [f"t{i}" for i in range(5)]
    assert parsed.column("url").null_count == 5  # absent from the body: null


def test_online_queue_puts_the_shown_fields_in_the_query_and_the_pool(tmp_path):
    from alray.config import LoopConfig
    from alray.loop.setup import fingerprints
    from alray.loop.state import RunDir, RunState
    from alray.serve.queue import queue_routed

    def titled(table):
        return table.append_column("title", pa.array(
            [f"post {i}" for i in table.column("id").to_pylist()]))

    pool = write_pool(tmp_path / "pool", [titled(make_pool_table(60, seed=1)), titled(
        make_pool_table(80, seed=3, first_id=60, labelled=False))])
    val = write_pool(tmp_path / "val", [make_pool_table(40, seed=2, first_id=5000)])
    config = LoopConfig(pool_uri=pool, val_uri=val, initial=30, assessors=True,
                        columns=PoolConfig(show_columns=("title",)))
    run = RunDir.create(tmp_path / "run", config, fingerprints(config))
    run.write_state(RunState(step=0, checkpoint="checkpoints/step-00000"))
    getattr(run, "close", lambda: None)()

    new = titled(make_pool_table(4, seed=9, first_id=90_000, labelled=False))
    posts = new.select(["id", "image_emb", "text_emb", "title"])
    result = {"score_margin": -np.arange(4) / 10, "predicted_class": np.zeros(4, np.int64),
              "predicted_prob": np.full(4, 0.5)}
    rows = routed_rows(posts, result, np.ones(4, dtype=bool),
                       ServeConfig(checkpoint="unused", columns=config.columns), -0.5, "c")
    writer = RoutedWriter.open(tmp_path / "run" / "online")
    writer.add(rows)
    writer.flush()

    out = queue_routed(tmp_path / "run")
    query = pacsv.read_csv(out["query"])
    assert query.column_names[-1] == "title"
    assert query.column("title").to_pylist() == [f"post {i}" for i in
                                                 query.column("id").to_pylist()]
    shard = pq.read_table(out["pool_shard"])
    assert shard.column("title").to_pylist() == [f"post {i}" for i in
                                                 shard.column("id").to_pylist()]
