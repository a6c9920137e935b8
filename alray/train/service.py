"""Training as a service: one long-lived Ray Train worker group answers every request.

Starting a ``TorchTrainer`` costs seconds, one fine-tune step a fraction of that, and the
loop fine-tunes hundreds of times. So ``RayTraining`` runs ONE ``TorchTrainer.fit()``
whose per-worker function is a serve loop: take a request from a mailbox actor, call
``run_request`` (the plain-torch ``fit``/``fine_tune``), post rank 0's reply, repeat until
told to stop. Requests are stateless (``alray.train.worker``), so a worker group that died
is replaced and the request sent again. ``LocalTraining`` answers the same requests
in-process (``--local``, tests).

Why these pieces (measured on 2 CPUs, see bench/train_service.py):
- ``fit()`` runs inside a ``num_cpus=0`` task: its ObjectRef becomes ready when the run
  ends or fails, which is how a dead group is noticed while waiting for a reply.
- Closing sends a stop message (each rank returns after the request in hand); a run that
  does not end in time is aborted through its TrainController (a callback hands the
  mailbox its handle), which releases the placement group. Killing is the last resort.
- The mailbox is an async actor with ``num_cpus=0``: a waiting ``take``/``reply`` holds no
  thread or CPU. A request goes into the object store once (``ray.put``) and every rank
  reads it from there; the reply comes back the same way.
- Each worker reserves 0.5 CPU by default: on the 2-CPU embedded Ray a scoring actor
  (0.5) and Ray Data's read tasks (1 CPU) must still fit beside an idle worker group.
  The loop never scores and trains at once, so a worker runs more torch threads than it
  reserves (``threads``).

No Ray import at module level: ``import alray.train`` stays Ray-free.
"""
from __future__ import annotations

import os
import shutil
import signal
import tempfile
import uuid
from typing import Any, Mapping

from alray.errors import AlrayError
from alray.train.worker import Mailbox, run_request, serve

DEFAULT_CPUS_PER_WORKER = 0.5
START_TIMEOUT_S = 300.0
CLOSE_TIMEOUT_S = 30.0
ABORT_TIMEOUT_S = 30.0


