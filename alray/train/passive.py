"""The passive phase as one function: the seeded fit and its evaluation.

``alray train``, ``alray demo`` and the loop's step 0 share it, so for the same pool,
initial size and seed they train the same model: the same rows in the same order
(``passive_rows``: the loop's draw), the same seeded initialisation and the same
request (``new_request("fit", ...)``) that a Ray Train worker answers in the loop.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from alray.config import ModelConfig, PoolConfig, TrainConfig, branch_widths_for
from alray.pool.arrays import PostArrays

Progress = Callable[[int, int, float], None]


def model_for_pool(pool_uri: str, columns: PoolConfig, n_classes: int | None = None,
                   val_uri: str | None = None, **options) -> ModelConfig:
    """The study's model shaped to the pool: its modalities and dims, ``n_classes``
    (None: inferred from the pool's and the validation pool's labels), ``options``
    any other ``ModelConfig`` field (heads, dropout, ...)."""
    from alray.pool.load import infer_class_count
    from alray.pool.schema import infer_dims

    dims = infer_dims(pool_uri, columns)
    if n_classes is None:
        n_classes = infer_class_count([u for u in (pool_uri, val_uri) if u], columns)
    return ModelConfig(modality_dims=dims, branch_widths=branch_widths_for(dims),
                       n_classes=n_classes, **options)


def initial_ids(pool_uri: str, columns: PoolConfig, initial: int, seed: int,
                strategy: str = "random"):
    """The ids and labels of the initial set: ``initial`` labelled posts, drawn
    uniformly (``random``, the study's) or TypiClust's typical posts (``typiclust``),
    in the order chosen; ``(ids, labels)`` arrays."""
    from alray.pool.load import draw_labelled, read_ids_and_labels

    ids, labels = read_ids_and_labels(pool_uri, columns)
    if strategy == "random":
        return draw_labelled(ids, labels, initial, seed, pool_uri)
    from alray.scoring.clusters import typical_ids

    picked = typical_ids(pool_uri, columns, initial, seed)
    order = np.argsort(ids, kind="stable")
    return picked, labels[order][np.searchsorted(ids[order], picked)]


def passive_rows(pool_uri: str, columns: PoolConfig, initial: int, seed: int,
                 strategy: str = "random") -> PostArrays:
    """The loop's initial set for ``seed`` (``initial_ids``), in the order chosen."""
    from alray.pool.load import load_rows_in_order

    picked, picked_labels = initial_ids(pool_uri, columns, initial, seed, strategy)
    return load_rows_in_order(pool_uri, columns, picked,
                              dict(zip(picked.tolist(), picked_labels.tolist())))


def train_passive(data: PostArrays, model: ModelConfig, train: TrainConfig,
                  val: PostArrays | None = None, progress: Progress | None = None) -> dict:
    """Fit a new model on ``data`` (``train.epochs`` epochs, seeded by ``train.seed``)
    and evaluate it on ``val``. Returns ``{"model", "weights", "train_state",
    "history", "metrics"}`` (metrics: head -> accuracy, macro_f1, ...; {} without
    ``val``)."""
    from alray.model.checkpoint import model_from_state
    from alray.train.core import evaluate
    from alray.train.worker import new_request, run_request

    reply = run_request(new_request("fit", model, train, data), progress=progress)
    net = model_from_state(model, reply["weights"], "the passive fit")
    metrics = evaluate(net, val) if val is not None else {}
    return {"model": net, "weights": reply["weights"], "train_state": reply["train_state"],
            "history": reply["history"], "metrics": metrics}


__all__ = ["initial_ids", "model_for_pool", "passive_rows", "train_passive"]
