"""The late-fusion multi-head network of the study (figs. 3-4; its public code).

One branch of blocks per modality (block = Linear -> ReLU -> BatchNorm1d -> Dropout),
the branch outputs concatenated into a fused branch of the same blocks, a fused head and
(``heads="multi"``) one head per modality.

A missing modality never reaches its branch: each branch runs on the rows where its
modality is present (so batch-norm statistics come from real embeddings only), and the
concatenation gets a learned per-modality "missing" vector for the other rows.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from alray.config import ModelConfig
from alray.model.loss import FUSED, LossPredictor


class Block(nn.Module):
    """Linear -> ReLU -> BatchNorm1d -> Dropout: ``(n, in_dim)`` -> ``(n, out_dim)``."""

    def __init__(self, in_dim: int, out_dim: int, p: float):
        super().__init__()
        self.linear = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.dropout = nn.Dropout(p)

    def forward(self, x: Tensor) -> Tensor:
        return self.after_relu(F.relu(self.linear(x)))

    def after_relu(self, h: Tensor) -> Tensor:
        """BatchNorm -> Dropout on the ReLU output ``h`` (what a cached block gives)."""
        if self.bn.training and h.shape[0] < 2:
            # batch statistics of one row are undefined: use the running statistics
            # for this batch (and leave them unchanged) instead of failing
            h = F.batch_norm(h, self.bn.running_mean, self.bn.running_var,
                             self.bn.weight, self.bn.bias, False, 0.0, self.bn.eps)
        else:
            h = self.bn(h)
        return self.dropout(h)


def head_names_of(config: ModelConfig) -> tuple[str, ...]:
    """The heads a model of ``config`` has: ``("fused", *modalities)`` or ``("fused",)``."""
    return (FUSED, *config.modality_dims) if config.heads == "multi" else (FUSED,)


def _blocks(in_dim: int, widths, p: float) -> nn.ModuleList:
    dims = (in_dim, *widths)
    return nn.ModuleList(Block(a, b, p) for a, b in zip(dims[:-1], dims[1:]))


@dataclass
class FusionOutput:
    """``logits``: head -> ``(n, n_classes)`` (``"fused"`` and, with multi heads, each
    modality; a modality head's rows where the modality is absent are the head applied
    to the missing vector: defined but meaningless, mask them with ``present``).
    ``hidden``: with ``return_hidden``, every block's output ``(n, width)`` in
    ``FusionNet.hidden_dims`` order (branch rows where the modality is absent are 0)."""

    logits: dict[str, Tensor]
    hidden: list[Tensor] | None = None


class FusionNet(nn.Module):
    """The late-fusion network built from a ``ModelConfig`` (any number of modalities).

    ``forward(features, present)``: ``features`` modality -> ``(n, dim)`` float32,
    ``present`` modality -> ``(n,)`` bool; every row needs at least one modality.
    With ``cached=True`` ``features`` are each branch's first-block ReLU outputs
    (``first_activations``) and the model runs the layers after them.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.modalities = tuple(config.modality_dims)
        p = config.dropout
        self.branches = nn.ModuleDict({
            m: _blocks(config.modality_dims[m], config.branch_widths[m], p)
            for m in self.modalities})
        # zero start: an absent modality first contributes nothing, then is learned
        self.missing = nn.ParameterDict({
            m: nn.Parameter(torch.zeros(config.branch_widths[m][-1]))
            for m in self.modalities})
        concat = sum(config.branch_widths[m][-1] for m in self.modalities)
        self.fused = _blocks(concat, config.fused_widths, p)
        self.fused_head = nn.Linear(config.fused_widths[-1], config.n_classes)
        self.heads = nn.ModuleDict({
            m: nn.Linear(config.branch_widths[m][-1], config.n_classes)
            for m in self.modalities}) if config.heads == "multi" else nn.ModuleDict()
        self.loss_predictor = LossPredictor(self.hidden_dims, config.learning_loss_width) \
            if config.learning_loss else None

    @property
    def head_names(self) -> tuple[str, ...]:
        """``("fused", *modalities)`` for multi heads, ``("fused",)`` otherwise."""
        return head_names_of(self.config)

    @property
    def hidden_dims(self) -> tuple[int, ...]:
        """Widths of ``FusionOutput.hidden``: each branch's blocks, then the fused ones."""
        cfg = self.config
        return (*(w for m in self.modalities for w in cfg.branch_widths[m]),
                *cfg.fused_widths)

    def block_names(self) -> list[tuple[str, Block]]:
        """``("image.0", block), ..., ("fused.1", block)``: the names MC masks key on."""
        named = [(f"{m}.{j}", b) for m in self.modalities
                 for j, b in enumerate(self.branches[m])]
        return named + [(f"{FUSED}.{j}", b) for j, b in enumerate(self.fused)]

    def forward(self, features: Mapping[str, Tensor], present: Mapping[str, Tensor],
                return_hidden: bool = False, cached: bool = False) -> FusionOutput:
        n = check_inputs(self.modalities, features, present)
        hidden: list[Tensor] | None = [] if return_hidden else None
        outs = {m: self._branch(m, features[m], present[m], n, hidden, cached)
                for m in self.modalities}
        h = torch.cat([outs[m] for m in self.modalities], dim=1)
        for block in self.fused:
            h = block(h)
            if hidden is not None:
                hidden.append(h)
        logits = {FUSED: self.fused_head(h)}
        for m, head in self.heads.items():
            logits[m] = head(outs[m])
        return FusionOutput(logits, hidden)

    def first_activations(self, m: str, x: Tensor) -> Tensor:
        """Branch ``m``'s first ``Linear -> ReLU`` on ``x`` ``(n, dim)``: ``(n, width)``,
        what ``forward(..., cached=True)`` and ``MCDropout`` take in its place."""
        return F.relu(self.branches[m][0].linear(x))

    def _branch(self, m: str, x: Tensor, mask: Tensor, n: int,
                hidden: list[Tensor] | None, cached: bool = False) -> Tensor:
        """Branch ``m`` on its present rows; absent rows get the missing vector.
        ``x``: ``(n, dim)``, ``mask``: ``(n,)`` -> ``(n, width)``."""
        missing = self.missing[m]
        everywhere = bool(mask.all())
        idx = None if everywhere else mask.nonzero().squeeze(1)
        h = x if everywhere else x.index_select(0, idx)
        for j, block in enumerate(self.branches[m]):
            if h.shape[0] == 0:
                # nothing present in this batch: the branch does not run (BN untouched)
                h = missing.new_zeros((0, block.linear.out_features))
            else:
                h = block.after_relu(h) if cached and j == 0 else block(h)
            if hidden is not None:
                hidden.append(h if everywhere else _scatter_rows(h, idx, n))
        if everywhere:
            return h
        return missing.unsqueeze(0).expand(n, -1).index_copy(0, idx, h)

    def predict_loss(self, features: Mapping[str, Tensor],
                     present: Mapping[str, Tensor], cached: bool = False) -> Tensor:
        """The learning-loss module's predicted loss ``(n,)`` (needs ``learning_loss``)."""
        if self.loss_predictor is None:
            raise ValueError("this model has no loss predictor (ModelConfig.learning_loss)")
        out = self.forward(features, present, return_hidden=True, cached=cached)
        return self.loss_predictor(out.hidden)


