"""Diverse batches from clustered posts: Cluster-Margin's round robin and TypiClust's
typical posts. Pure numpy (plus scikit-learn's nearest neighbours for typicality).

Cluster-Margin (Citovsky et al., NeurIPS 2021): from the ``k_m`` best-scored candidates,
grouped by the cluster of each post, fill the query round-robin, smallest cluster
first, the best remaining post of each cluster in turn. A large query then spreads over
many clusters instead of piling up near one decision boundary.

TypiClust (Hacohen et al., ICML 2022): for a cold start of ``n`` posts, cluster into
``n`` groups and take from each, largest group first, its most typical post: the one
whose ``neighbours`` nearest neighbours in its group are closest on average.
"""
from __future__ import annotations

import numpy as np


def round_robin(scores: np.ndarray, ids: np.ndarray, clusters: np.ndarray, k: int
                ) -> np.ndarray:
    """Indexes of the Cluster-Margin query (at most ``k``), in query order.

    ``scores`` ``(n,)`` higher = better, ``ids`` ``(n,)`` break ties (smaller first),
    ``clusters`` ``(n,)`` int, the cluster of each candidate. Round r takes the r-th best
    candidate of every cluster that has one, clusters in increasing size (of their
    candidates), ties by cluster number; within a round, that cluster order.
    """
    n = len(scores)
    if not (len(ids) == len(clusters) == n):
        raise ValueError(f"scores, ids and clusters must have one length, got "
                         f"{n}, {len(ids)}, {len(clusters)}")
    if n == 0 or k < 1:
        return np.zeros(0, np.int64)
    clusters = np.asarray(clusters, np.int64)
    names, sizes = np.unique(clusters, return_counts=True)
    cluster_rank = np.empty(len(names), np.int64)
    cluster_rank[np.lexsort((names, sizes))] = np.arange(len(names))
    rank_of = cluster_rank[np.searchsorted(names, clusters)]          # (n,)
    best_first = np.lexsort((ids, -np.asarray(scores, np.float64), rank_of))
    # position of each candidate within its cluster, best first
    sorted_rank = rank_of[best_first]
    starts = np.r_[True, sorted_rank[1:] != sorted_rank[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    round_of = np.empty(n, np.int64)
    round_of[best_first] = np.arange(n) - first
    return np.lexsort((rank_of, round_of))[:k]


def typical_picks(features: np.ndarray, groups: np.ndarray, n: int,
                  neighbours: int = 20) -> np.ndarray:
    """Indexes of ``n`` typical rows, one per group, largest group first (ties by group
    number). ``features`` ``(rows, d)``, ``groups`` ``(rows,)`` int. Typicality of a row
    is the inverse of its mean distance to its ``neighbours`` nearest rows in its group
    (the group itself when smaller); ties by row index."""
    from sklearn.neighbors import NearestNeighbors

    groups = np.asarray(groups, np.int64)
    names, sizes = np.unique(groups, return_counts=True)
    order = names[np.lexsort((names, -sizes))]
    picks = []
    for name in order[:n]:
        rows = np.flatnonzero(groups == name)
        if len(rows) <= 2:
            picks.append(int(rows[0]))
            continue
        m = min(neighbours, len(rows) - 1)
        dist, _ = NearestNeighbors(n_neighbors=m + 1).fit(features[rows]).kneighbors(
            features[rows])
        mean = dist[:, 1:].mean(axis=1)  # column 0 is the row itself
        picks.append(int(rows[np.lexsort((rows, mean))[0]]))
    return np.asarray(picks, np.int64)


__all__ = ["round_robin", "typical_picks"]
