"""A quiet terminal (issue 20, item 5): a command on Ray shows alray's lines only, Ray's
logs go to logs/ray.log beside its output, and ``alray --verbose`` shows them again.

Each command runs in a subprocess with its own embedded Ray (the routing changes the
process's file descriptor 2, which must not happen inside pytest)."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import make_pool_table, write_pool
from tests.unit.test_scorer import build_checkpoint

# what Ray writes to a terminal: C++ core worker lines, forwarded worker and raylet
# output, Python log lines of ray.*, Ray Data's notices, the token warning
RAY_LINES = re.compile(r"core_worker\.cc|\(raylet\)|\(pid=|Progress bars|INFO worker\.py|"
                       r"WARNING \w+\.py:\d+ --|Token authentication|Started a local Ray|"
                       r"\bray\.data\b|Running Dataset|Dataset \S+ execution")


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """``alray [FLAGS] score`` over a tiny pool and checkpoint, once quiet and once
    ``--verbose``: both commands run at the same time (each with its own embedded Ray,
    its own output folder and its own captured stdout and stderr), and each test reads
    its own ``(completed process, query path)``."""
    root = tmp_path_factory.mktemp("quiet")
    table = make_pool_table(60, seed=3)
    titles = pa.array([f"post {i}" for i in table.column("id").to_pylist()])
    pool = write_pool(root / "pool", [table.append_column("title", titles)])
    checkpoint = build_checkpoint(root / "model")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("RAY_ADDRESS", None)
    started = {}
    for out_dir, flags in (("quiet", []), ("verbose", ["--verbose"])):
        out = root / out_dir / "query.parquet"
        args = [sys.executable, "-m", "alray", *flags, "score", "--pool", pool,
                "--checkpoint", checkpoint, "--out", str(out), "--strategy", "margin",
                "--query-size", "5", "--score-batch-size", "32", "--show-columns", "title"]
        # files, not pipes: neither command waits on a full pipe while the other runs
        stdout, stderr = (open(root / f"{out_dir}.{name}", "w+") for name in ("out", "err"))
        started[out_dir] = (subprocess.Popen(args, stdout=stdout, stderr=stderr, text=True,
                                             env=env), stdout, stderr, out)
    done = {}
    for out_dir, (proc, stdout, stderr, out) in started.items():
        try:
            proc.wait(timeout=300)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        with stdout, stderr:
            stdout.seek(0)
            stderr.seek(0)
            done[out_dir] = (subprocess.CompletedProcess(proc.args, proc.returncode,
                                                         stdout.read(), stderr.read()), out)
    return done


def test_a_command_on_ray_shows_alray_lines_only(scored):
    done, out = scored["quiet"]
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    assert f"wrote {out}" in done.stdout and "== margin: top 5 of 5" in done.stdout
    assert not RAY_LINES.search(text), RAY_LINES.search(text).group(0) + "\n" + text[-3000:]
    log = (out.parent / "logs" / "ray.log").read_text()
    assert "Started a local Ray instance" in log  # Ray's lines are kept, in the file
    assert "Ray session:" in log
    query = pq.read_table(out).to_pylist()  # shown columns on the Ray Data path too
    assert [row["title"] for row in query] == [f"post {row['id']}" for row in query]


def test_verbose_lets_ray_through(scored):
    done, out = scored["verbose"]
    text = done.stdout + done.stderr
    assert done.returncode == 0, text[-3000:]
    assert f"wrote {out}" in done.stdout
    assert "Started a local Ray instance" in text
    assert not (out.parent / "logs").exists()
