"""Duplicate-id detection across shards in bounded memory (8 + 8 bytes a row).

Integer ids are kept as they are; string ids as 64-bit hashes, and every hash
collision is confirmed against the real strings before it is reported.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd


def id_keys(ids: np.ndarray) -> np.ndarray:
    """``(n,)`` uint64 keys: the int64 bits themselves, or a hash of each string."""
    if ids.dtype.kind in "iu":
        return ids.astype(np.int64, copy=False).view(np.uint64)
    return pd.util.hash_array(ids.astype(object), categorize=False)


class IdRegistry:
    """Collects the ids of every shard, then reports duplicates with their locations."""

    def __init__(self) -> None:
        self._keys: list[np.ndarray] = []
        self._shard: list[np.ndarray] = []
        self._row: list[np.ndarray] = []
        self.string_ids = False

    def add(self, shard: int, first_row: int, ids: np.ndarray) -> None:
        """Register ``(n,)`` ids of one batch starting at ``first_row`` of ``shard``."""
        if ids.dtype.kind not in "iu":
            self.string_ids = True
        self._keys.append(id_keys(ids))
        self._shard.append(np.full(len(ids), shard, dtype=np.int32))
        self._row.append(np.arange(first_row, first_row + len(ids), dtype=np.int64))

    def duplicates(self, read_ids: Callable[[int], np.ndarray]
                   ) -> list[tuple[object, list[tuple[int, int]]]]:
        """Each duplicated id with its (shard, row) locations, first location first.

        ``read_ids(shard)`` returns a shard's full id column; it is called only to
        confirm hash collisions of string ids.
        """
        if not self._keys:
            return []
        keys = np.concatenate(self._keys)
        order = np.argsort(keys, kind="stable")
        sorted_keys = keys[order]
        dup = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
        if len(dup) == 0:
            return []
        shards, rows = np.concatenate(self._shard), np.concatenate(self._row)
        groups: dict[int, list[int]] = {}
        for i in dup:
            groups.setdefault(int(sorted_keys[i]), [int(order[i])]).append(int(order[i + 1]))
        cache: dict[int, np.ndarray] = {}
        found = []
        for key, members in groups.items():
            locs = sorted({(int(shards[m]), int(rows[m])) for m in members})
            if self.string_ids:
                found.extend(self._confirm(locs, read_ids, cache))
            else:
                found.append((int(np.uint64(key).astype(np.int64)), locs))
        return sorted(found, key=lambda item: item[1][0])

    def _confirm(self, locs, read_ids, cache):
        by_value: dict[object, list[tuple[int, int]]] = {}
        for shard, row in locs:
            if shard not in cache:
                cache[shard] = read_ids(shard)
            value = cache[shard][row]
            by_value.setdefault(value, []).append((shard, row))
        out = []
        for value, where in by_value.items():
            if len(where) > 1:
                out.append((value, where))
        return out
