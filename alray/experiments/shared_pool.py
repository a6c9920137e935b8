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
unless ``score_cpus_per_actor`` is given, and that share comes out of each trial's
reservation (``trial_cpus``): as many trials run side by side as without a resident
pool (a 2-CPU machine: two 1-CPU trials, each reserving 0.98 CPU beside 2 actors of
0.01; with the trials' full CPU Ray could place only one of them). CPUs given with
``score_cpus_per_actor`` are the actors' own; they must leave room for one trial, else
the sweep is refused before Tune starts (it would wait for ever).
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


def trial_cpus(opened: dict, compute: ComputeConfig, cpus_per_trial: float) -> float:
    """A trial's reservation beside the pools ``opened``: less the actors' token CPUs
    (their work is the waiting trials'), unless ``compute`` gave the actors CPUs."""
    if compute.score_cpus_per_actor is not None or not opened:
        return cpus_per_trial
    lent = sum(len(h.actors) * h.compute.cpus_per_actor for h in opened.values())
    # k trials of (c - lent) beside lent fit wherever k trials of c did
    return cpus_per_trial - lent if lent < cpus_per_trial / 2 else cpus_per_trial


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


__all__ = ["SHARED_ACTOR_CPUS", "check_fits", "pool_key", "shared_pools", "sweep_compute",
           "trial_cpus"]
