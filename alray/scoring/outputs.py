"""What a model says about a batch of posts: the inputs of every acquisition score.

``BatchModel`` makes the one forward pass (plus MC dropout, the loss module or the head
probabilities, each only when a requested strategy needs it) that every scorer turns
into scores: Ray Data's ``BatchScorer``, the in-process path and the online service. It
is built from a model already in memory (``from_state`` takes a ``model_state``), so no
constructor here reads a file. ``check_serves`` is the one check that a model can answer
a set of strategies.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np

from alray.acquisition import least_sure_head, needs_of
from alray.acquisition.registry import STRATEGIES
from alray.config import ModelConfig, ScoreConfig
from alray.errors import ConfigError, LabelsError
from alray.pool.arrays import UNLABELLED, PostArrays
from alray.seeds import derive_seed


def check_serves(config: ModelConfig, score: ScoreConfig, source: str) -> None:
    """ConfigError naming ``source`` when the model of ``config`` cannot answer the
    strategies of ``score``: a missing head, no loss-prediction module, or no modality
    heads for the head committee."""
    from alray.model.fusion import head_names_of

    heads = head_names_of(config)
    needs = needs_of(score.strategies)
    if score.head not in heads:
        raise ConfigError(f"head {score.head!r}: {source} has heads {', '.join(heads)}")
    if "loss_pred" in needs and not config.learning_loss:
        raise ConfigError(f"strategy learning_loss needs a model trained with a "
                          f"loss-prediction module; {source} has none")
    if "heads" in needs and not set(heads) & set(config.modality_dims):
        raise ConfigError("strategy head_disagreement needs a model with one head per "
                          f"modality (heads='multi'); {source} has only "
                          f"{', '.join(heads)}")


def mask_seed(seed: int, step: int) -> int:
    """The seed of a step's K MC-dropout masks: new each step, so a long run averages
    over many committees instead of measuring one fixed set of K masks; fixed within a
    step, so the query does not depend on batches, blocks or actors."""
    return derive_seed(seed, "mc", step)


def predictions(probs: np.ndarray) -> dict[str, np.ndarray]:
    """Each row's predicted class and its probability, from ``(n, c)`` probabilities."""
    predicted = probs.argmax(axis=1)
    return {"predicted_class": predicted.astype(np.int64),
            "predicted_prob": probs[np.arange(len(probs)), predicted].astype(np.float64)}


@dataclass
class BatchOutputs:
    """One batch's outputs: ``probs`` ``(n, c)`` of the scored head, ``inputs`` for
    ``compute_scores``, and the modality heads' logits kept for ``least_sure``."""

    probs: np.ndarray
    inputs: dict
    modality_logits: dict
    present: Mapping[str, np.ndarray]


