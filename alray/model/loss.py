"""Losses: the uncertainty-weighted multi-head loss and the learning-loss module.

``MultiHeadLoss`` is the study's loss (Kendall, Gal & Cipolla 2018, as parametrised in
the study's public code): ``sum_i L_i * exp(-s_i) + s_i / 2`` with one trainable
log-variance ``s_i`` per head, initialised to 0. Modality heads only see the rows where
their modality is present.

``LossPredictor`` and ``ranking_loss`` are the learning-loss module of Yoo & Kweon
(2019): small per-layer projections of intermediate features, concatenated, regressed to
the per-sample loss with a pairwise margin ranking objective.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FUSED = "fused"


@dataclass
class LossOutput:
    """``total``: scalar to backpropagate; ``per_head``: detached scalar CE of each head
    that had rows in the batch (heads with none are absent)."""

    total: Tensor
    per_head: dict[str, Tensor]


class MultiHeadLoss(nn.Module):
    """Cross-entropy summed over heads, weighted by learned log-variances or equally.

    ``heads``: head names (``"fused"`` and modality names). ``class_weights``: optional
    ``(n_classes,)`` weights for every head's cross-entropy (weighted mean, as
    ``F.cross_entropy`` does).
    """

    def __init__(self, heads: Sequence[str], weighting: str = "learned",
                 class_weights: Sequence[float] | Tensor | None = None):
        super().__init__()
        if weighting not in ("learned", "equal"):
            raise ValueError(f"weighting must be 'learned' or 'equal', got {weighting!r}")
        if not heads:
            raise ValueError("MultiHeadLoss needs at least one head")
        self.heads = tuple(heads)
        self.weighting = weighting
        # s_i = log sigma_i^2; "equal" keeps no parameter so nothing is learned
        self.log_vars = nn.Parameter(torch.zeros(len(self.heads))) \
            if weighting == "learned" else None
        weights = None if class_weights is None else \
            torch.as_tensor(class_weights, dtype=torch.float32)
        self.register_buffer("class_weights", weights)

    def forward(self, logits: Mapping[str, Tensor], labels: Tensor,
                present: Mapping[str, Tensor]) -> LossOutput:
        """``logits``: head -> ``(n, C)``; ``labels``: ``(n,)`` int64 >= 0;
        ``present``: modality -> ``(n,)`` bool (masks the modality heads)."""
        total = logits[self.heads[0]].new_zeros(())
        per_head = {}
        for i, head in enumerate(self.heads):
            head_logits, head_labels = logits[head], labels
            if head != FUSED:
                mask = present[head]
                if not bool(mask.any()):
                    continue  # no row of this modality: no loss and no s_i/2 term
                if not bool(mask.all()):
                    head_logits, head_labels = head_logits[mask], labels[mask]
            loss = F.cross_entropy(head_logits, head_labels, weight=self.class_weights)
            per_head[head] = loss.detach()
            if self.log_vars is None:
                total = total + loss
            else:
                s = self.log_vars[i]
                total = total + loss * torch.exp(-s) + s / 2
        return LossOutput(total, per_head)

    def head_weights(self) -> dict[str, float]:
        """The current weight ``exp(-s_i)`` of each head (1.0 with equal weighting)."""
        if self.log_vars is None:
            return {h: 1.0 for h in self.heads}
        return {h: float(torch.exp(-s)) for h, s in zip(self.heads, self.log_vars.detach())}


def per_sample_loss(logits: Tensor, labels: Tensor) -> Tensor:
    """Unweighted cross-entropy of each row: ``(n, C)``, ``(n,)`` -> ``(n,)``.

    The learning-loss target and the "ideal learning loss" oracle score.
    """
    return F.cross_entropy(logits, labels, reduction="none")


class LossPredictor(nn.Module):
    """Predicts each sample's loss from intermediate features (Yoo & Kweon 2019).

    ``in_dims``: the width of every hidden tensor it receives, in order. Each goes
    through ``Linear(d, width) -> ReLU``; the concatenation goes through
    ``Linear(len(in_dims) * width, 1)``.
    """

    def __init__(self, in_dims: Sequence[int], width: int):
        super().__init__()
        self.in_dims = tuple(in_dims)
        self.projections = nn.ModuleList(nn.Linear(d, width) for d in self.in_dims)
        self.out = nn.Linear(len(self.in_dims) * width, 1)

    def forward(self, hidden: Sequence[Tensor]) -> Tensor:
        """``hidden``: one ``(n, d_j)`` tensor per ``in_dims`` entry -> ``(n,)``."""
        if len(hidden) != len(self.projections):
            raise ValueError(f"LossPredictor expects {len(self.projections)} hidden "
                             f"tensors, got {len(hidden)}")
        parts = [F.relu(proj(h)) for proj, h in zip(self.projections, hidden)]
        return self.out(torch.cat(parts, dim=1)).squeeze(1)


def ranking_loss(predicted: Tensor, target: Tensor, margin: float = 1.0) -> Tensor:
    """Yoo & Kweon's margin ranking loss over pairs (row i, row n-1-i).

    ``predicted``, ``target``: ``(n,)``; the target is detached here. A pair's loss is
    ``max(0, -sign(t_i - t_j) * (p_i - p_j) + margin)``; with odd n the middle row
    sits out. Fewer than 2 rows -> 0.
    """
    n = predicted.shape[0]
    if n < 2:
        return predicted.sum() * 0.0  # keeps the graph (and the device) intact
    half = n // 2
    target = target.detach()
    diff_pred = predicted[:half] - predicted.flip(0)[:half]
    diff_true = target[:half] - target.flip(0)[:half]
    sign = torch.sign(diff_true)
    return torch.clamp(margin - sign * diff_pred, min=0).mean()
