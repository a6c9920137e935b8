"""Starting the service (``start_service``) and serving until a signal (``serve_forever``).

Every check that can fail runs before Serve starts: the bind address has a token unless
it is loopback, the checkpoint loads in this process, the strategies fit it, the
calibration pool is scored, the port is free.
"""
from __future__ import annotations

import ipaddress
import os
import signal
import socket
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from alray.errors import ConfigError, StateError
from alray.serve.config import ServeConfig

TICK_S = 1.0
COORDINATOR_RESTARTS = -1  # Ray restarts the coordinator whenever it dies (journal replayed)


def resolve(config: ServeConfig) -> ServeConfig:
    """``config`` with the checkpoint (the run's latest when none is given) as an
    absolute path, and, with a run directory, the run's column names."""
    from alray.loop.state import RunDir
    from alray.serve.routing import latest_checkpoint

    if config.run_dir:
        run = RunDir.open(config.run_dir)
        config = config.replace(run_dir=str(Path(config.run_dir).resolve()),
                                columns=run.config.columns)
        if config.checkpoint is None:
            latest = latest_checkpoint(config.run_dir)
            if latest is None:
                raise StateError(f"{config.run_dir}: the run has no checkpoint yet; give "
                                 "--checkpoint or wait for its first step")
            config = config.replace(checkpoint=latest)
    if "://" not in config.checkpoint:
        config = config.replace(checkpoint=str(Path(config.checkpoint).resolve()))
    return config.replace(checkpoint_root=checkpoint_root(config))


def checkpoint_root(config: ServeConfig) -> str:
    """Where ``/reload`` may load from: the option, else the run's checkpoints, else the
    folder of the checkpoint served first (absolute)."""
    root = config.checkpoint_root
    if root is None:
        root = (str(Path(config.run_dir, "checkpoints")) if config.run_dir
                else config.checkpoint.rstrip("/").rsplit("/", 1)[0])
    return root if "://" in root else str(Path(root).resolve())


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_bind(host: str, token: str | None) -> None:
    """Refuse to listen beyond loopback without a bearer token: anyone who reaches the
    port could score, read /info and reload."""
    if token is None and not is_loopback(host):
        raise ConfigError(f"--host {host}: the service would accept requests from other "
                          "machines without a token; give --token-file (or "
                          "$ALRAY_SERVE_TOKEN), or listen on 127.0.0.1")


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ConfigError(f"--host {host} --port {port}: cannot listen there "
                              f"({exc.strerror}); choose another --port") from None


@dataclass
class Service:
    """A running service: its URL, its coordinator, and how to stop it."""

    config: ServeConfig
    url: str
    coordinator: object

    def info(self) -> dict:
        import ray
        return ray.get(self.coordinator.info.remote())

    def stop(self) -> dict:
        """Delete the application (in-flight requests finish), write the routed posts
        still buffered, and return the final counts."""
        import ray
        from ray import serve

        serve.delete(self.config.app_name)
        ray.get(self.coordinator.flush.remote())
        info = ray.get(self.coordinator.info.remote())
        ray.kill(self.coordinator)
        return info


def start_service(config: ServeConfig, token: str | None = None,
                  address: str | None = None, check_free_port: bool = True) -> Service:
    import ray
    from ray import serve

    from alray.runtime import require_ray
    from alray.serve.app import ScoringService
    from alray.serve.model import OnlineModel
    from alray.serve.routing import Coordinator, calibration_scores

    check_bind(config.host, token)
    config = resolve(config)
    model = OnlineModel.load(config.checkpoint, config)  # a bad checkpoint fails here
    calibration = (calibration_scores(config.calibration_pool, model, config)
                   if config.calibration_pool else None)
    del model
    embedded = not (ray.is_initialized() or address or os.environ.get("RAY_ADDRESS"))
    if check_free_port and embedded:
        check_port(config.host, config.port)  # an embedded Ray: nobody else's Serve
    require_ray()
    serve.start(http_options={"host": config.host, "port": config.port})
    coordinator = ray.remote(num_cpus=0, max_restarts=COORDINATOR_RESTARTS,
                             max_task_retries=-1)(Coordinator).remote(
        config.to_dict(), config.checkpoint, calibration)
    scaling = ({"autoscaling_config": config.autoscaling()} if config.autoscaling()
               else {"num_replicas": config.replicas})
    deployment = serve.deployment(ScoringService).options(
        name="ScoringService", ray_actor_options={"num_cpus": config.num_cpus,
                                                  "num_gpus": config.num_gpus},
        max_ongoing_requests=4 * config.max_batch_requests, **scaling)
    serve.run(deployment.bind(config.to_dict(), coordinator, token),
              name=config.app_name, route_prefix="/", blocking=False)
    host = f"[{config.host}]" if ":" in config.host else config.host
    return Service(config, f"http://{host}:{config.port}", coordinator)


def serve_forever(config: ServeConfig, token: str | None = None,
                  address: str | None = None, echo: Callable[[str], None] = print) -> dict:
    """Start the service, block until SIGINT or SIGTERM, stop it cleanly; final counts."""
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        service = start_service(config, token, address)
        echo(f"serving {service.config.checkpoint} at {service.url} "
             f"(POST /score, GET /health, GET /info, POST /reload); Ctrl-C stops")
        while not stop.wait(TICK_S):
            service.coordinator.tick.remote()
        echo("stopping: finishing requests in flight, writing routed posts")
        summary = service.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return summary
