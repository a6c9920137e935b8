"""``OnlineModel``: a checkpoint's answers for a table of posts.

The scores are ``alray score``'s: the same ``BatchModel`` (``alray.scoring.outputs``)
makes the forward pass, MC dropout with the same fixed masks and the same settings, and
every score comes from the strategy registry's ``compute_scores``. What the batch path
does not need and the service does, the probabilities behind the top classes, comes
from the same forward pass, so the service pays one pass per post. Scores equal the
batch path's bit for bit for the same posts in the same batch; torch's matrix kernels
can change the last bits (about 1e-9) when a batch has other rows.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa

from alray.acquisition import compute_scores
from alray.errors import CheckpointError
from alray.pool.arrays import arrays_from_table
from alray.scoring.outputs import BatchModel, predictions
from alray.serve.config import ServeConfig


def checkpoint_dims(checkpoint: str) -> dict[str, int]:
    from alray.model import read_model_json

    return {m: int(d) for m, d in read_model_json(checkpoint)["modality_dims"].items()}


class OnlineModel:
    """A loaded model and the service's config; ``predict(table)`` answers a table of
    posts. Build it with ``OnlineModel.load``."""

    def __init__(self, checkpoint: str, config: ServeConfig, model: BatchModel):
        self.checkpoint, self.config, self.model = checkpoint, config, model
        self.dims = model.dims
        self.n_classes = model.n_classes

    @classmethod
    def load(cls, checkpoint: str, config: ServeConfig, device: str = "cpu",
             num_threads: int | None = None) -> "OnlineModel":
        """Read ``checkpoint`` and check it serves the config's strategies and columns."""
        import torch

        from alray.model import load_model, model_state

        if num_threads:
            torch.set_num_threads(int(num_threads))
        checkpoint = str(checkpoint)
        dims = checkpoint_dims(checkpoint)
        modalities = set(config.columns.embedding_columns)
        if set(dims) != modalities:
            raise CheckpointError(f"checkpoint {checkpoint}: modalities {sorted(dims)}, the "
                                  f"service's columns have {sorted(modalities)}")
        net, _ = load_model(checkpoint)
        model = BatchModel.from_state(model_state(net), config.score, dims, device,
                                      f"the model from {checkpoint}")
        return cls(checkpoint, config, model)

    def predict(self, table: pa.Table) -> dict[str, np.ndarray]:
        """Per post: ``predicted_class`` (n,), ``predicted_prob`` (n,), ``top_classes``
        (n, t), ``top_probs`` (n, t) and ``score_<strategy>`` (n,) float64 each."""
        outputs = self.model.outputs(arrays_from_table(table, self.config.columns, self.dims))
        probs = outputs.probs
        t = min(self.config.top_classes, probs.shape[1])
        # stable sort of -p: equal probabilities keep the lower class first, as argmax does
        top = np.argsort(-probs, axis=1, kind="stable")[:, :t]
        out = {**predictions(probs), "top_classes": top.astype(np.int64),
               "top_probs": np.take_along_axis(probs, top, axis=1).astype(np.float64)}
        for name in self.config.strategies:
            out[f"score_{name}"] = compute_scores(name, outputs.inputs)
        return out
