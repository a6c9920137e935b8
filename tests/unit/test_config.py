"""Configs: every problem in one ConfigError, dict and YAML round trips."""
from __future__ import annotations

import pytest

from alray.config import ModelConfig, PoolConfig, ScoreConfig, TrainConfig
from alray.pool.synthetic import GeneratorConfig
from alray.errors import ConfigError


@pytest.mark.parametrize("cls", [PoolConfig, ModelConfig, TrainConfig, ScoreConfig,
                                 GeneratorConfig])
def test_round_trip(cls, tmp_path):
    cfg = cls()
    assert cls.from_dict(cfg.to_dict()) == cfg
    path = tmp_path / "c.yaml"
    path.write_text(cfg.to_yaml())
    assert cls.from_yaml(path) == cfg


def test_all_problems_in_one_error():
    with pytest.raises(ConfigError) as err:
        TrainConfig(epochs=0, lr=-1, loss_weighting="max")
    assert len(err.value.problems) == 3


def test_unknown_option_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown option.*epochz.*valid:.*epochs"):
        TrainConfig.from_dict({"epochz": 3})


def test_model_modalities_must_agree():
    with pytest.raises(ConfigError, match="branch_widths"):
        ModelConfig(modality_dims={"image": 4}, branch_widths={"text": (2,)})


def test_bad_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        TrainConfig.from_yaml(path)
