"""A small model shared by the model, MC-dropout and training tests."""
from __future__ import annotations

import torch

from alray.config import ModelConfig
from alray.model import FusionNet

SMALL = ModelConfig(modality_dims={"image": 12, "text": 8},
                    branch_widths={"image": (10, 6), "text": (7,)},
                    fused_widths=(9, 5), n_classes=4)


def build(config: ModelConfig = SMALL, seed: int = 0) -> FusionNet:
    """A model with a fixed init and non-trivial BN statistics and missing vectors
    (train mode; call ``.eval()`` for inference)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FusionNet(config)
        for _, block in model.block_names():
            block.bn.running_mean.uniform_(-0.5, 0.5)
            block.bn.running_var.uniform_(0.5, 2.0)
            block.bn.weight.data.uniform_(0.5, 1.5)
            block.bn.bias.data.uniform_(-0.5, 0.5)
        for vector in model.missing.values():
            vector.data.normal_()
    return model
