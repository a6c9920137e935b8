"""The online service on real Ray Serve: the batch path's scores, bodies, bad input, the
token, routing within a budget, reloads under load, and the round trip of routed posts
into the loop through ``alray labels import``. Serve starts once for the module."""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import requests
from click.testing import CliRunner

from alray.cli import main
from alray.config import PoolConfig, ScoreConfig
from alray.pool import io
from tests.conftest import free_port, make_pool_table, write_pool
from tests.unit.test_scorer import build_checkpoint

TOKEN = "s3cret-token"
STRATS = ("margin", "entropy", "bald")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A real assessor-mode run after its passive step (pool ids 0..139)."""
    root = tmp_path_factory.mktemp("serve")
    pool = write_pool(root / "pool", [make_pool_table(60, seed=1),
                                      make_pool_table(80, seed=3, first_id=60, labelled=False)])
    val = write_pool(root / "val", [make_pool_table(60, seed=2, first_id=5000)])
    out = CliRunner().invoke(main, [
        "loop", "--pool", pool, "--val", val, "--run-dir", str(root / "run"),
        "--initial", "30", "--query-size", "4", "--epochs", "2", "--classes", "5",
        "--local", "--assessors", "--steps", "0"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    return root / "run"


@pytest.fixture(scope="module")
def service(ray_session, run_dir, tmp_path_factory):
    from ray import serve

    from alray.serve.config import ServeConfig
    from alray.serve.runner import start_service

    config = ServeConfig(run_dir=str(run_dir), score=ScoreConfig(strategies=STRATS, mc_samples=4),
                         route_budget=0.05, calibration_pool=str(run_dir.parent / "pool"),
                         warmup_posts=50, port=free_port(), poll_s=0.5, flush_s=0.5,
                         max_body_mb=0.25, num_cpus=0.5, replicas=2,
                         checkpoint_root=str(tmp_path_factory.getbasetemp()))
    svc = start_service(config, token=TOKEN)
    _wait_healthy(svc.url)
    yield svc
    svc.stop()
    serve.shutdown()


def _wait_healthy(url: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/health", headers=AUTH, timeout=5).status_code == 200:
                return
        except requests.ConnectionError:
            pass
        time.sleep(0.2)
    raise AssertionError("the service did not become healthy")


AUTH = {"Authorization": f"Bearer {TOKEN}"}


def posts_table(n: int, seed: int, first_id: int = 10_000) -> pa.Table:
    return make_pool_table(n, seed=seed, first_id=first_id).drop_columns(["label"])


def as_json(table: pa.Table) -> dict:
    return {"posts": table.to_pylist()}


def score(url: str, table: pa.Table, **kw) -> requests.Response:
    return requests.post(f"{url}/score", json=as_json(table), headers=AUTH, timeout=30, **kw)


def batch_reference(checkpoint: str, table: pa.Table) -> dict:
    """id -> {strategy: score, predicted_class, predicted_prob} from BatchScorer."""
    from alray.scoring.scorer import BatchScorer
    from alray.serve.model import checkpoint_dims

    from alray.model import load_model, model_state

    scorer = BatchScorer(model_state(load_model(checkpoint)[0]),
                         ScoreConfig(strategies=STRATS, mc_samples=4).to_dict(),
                         PoolConfig().to_dict(), checkpoint_dims(checkpoint), keep_all=True)
    out = {}
    for row in scorer(table).to_pylist():
        entry = out.setdefault(row["id"], {})
        entry[row["strategy"]] = row["score"]
        entry["predicted_class"], entry["predicted_prob"] = (row["predicted_class"],
                                                             row["predicted_prob"])
    return out


def assert_matches(answer: dict, reference: dict) -> None:
    assert len(answer["posts"]) == len(reference)
    for post in answer["posts"]:
        want = reference[post["id"]]
        assert post["scores"] == {s: want[s] for s in STRATS}  # exact: same batch, same math
        assert post["predicted_class"] == want["predicted_class"]
        assert post["predicted_prob"] == want["predicted_prob"]
        top = post["top_classes"]
        assert top[0] == {"class": want["predicted_class"], "prob": want["predicted_prob"]}
        assert [t["prob"] for t in top] == sorted((t["prob"] for t in top), reverse=True)


def test_scores_equal_the_batch_path(service):
    table = posts_table(60, seed=7)
    reply = score(service.url, table)
    assert reply.status_code == 200, reply.text
    answer = reply.json()
    assert answer["checkpoint"] == service.config.checkpoint
    assert_matches(answer, batch_reference(service.config.checkpoint, table))


@pytest.mark.parametrize("kind", ["arrow", "parquet"])
def test_bulk_bodies_give_the_json_answer(service, kind):
    table = posts_table(40, seed=8, first_id=20_000)
    sink = pa.BufferOutputStream()
    if kind == "arrow":
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
        ctype = "application/vnd.apache.arrow.stream"
    else:
        pq.write_table(table, sink)
        ctype = "application/vnd.apache.parquet"
    body = sink.getvalue().to_pybytes()
    reply = requests.post(f"{service.url}/score", data=body, timeout=30,
                          headers={**AUTH, "Content-Type": ctype})
    assert reply.status_code == 200, reply.text
    assert_matches(reply.json(), batch_reference(service.config.checkpoint, table))
    arrow = requests.post(f"{service.url}/score", data=body, timeout=30, headers={
        **AUTH, "Content-Type": ctype, "Accept": "application/vnd.apache.arrow.stream"})
    got = pa.ipc.open_stream(arrow.content).read_all()
    answer = reply.json()
    by_id = {p["id"]: p for p in answer["posts"]}
    for row in got.to_pylist():
        assert row["score_bald"] == by_id[row["id"]]["scores"]["bald"]
    # each request is routed by the threshold its replica held (it moves with traffic,
    # and two replicas may hold thresholds one report apart)
    if answer["threshold"] is not None:
        for post in answer["posts"]:
            assert post["route_to_assessors"] == (
                post["scores"][answer["route_strategy"]] >= answer["threshold"])


def _post(**post):
    return {"id": 1, "image_emb": [0.1] * 8, "text_emb": [0.2] * 4, **post}


BAD = {
    "wrong dims": (json.dumps({"posts": [_post(), _post(id=2, image_emb=[1.0] * 7)]}), 422,
                   [{"index": 1, "id": 2, "field": "image_emb"}]),
    "nan": ('{"posts": [{"id": 3, "image_emb": null, "text_emb": [1, NaN, 2, 3]}]}', 422,
            [{"index": 0, "id": 3, "field": "text_emb"}]),
    "infinity": ('{"posts": [{"id": 4, "image_emb": null, "text_emb": [1, 1e999, 2, 3]}]}',
                 422, [{"index": 0, "id": 4, "field": "text_emb"}]),
    "both missing": (json.dumps({"posts": [_post(), _post(id=5, image_emb=None,
                                                          text_emb=None)]}), 422,
                     [{"index": 1, "id": 5, "field": "image_emb,text_emb"}]),
    "unknown field": (json.dumps({"posts": [_post(colour="red")]}), 422,
                      [{"index": 0, "id": 1, "field": "colour"}]),
    "duplicate id": (json.dumps({"posts": [_post(), _post()]}), 422,
                     [{"index": 1, "id": 1, "field": "id"}]),
    "string id": (json.dumps({"posts": [_post(id="a")]}), 422,
                  [{"index": 0, "id": "a", "field": "id"}]),
    "malformed": ('{"posts": [', 400, []),
    "not posts": ('{"rows": []}', 400, []),
    "no posts": ('{"posts": []}', 400, []),
    "oversized": (json.dumps({"posts": [_post(id=i) for i in range(3000)]}), 413, []),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_a_4xx_and_the_service_keeps_serving(service, case):
    body, status, problems = BAD[case]
    reply = requests.post(f"{service.url}/score", data=body, timeout=30,
                          headers={**AUTH, "Content-Type": "application/json"})
    assert reply.status_code == status, reply.text
    answer = reply.json()
    assert answer["error"]
    for want in problems:
        assert any(all(p[k] == v for k, v in want.items()) and p["problem"]
                   for p in answer["problems"]), answer
    assert score(service.url, posts_table(3, seed=1)).status_code == 200


def test_a_compressed_body_of_too_many_posts_is_refused(service):
    table = pa.table({"id": pa.array(np.arange(30_000, dtype=np.int64)),
                      "text_emb": pa.FixedSizeListArray.from_arrays(
                          pa.array(np.zeros(4 * 30_000, dtype=np.float32)), 4)})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd")
    body = sink.getvalue().to_pybytes()
    assert len(body) < service.config.max_body_bytes  # small on the wire
    reply = requests.post(f"{service.url}/score", data=body, timeout=30, headers={
        **AUTH, "Content-Type": "application/vnd.apache.parquet"})
    assert reply.status_code == 413 and "30,000 posts" in reply.json()["error"], reply.text


def test_other_bad_requests(service):
    wrong_type = requests.post(f"{service.url}/score", data=b"x", timeout=30,
                               headers={**AUTH, "Content-Type": "text/csv"})
    garbage = requests.post(f"{service.url}/score", data=b"not arrow", timeout=30, headers={
        **AUTH, "Content-Type": "application/vnd.apache.arrow.stream"})
    unknown = requests.get(f"{service.url}/nothing", headers=AUTH, timeout=30)
    assert (wrong_type.status_code, garbage.status_code, unknown.status_code) == (415, 400, 404)


@pytest.mark.parametrize("path,method", [("/score", "post"), ("/health", "get"),
                                         ("/info", "get"), ("/reload", "post")])
def test_every_request_needs_the_token(service, path, method):
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        reply = getattr(requests, method)(f"{service.url}{path}", headers=headers, timeout=30)
        assert reply.status_code == 401, (path, headers)
        assert "token" in reply.json()["error"]


def test_reload_under_load_fails_no_request(service, tmp_path):
    other = build_checkpoint(tmp_path / "other", seed=5)
    table = posts_table(20, seed=11, first_id=30_000)
    statuses, stop = [], threading.Event()

    def fire():
        while not stop.is_set():
            statuses.append(score(service.url, table).status_code)

    thread = threading.Thread(target=fire)
    thread.start()
    try:
        time.sleep(1.0)
        reload = requests.post(f"{service.url}/reload", json={"checkpoint": other},
                               headers=AUTH, timeout=60)
        assert reload.status_code == 200, reload.text
        # both replicas switched before the answer: no request is served by the old model
        assert reload.json()["replicas_switched"] == reload.json()["replicas"] == 2
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join()
    assert len(statuses) > 5 and set(statuses) == {200}
    after = score(service.url, table).json()
    assert after["checkpoint"] == other
    assert_matches(after, batch_reference(other, table))
    bad = requests.post(f"{service.url}/reload", json={"checkpoint": str(tmp_path / "nope")},
                        headers=AUTH, timeout=60)
    assert bad.status_code == 422 and "still serving" in bad.json()["error"]
    for outside in ("/etc/passwd", str(tmp_path / ".." / ".." / ".." / "..")):
        refused = requests.post(f"{service.url}/reload", json={"checkpoint": outside},
                                headers=AUTH, timeout=60)
        assert refused.status_code == 403 and "checkpoint root" in refused.json()["error"]
    assert score(service.url, table).json()["checkpoint"] == other


def test_routed_posts_round_trip_into_the_loop(service, run_dir, tmp_path):
    """Route within the budget, queue the routed posts, import answers, resume the loop;
    the service then serves the loop's new checkpoint by itself."""
    import ray

    from alray.loop.state import RunDir

    before = requests.get(f"{service.url}/info", headers=AUTH, timeout=30).json()
    assert before["calibration_posts"] == 140 and before["threshold"] is not None
    assert (before["max_posts"], before["checkpoint_root"]) == (
        20_000, service.config.checkpoint_root)
    routed_ids, seen = [], 0
    for i in range(10):
        table = posts_table(100, seed=100 + i, first_id=40_000 + 100 * i)
        answer = score(service.url, table).json()
        routed_ids += [p["id"] for p in answer["posts"] if p["route_to_assessors"]]
        seen += 100
    assert 0.01 * seen <= len(routed_ids) <= 0.15 * seen  # budget 0.05
    ray.get(service.coordinator.flush.remote())
    info = requests.get(f"{service.url}/info", headers=AUTH, timeout=30).json()
    assert info["posts_routed"] >= len(routed_ids)
    shards = sorted((run_dir / "online").glob("routed-*.parquet"))
    written = pa.concat_tables([pq.read_table(p) for p in shards])
    assert set(routed_ids) <= set(written.column("id").to_pylist())

    queued = CliRunner().invoke(main, ["online", "queue", str(run_dir)])
    assert queued.exit_code == 0, queued.output
    run = RunDir.open(run_dir)
    query = run.read_query(1)
    assert run.read_state().open_query == 1
    assert set(query.column("id").to_pylist()) == set(written.column("id").to_pylist())
    answers = tmp_path / "answers.csv"
    ids = query.column("id").to_pylist()
    pacsv.write_csv(pa.table({"id": ids, "label": [i % 5 for i in range(len(ids))]}), answers)
    imported = CliRunner().invoke(main, ["labels", "import", str(run_dir), str(answers)])
    assert imported.exit_code == 0, imported.output
    resumed = CliRunner().invoke(main, ["loop", "--run-dir", str(run_dir), "--resume",
                                        "--steps", "1", "--local"], catch_exceptions=False)
    assert resumed.exit_code == 0, resumed.output
    labels = run.read_labels()
    assessor = labels.filter(pa.compute.equal(labels.column("source"), "assessor"))
    assert set(assessor.column("id").to_pylist()) == set(ids)
    assert run.read_state().step == 1
    _wait_for_checkpoint(service.url, str((run_dir / run.read_state().checkpoint).resolve()))


