"""Exact streaming top-k of scored posts, ties broken by id (smaller id first).

The order is total: higher score first, then smaller id (ids are unique in a pool;
int64 ids compare as numbers, string ids by code point). Because of that the top k is
a well-defined set, and ``TopK`` gives it whatever the batch split or merge order:
``update`` and ``merge`` are associative and commutative, and memory is O(k) rows.
Per batch, ``select_top`` finds the k-th largest score with ``np.partition`` (O(n)),
keeps every row scoring at least that (so ties at the threshold are not cut
arbitrarily), and sorts only those by (-score, id).

Rows are plain columns: ``{"id": (n,), "score": (n,) float64, <extra>: (n, ...)}``;
extra columns (predicted class, its probability, ...) travel with their rows.
``TopK.to_dict``/``from_dict`` give that plain form for crossing a Ray boundary.
"""
from __future__ import annotations

from typing import Iterable, Mapping

import numpy as np

RESERVED = ("id", "score", "rank")
Columns = dict[str, np.ndarray]


def _check_ids(ids) -> np.ndarray:
    """``(n,)`` ids as int64 or as strings (numpy ``U`` or object)."""
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"ids must be a (n,) array, got shape {ids.shape}")
    if ids.dtype.kind == "u" and len(ids) and ids.max() > np.iinfo(np.int64).max:
        raise ValueError("uint64 ids above the int64 range are not supported")
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64, copy=False)
    if ids.dtype.kind in "UO":
        return ids
    raise ValueError(f"ids must be integers or strings, got dtype {ids.dtype}")


def _check_scores(scores, n: int) -> np.ndarray:
    scores = np.asarray(scores)
    if scores.shape != (n,) or scores.dtype.kind not in "fiu":
        raise ValueError(f"scores must be a numeric ({n},) array like ids, got shape "
                         f"{scores.shape} dtype {scores.dtype}")
    scores = scores.astype(np.float64, copy=False)
    n_nan = int(np.count_nonzero(np.isnan(scores)))
    if n_nan:
        raise ValueError(f"{n_nan} of {n} scores are NaN; fix the scorer, NaN has no rank")
    return scores


def _columns(ids, scores, extra: Mapping[str, np.ndarray] | None) -> Columns:
    """Checked columns of one batch; extra columns must have n rows."""
    ids = _check_ids(ids)
    cols = {"id": ids, "score": _check_scores(scores, len(ids))}
    for name, values in (extra or {}).items():
        if name in RESERVED:
            raise ValueError(f"extra column {name!r} clashes with {RESERVED}")
        values = np.asarray(values)
        if values.ndim == 0 or len(values) != len(ids):
            raise ValueError(f"extra column {name!r} has shape {values.shape}, "
                             f"expected {len(ids)} rows")
        cols[name] = values
    return cols


def _take(cols: Columns, index: np.ndarray) -> Columns:
    return {name: values[index] for name, values in cols.items()}


