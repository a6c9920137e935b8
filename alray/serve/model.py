"""``OnlineModel``: a checkpoint's answers for a table of posts.

The scores are ``alray score``'s: the model, the MC-dropout masks and the settings are
``BatchScorer``'s own (it loads them), the model outputs are computed with the same
calls, and every score comes from the strategy registry's ``compute_scores``. What the
batch path does not need and the service does, the probabilities behind the top
classes, comes from the same forward pass, so the service pays one pass per post.
Scores equal the batch path's bit for bit for the same posts in the same batch; torch's
matrix kernels can change the last bits (about 1e-9) when a batch has other rows.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
import pyarrow as pa

from alray.acquisition import compute_scores
from alray.errors import CheckpointError, ConfigError
from alray.pool.arrays import arrays_from_table
from alray.serve.config import ServeConfig


def checkpoint_dims(checkpoint: str) -> dict[str, int]:
    from alray.model import read_model_json

    return {m: int(d) for m, d in read_model_json(checkpoint)["modality_dims"].items()}


class OnlineModel:
    """Loads ``checkpoint`` once; ``predict(table)`` answers a table of posts."""

    def __init__(self, checkpoint: str, config: ServeConfig, device: str = "cpu",
                 num_threads: int | None = None):
        from alray.scoring.scorer import BatchScorer

        self.checkpoint = str(checkpoint)
        self.config = config
        self.dims = checkpoint_dims(self.checkpoint)
        self._scorer = BatchScorer(self.checkpoint, config.score_config().to_dict(),
                                   config.columns.to_dict(), self.dims,
                                   num_threads=num_threads, device=device)
        self.n_classes = self._scorer.config.n_classes
        self._check()

    def _check(self) -> None:
        model, cfg = self._scorer.model, self.config
        modalities = set(cfg.columns.embedding_columns)
        if set(self.dims) != modalities:
            raise CheckpointError(f"checkpoint {self.checkpoint}: modalities "
                                  f"{sorted(self.dims)}, the service's columns have "
                                  f"{sorted(modalities)}")
        if cfg.head not in model.head_names:
            raise ConfigError(f"head {cfg.head!r}: the model from {self.checkpoint} has "
                              f"heads {', '.join(model.head_names)}")
        if "loss_pred" in self._scorer.needs and not self._scorer.config.learning_loss:
            raise ConfigError(f"strategy learning_loss needs a model trained with a "
                              f"loss-prediction module; {self.checkpoint} has none")

    def predict(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Per post: ``predicted_class`` (n,), ``predicted_prob`` (n,), ``top_classes``
        (n, t), ``top_probs`` (n, t) and ``score_<strategy>`` (n,) float64 each."""
        probs, inputs = self._outputs(table)
        t = min(self.config.top_classes, probs.shape[1])
        # stable sort of -p: equal probabilities keep the lower class first, as argmax does
        top = np.argsort(-probs, axis=1, kind="stable")[:, :t]
        rows = np.arange(len(probs))
        predicted = probs.argmax(axis=1)
        out = {"predicted_class": predicted.astype(np.int64),
               "predicted_prob": probs[rows, predicted].astype(np.float64),
               "top_classes": top.astype(np.int64),
               "top_probs": np.take_along_axis(probs, top, axis=1).astype(np.float64)}
        for name in self.config.strategies:
            out[f"score_{name}"] = compute_scores(name, inputs)
        return out

    def _outputs(self, table: pa.Table) -> tuple[np.ndarray, Mapping[str, object]]:
        """The inputs of ``compute_scores``: ``BatchScorer``'s own forward pass."""
        s = self._scorer
        return s.score_inputs(arrays_from_table(table, s.pool, s.dims))
