"""Connecting to Ray, once, at the entry point: the embedded local Ray by default, a
cluster when an address is given.

``connect`` is called by the CLI, the jobs and anyone using the library from Python;
library functions that need Ray only ``require_ray`` (a clear error instead of Ray
silently starting or joining something). ``RAY_ADDRESS`` (how ``ray job submit`` hands a
job its cluster) is honoured by ``connect``; without it and without an address the
embedded Ray is always a new one of this process.
"""
from __future__ import annotations

import os

from alray.errors import AlrayError


def connect(address: str | None = None, log_to_driver: bool = False) -> None:
    """Start (or join) Ray once per process; a no-op when Ray is already up."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=log_to_driver)
    else:
        # "local": a plain ray.init() would join whatever cluster `ray start` last left
        # on this machine (Ray records it in its temp dir); the embedded default is ours
        ray.init(address="local", include_dashboard=False, ignore_reinit_error=True,
                 log_to_driver=log_to_driver)


def require_ray() -> None:
    """AlrayError unless this process is connected to Ray."""
    import ray

    if not ray.is_initialized():
        raise AlrayError("Ray is not connected: call alray.runtime.connect() (or "
                         "ray.init()) first, or run in this process (local=True)")


__all__ = ["connect", "require_ray"]