def _wait_for_checkpoint(url: str, checkpoint: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        reply = score(url, posts_table(2, seed=3))
        if reply.json()["checkpoint"] == checkpoint:
            return
        time.sleep(0.3)
    raise AssertionError(f"the service never switched to {checkpoint}")


def test_a_coordinator_crash_fails_no_later_request_and_loses_no_routed_post(service,
                                                                            run_dir):
    """The coordinator dies right after answers said ``route_to_assessors: true``: Ray
    restarts it, it writes the journaled posts, and every later request is served."""
    import ray

    routed_ids = []
    for i in range(6):
        answer = score(service.url, posts_table(100, seed=300 + i,
                                                first_id=70_000 + 100 * i)).json()
        routed_ids += [p["id"] for p in answer["posts"] if p["route_to_assessors"]]
    assert routed_ids
    version = requests.get(f"{service.url}/info", headers=AUTH, timeout=30).json()[
        "model_version"]
    ray.kill(service.coordinator, no_restart=False)  # a crash: Ray restarts the actor
    statuses = [score(service.url, posts_table(50, seed=400 + i, first_id=80_000 + 50 * i)
                      ).status_code for i in range(8)]
    assert statuses == [200] * 8
    ray.get(service.coordinator.flush.remote())
    written = pa.concat_tables([pq.read_table(p) for p in
                                (run_dir / "online").glob("routed-*.parquet")])
    assert set(routed_ids) <= set(written.column("id").to_pylist())
    after = requests.get(f"{service.url}/info", headers=AUTH, timeout=30).json()
    assert after["model_version"] >= version  # versions never go back


def test_a_failed_report_is_dropped_not_awaited_by_every_later_batch():
    import asyncio

    from alray.serve.app import ScoringService

    async def failed():
        raise RuntimeError("the coordinator died")

    replica = object.__new__(ScoringService)  # only the report bookkeeping is exercised
    replica.replica_id, replica.threshold, replica._stop = "r", 0.25, threading.Event()
    replica._pending = failed()
    for _ in range(3):  # every later batch routes with the last threshold
        assert asyncio.run(replica._current_threshold()) == 0.25


def test_no_token_beyond_loopback_is_refused(tmp_path):
    out = CliRunner().invoke(main, ["serve", "--checkpoint", "x", "--host", "0.0.0.0"])
    assert out.exit_code == 2 and "without a token" in out.output
    token = tmp_path / "token"
    token.write_text("secret\n")
    token.chmod(0o644)
    out = CliRunner().invoke(main, ["serve", "--checkpoint", "x", "--host", "0.0.0.0",
                                    "--token-file", str(token)])
    assert out.exit_code == 2 and "chmod 600" in out.output


def test_cli_errors_exit_2_without_traceback(tmp_path):
    out = CliRunner().invoke(main, ["serve", "--checkpoint", str(tmp_path / "nope")])
    assert out.exit_code == 2 and "does not exist" in out.output
    out = CliRunner().invoke(main, ["serve", "--checkpoint", "x", "--strategy", "ideal_loss"])
    assert out.exit_code == 2 and "true labels" in out.output
    out = CliRunner().invoke(main, ["serve", "--checkpoint", "x", "--token-file",
                                    str(tmp_path / "missing")])
    assert out.exit_code == 2 and "--token-file" in out.output