class LocalTraining:
    """Answers requests in this process (no Ray); same contract as ``RayTraining``."""

    def run(self, request: Mapping[str, Any]) -> dict[str, Any]:
        return run_request(request)

    def close(self) -> None:
        pass

    def __enter__(self) -> "LocalTraining":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class RayTraining:
    """A long-lived Ray Train worker group serving training requests.

    ``workers``: data-parallel ranks (gloo on CPU, nccl on GPU); rank 0's reply is
    returned. ``cpus_per_worker``: the CPU reservation of each worker. ``threads``: torch
    threads per worker (None: the node's cores divided by its workers). ``storage_path``:
    where Ray Train keeps its run folder (None: a temporary folder removed on close).
    Build it with ``RayTraining.start(...)``: the constructor starts nothing.
    """

    def __init__(self, workers: int = 1, use_gpu: bool = False,
                 cpus_per_worker: float = DEFAULT_CPUS_PER_WORKER, threads: int | None = None,
                 storage_path: str | None = None, start_timeout_s: float = START_TIMEOUT_S):
        if workers < 1:
            raise AlrayError(f"training workers must be >= 1, got {workers}")
        if cpus_per_worker < 0:
            raise AlrayError(f"CPUs per training worker must be >= 0, got {cpus_per_worker}")
        if threads is not None and threads < 1:
            raise AlrayError(f"torch threads must be >= 1, got {threads}")
        self.workers, self.use_gpu, self.threads = workers, use_gpu, threads
        self.cpus_per_worker = cpus_per_worker
        self.start_timeout_s = start_timeout_s
        self._storage_path = storage_path
        self._temp = None
        self.storage_path = None
        self._group: _Group | None = None
        self.restarts = 0

    @classmethod
    def start(cls, **options) -> "RayTraining":
        """A started service (``options``: the constructor's); Ray must be connected."""
        from alray.runtime import require_ray

        require_ray()
        service = cls(**options)
        service._temp = None if service._storage_path else tempfile.mkdtemp(prefix="alray-train-")
        service.storage_path = os.path.abspath(service._storage_path or service._temp)
        try:
            service._group = service._start()
        except BaseException:
            service._remove_temp()
            raise
        return service

    def run(self, request: Mapping[str, Any]) -> dict[str, Any]:
        """Send one request; returns rank 0's reply. A group that died is started again
        once and the request resent (requests are stateless)."""
        group = self._group
        if group is None:
            raise AlrayError("this training service is not started or already closed")
        try:
            return group.send(request)
        except _GroupDied as exc:
            first = str(exc)
        group = self._restart(group)
        try:
            return group.send(request)
        except _GroupDied as exc:
            raise AlrayError(
                f"the Ray Train worker group died twice on one request ({self.workers} "
                f"worker(s)): first {first}; after a restart: {exc}") from None

    def close(self, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        """Stop the workers and drop every actor. A request in hand gets ``timeout_s``
        to finish, then the run is aborted."""
        group, self._group = self._group, None
        if group is not None:
            group.stop(timeout_s)
        self._remove_temp()

    def _restart(self, dead: "_Group") -> "_Group":
        if self._group is not dead:  # close() ran meanwhile, from another thread
            raise AlrayError("the training service was closed during the request")
        dead.stop(CLOSE_TIMEOUT_S)
        self._group, self.restarts = None, self.restarts + 1
        self._group = self._start()
        return self._group

    def _remove_temp(self) -> None:
        if self._temp is not None:
            shutil.rmtree(self._temp, ignore_errors=True)
            self._temp = None

    def _start(self) -> "_Group":
        config = {"workers": self.workers, "use_gpu": self.use_gpu, "threads": self.threads,
                  "cpus_per_worker": self.cpus_per_worker, "storage_path": self.storage_path}
        return _Group(config).launch(self.start_timeout_s)

    def __enter__(self) -> "RayTraining":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def start_training(local: bool, workers: int = 1, use_gpu: bool = False,
                   cpus_per_worker: float = DEFAULT_CPUS_PER_WORKER,
                   threads: int | None = None, storage_path: str | None = None
                   ) -> LocalTraining | RayTraining:
    """``LocalTraining`` when ``local``, else a started ``RayTraining``."""
    if local:
        return LocalTraining()
    return RayTraining.start(workers=workers, use_gpu=use_gpu,
                             cpus_per_worker=cpus_per_worker, threads=threads,
                             storage_path=storage_path)


class _GroupDied(Exception):
    """The worker group's run ended (or its mailbox died) before it replied."""


class _Group:
    """One ``TorchTrainer.fit()`` serving requests, and its mailbox (driver side)."""

    def __init__(self, config: dict):
        self.config = config
        self.world = config["workers"]
        # one worker's placement-group bundle, as Ray Train builds it (zeros dropped)
        bundle = {"CPU": float(config["cpus_per_worker"]),
                  "GPU": 1.0 if config["use_gpu"] else 0.0}
        self.bundle = {k: v for k, v in bundle.items() if v}
        self.seq = 0

    def launch(self, start_timeout_s: float) -> "_Group":
        """Start the run and wait until every rank serves; returns self."""
        import ray

        config = self.config
        _check_fits(self.world, self.bundle)
        self.groups_before = set(ray.util.placement_group_table())
        self.mailbox = ray.remote(num_cpus=0, max_restarts=0)(Mailbox).remote(self.world)
        launch = ray.remote(num_cpus=0, max_retries=0)(_fit_group)
        self.fit_ref = launch.remote(config, self.mailbox, f"alray-train-{uuid.uuid4().hex[:8]}")
        ready = self.mailbox.ready.remote()
        done, _ = ray.wait([ready, self.fit_ref], num_returns=1, timeout=start_timeout_s)
        if ready not in done:
            why = (f"its run ended: {self._fit_error()}" if done else
                   f"not ready after {start_timeout_s:.0f} s; Ray has "
                   f"{ray.available_resources().get('CPU', 0):g} CPUs free and each worker "
                   f"needs {config['cpus_per_worker']:g}")
            self.stop(0, started=False)
            raise AlrayError(f"the Ray Train worker group ({self.world} worker(s)) did not "
                             f"start: {why}")
        self.pids = ray.get(ready)
        return self

    def send(self, request: Mapping[str, Any]) -> dict[str, Any]:
        import ray

        self.seq += 1
        box = [ray.put(dict(request))]  # in a list: the workers get the ref, read it once
        self.mailbox.post.remote(self.seq, box)
        reply_ref = self.mailbox.reply.remote(self.seq)
        done, _ = ray.wait([reply_ref, self.fit_ref], num_returns=1)
        if reply_ref not in done:
            raise _GroupDied(self._fit_error())
        try:
            reply = ray.get(ray.get(reply_ref)[0])
        except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as exc:
            raise _GroupDied(f"{type(exc).__name__}: {exc}") from None
        if "error" in reply:  # the request's own problem (e.g. unlabelled rows): as local
            raise reply["error"]
        return reply

    def _fit_error(self) -> str:
        import ray

        try:
            ray.get(self.fit_ref)
        except Exception as exc:  # the run's failure, as Ray reports it
            # Ray's message ends with a long paragraph: keep its first sentence
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            last = (lines[-1] if lines else repr(exc)).split(". ")[0]
            return f"{type(exc).__name__}: {last[:300]}"
        return "the training run ended"

    def stop(self, timeout_s: float, started: bool = True) -> None:
        """Ask every rank to return (they finish the request in hand); if the run does
        not end within ``timeout_s``, abort it through its controller (which releases
        its placement group); kill it as the last resort, or at once when it never
        ``started`` (a controller waiting for resources does not serve ``abort``)."""
        import ray

        done = self._stop_message(timeout_s) if started else []
        controller = None if done else self._controller()
        if not done and started and controller is not None:
            controller.abort.remote()
            done, _ = ray.wait([self.fit_ref], timeout=ABORT_TIMEOUT_S)
        if not done:
            if controller is not None:
                ray.kill(controller)  # its workers and helpers are owned by it: they go too
            ray.cancel(self.fit_ref, force=True)
            ray.wait([self.fit_ref], timeout=10)
            # placement groups live as long as the job, not their creator; Ray Train's
            # detached PlacementGroupCleaner cannot tell the controller died without a
            # dashboard (state API) and stays behind, idle
            self._remove_placement_groups()
        ray.kill(self.mailbox)

    def _remove_placement_groups(self) -> None:
        """Remove the placement groups this run made (new since it started, with its
        bundles): one left pending takes the CPUs for good as soon as they free up."""
        import ray
        from ray._raylet import PlacementGroupID
        from ray.util.placement_group import PlacementGroup

        for group_id, info in ray.util.placement_group_table().items():
            if (group_id not in self.groups_before and info["state"] != "REMOVED"
                    and all(b == self.bundle for b in info["bundles"].values())):
                ray.util.remove_placement_group(
                    PlacementGroup(PlacementGroupID(bytes.fromhex(group_id))))

    def _stop_message(self, timeout_s: float) -> list:
        import ray

        try:
            self.mailbox.post.remote(None, None)
            return ray.wait([self.fit_ref], timeout=timeout_s)[0]
        except ray.exceptions.RayActorError:
            return []

    def _controller(self):
        import ray

        try:
            box = ray.get(self.mailbox.controller.remote(), timeout=10)
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            return None
        return box[0] if box else None


def _check_fits(workers: int, bundle: dict[str, float]) -> None:
    """Fail at once when a fixed-size cluster can never hold the group: Ray Train checks
    this only on clusters with an autoscaler config, and otherwise waits forever."""
    import ray

    try:
        from ray._private.state import state
        if state.get_max_resources_from_cluster_config():
            return  # an autoscaling cluster: Ray Train checks its maximum size itself
    except Exception:  # private API moved: leave the check to the start timeout
        return
    total = ray.cluster_resources()
    for name, amount in bundle.items():
        if amount * workers > total.get(name, 0.0) + 1e-9:
            raise AlrayError(f"{workers} training worker(s) x {amount:g} {name} need "
                             f"{amount * workers:g} {name}; the Ray cluster has "
                             f"{total.get(name, 0.0):g} in all")


def _fit_group(config: dict, mailbox, name: str) -> None:
    """Task body: one TorchTrainer run whose workers serve the mailbox until stopped."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    scaling = ScalingConfig(num_workers=config["workers"], use_gpu=config["use_gpu"],
                            resources_per_worker={"CPU": config["cpus_per_worker"]})
    # max_failures=0: a failure ends the run, and RayTraining restarts it and resends
    run = RunConfig(name=name, storage_path=config["storage_path"],
                    failure_config=FailureConfig(max_failures=0),
                    callbacks=_controller_callbacks(mailbox))
    loop = {"mailbox": mailbox, "threads": config["threads"], "use_gpu": config["use_gpu"]}
    trainer = TorchTrainer(serve, train_loop_config=loop, scaling_config=scaling,
                           run_config=run)
    # fit() in a main thread installs a SIGINT handler that holds the controller's
    # handle; left in place, it keeps the TrainController actor alive after the run
    handler = signal.getsignal(signal.SIGINT)
    try:
        trainer.fit()
    finally:
        signal.signal(signal.SIGINT, handler)


def _controller_callbacks(mailbox) -> list:
    """A callback that hands the mailbox the TrainController's handle, so ``stop`` can
    abort a run gracefully. Ray Train's internal callback API (ray 2.60): without it,
    only force-cancelling remains."""
    try:
        from ray.train.v2._internal.execution.callback import ControllerCallback
    except ImportError:
        return []

    class ReportController(ControllerCallback):
        def after_controller_start(self, train_run_context) -> None:
            import ray
            mailbox.set_controller.remote([ray.get_runtime_context().current_actor])

    return [ReportController()]
