"""The Ray Serve application: HTTP in, scores and routing out; started and stopped here.

One deployment, ``ScoringService``: each replica parses and checks a request's posts,
joins concurrent requests into one forward pass (``serve.batch``), answers with the
scores and the routing decision, and reports the routing scores to the shared
``Coordinator`` without waiting for it; a batch with routed posts waits until the
coordinator has journaled them, so no answer routes a post that a crash could lose. A
watcher thread per replica asks the coordinator every ``poll_s`` for the model version
and loads a new checkpoint beside the old one; the switch is one reference swap between
batches, so no request fails.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
from ray import serve

from alray.errors import AlrayError
from alray.serve.config import ServeConfig
from alray.serve.posts import ARROW_TYPES, BadRequest, Limits, parse_posts

ARROW_STREAM = ARROW_TYPES[0]
RELOAD_WAIT_S = 30.0  # how long POST /reload waits for the other replicas to switch
ROUTED_WAIT_S = 60.0  # how long a batch with routed posts waits for them to be written
log = logging.getLogger(__name__)


class ScoringService:
    """A Serve replica. ``config``: ``ServeConfig.to_dict()``; ``coordinator``: the
    ``Coordinator`` actor's handle; ``token``: the bearer token, or None."""

    def __init__(self, config: dict, coordinator, token: str | None = None):
        import ray
        import torch

        self.config = ServeConfig.from_dict(config)
        self.coordinator = coordinator
        self._auth = f"Bearer {token}" if token else None
        self.device = "cuda" if self.config.num_gpus > 0 else "cpu"
        # Ray gives a replica of <= 1 CPU one torch thread; use what it was given
        self.threads = max(1, int(self.config.num_cpus)) if self.device == "cpu" else 1
        torch.set_num_threads(self.threads)
        self.replica_id = uuid.uuid4().hex[:12]
        self.limits = Limits(self.config.max_posts,
                             int(self.config.max_decoded_mb * 2**20))
        current = ray.get(coordinator.current.remote(self.replica_id))
        self.model = self._load(current["checkpoint"])
        self.version = current["version"]
        self.threshold = ray.get(coordinator.threshold.remote())
        self._pending = None        # the last report to the coordinator, not yet awaited
        self._swap_lock = threading.Lock()
        self._failed: set[int] = set()  # versions that did not load: not retried
        self.score_batch.set_max_batch_size(self.config.max_batch_requests)
        self.score_batch.set_batch_wait_timeout_s(self.config.batch_wait_s)
        self._stop = threading.Event()
        threading.Thread(target=self._watch, daemon=True, name="checkpoint-watch").start()

    # --- HTTP -------------------------------------------------------------------------
    async def __call__(self, request):
        try:
            self._authorize(request)
            route = (request.method, request.url.path.rstrip("/") or "/")
            handler = {("POST", "/score"): self._score, ("GET", "/health"): self._health,
                       ("GET", "/info"): self._info, ("POST", "/reload"): self._reload
                       }.get(route)
            if handler is None:
                known = {"/score", "/health", "/info", "/reload"}
                status = 405 if route[1] in known else 404
                raise BadRequest(status, f"{route[0]} {route[1]}: use POST /score, "
                                         "GET /health, GET /info or POST /reload")
            return await handler(request)
        except BadRequest as exc:
            headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
            return json_response(exc.body(), exc.status, headers)

    def _authorize(self, request) -> None:
        if self._auth is None:
            return
        given = request.headers.get("authorization", "")
        if not hmac.compare_digest(given.encode(), self._auth.encode()):
            raise BadRequest(401, "missing or wrong bearer token (header "
                                  "'Authorization: Bearer TOKEN')")

    async def _read_body(self, request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit:
            raise BadRequest(413, f"body of {int(declared):,} bytes is over the limit of "
                                  f"{limit:,} (--max-body-mb)")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:  # no or false Content-Length: stop reading at the limit
                raise BadRequest(413, f"body is over the limit of {limit:,} bytes "
                                      "(--max-body-mb)")
        return bytes(body)

    async def _score(self, request):
        from starlette.responses import Response

        body = await self._read_body(request)
        table = parse_posts(body, request.headers.get("content-type", ""),
                            self.config.columns, self.model.dims, self.config.id_type,
                            self.limits)
        try:
            answer = await self.score_batch(table)
        except RoutingUnavailable as exc:
            raise BadRequest(503, str(exc)) from None
        if ARROW_STREAM in request.headers.get("accept", ""):
            return Response(_arrow_bytes(answer_table(table, answer, self.config)),
                            media_type=ARROW_STREAM)
        return json_response(answer_json(table, answer, self.config))

    async def _health(self, request):
        return json_response({"status": "ok", "model_version": self.version})

    async def _info(self, request):
        shared = await self.coordinator.info.remote()
        cfg = self.config
        return json_response({
            **shared, "replica_checkpoint": self.model.checkpoint,
            "replica_model_version": self.version, "classes": self.model.n_classes,
            "dims": self.model.dims, "columns": cfg.columns.to_dict(),
            "id_type": cfg.id_type, "strategies": list(cfg.strategies),
            "route_strategy": cfg.route_strategy, "route_budget": cfg.route_budget,
            "top_classes": cfg.top_classes, "max_body_mb": cfg.max_body_mb,
            "max_posts": cfg.max_posts, "max_decoded_mb": cfg.max_decoded_mb,
            "checkpoint_root": cfg.checkpoint_root})

    async def _reload(self, request):
        """Load the asked (or the run's latest) checkpoint here first: a checkpoint that
        does not load is refused before any replica switches to it."""
        body = await self._read_body(request)
        try:
            asked = json.loads(body).get("checkpoint") if body.strip() else None
        except (ValueError, AttributeError):
            raise BadRequest(400, 'the body must be empty or {"checkpoint": PATH}') from None
        if asked is None:
            if not self.config.run_dir:
                raise BadRequest(400, "no checkpoint given and no --run-dir to take the "
                                      "latest one from")
            from alray.serve.routing import latest_checkpoint
            asked = latest_checkpoint(self.config.run_dir)
            if asked is None:
                raise BadRequest(409, "the run has no checkpoint yet")
        asked = self._inside_root(asked)
        try:
            model = await asyncio.to_thread(self._load, str(asked))
        except AlrayError as exc:
            raise BadRequest(422, f"checkpoint not loaded, still serving "
                                  f"{self.model.checkpoint}: {exc}") from None
        current = await self.coordinator.reload.remote(str(asked))
        self._swap(model, current["version"])
        updated, live = await self._wait_for_replicas(current["version"])
        return json_response({"checkpoint": model.checkpoint,
                              "model_version": current["version"],
                              "replicas_switched": updated, "replicas": live})

    def _inside_root(self, asked) -> str:
        """``asked`` as an absolute path below the configured checkpoint root; any other
        path is refused (403): a client must not make the service load arbitrary files."""
        root = self.config.checkpoint_root
        if not isinstance(asked, str) or not asked:
            raise BadRequest(400, 'the body must be empty or {"checkpoint": PATH}')
        if "://" in root or "://" in asked:
            inside = asked.startswith(root.rstrip("/") + "/") and "/../" not in asked
            path = asked
        else:
            resolved = Path(asked).resolve()
            inside = resolved.is_relative_to(Path(root).resolve())
            path = str(resolved)
        if not inside:
            raise BadRequest(403, f"checkpoint {asked}: outside the checkpoint root {root}; "
                                  "/reload loads only below it (--checkpoint-root)")
        return path

    async def _wait_for_replicas(self, version: int) -> tuple[int, int]:
        await self.coordinator.current.remote(self.replica_id, self.version,
                                              self.model.checkpoint)
        deadline = time.monotonic() + RELOAD_WAIT_S
        within = 3 * self.config.poll_s + 5
        while True:
            updated, live = await self.coordinator.replicas_on.remote(version, within)
            if updated >= live or time.monotonic() > deadline:
                return updated, live
            await asyncio.sleep(min(0.2, self.config.poll_s))

    # --- scoring ----------------------------------------------------------------------
    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def score_batch(self, tables: list[pa.Table]) -> list["Answer"]:
        from alray.serve.routing import routed_rows

        model, version = self.model, self.version  # one model for the whole batch
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        # in a thread: torch releases the GIL, so the next requests are read meanwhile
        result = await asyncio.to_thread(model.predict, table)
        threshold = await self._current_threshold()
        scores = result[f"score_{self.config.route_strategy}"]
        routed = (scores >= threshold if threshold is not None
                  else np.zeros(len(scores), dtype=bool))
        rows = (routed_rows(table, result, routed, self.config, threshold, model.checkpoint)
                if routed.any() else None)
        report = self.coordinator.observe.remote(scores, rows)
        if rows is not None and self.config.run_dir:
            await self._written(report)  # no answer says "routed" before it is on disk
        else:
            self._pending = report
        answers, start = [], 0
        for part in tables:
            end = start + part.num_rows
            answers.append(Answer({k: v[start:end] for k, v in result.items()},
                                  routed[start:end], threshold, model.checkpoint, version))
            start = end
        return answers

    async def _current_threshold(self) -> float | None:
        """The threshold the previous batch's report brought back (done by now, mostly).
        A report that failed is dropped, not awaited again: the batch routes with the
        threshold it had, and the next report goes to the coordinator Ray restarted."""
        pending, self._pending = self._pending, None
        if pending is not None:
            try:
                self.threshold = await pending
            except Exception as exc:  # the coordinator died or restarts: keep serving
                log.warning("replica %s: a report to the coordinator failed (%s); "
                            "routing with the last threshold", self.replica_id, exc)
        return self.threshold

    async def _written(self, report) -> None:
        """Wait until the coordinator has journaled this batch's routed posts (fsynced);
        a coordinator that crashed is restarted by Ray and the call retried."""
        try:
            self.threshold = await asyncio.wait_for(report, ROUTED_WAIT_S)
        except Exception as exc:
            raise RoutingUnavailable(
                f"routed posts could not be recorded ({type(exc).__name__}: {exc}); "
                "nothing was scored, send the request again") from None

    # --- model versions ---------------------------------------------------------------
    def _load(self, checkpoint: str):
        from alray.errors import CheckpointError
        from alray.serve.model import OnlineModel

        model = OnlineModel.load(checkpoint, self.config, self.device, self.threads)
        old = getattr(self, "model", None)
        if old is not None and (model.dims != old.dims or model.n_classes != old.n_classes):
            raise CheckpointError(f"checkpoint {checkpoint}: dims {model.dims} and "
                                  f"{model.n_classes} classes; the service serves "
                                  f"{old.dims} and {old.n_classes} classes")
        return model

    def _swap(self, model, version: int) -> None:
        with self._swap_lock:
            if version > self.version:
                self.model, self.version = model, version

    def _watch(self) -> None:
        import ray

        while not self._stop.wait(self.config.poll_s):
            wanted = None
            try:
                current = ray.get(self.coordinator.current.remote(
                    self.replica_id, self.version, self.model.checkpoint), timeout=30)
                wanted = current["version"]
                if wanted > self.version and wanted not in self._failed:
                    self._swap(self._load(current["checkpoint"]), wanted)
                    self.coordinator.note_reload_error.remote(None)
            except AlrayError as exc:
                self._failed.add(wanted)
                self.coordinator.note_reload_error.remote(
                    f"replica {self.replica_id} kept {self.model.checkpoint}: {exc}")
            except Exception:  # the coordinator busy or restarting: ask again next time
                continue

    def __del__(self):
        self._stop.set()


class RoutingUnavailable(Exception):
    """A batch whose routed posts the coordinator could not record: answered 503."""


@dataclass
class Answer:
    """One request's share of a scored batch."""

    result: dict
    routed: np.ndarray
    threshold: float | None
    checkpoint: str
    version: int


def answer_json(table: pa.Table, answer: Answer, config: ServeConfig) -> dict:
    r = answer.result
    ids = table.column(config.columns.id_column).to_pylist()
    names = list(config.strategies)
    scores = {n: r[f"score_{n}"].tolist() for n in names}
    classes, probs = r["top_classes"].tolist(), r["top_probs"].tolist()
    posts = [{"id": key,
              "predicted_class": int(r["predicted_class"][i]),
              "predicted_prob": float(r["predicted_prob"][i]),
              "top_classes": [{"class": c, "prob": p} for c, p in zip(classes[i], probs[i])],
              "scores": {n: scores[n][i] for n in names},
              "route_to_assessors": bool(answer.routed[i])}
             for i, key in enumerate(ids)]
    return {"checkpoint": answer.checkpoint, "model_version": answer.version,
            "route_strategy": config.route_strategy, "threshold": answer.threshold,
            "posts": posts}


def answer_table(table: pa.Table, answer: Answer, config: ServeConfig) -> pa.Table:
    r, t = answer.result, answer.result["top_classes"].shape[1]
    n = table.num_rows
    columns = {
        "id": table.column(config.columns.id_column),
        "predicted_class": r["predicted_class"], "predicted_prob": r["predicted_prob"],
        "top_classes": pa.FixedSizeListArray.from_arrays(
            pa.array(r["top_classes"].reshape(-1)), t),
        "top_probs": pa.FixedSizeListArray.from_arrays(pa.array(r["top_probs"].reshape(-1)), t),
        **{f"score_{s}": r[f"score_{s}"] for s in config.strategies},
        "route_to_assessors": answer.routed,
        "model_version": np.full(n, answer.version, dtype=np.int64)}
    return pa.table(columns)


def json_response(data: dict, status: int = 200, headers: dict | None = None):
    """A JSON answer encoded by orjson (numpy scalars and NaN handled; ~15x faster than
    the standard encoder on a scored batch)."""
    from starlette.responses import Response

    return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
                    status_code=status, headers=headers, media_type="application/json")


def _arrow_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()
