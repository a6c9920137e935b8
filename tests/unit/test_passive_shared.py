"""`alray train --labels-from-pool` and the loop's step 0 train the same model: one
passive fit (alray.train.passive) for both."""
from __future__ import annotations

import torch
from click.testing import CliRunner

from alray.cli import main
from alray.model import load_checkpoint
from tests.conftest import make_pool_table, write_pool


def test_train_command_equals_the_loops_step_0(tmp_path, one_thread):
    pool = write_pool(tmp_path / "pool", [make_pool_table(120, seed=i, first_id=200 * i)
                                          for i in range(2)])
    val = write_pool(tmp_path / "val", [make_pool_table(50, seed=7, first_id=5000)])
    common = ["--initial", "60", "--epochs", "2", "--seed", "4", "--classes", "5"]
    trained = CliRunner().invoke(main, ["train", "--pool", pool, "--val", val,
                                        "--labels-from-pool", "--out",
                                        str(tmp_path / "ck"), *common])
    assert trained.exit_code == 0, trained.output
    looped = CliRunner().invoke(main, ["loop", "--pool", pool, "--val", val, "--run-dir",
                                       str(tmp_path / "run"), "--steps", "0", "--local",
                                       *common])
    assert looped.exit_code == 0, looped.output
    a, _, _ = load_checkpoint(tmp_path / "ck")
    b, _, _ = load_checkpoint(tmp_path / "run" / "checkpoints" / "step-00000")
    for name, tensor in a.state_dict().items():
        assert torch.equal(tensor, b.state_dict()[name]), name
    # another seed is another model: the comparison above can fail
    other = CliRunner().invoke(main, ["train", "--pool", pool, "--labels-from-pool", "--out",
                                      str(tmp_path / "ck2"), *common[:-4], "--seed", "5",
                                      "--classes", "5"])
    assert other.exit_code == 0, other.output
    c, _, _ = load_checkpoint(tmp_path / "ck2")
    assert not all(torch.equal(t, c.state_dict()[n]) for n, t in a.state_dict().items())
