"""Training and fine-tuning in plain torch (``core``); one request at a time in-process or
on a long-lived Ray Train worker group (``worker``, ``service``; Ray imported on use)."""
from alray.train.core import (
    Trainer, adaptive_batch_size, classification_metrics, confusion_matrix, epoch_batches,
    evaluate, fine_tune, fit, predict_loss, predict_probs, set_train_mode)
from alray.train.passive import model_for_pool, passive_rows, train_passive
from alray.train.service import LocalTraining, RayTraining, start_training
from alray.train.worker import new_request, run_request

__all__ = [
    "LocalTraining", "RayTraining", "Trainer", "adaptive_batch_size",
    "classification_metrics", "confusion_matrix", "epoch_batches", "evaluate", "fine_tune",
    "fit", "model_for_pool", "new_request", "passive_rows", "predict_loss", "predict_probs",
    "run_request", "set_train_mode", "start_training", "train_passive",
]
