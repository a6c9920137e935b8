"""Streaming top-k equals a full sort by (-score, id), for any batch split or merge order."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from alray.scoring.topk import TopK, mask_excluded, merge_all, select_top, sorted_ids


def _full_sort(ids, scores, k, excluded=()):
    keep = ~np.isin(ids, np.asarray(list(excluded), dtype=ids.dtype))
    ids, scores = ids[keep], scores[keep]
    order = np.lexsort((ids, -scores))[:k]
    return ids[order], scores[order]


@st.composite
def pools(draw):
    """Unique int or str ids, scores with many ties, a k, a batch split, a merge order."""
    n = draw(st.integers(0, 120))
    as_str = draw(st.booleans())
    raw = draw(st.lists(st.integers(-10**6, 10**6), min_size=n, max_size=n, unique=True))
    ids = np.array([f"p{v}" for v in raw], dtype=object) if as_str else np.array(raw, np.int64)
    levels = draw(st.integers(1, 6))  # few distinct scores -> many ties at the threshold
    scores = np.array(draw(st.lists(st.integers(0, levels - 1), min_size=n, max_size=n)),
                      dtype=np.float64) / levels
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=6)))
    k = draw(st.integers(1, 30))
    rnd = draw(st.randoms(use_true_random=False))
    return ids, scores, k, [0, *cuts, n], rnd


def _parts(ids, scores, k, bounds, exclude=None):
    parts = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        part = TopK(k, exclude=exclude)
        part.update(ids[a:b], scores[a:b], {"twice": scores[a:b] * 2, "pos": np.arange(a, b)})
        parts.append(part)
    return parts


@settings(max_examples=150, deadline=None)
@given(pools())
def test_streaming_equals_full_sort_any_split_any_merge_order(pool):
    ids, scores, k, bounds, rnd = pool
    want_ids, want_scores = _full_sort(ids, scores, k)
    parts = _parts(ids, scores, k, bounds)
    rnd.shuffle(parts)
    while len(parts) > 1:  # merge random pairs: exercises associativity and commutativity
        i, j = sorted(rnd.sample(range(len(parts)), 2))
        parts.append(parts.pop(j).merge(parts.pop(i)))
    got = parts[0].result()
    np.testing.assert_array_equal(got["id"], want_ids)
    np.testing.assert_array_equal(got["score"], want_scores)
    np.testing.assert_array_equal(got["rank"], np.arange(1, len(want_ids) + 1))
    if len(want_ids):  # extra columns travelled with their rows
        np.testing.assert_array_equal(got["twice"], 2 * got["score"])
        np.testing.assert_array_equal(ids[got["pos"]], got["id"])


@settings(max_examples=80, deadline=None)
@given(pools())
def test_one_streaming_topk_and_plain_data_round_trip(pool):
    ids, scores, k, bounds, rnd = pool
    top = TopK(k)
    for a, b in zip(bounds[:-1], bounds[1:]):
        top.update(ids[a:b], scores[a:b])
    dicts = [TopK.from_dict(p.to_dict()).to_dict() for p in _parts(ids, scores, k, bounds)]
    merged = merge_all(dicts, k=k).result()
    want_ids, _ = _full_sort(ids, scores, k)
    np.testing.assert_array_equal(top.result()["id"], want_ids)
    np.testing.assert_array_equal(merged["id"], want_ids)
    np.testing.assert_array_equal(select_top(ids, scores, k)["id"], want_ids)


@settings(max_examples=80, deadline=None)
@given(pools(), st.data())
def test_excluded_ids_never_returned(pool, data):
    ids, scores, k, bounds, rnd = pool
    excluded = set(data.draw(st.lists(st.sampled_from(list(ids)), unique=True))) if len(ids) \
        else set()
    got = merge_all(_parts(ids, scores, k, bounds, exclude=excluded), k=k).result()
    assert not excluded & set(got["id"].tolist())
    want_ids, _ = _full_sort(ids, scores, k, excluded)
    np.testing.assert_array_equal(got["id"], want_ids)


def test_golden_ties_broken_by_smaller_id():
    ids = np.array([9, 4, 7, 1, 3], dtype=np.int64)
    scores = np.array([0.5, 0.9, 0.5, 0.5, 0.1])
    got = select_top(ids, scores, 3, {"cls": np.array([0, 1, 2, 3, 4])})
    assert got["id"].tolist() == [4, 1, 7]
    assert got["cls"].tolist() == [1, 3, 2]
    strs = select_top(np.array(["b", "a", "c"]), np.array([1.0, 1.0, 2.0]), 2)
    assert strs["id"].tolist() == ["c", "a"]


def test_k_larger_than_rows_returns_fewer():
    top = TopK(10)
    top.update(np.arange(3), np.array([0.1, 0.3, 0.2]))
    assert top.result()["id"].tolist() == [1, 2, 0]
    assert len(TopK(5).result()["id"]) == 0


def test_nan_scores_raise_with_count():
    with pytest.raises(ValueError, match="2 of 4 scores are NaN"):
        TopK(2).update(np.arange(4), np.array([0.1, np.nan, np.nan, 0.3]))


def test_mask_excluded_and_bad_inputs():
    ex = sorted_ids({5, 1, 9})
    np.testing.assert_array_equal(mask_excluded(np.array([1, 2, 9, 10]), ex),
                                  [False, True, False, True])
    with pytest.raises(ValueError, match="both be integers or both strings"):
        mask_excluded(np.array(["a"]), ex)
    top = TopK(3)
    top.update(np.arange(2), np.zeros(2))
    with pytest.raises(ValueError, match="int ids with str ids"):
        top.update(np.array(["a"]), np.zeros(1))
    with pytest.raises(ValueError, match="k must be"):
        TopK(0)
    with pytest.raises(ValueError, match="cannot merge top-3 with top-4"):
        top.merge(TopK(4))
