"""One resident pool per pool that a sweep's trials score, opened by the sweep's driver.

Without it every trial read and decoded the whole pool at every step in its own process
(local scoring, one copy of the files in the page cache). Here the driver opens one
``ResidentPool`` per (pool, columns) of the grid, has its actors read their parts once,
and hands the trials its picklable handle (``tune.with_parameters``); each trial calls
``score`` with its own weights, exclusions and step. A ``ResidentPart`` actor runs one
call at a time (Ray's default ``max_concurrency`` of 1) and keeps no state of a call,
so trials scoring at once queue on it and never see each other's weights. The driver
closes the actors when the sweep ends, failed or interrupted too.

CPUs: a trial waits while the actors score its step, so the CPUs its trial reserved are
idle then, and an actor works for one waiting trial at a time. The actors therefore
reserve only a token share of a CPU (``SHARED_ACTOR_CPUS``, one torch thread each)
unless ``score_cpus_per_actor`` is given, and Tune's trials keep the cluster's CPUs: a
2-CPU machine still runs two 1-CPU trials side by side. A given share must leave room
for one trial, else the sweep is refused before Tune starts (it would wait forever).
"""
from __future__ import annotations

import json
from contextlib import contextmanager
from typing import Iterator

from alray.config import ComputeConfig, LoopConfig
from alray.errors import ConfigError

# the actors' reservation in a sweep when none is given: Ray needs a positive number
# to account for them, and the trials' own CPUs cover their work (see above)
SHARED_ACTOR_CPUS = 0.01


def pool_key(loop: LoopConfig) -> str:
    """What makes two trials share a resident pool: the same files read the same way."""
    return json.dumps([loop.pool_uri, loop.columns.to_dict()], sort_keys=True)


def sweep_compute(compute: ComputeConfig) -> ComputeConfig:
    """``compute`` with the sweep's default reservation for the resident actors."""
    if compute.score_cpus_per_actor is not None:
        return compute
    return compute.replace(score_cpus_per_actor=SHARED_ACTOR_CPUS)


def check_fits(compute: ComputeConfig, pools: int, cpus_per_trial: float,
               cluster_cpus: float) -> None:
    """Refuse actors that leave no room for one trial (Tune would wait for ever)."""
    actors = pools * compute.score_actors * compute.cpus_per_actor
    if actors + cpus_per_trial > cluster_cpus + 1e-9:
        raise ConfigError(
            f"the shared resident pool's {pools * compute.score_actors} actor(s) x "
            f"{compute.cpus_per_actor:g} CPU (--actors, --num-cpus-per-actor) and one "
            f"trial's {cpus_per_trial:g} CPU (--cpus-per-trial) exceed the cluster's "
            f"{cluster_cpus:g} CPUs: lower them, or score with --streaming")


@contextmanager
def shared_pools(loops: list[LoopConfig], compute: ComputeConfig,
                 cpus_per_trial: float) -> Iterator[dict]:
    """pool_key -> an open, loaded ``ResidentPool`` for every pool of ``loops``; empty
    with ``compute.resident`` off, and without the pools that do not fit in memory
    (their trials stream, with a ``ResidentFallback`` warning). Closed on exit."""
    import ray

    from alray.scoring.resident import open_resident

    if not compute.resident or compute.local:
        yield {}
        return
    compute = sweep_compute(compute)
    wanted = {pool_key(loop): (loop.pool_uri, loop.columns) for loop in loops}
    check_fits(compute, len(wanted), cpus_per_trial, ray.cluster_resources().get("CPU", 0))
    opened: dict = {}
    try:
        for key, (uri, columns) in wanted.items():
            handle = open_resident(uri, columns, compute)  # None: streams (warned)
            if handle is not None:
                opened[key] = handle
        for handle in opened.values():
            handle.load()  # before any trial: a step's time is its scoring, not the read
        yield opened
    finally:
        for handle in opened.values():
            handle.close()


__all__ = ["SHARED_ACTOR_CPUS", "check_fits", "pool_key", "shared_pools", "sweep_compute"]
