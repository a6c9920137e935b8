"""Training and fine-tuning in plain torch (``core``); the Ray Train wrapper builds on it."""
from alray.train.core import (
    Trainer, adaptive_batch_size, classification_metrics, confusion_matrix, epoch_batches,
    evaluate, fine_tune, fit, predict_loss, predict_probs, set_train_mode)

__all__ = [
    "Trainer", "adaptive_batch_size", "classification_metrics", "confusion_matrix",
    "epoch_batches", "evaluate", "fine_tune", "fit", "predict_loss", "predict_probs",
    "set_train_mode",
]
