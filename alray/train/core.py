"""Training, fine-tuning, inference and metrics in plain torch (no Ray).

``Trainer`` holds what must survive between active-learning steps: the model, the
multi-head loss (its learned log-variances) and the Adam state. ``fit`` (passive phase)
and ``fine_tune`` (one warm-start pass per query) take either a bare model (fresh
optimizer) or a ``Trainer`` (state kept, as Keras kept it in the study's code), so a Ray
Train worker can call the same functions.

Determinism: shuffling uses its own ``torch.Generator``; dropout draws from torch's
global CPU generator, forked and seeded for the duration of the call, so the caller's
random state is untouched and the same seed gives bitwise-identical weights on CPU.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from alray.config import TrainConfig
from alray.model.fusion import FUSED, FusionNet, as_tensors
from alray.model.loss import MultiHeadLoss, per_sample_loss, ranking_loss
from alray.pool.arrays import PostArrays
from alray.seeds import derive_seed

Progress = Callable[[int, int, float], None]


@dataclass
class Trainer:
    """Model + loss module + optimizer; ``state_dict`` covers the last two."""

    model: FusionNet
    loss: MultiHeadLoss
    optimizer: torch.optim.Optimizer

    @classmethod
    def create(cls, model: FusionNet, train: TrainConfig, state: dict | None = None
               ) -> "Trainer":
        """A fresh loss and Adam for ``model``; ``state`` (from ``state_dict``) resumes."""
        device = next(model.parameters()).device
        loss = MultiHeadLoss(model.head_names, train.loss_weighting,
                             train.class_weights).to(device)
        groups = [{"params": list(model.parameters())}]
        if loss.log_vars is not None:
            # no weight decay on the log-variances: decay would pull them to 0 (equal)
            groups.append({"params": [loss.log_vars], "weight_decay": 0.0})
        optimizer = torch.optim.Adam(groups, lr=train.lr, weight_decay=train.weight_decay)
        trainer = cls(model, loss, optimizer)
        if state is not None:
            trainer.load_state_dict(state)
        return trainer

    def state_dict(self) -> dict:
        return {"loss": self.loss.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.loss.load_state_dict(state["loss"])
        self.optimizer.load_state_dict(state["optimizer"])

    def apply_hyperparameters(self, train: TrainConfig) -> None:
        """Take lr and weight decay from ``train`` (the loss weighting is fixed at creation)."""
        for group in self.optimizer.param_groups:
            group["lr"] = train.lr
            if group["params"][0] is not self.loss.log_vars:
                group["weight_decay"] = train.weight_decay


def adaptive_batch_size(n: int, b: int) -> int:
    """The study's batch size for n labelled rows and base size b:
    ``b + floor((n mod b) / floor(n / b))`` for n >= b, n for n < b."""
    if n < 1:
        raise ValueError(f"adaptive_batch_size needs n >= 1 rows, got {n}")
    if b < 1:
        raise ValueError(f"batch size must be >= 1, got {b}")
    if n < b:
        return n
    return b + (n % b) // (n // b)


def epoch_batches(n: int, b: int, adaptive: bool = True) -> list[int]:
    """Batch sizes of one epoch over n rows (they sum to n).

    Adaptive: ``floor(n / b)`` batches of ``adaptive_batch_size(n, b)``; the formula
    still leaves ``< floor(n / b)`` rows over, which go one each to the first batches
    (so sizes differ by at most one and no tiny batch remains). Fixed: batches of b and
    the remainder last (the study's ablation).
    """
    if n < 1:
        raise ValueError(f"an epoch needs at least one row, got {n}")
    if not adaptive:
        return [b] * (n // b) + ([n % b] if n % b else [])
    size = adaptive_batch_size(n, b)
    count = max(1, n // b)
    extra = n - count * size
    return [size + 1] * extra + [size] * (count - extra)


def fit(model: FusionNet | Trainer, data: PostArrays, train: TrainConfig,
        progress: Progress | None = None) -> list[dict]:
    """Passive phase: ``train.epochs`` epochs from the model's current weights, BN
    updating, seeded by ``train.seed``. Returns one record per epoch (see ``_epoch``)."""
    trainer = as_trainer(model, train)
    return run_epochs(trainer, data, train, train.epochs, train.seed, False, progress)


def fine_tune(model: FusionNet | Trainer, data: PostArrays, train: TrainConfig,
              step_seed: int, progress: Progress | None = None) -> list[dict]:
    """Active-phase warm start: ``train.fine_tune_epochs`` epochs over the labelled set;
    with ``train.freeze_batchnorm`` every BatchNorm stays in eval mode (running
    statistics untouched, affine still learned) while dropout stays on; with
    ``train.freeze_first_block`` each branch's first block is left as it is."""
    trainer = as_trainer(model, train)
    return run_epochs(trainer, data, train, train.fine_tune_epochs, step_seed,
                  train.freeze_batchnorm, progress, freeze_first=train.freeze_first_block)


def as_trainer(model: FusionNet | Trainer, train: TrainConfig) -> Trainer:
    if isinstance(model, Trainer):
        if model.loss.weighting != train.loss_weighting:
            raise ValueError(f"the Trainer's loss weighting is {model.loss.weighting!r}, "
                             f"the TrainConfig asks for {train.loss_weighting!r}")
        model.apply_hyperparameters(train)
        return model
    return Trainer.create(model, train)


def set_train_mode(model: nn.Module, freeze_batchnorm: bool) -> None:
    """Train mode; with ``freeze_batchnorm`` the BatchNorm layers go back to eval."""
    model.train()
    if freeze_batchnorm:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()


def _check_labels(data: PostArrays, n_classes: int, purpose: str = "train") -> None:
    if len(data) == 0:
        raise ValueError(f"no labelled rows to {purpose} on")
    labels = data.labels
    if (labels < 0).any():
        raise ValueError(f"{int((labels < 0).sum())} of {len(labels)} rows are unlabelled "
                         f"(label -1); {purpose} only on labelled rows")
    if (labels >= n_classes).any():
        raise ValueError(f"label {int(labels.max())} is out of range for "
                         f"{n_classes} classes")


def run_epochs(trainer: Trainer, data: PostArrays, train: TrainConfig, epochs: int,
           seed: int, freeze_bn: bool, progress: Progress | None,
           parallel=None, freeze_first: bool = False) -> list[dict]:
    """``parallel``: None (one process) or a data-parallel rank with ``shard(idx)``,
    ``average_gradients(params, rows, batch)`` and ``sum_metrics(sums, counts)``
    (``alray.train.worker.DataParallel``). ``freeze_first``: each branch's first block
    (Linear, BatchNorm affine and running statistics) is not changed."""
    model = trainer.model
    _check_labels(data, model.config.n_classes)
    features, present = as_tensors(data.features, data.present)  # CPU, zero-copy
    labels = torch.from_numpy(np.array(data.labels, dtype=np.int64))  # a writable copy
    sizes = epoch_batches(len(data), train.batch_size, train.adaptive_batch)
    device = next(model.parameters()).device
    devices = [device.index or 0] if device.type == "cuda" else []
    shuffle = torch.Generator().manual_seed(derive_seed(seed, "shuffle"))
    history = []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(derive_seed(seed, "dropout"))
        set_train_mode(model, freeze_bn)
        frozen = freeze_first_blocks(model) if freeze_first else []
        try:
            for epoch in range(epochs):
                order = torch.randperm(len(data), generator=shuffle)
                record = _epoch(trainer, features, present, labels, order, sizes,
                                train, device, parallel)
                record["epoch"] = epoch + 1
                history.append(record)
                if progress is not None:
                    progress(epoch + 1, epochs, record["loss"])
        finally:
            model.eval()
            for param in frozen:
                param.requires_grad_(True)
    return history


def first_blocks(model: FusionNet) -> list[nn.Module]:
    """Each branch's first block: what ``freeze_first_block`` keeps and scoring caches."""
    return [model.branches[m][0] for m in model.modalities]


def freeze_first_blocks(model: FusionNet) -> list[nn.Parameter]:
    """Put the first blocks' BatchNorm in eval mode and stop their parameters' gradients
    (a parameter without a gradient is skipped by Adam, weight decay included); returns
    the parameters to give their gradients back to."""
    params = []
    for block in first_blocks(model):
        block.bn.eval()
        params += [p for p in block.parameters() if p.requires_grad]
    for param in params:
        param.requires_grad_(False)
    return params


def _epoch(trainer: Trainer, features, present, labels, order, sizes, train: TrainConfig,
           device, parallel=None) -> dict:
    """One pass; returns ``loss`` (row-weighted mean total), ``heads`` (mean CE per
    head), ``ranking_loss`` (learning-loss models), ``batch_sizes``, ``seconds``.
    With ``parallel`` this rank trains on its slice of each batch, gradients are
    averaged over ranks and the record covers every rank's rows."""
    model, start, t0 = trainer.model, 0, time.perf_counter()
    params = [p for group in trainer.optimizer.param_groups for p in group["params"]]
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    for size in sizes:
        idx = order[start:start + size]
        start += size
        if parallel is not None:
            idx = parallel.shard(idx)
        rows = len(idx)  # == size in one process
        feats = {m: f.index_select(0, idx).to(device) for m, f in features.items()}
        pres = {m: p.index_select(0, idx).to(device) for m, p in present.items()}
        y = labels.index_select(0, idx).to(device)
        out = model(feats, pres, return_hidden=model.loss_predictor is not None)
        result = trainer.loss(out.logits, y, pres)
        total = result.total
        parts = {f"head:{h}": v for h, v in result.per_head.items()}
        if model.loss_predictor is not None:
            # detached: the auxiliary module must not change what the classifier learns
            predicted = model.loss_predictor([h.detach() for h in out.hidden])
            rank = ranking_loss(predicted, per_sample_loss(out.logits[FUSED], y),
                                train.learning_loss_margin)
            total = total + train.learning_loss_lambda * rank
            parts["ranking_loss"] = rank.detach()
        trainer.optimizer.zero_grad(set_to_none=True)
        total.backward()
        if parallel is not None:
            parallel.average_gradients(params, rows, size)
        trainer.optimizer.step()
        parts["loss"] = total.detach()
        for key, value in parts.items():  # batch-size-weighted sums, one sync per epoch
            sums[key] = sums.get(key, 0.0) + value * rows
            counts[key] = counts.get(key, 0) + rows
    if parallel is not None:
        parallel.sum_metrics(sums, counts)
    means = {k: float(v) / counts[k] for k, v in sums.items()}
    record = {"loss": means.pop("loss"),
              "heads": {k[5:]: v for k, v in means.items() if k.startswith("head:")},
              "batch_sizes": sorted(set(sizes), reverse=True), "n_batches": len(sizes),
              "seconds": time.perf_counter() - t0}
    if "ranking_loss" in means:
        record["ranking_loss"] = means["ranking_loss"]
    return record


def _batched_outputs(model: FusionNet, data: PostArrays, batch_size: int,
                     fn: Callable) -> list:
    """``fn(model, features, present)`` per batch in eval mode under inference_mode."""
    device = next(model.parameters()).device
    was_training, outputs = model.training, []
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(data), batch_size):
                rows = slice(start, start + batch_size)
                feats, pres = as_tensors({m: f[rows] for m, f in data.features.items()},
                                         {m: p[rows] for m, p in data.present.items()},
                                         device)
                outputs.append(fn(model, feats, pres))
    finally:
        model.train(was_training)
    return outputs


