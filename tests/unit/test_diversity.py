"""Cluster-Margin's round robin and TypiClust's typical posts, on hand-made inputs."""
from __future__ import annotations

import numpy as np
from hypothesis import given, settings, strategies as st

from alray.acquisition.diversity import round_robin, typical_picks


def test_round_robin_golden():
    # cluster 7 has one candidate, cluster 3 two, cluster 5 three: smallest first
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.4])
    ids = np.array([10, 11, 12, 13, 14, 15])
    clusters = np.array([5, 5, 3, 7, 3, 5])
    order = round_robin(scores, ids, clusters, 6)
    # round 1: 7's best (13), 3's best (12), 5's best (10); round 2: 3 (14), 5 (11); 5 (15)
    assert ids[order].tolist() == [13, 12, 10, 14, 11, 15]
    assert ids[round_robin(scores, ids, clusters, 4)].tolist() == [13, 12, 10, 14]


def test_round_robin_ties_by_id_and_cluster_number():
    scores = np.array([1.0, 1.0, 1.0, 1.0])
    ids = np.array([4, 3, 2, 1])
    clusters = np.array([2, 2, 1, 1])  # equal sizes: cluster 1 first
    assert ids[round_robin(scores, ids, clusters, 4)].tolist() == [1, 3, 2, 4]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(-5, 5), st.integers(0, 6)), min_size=1, max_size=60),
       st.integers(1, 70))
def test_round_robin_properties(rows, k):
    scores = np.array([r[0] for r in rows])
    clusters = np.array([r[1] for r in rows])
    ids = np.arange(len(rows))
    order = round_robin(scores, ids, clusters, k)
    assert len(order) == min(k, len(rows)) and len(set(order.tolist())) == len(order)
    # no cluster gets a second post before every cluster with candidates left got one
    taken = clusters[order]
    for position in range(len(order)):
        counts = np.bincount(taken[:position + 1], minlength=7)
        available = np.bincount(clusters, minlength=7)
        assert counts.max() - counts[available > counts].min(initial=counts.max()) <= 1
    # within a cluster, posts come best first
    for c in np.unique(taken):
        picked = scores[order][taken == c]
        assert np.all(np.diff(picked) <= 0)


def test_typical_picks_take_each_groups_densest_point_largest_group_first():
    rng = np.random.default_rng(0)
    dense = rng.normal(0, 0.01, (30, 2))            # group 0, tight around (0, 0)
    dense[0] = [5.0, 5.0]                           # an outlier inside group 0
    loose = rng.normal(10, 1.0, (10, 2))            # group 1
    features = np.vstack([dense, loose])
    groups = np.array([0] * 30 + [1] * 10)
    picks = typical_picks(features, groups, 2, neighbours=5)
    assert groups[picks].tolist() == [0, 1]         # the larger group first
    assert picks[0] != 0                            # never the outlier
    assert np.linalg.norm(features[picks[0]]) < 0.05
