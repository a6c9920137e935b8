"""Where Ray's logs go from the CLI (issue 20, item 5), without starting Ray: the log
file's place, ``--verbose``, and an error that names the log file."""
from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

import alray.runtime
from alray.cli import main
from alray.cli.common import VERBOSE, connect_ray


def test_connect_ray_sends_ray_logs_to_the_folder_unless_verbose(monkeypatch, tmp_path):
    calls = []
    monkeypatch.setattr(alray.runtime, "connect", lambda *a, **kw: calls.append((a, kw)))
    monkeypatch.setitem(VERBOSE, "on", False)
    connect_ray(None, tmp_path / "run")
    monkeypatch.setitem(VERBOSE, "on", True)
    connect_ray("ray://x:1", tmp_path / "run")
    assert calls == [((None,), {"log_file": tmp_path / "run" / "logs" / "ray.log"}),
                     (("ray://x:1",), {"log_to_driver": True})]


def test_the_verbose_flag_is_global(monkeypatch):
    monkeypatch.setitem(VERBOSE, "on", False)
    done = CliRunner().invoke(main, ["--verbose", "validate", "--help"])
    assert done.exit_code == 0 and VERBOSE["on"]
    done = CliRunner().invoke(main, ["validate", "--help"])
    assert done.exit_code == 0 and not VERBOSE["on"]


def test_an_error_names_the_ray_log(monkeypatch, tmp_path):
    args = ["score", "--pool", str(tmp_path / "nothing"), "--checkpoint", str(tmp_path),
            "--out", str(tmp_path / "q.parquet"), "--local"]
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 2 and "alray: error:" in done.output
    assert "Ray's logs" not in done.output  # no Ray in this process: nothing to point at
    log = Path("/somewhere/logs/ray.log")
    monkeypatch.setattr(alray.runtime, "_ray_log", log)
    done = CliRunner().invoke(main, args)
    assert done.exit_code == 2 and "alray: error:" in done.output
    assert f"alray: Ray's logs: {log}" in done.output
