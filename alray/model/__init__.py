"""The late-fusion multi-head model, its losses, MC-dropout inference and checkpoints.

Plain torch: importing this package never imports Ray.
"""
from alray.model.checkpoint import (
    check_fits, load_checkpoint, load_model, load_train_state, model_state, read_model_json,
    save_checkpoint)
from alray.model.fusion import Block, FusionNet, FusionOutput, as_tensors
from alray.model.loss import (
    FUSED, LossOutput, LossPredictor, MultiHeadLoss, per_sample_loss, ranking_loss)
from alray.model.mc import (
    MCDropout, dropout_masks, mc_forward_reference, mc_statistics)

__all__ = [
    "Block", "FUSED", "FusionNet", "FusionOutput", "LossOutput", "LossPredictor",
    "MCDropout", "MultiHeadLoss", "as_tensors", "check_fits", "dropout_masks",
    "load_checkpoint", "load_model", "load_train_state", "mc_forward_reference",
    "mc_statistics", "model_state", "per_sample_loss", "ranking_loss", "read_model_json",
    "save_checkpoint",
]