def _top_index(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the k best rows by (-score, id), unordered; O(n) unless ties."""
    if len(scores) <= k:
        return np.arange(len(scores))
    kth = np.partition(scores, len(scores) - k)[len(scores) - k]
    index = np.flatnonzero(scores >= kth)
    if len(index) > k:  # ties at the threshold: the smaller ids win
        index = index[np.lexsort((ids[index], -scores[index]))[:k]]
    return index


def _best_first(cols: Columns, k: int) -> Columns:
    """The best min(k, n) rows of ``cols`` in rank order (exact with ties)."""
    cols = _take(cols, _top_index(cols["score"], cols["id"], k))
    return _take(cols, np.lexsort((cols["id"], -cols["score"])))


def select_top(ids, scores, k: int, extra: Mapping[str, np.ndarray] | None = None
               ) -> Columns:
    """The k best rows of one batch, best first: ``{"id", "score", **extra}``.

    ids: ``(n,)`` int or str, unique. scores: ``(n,)``, higher = better, no NaN
    (ValueError naming how many). extra: name -> ``(n, ...)`` columns carried along.
    Returns fewer than k rows when n < k.
    """
    _check_k(k)
    return _best_first(_columns(ids, scores, extra), k)


def mask_excluded(ids, excluded_sorted: np.ndarray) -> np.ndarray:
    """``(n,)`` bool, True where ``ids`` ``(n,)`` is NOT in ``excluded_sorted`` ``(m,)``.

    ``excluded_sorted`` must be sorted (``sorted_ids`` makes it); binary search is
    O(n log m) and works for int and str ids alike.
    """
    ids = np.asarray(ids)
    if len(excluded_sorted) == 0 or len(ids) == 0:
        return np.ones(len(ids), dtype=bool)
    if (ids.dtype.kind in "iu") != (excluded_sorted.dtype.kind in "iu"):
        raise ValueError(f"ids ({ids.dtype}) and excluded ids ({excluded_sorted.dtype}) "
                         "must both be integers or both strings")
    pos = np.searchsorted(excluded_sorted, ids)
    found = excluded_sorted[np.minimum(pos, len(excluded_sorted) - 1)] == ids
    return ~np.asarray(found, dtype=bool)


def sorted_ids(ids: Iterable) -> np.ndarray:
    """Unique sorted array of ids (a set, list or array), for ``mask_excluded``."""
    if not isinstance(ids, np.ndarray):
        ids = list(ids)
    if len(ids) == 0:  # no ids, no type: mask_excluded ignores an empty array's dtype
        return np.zeros(0, dtype=np.int64)
    return np.unique(_check_ids(np.asarray(ids)))


def _check_k(k: int) -> None:
    if isinstance(k, (bool, np.bool_)) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be an integer >= 1, got {k!r}")


def _id_kind(ids: np.ndarray) -> str:
    return "int" if ids.dtype.kind == "i" else "str"


def _concat(a: Columns | None, b: Columns | None) -> Columns | None:
    """Rows of a then b; both must have the same columns and the same id kind."""
    if a is None or b is None:
        return b if a is None else a
    if set(a) != set(b):
        raise ValueError(f"cannot combine rows with columns {sorted(a)} and {sorted(b)}")
    if len(a["id"]) == 0 or len(b["id"]) == 0:  # an empty int64 column must not
        return b if len(a["id"]) == 0 else a    # force a type on string ids
    if _id_kind(a["id"]) != _id_kind(b["id"]):
        raise ValueError("cannot combine int ids with str ids")
    return {name: np.concatenate([a[name], b[name]]) for name in a}


class _Kept:
    """What ``TopK`` and ``BalancedTopK`` share: their kept rows, their size, the merge
    and the plain-data form. A subclass defines ``_settings`` (its constructor's
    arguments), ``_absorb`` (rows in) and ``result`` (rows out)."""

    _rows: Columns | None

    def _settings(self) -> dict:
        raise NotImplementedError

    def _absorb(self, cols: Columns) -> None:
        raise NotImplementedError

    def _empty_like(self):
        return type(self)(**self._settings())

    def _name(self) -> str:
        """``top-3`` or ``balanced top-3 (cap 1)``, for messages."""
        cap = self._settings().get("cap")
        return f"top-{self._settings()['k']}" if cap is None else \
            f"balanced top-{self._settings()['k']} (cap {cap})"

    def __len__(self) -> int:
        return 0 if self._rows is None else len(self._rows["id"])

    def merge(self, other):
        """A new one holding the best of both; neither input changes."""
        if type(other) is not type(self) or other._settings() != self._settings():
            raise ValueError(f"cannot merge {self._name()} with {other._name()}")
        merged = self._empty_like()
        merged._rows = self._rows
        if other._rows is not None:
            merged._absorb(other._rows)
        return merged

    def to_dict(self) -> dict:
        """Plain data: the settings and ``rows`` (None or {column: array})."""
        rows = None if self._rows is None else dict(self._rows)
        return {**self._settings(), "rows": rows}

    @classmethod
    def from_dict(cls, data: Mapping):
        """Rebuild from ``to_dict`` output (rows are re-checked and re-sorted)."""
        top = cls(**{k: int(v) for k, v in data.items() if k != "rows"})
        rows = data.get("rows")
        if rows is not None:
            rows = dict(rows)
            top.update(rows.pop("id"), rows.pop("score"), rows)
        return top


class TopK(_Kept):
    """The k best rows seen so far, exact, O(k) memory, mergeable in any order.

    ``exclude``: ids never to return (e.g. already labelled), sorted once here. It is
    not part of ``to_dict``: each part filters its own rows, and ``merge`` filters the
    other part's rows with this one's ``exclude``.
    """

    def __init__(self, k: int, exclude: Iterable | None = None):
        _check_k(k)
        self.k = int(k)
        self._excluded = sorted_ids(exclude) if exclude is not None else None
        self._rows: Columns | None = None  # best first; None until the first update

    def _settings(self) -> dict:
        return {"k": self.k}

    def _empty_like(self) -> "TopK":
        top = TopK(self.k)
        top._excluded = self._excluded
        return top

    def _absorb(self, cols: Columns) -> None:
        if self._excluded is not None:
            cols = _take(cols, mask_excluded(cols["id"], self._excluded))
        if len(self) == self.k:  # cheap pre-filter: below the current k-th cannot enter
            cols = _take(cols, np.flatnonzero(cols["score"] >= self._rows["score"][-1]))
        self._rows = _best_first(_concat(self._rows, cols), self.k)

    def update(self, ids, scores, extra: Mapping[str, np.ndarray] | None = None) -> None:
        """Add a batch. ids ``(n,)``, scores ``(n,)``, extra name -> ``(n, ...)``."""
        if len(ids) == 0:  # nothing to rank; an empty batch may even lack a dtype
            return
        self._absorb(_columns(ids, scores, extra))

    def result(self) -> Columns:
        """Copies of the rows, best first, plus ``rank`` (1 = best), int64."""
        rows = self._rows or {"id": np.zeros(0, np.int64), "score": np.zeros(0)}
        out = {name: values.copy() for name, values in rows.items()}
        out["rank"] = np.arange(1, len(out["id"]) + 1, dtype=np.int64)
        return out


def merge_all(parts: Iterable, k: int | None = None):
    """Merge TopK (or BalancedTopK) objects or their ``to_dict`` forms (e.g. one per
    Ray task); an empty ``parts`` gives an empty ``TopK(k)``."""
    merged = None
    for part in parts:
        if isinstance(part, Mapping):  # plain data; a "cap" marks a balanced top-k
            part = BalancedTopK.from_dict(part) if part.get("cap") else TopK.from_dict(part)
        merged = part if merged is None else merged.merge(part)
    if merged is None:
        if k is None:
            raise ValueError("merge_all got no parts and no k")
        return TopK(k)
    return merged


# --- class-balanced queries (docs/acquisition.md) -----------------------------------
#
# The query is built in rounds over predicted classes: round r takes the r-th best post
# of every class that has one, best first; after ``cap`` rounds (or when every class is
# exhausted) the slots left go to the best remaining posts whatever their class. That is
# one total order, (tier, round, -score, id) with tier 0 for a post within its class's
# best ``cap``, so the query is a top k under it. A post of the query is either within
# its class's best ``cap`` or within the best k overall, and both sets are preserved by
# taking them per part then again over the union: keeping exactly those rows per batch
# (``select_balanced``) and per merge makes the streamed query equal the central one.

CLASS = "predicted_class"


def _class_ranks(cols: Columns) -> np.ndarray:
    """``(n,)`` 1-based rank of each row within its class by (-score, id)."""
    classes = cols[CLASS]
    order = np.lexsort((cols["id"], -cols["score"], classes))
    sorted_classes = classes[order]
    starts = np.r_[True, sorted_classes[1:] != sorted_classes[:-1]]
    group_start = np.maximum.accumulate(np.where(starts, np.arange(len(order)), 0))
    ranks = np.empty(len(order), np.int64)
    ranks[order] = np.arange(len(order)) - group_start + 1
    return ranks


def _balanced_candidates(cols: Columns, k: int, cap: int) -> Columns:
    """The rows any balanced query of these rows and more can use: each class's best
    ``cap`` and the best k overall."""
    scores, ids, classes = cols["score"], cols["id"], cols[CLASS]
    if len(ids) <= k:
        return cols
    keep = np.zeros(len(ids), bool)
    keep[_top_index(scores, ids, k)] = True
    by_class = np.argsort(classes, kind="stable")
    starts = np.flatnonzero(np.r_[True, np.diff(classes[by_class]) != 0])
    for a, b in zip(starts, np.r_[starts[1:], len(ids)]):  # one pass per class present
        rows = by_class[a:b]
        keep[rows[_top_index(scores[rows], ids[rows], cap)]] = True
    return _take(cols, np.flatnonzero(keep))


def _balanced_order(cols: Columns, k: int, cap: int) -> np.ndarray:
    """Indexes of the balanced query's rows, in query order (at most k)."""
    ranks = _class_ranks(cols)
    fill = ranks > cap
    rounds = np.where(fill, 0, ranks)
    return np.lexsort((cols["id"], -cols["score"], rounds, fill))[:k]


def select_balanced(ids, scores, k: int, cap: int, extra: Mapping[str, np.ndarray]
                    ) -> Columns:
    """One batch's candidates for a class-balanced query (``extra`` holds
    ``predicted_class``): each class's best ``cap`` plus the best k, unordered."""
    _check_k(k)
    _check_k(cap)
    cols = _columns(ids, scores, extra)
    if CLASS not in cols:
        raise ValueError(f"a class-balanced top-k needs the {CLASS!r} column")
    return _balanced_candidates(cols, k, cap)


class BalancedTopK(_Kept):
    """Streaming exact class-balanced top-k (``TopK``'s interface; memory
    O(k + classes x cap) rows). ``extra`` must hold ``predicted_class``."""

    def __init__(self, k: int, cap: int):
        _check_k(k)
        _check_k(cap)
        self.k, self.cap = k, cap
        self._rows: Columns | None = None

    def _settings(self) -> dict:
        return {"k": self.k, "cap": self.cap}

    def update(self, ids, scores, extra: Mapping[str, np.ndarray] | None = None) -> None:
        if len(ids) == 0:
            return
        self._absorb(select_balanced(ids, scores, self.k, self.cap, extra or {}))

    def _absorb(self, cols: Columns) -> None:
        self._rows = _balanced_candidates(_concat(self._rows, cols), self.k, self.cap)

    def result(self) -> Columns:
        """The query's rows in query order (rounds, then the fill), plus ``rank``."""
        if self._rows is None:
            return TopK(self.k).result()
        out = _take(self._rows, _balanced_order(self._rows, self.k, self.cap))
        out["rank"] = np.arange(1, len(out["id"]) + 1, dtype=np.int64)
        return out


def new_top(k: int, cap: int = 0) -> "TopK | BalancedTopK":
    """A plain top-k (``cap`` 0) or a class-balanced one with ``cap`` rounds."""
    return BalancedTopK(k, cap) if cap else TopK(k)
