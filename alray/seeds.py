"""The one way alray derives a seed: from the run's seed and a path of names and numbers.

``derive_seed(seed, "dropout")``, ``derive_seed(seed, "step", 7)``,
``derive_seed(seed, "mc", step, "image.0")``: a stable 63-bit integer (blake2b of the
path, not Python's salted ``hash``), so every random choice is reproducible from the
run's seed and independent of every other choice. ``rng`` is the numpy generator of
such a path.
"""
from __future__ import annotations

import hashlib

import numpy as np


def derive_seed(seed: int, *path: object) -> int:
    """A 63-bit seed for the random stream named ``path`` under ``seed``."""
    text = "/".join([str(int(seed)), *(str(p) for p in path)])
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def rng(seed: int, *path: object) -> np.random.Generator:
    """The numpy generator of stream ``path`` under ``seed``."""
    return np.random.default_rng(derive_seed(seed, *path))


__all__ = ["derive_seed", "rng"]