class BatchModel:
    """A model (eval mode, on ``device``) and what the strategies of ``score`` need."""

    def __init__(self, model, score: ScoreConfig, dims: Mapping[str, int], step: int = 0):
        from alray.model import MCDropout

        self.model, self.score, self.dims = model, score, dict(dims)
        self.device = next(model.parameters()).device
        self.needs = needs_of(score.strategies)
        self.modality_heads = tuple(h for h in model.head_names if h in self.dims)
        self.mc = (MCDropout(model, score.mc_samples, mask_seed(score.seed, step))
                   if "mc" in self.needs else None)
        self.cached = False  # features are the first blocks' outputs (use_cached)

    def use_cached(self, cached: bool = True) -> None:
        """Take each branch's first-block ReLU outputs as features from now on
        (``alray.scoring.first_block``): the plain pass and MC dropout start after them."""
        self.cached = cached
        if self.mc is not None:
            self.mc.cached = cached

    @classmethod
    def from_state(cls, state: Mapping, score: ScoreConfig, dims: Mapping[str, int],
                   device: str = "cpu", source: str = "the model", step: int = 0
                   ) -> "BatchModel":
        """From a ``model_state`` (architecture and weights), checked with
        ``check_serves``; ``step`` seeds the MC-dropout masks (``mask_seed``)."""
        import torch

        from alray.model import load_model

        model, config = load_model(state, map_location=torch.device(device))
        check_serves(config, score, source)
        return cls(model.eval(), score, dims, step)

    @property
    def n_classes(self) -> int:
        return self.model.config.n_classes

    def outputs(self, data: PostArrays) -> BatchOutputs:
        """One forward pass (plus MC dropout when needed) over ``data``: the scored
        head's probabilities and every input of ``compute_scores`` for the strategies."""
        import torch

        from alray.model import as_tensors

        head = self.score.head
        with torch.inference_mode():
            feats, pres = as_tensors(data.features, data.present, self.device)
            out = self.model(feats, pres, cached=self.cached)
            probs = torch.softmax(out.logits[head].float(), dim=1).cpu().numpy()
            inputs: dict[str, object] = {"probs": probs.astype(np.float64)}
            if self.mc is not None:
                stats = self.mc.statistics(feats, pres, head)
                inputs["mc_mean_probs"] = stats["mean_probs"].cpu().numpy().astype(np.float64)
                inputs["mc_mean_entropy"] = (stats["mean_entropy"].cpu().numpy()
                                             .astype(np.float64))
            if "loss_pred" in self.needs:
                inputs["loss_pred"] = (self.model.predict_loss(feats, pres, self.cached)
                                       .cpu().numpy().astype(np.float64))
            if "heads" in self.needs:
                inputs.update(self._head_inputs(out.logits, data.present))
        if "labels" in self.needs:
            inputs["labels"] = self._labels(data)
        inputs["ids"] = data.ids
        inputs["seed"] = self.score.seed
        modality = {h: out.logits[h] for h in self.modality_heads}
        return BatchOutputs(probs, inputs, modality, data.present)

    def _labels(self, data: PostArrays) -> np.ndarray:
        missing = int(np.count_nonzero(data.labels == UNLABELLED))
        if missing:
            oracles = [s for s in self.score.strategies if STRATEGIES[s].oracle]
            raise LabelsError(
                f"oracle strategies {', '.join(oracles)} need a label on every "
                f"candidate; {missing} of {len(data)} rows in a batch are unlabelled "
                f"(first id {data.ids[data.labels == UNLABELLED][0]!r})")
        return data.labels

    def _head_inputs(self, logits: Mapping, present: Mapping) -> dict[str, np.ndarray]:
        """Every head's probabilities from the forward pass already made, stacked
        ``(n, heads, c)`` in ``head_names`` order, and where each head means something."""
        import torch

        if not self.modality_heads:
            return {}
        names = self.model.head_names
        probs = torch.stack([torch.softmax(logits[h].float(), dim=1) for h in names], dim=1)
        n = probs.shape[0]
        present_cols = [np.ones(n, bool) if h not in self.dims else np.asarray(present[h], bool)
                        for h in names]
        return {"head_probs": probs.cpu().numpy().astype(np.float64),
                "head_present": np.stack(present_cols, axis=1)}

    def least_sure(self, outputs: BatchOutputs, rows: np.ndarray) -> np.ndarray:
        """``(len(rows),)`` the modality whose head is least sure of each of the batch's
        ``rows`` (None with one modality), from the forward pass already made."""
        import torch

        if not self.modality_heads:
            return np.full(len(rows), None, dtype=object)
        index = torch.as_tensor(np.asarray(rows, np.int64))
        probs = torch.stack([torch.softmax(outputs.modality_logits[h][index].float(), dim=1)
                             for h in self.modality_heads], dim=1)
        shown = np.stack([np.asarray(outputs.present[h], bool)[rows]
                          for h in self.modality_heads], axis=1)
        return least_sure_head(probs.cpu().numpy().astype(np.float64), shown,
                               self.modality_heads)


__all__ = ["BatchModel", "BatchOutputs", "check_serves", "mask_seed", "predictions"]