def predict_probs(model: FusionNet, data: PostArrays, heads: Sequence[str] = (FUSED,),
                  batch_size: int = 8192) -> dict[str, np.ndarray]:
    """Deterministic class probabilities: head -> ``(n, n_classes)`` float32."""
    unknown = [h for h in heads if h not in model.head_names]
    if unknown:
        raise ValueError(f"unknown heads {unknown}; this model has {model.head_names}")

    def probs(net, feats, pres):
        logits = net(feats, pres).logits
        return {h: torch.softmax(logits[h], dim=1).cpu().numpy() for h in heads}

    parts = _batched_outputs(model, data, batch_size, probs)
    c = model.config.n_classes
    return {h: np.concatenate([p[h] for p in parts]) if parts
            else np.zeros((0, c), np.float32) for h in heads}


def predict_loss(model: FusionNet, data: PostArrays, batch_size: int = 8192) -> np.ndarray:
    """The learning-loss module's predicted loss per row: ``(n,)`` float32."""
    parts = _batched_outputs(model, data, batch_size,
                             lambda net, f, p: net.predict_loss(f, p).cpu().numpy())
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def evaluate(model: FusionNet, data: PostArrays, batch_size: int = 8192,
             heads: Sequence[str] | None = None) -> dict[str, dict[str, float]]:
    """head -> ``{"accuracy", "macro_f1", "balanced_accuracy", "n"}``; a modality head
    is scored on the rows where its modality is present (NaN metrics when none)."""
    _check_labels(data, model.config.n_classes, "evaluate")
    heads = tuple(heads or model.head_names)
    probs = predict_probs(model, data, heads, batch_size)
    result = {}
    for head in heads:
        rows = np.ones(len(data), bool) if head == FUSED else data.present[head]
        pred = probs[head].argmax(axis=1)[rows]
        result[head] = classification_metrics(data.labels[rows], pred,
                                              model.config.n_classes)
    return result


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` int64 counts, rows = true class, columns = predicted."""
    flat = np.asarray(y_true, np.int64) * n_classes + np.asarray(y_pred, np.int64)
    return np.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int
                           ) -> dict[str, float]:
    """Accuracy, macro F1 (over classes seen in truth or predictions, as scikit-learn)
    and balanced accuracy (mean recall over classes present in the truth)."""
    n = len(y_true)
    if n == 0:
        return {"accuracy": float("nan"), "macro_f1": float("nan"),
                "balanced_accuracy": float("nan"), "n": 0}
    cm = confusion_matrix(y_true, y_pred, n_classes)
    tp = np.diag(cm).astype(np.float64)
    support, predicted = cm.sum(axis=1), cm.sum(axis=0)
    seen = (support + predicted) > 0
    f1 = 2 * tp[seen] / (support[seen] + predicted[seen])  # = 2tp / (2tp + fp + fn)
    has = support > 0
    return {"accuracy": float(tp.sum() / n), "macro_f1": float(f1.mean()),
            "balanced_accuracy": float((tp[has] / support[has]).mean()), "n": int(n)}
