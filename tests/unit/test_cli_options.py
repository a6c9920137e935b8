"""The command line: every command under both entry points, one name per option."""
from __future__ import annotations

import subprocess
import sys

import pytest

from alray.cli import main
from alray.cli.experiments import sweep, sweep_config
from alray.cli.loop import loop
from alray.cli.options import SCIENCE, default_of
from alray.config import LoopConfig, ScoreConfig, TrainConfig
from tests.conftest import make_pool_table, write_pool


def _commands(argv: list[str]) -> list[str]:
    out = subprocess.run([sys.executable, *argv, "--help"], capture_output=True, text=True,
                         check=True).stdout
    listed = out.split("Commands:")[1]
    return sorted(line.split()[0] for line in listed.splitlines() if line.strip())


def test_python_dash_m_alray_lists_every_command_as_alray_does():
    via_module = _commands(["-m", "alray"])
    via_script = _commands(["-c", "from alray.cli import main; main()"])
    assert via_module == via_script == sorted(main.commands)
    assert len(via_module) >= 12


def _flags(command) -> set[str]:
    return {flag for param in command.params
            for flag in [*getattr(param, "opts", []), *getattr(param, "secondary_opts", [])]}


def test_every_loop_science_option_is_a_sweep_option_by_the_same_name():
    loop_only = {"--run-dir", "--resume", "--resume-if-exists", "--allow-pool-change",
                 "--assessors", "--show-columns", "--export", "--class-names"}  # for people
    science = {flag for o in SCIENCE for flag in o.flags.split("/")}
    assert science <= _flags(loop)
    assert science <= _flags(sweep)
    compute = {"--local", "--actors", "--num-cpus-per-actor", "--num-gpus-per-actor",
               "--score-batch-size", "--train-workers", "--train-gpus-per-worker",
               "--train-cpus-per-worker", "--resident", "--streaming", "--resident-dtype",
               "--resident-memory"}
    missing = _flags(loop) - _flags(sweep) - loop_only - compute
    assert missing == set()


def test_defaults_come_from_the_dataclasses():
    assert default_of("score.mc_samples") == ScoreConfig().mc_samples == 20
    assert default_of("train.epochs") == TrainConfig().epochs
    assert default_of("initial") == LoopConfig.__dataclass_fields__["initial"].default
    params = loop.make_context("loop", ["--run-dir", "x"]).params
    assert params["mc_samples"] == 20 and params["query_size"] == ScoreConfig().query_size


@pytest.fixture
def pools(tmp_path):
    pool = write_pool(tmp_path / "pool", [make_pool_table(100, seed=1)])
    val = write_pool(tmp_path / "val", [make_pool_table(40, seed=2, first_id=1000)])
    return pool, val


def test_sweep_takes_the_loop_option_names(pools, tmp_path):
    args = ["--pool", pools[0], "--val", pools[1], "--out", str(tmp_path / "s"),
            "--strategy", "random,margin", "--seed", "0-2", "--initial", "30",
            "--query-size", "7", "--epochs", "4", "--freeze-batchnorm", "--steps", "3"]
    params = sweep.make_context("sweep", args).params
    cfg = sweep_config(params.pop("config_file"), params.pop("smoke"), params.pop("resume"),
                       {k: v for k, v in params.items() if k != "address"})
    assert cfg.loop.initial == 30 and cfg.loop.score.query_size == 7
    assert cfg.loop.train.epochs == 4 and cfg.loop.train.freeze_batchnorm is True
    assert cfg.strategies == ("random", "margin") and cfg.seeds == (0, 1, 2)
    assert cfg.steps == 3
    # an option not given keeps the loop's default, not a sweep-specific one
    assert cfg.loop.score.mc_samples == ScoreConfig().mc_samples


def test_exclude_ids_not_in_the_pool_are_said(pools, tmp_path):
    from click.testing import CliRunner

    from alray.cli import main

    ck = tmp_path / "ck"
    trained = CliRunner().invoke(main, ["train", "--pool", pools[0], "--labels-from-pool",
                                        "--initial", "30", "--epochs", "1", "--out", str(ck)])
    assert trained.exit_code == 0, trained.output
    some = tmp_path / "some.csv"
    some.write_text("id\n1\n2\n999999\n")
    args = ["score", "--pool", pools[0], "--checkpoint", str(ck), "--local", "--out",
            str(tmp_path / "q.parquet"), "--query-size", "3"]
    partly = CliRunner().invoke(main, [*args, "--exclude", str(some)])
    assert partly.exit_code == 0, partly.output
    assert "alray: warning: 1 of the 3 excluded ids are not in the pool" in partly.stderr
    none = tmp_path / "none.csv"
    none.write_text("id\n999998\n999999\n")
    refused = CliRunner().invoke(main, [*args, "--exclude", str(none)])
    assert refused.exit_code == 2
    assert "none of the 2 excluded ids is in the pool" in refused.stderr
