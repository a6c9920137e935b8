"""Shared fixtures. Ray starts once per test session, only for tests that ask for it."""
from __future__ import annotations

import atexit
import os
import secrets
import shutil
import socket
import tempfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import settings

# idle OpenMP threads spin and starve the other core on this 2-core machine
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
# a stalled Ray Data pipeline fails the test instead of hanging it
os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "120")


def _private_ray_state() -> str:
    """A folder of this session's own for what Ray keeps between runs, so no test
    depends on what an earlier run left on the machine: Ray's default temp folder
    (``$RAY_TMPDIR/ray``: ``ray_current_cluster``, old sessions; fresh and empty, as on a
    new machine) and the auth token Ray otherwise reads from and writes to
    ``~/.ray/auth_token`` (whether it exists decides whether ``ray start`` turns token
    authentication on). Settings already in the environment (CI's) are kept."""
    root = tempfile.mkdtemp(prefix="alray-test-")
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    os.environ.setdefault("RAY_TMPDIR", root)
    if not {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(os.environ):
        token = os.path.join(root, "auth_token")
        with open(os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
            f.write(secrets.token_hex(32))
        os.environ["RAY_AUTH_TOKEN_PATH"] = token
    return root


PRIVATE_RAY_STATE = _private_ray_state()

# property tests replay no examples saved by earlier runs (.hypothesis/): a run on a
# fresh clone and a run on a developer's machine draw the same way
settings.register_profile("alray", database=None)
settings.load_profile("alray")


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session: 2 CPUs, no dashboard, a private temp dir."""
    import ray
    temp = tempfile.mkdtemp(prefix="alray-ray-")
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=512 * 2**20, _temp_dir=temp,
             runtime_env={"env_vars": {"RAY_DATA_DISABLE_PROGRESS_BARS": "1"}})
    yield ray
    ray.shutdown()


def free_port() -> int:
    """A TCP port free on loopback now (another Ray or service may hold the defaults)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pids_mentioning(text: str) -> list[int]:
    """PIDs whose command line (or Ray's process title) contains ``text``, from /proc."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


def fixed_list(matrix: np.ndarray, missing: np.ndarray | None = None) -> pa.Array:
    values = pa.array(matrix.astype(np.float32).reshape(-1))
    mask = pa.array(missing) if missing is not None and missing.any() else None
    return pa.FixedSizeListArray.from_arrays(values, matrix.shape[1], mask=mask)


def make_pool_table(n: int = 100, image_dim: int = 8, text_dim: int = 4, classes: int = 5,
                    seed: int = 0, first_id: int = 0, labelled: bool = True) -> pa.Table:
    """A small valid pool: fixed-size float32 lists, int64 ids, some missing modalities."""
    rng = np.random.default_rng(seed)
    missing_image = rng.random(n) < 0.2
    missing_text = ~missing_image & (rng.random(n) < 0.2)
    labels = rng.integers(0, classes, n)
    return pa.table({
        "id": pa.array(np.arange(first_id, first_id + n, dtype=np.int64)),
        "image_emb": fixed_list(rng.standard_normal((n, image_dim)), missing_image),
        "text_emb": fixed_list(rng.standard_normal((n, text_dim)), missing_text),
        "label": pa.array(labels if labelled else [None] * n, type=pa.int64()),
    })


def write_pool(directory, tables: list[pa.Table]) -> str:
    os.makedirs(directory, exist_ok=True)
    for i, table in enumerate(tables):
        pq.write_table(table, os.path.join(directory, f"part-{i:05d}.parquet"))
    return str(directory)


@pytest.fixture
def small_pool(tmp_path):
    """A valid pool of three shards (300 rows)."""
    tables = [make_pool_table(100, seed=i, first_id=100 * i) for i in range(3)]
    return write_pool(tmp_path / "pool", tables)
