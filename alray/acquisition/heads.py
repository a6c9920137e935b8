"""The three heads of one forward pass as a free committee (no extra passes).

``head_probs`` is ``(n, h, c)``: the fused head first, then one head per modality
(``FusionNet.head_names`` order). ``head_present`` is ``(n, h)`` bool: the fused head
is always present; a modality head is present where its modality is (on other rows it
sees only the learned "missing" vector, and its output means nothing).

Disagreement is the generalized Jensen-Shannon divergence of the present heads,
``H(mean_j p_j) - mean_j H(p_j)``, equal to the mean KL divergence of each head from
their consensus. Chosen over vote entropy, which with three voters takes only three
values (ties everywhere), and over a KL to one reference head, which is not symmetric.
It is BALD's formula with the heads as committee, in [0, log h], 0 when the heads agree.
A post with one modality is judged by its two heads (fused and that modality).
"""
from __future__ import annotations

import numpy as np

from alray.acquisition.functions import entropy_rows, bald, check_probs


def _check_heads(head_probs, head_present) -> tuple[np.ndarray, np.ndarray]:
    p = np.asarray(head_probs)
    if p.ndim != 3:
        raise ValueError(f"head_probs must be (n, heads, classes), got shape {p.shape}")
    n, h, c = p.shape
    p = check_probs(p.reshape(n * h, c), "head_probs").reshape(n, h, c)
    present = np.asarray(head_present, dtype=bool)
    if present.shape != (n, h):
        raise ValueError(f"head_present must be ({n}, {h}), got {present.shape}")
    if n and not present.any(axis=1).all():
        raise ValueError("every post needs at least one present head")
    return p, present


def head_disagreement(head_probs, head_present) -> np.ndarray:
    """Jensen-Shannon divergence of the present heads: ``(n,)`` in [0, log h].

    head_probs: ``(n, h, c)``. head_present: ``(n, h)`` bool.
    """
    p, present = _check_heads(head_probs, head_present)
    n, h, c = p.shape
    weights = present / present.sum(axis=1, keepdims=True)  # (n, h)
    mean_probs = np.einsum("nh,nhc->nc", weights, p)
    entropies = entropy_rows(p.reshape(n * h, c)).reshape(n, h)
    return bald(mean_probs, (weights * entropies).sum(axis=1))


def least_sure_head(modality_probs, modality_present, names) -> np.ndarray:
    """Per post, the modality whose head is least sure (lowest top probability), or
    None when fewer than two modalities are present: ``(n,)`` object array.

    modality_probs: ``(n, m, c)``, the modality heads only. modality_present:
    ``(n, m)`` bool. names: the m modality names. Ties go to the first modality.
    """
    p = check_probs(np.asarray(modality_probs).reshape(-1, np.shape(modality_probs)[-1]),
                    "modality_probs").reshape(np.shape(modality_probs))
    present = np.asarray(modality_present, dtype=bool)
    if p.ndim != 3 or present.shape != p.shape[:2] or len(names) != p.shape[1]:
        raise ValueError(f"modality_probs {p.shape}, modality_present {present.shape} and "
                         f"{len(names)} names do not match")
    top = np.where(present, p.max(axis=2), np.inf)
    out = np.asarray(names, dtype=object)[top.argmin(axis=1)]
    out[present.sum(axis=1) < 2] = None
    return out
