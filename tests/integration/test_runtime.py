"""The embedded default: alray's own Ray, never a cluster `ray start` left on the machine."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile

PROBE = ("from alray.runtime import connect; connect(); import ray; "
         "print(ray.get_runtime_context().gcs_address)")


def test_embedded_ray_ignores_the_last_ray_start_cluster():
    # a short root: Ray's socket paths live under it and must stay under 108 bytes
    root = tempfile.mkdtemp(prefix="ar-", dir="/tmp")
    try:
        os.makedirs(os.path.join(root, "ray"))
        # what `ray start` records, here pointing at a cluster that is not there
        with open(os.path.join(root, "ray", "ray_current_cluster"), "w") as f:
            f.write("127.0.0.1:1")
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["RAY_TMPDIR"] = root
        done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                              text=True, timeout=120)
        assert done.returncode == 0, done.stderr[-3000:]
        assert not done.stdout.strip().endswith(":1")
    finally:
        shutil.rmtree(root, ignore_errors=True)