def _scatter_rows(h: Tensor, idx: Tensor, n: int) -> Tensor:
    """``(n_present, w)`` rows placed at ``idx`` of an ``(n, w)`` zero tensor."""
    return h.new_zeros((n, h.shape[1])).index_copy(0, idx, h)


def check_inputs(modalities, features: Mapping[str, Tensor],
                 present: Mapping[str, Tensor]) -> int:
    """Validate the input dicts; return n. Raises ValueError for missing modalities,
    ragged row counts, or rows with no modality present (the pool contract forbids them)."""
    missing = [m for m in modalities if m not in features or m not in present]
    if missing:
        raise ValueError(f"inputs lack modality {missing}; the model expects {list(modalities)}")
    n = features[modalities[0]].shape[0]
    for m in modalities:
        if features[m].shape[0] != n or present[m].shape != (n,):
            raise ValueError(f"modality {m}: features {tuple(features[m].shape)} and "
                             f"present {tuple(present[m].shape)} do not match n={n}")
    any_present = present[modalities[0]].clone()
    for m in modalities[1:]:
        any_present |= present[m]
    if n and not bool(any_present.all()):
        bad = (~any_present).nonzero().squeeze(1)
        raise ValueError(f"{bad.numel()} of {n} rows have no modality present "
                         f"(first at position {int(bad[0])}); every post needs one")
    return n


def as_tensors(features: Mapping[str, np.ndarray | Tensor],
               present: Mapping[str, np.ndarray | Tensor], device: str | torch.device = "cpu"
               ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """numpy or torch inputs -> float32 features and bool masks on ``device``
    (zero-copy for float32 numpy on CPU)."""
    feats = {m: torch.as_tensor(f).to(device=device, dtype=torch.float32)
             for m, f in features.items()}
    masks = {m: torch.as_tensor(p).to(device=device, dtype=torch.bool)
             for m, p in present.items()}
    return feats, masks
