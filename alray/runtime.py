"""Connecting to Ray: the embedded local Ray by default, a cluster when an address is given.

``RAY_ADDRESS`` (how ``ray job submit`` hands a job its cluster) is honoured; without it
and without an address the embedded Ray is always a new one of this process.
"""
from __future__ import annotations

import os


def ensure_ray(address: str | None = None) -> None:
    """Start (or join) Ray once per process; a no-op when Ray is already up."""
    import ray

    if ray.is_initialized():
        return
    if address or os.environ.get("RAY_ADDRESS"):
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=False)
    else:
        # "local": a plain ray.init() would join whatever cluster `ray start` last left
        # on this machine (Ray records it in its temp dir); the embedded default is ours
        ray.init(address="local", include_dashboard=False, ignore_reinit_error=True,
                 log_to_driver=False)
