"""Connecting to Ray: the embedded local Ray by default, a cluster when an address is given.

The library never reads the environment itself; ``ray.init`` does (``RAY_ADDRESS``), which
is how ``ray job submit`` hands a job its cluster.
"""
from __future__ import annotations


def ensure_ray(address: str | None = None) -> None:
    """Start (or join) Ray once per process; a no-op when Ray is already up."""
    import ray

    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    else:
        ray.init(include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
