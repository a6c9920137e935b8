"""Each post's nearest neighbours, computed once, for SEALS-style candidate pools
(``--candidates knn:K``: Coleman et al., AAAI 2022, score only the labelled posts'
nearest neighbours).

Why these pieces: faiss-cpu (Meta's similarity-search library, wheels on PyPI for
Linux and macOS) searches a flat (exact) or IVF-Flat (approximate) L2 index with BLAS
and OpenMP; scikit-learn's ``NearestNeighbors`` is exact only and an order of magnitude
slower on a million rows. Posts live in the same seeded random projection of their
concatenated embeddings as ``alray cluster``'s (``clusters.projection``): distances
kept within a small factor, a fraction of the arithmetic. The projected pool is read in
parts (Ray tasks, or this process with ``local``), the index built once on the driver
(IVF: trained on a seeded sample), put once in Ray's object store, and Ray tasks search
disjoint ranges of rows. A post is never its own neighbour.

The result is a Parquet file ``id, neighbours (list of ids, nearest first)`` written
atomically; its schema metadata says ``k``, ``dims``, ``seed`` and the index.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import pyarrow as pa

from alray.config import ComputeConfig, PoolConfig
from alray.errors import ConfigError, PoolSchemaError
from alray.pool import io
from alray.pool.schema import infer_dims
from alray.scoring.clusters import projection, read_part, runner, split_shards
from alray.scoring.topk import mask_excluded
from alray.seeds import rng

Progress = Callable[[int, int], None]
INDEXES = ("flat", "ivf")
SEARCH_PARTS_PER_ACTOR = 4  # tasks per actor: progress, and an even finish


def project_part(shards, columns: dict, dims: dict, matrix) -> tuple:
    """``(ids, (rows, out_dims) float32)`` of one part of the pool."""
    ids, feats = read_part(shards, PoolConfig.from_dict(columns), dims, matrix)
    return ids, np.ascontiguousarray(feats, np.float32)


def check_options(k: int, index: str, nlist: int, nprobe: int, dims: int,
                  train_size: int) -> None:
    """ConfigError naming every bad option at once (the pool's size is checked later)."""
    problems = []
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        problems.append(f"--k must be an integer >= 1, got {k!r}")
    if index not in INDEXES:
        problems.append(f"--index must be one of {', '.join(INDEXES)}, got {index!r}")
    if dims < 1:
        problems.append(f"--dims must be >= 1, got {dims}")
    if nlist < 0 or nprobe < 1 or train_size < 0:
        problems.append(f"--nlist >= 0 (0: about 4 x sqrt(rows)), --nprobe >= 1 and "
                        f"--train-size >= 0 needed, got {nlist}, {nprobe}, {train_size}")
    if problems:
        raise ConfigError(problems[0], problems if len(problems) > 1 else None)


def build_index(feats: np.ndarray, index: str, nlist: int, seed: int, train_size: int):
    """A faiss index of ``feats``: flat (exact), or IVF-Flat with ``nlist`` lists whose
    k-means is seeded and trained on a seeded sample of ``train_size`` rows."""
    import faiss

    n, d = feats.shape
    if index == "flat":
        built = faiss.IndexFlatL2(d)
    else:
        built = faiss.IndexIVFFlat(faiss.IndexFlatL2(d), d, nlist)
        built.cp.seed = seed % 2**31
        pick = np.sort(rng(seed, "ivf-train").choice(n, min(n, train_size), replace=False))
        built.train(feats[pick])
    built.add(feats)
    return built


def search_rows(blob, feats, start: int, stop: int, k: int, nprobe: int,
                threads: int) -> np.ndarray:
    """``(stop - start, k)`` row numbers of the nearest neighbours of rows
    ``[start, stop)``, themselves left out. An IVF search that finds fewer than ``k``
    (too few posts in the probed lists) is redone over every list for those rows."""
    import faiss

    faiss.omp_set_num_threads(max(1, int(threads)))
    index = faiss.deserialize_index(np.asarray(blob))
    if hasattr(index, "nprobe"):
        index.nprobe = min(nprobe, index.nlist)
    query = feats[start:stop]
    _, found = index.search(query, k + 1)
    rows, short = _drop_self(found, start, k)
    if short.any():
        index.nprobe = index.nlist  # exhaustive over the lists: exact for these rows
        _, again = index.search(query[short], k + 1)
        rows[short], _ = _drop_self(again, start + np.flatnonzero(short), k)
    return rows


def _drop_self(found: np.ndarray, first, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` found rows that are neither the query itself nor missing (-1),
    in faiss's order; and which queries had fewer than ``k`` of them."""
    own = (np.arange(len(found)) + first) if np.isscalar(first) else first
    valid = (found != own[:, None]) & (found >= 0)
    order = np.argsort(~valid, axis=1, kind="stable")  # valid ones first, order kept
    return np.take_along_axis(found, order, 1)[:, :k], valid.sum(axis=1) < k


def build_neighbours(pool_uri: str, out: str, k: int, dims: int = 64, seed: int = 0,
                     index: str = "flat", nlist: int = 0, nprobe: int = 64,
                     train_size: int = 0, columns: PoolConfig = PoolConfig(),
                     compute: ComputeConfig = ComputeConfig(),
                     progress: Progress | None = None) -> dict:
    """Write every post's ``k`` nearest neighbours to ``out`` (module docstring).
    ``nlist`` 0: about 4 x sqrt(rows) lists; ``train_size`` 0: 40 rows a list.
    Returns a summary dict with the seconds each phase took."""
    check_options(k, index, nlist, nprobe, dims, train_size)
    started = time.perf_counter()
    shards = io.pool_shards(pool_uri)
    pool_dims = infer_dims(pool_uri, columns)
    matrix = projection(pool_dims, dims, seed)
    read = runner(compute)(project_part, [(p, columns.to_dict(), pool_dims, matrix)
                                           for p in split_shards(shards, compute)])
    ids = np.concatenate([r[0] for r in read])
    feats = np.concatenate([r[1] for r in read])
    del read
    n = len(ids)
    if k >= n:
        raise ConfigError(f"--k {k} needs a pool of more than {k} posts; {pool_uri} has {n}")
    nlist = nlist or max(1, min(n // 39, int(4 * np.sqrt(n))))
    if index == "ivf" and nlist > n:
        raise ConfigError(f"--nlist {nlist} is more than the pool's {n} posts")
    train_size = train_size or min(n, 40 * nlist)
    read_s = time.perf_counter() - started
    built = build_index(feats, index, nlist, seed, train_size)
    build_s = time.perf_counter() - started - read_s
    rows = _search(built, feats, k, nprobe, compute, progress)
    search_s = time.perf_counter() - started - read_s - build_s
    write_neighbours(ids, ids[rows], out, {"k": k, "dims": dims, "seed": seed,
                                           "index": index, "nlist": nlist, "nprobe": nprobe})
    return {"rows": n, "k": k, "index": index, "nlist": nlist if index == "ivf" else 0,
            "nprobe": nprobe, "out": str(out), "read_s": read_s, "build_s": build_s,
            "search_s": search_s, "total_s": time.perf_counter() - started}


def _search(built, feats: np.ndarray, k: int, nprobe: int, compute: ComputeConfig,
            progress: Progress | None) -> np.ndarray:
    """Every row's neighbours: disjoint ranges of rows, in this process or on Ray tasks
    that share one copy of the index and of the projected pool (the object store)."""
    import faiss

    n = len(feats)
    tasks = 1 if compute.local else compute.score_actors * SEARCH_PARTS_PER_ACTOR
    edges = np.linspace(0, n, min(tasks, n) + 1).astype(int)
    blob = faiss.serialize_index(built)
    if compute.local:
        out = search_rows(blob, feats, 0, n, k, nprobe, os.cpu_count() or 1)
        if progress:
            progress(n, n)
        return out
    import ray

    from alray.runtime import require_ray

    require_ray()
    blob_ref, feats_ref = ray.put(blob), ray.put(feats)
    task = ray.remote(num_cpus=compute.cpus_per_actor)(search_rows)
    threads = max(1, int(compute.cpus_per_actor))
    pending = {task.remote(blob_ref, feats_ref, int(a), int(b), k, nprobe, threads): i
               for i, (a, b) in enumerate(zip(edges[:-1], edges[1:]))}
    parts, done = {}, 0
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        i = pending.pop(ready[0])
        parts[i] = ray.get(ready[0])
        done += len(parts[i])
        if progress:
            progress(done, n)
    return np.concatenate([parts[i] for i in range(len(parts))])


def write_neighbours(ids: np.ndarray, neighbours: np.ndarray, out: str,
                     meta: dict) -> None:
    """``id, neighbours`` (one list of ids a row, nearest first) to ``out``, atomically."""
    id_type = pa.string() if ids.dtype.kind in "OUS" else pa.int64()
    n, k = neighbours.shape
    offsets = np.arange(0, n * k + 1, k)
    kind = pa.LargeListArray if n * k >= 2**31 else pa.ListArray
    lists = kind.from_arrays(offsets, pa.array(neighbours.ravel(), id_type))
    table = pa.table({"id": pa.array(ids, id_type), "neighbours": lists})
    table = table.replace_schema_metadata({f"alray.{key}": str(value)
                                           for key, value in meta.items()})
    io.write_table(table, out)


_CACHE: dict = {}  # path -> (file stamp, sorted ids, neighbours): a loop reads it once


def read_neighbours(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ids sorted, (rows, k) neighbour ids)`` of a ``build_neighbours`` file; read
    once per process while the file is unchanged."""
    try:
        info = os.stat(path)
        stamp = (info.st_mtime_ns, info.st_size)
    except OSError:
        stamp = None  # not a local file: read it every time
    if stamp is not None and _CACHE.get(path, (None,))[0] == stamp:
        return _CACHE[path][1:]
    table = io.read_table(path)
    if table.column_names[:2] != ["id", "neighbours"]:
        raise PoolSchemaError(f"{path}: not a neighbours file (columns "
                              f"{', '.join(table.column_names)}); write one with "
                              "alray neighbours")
    ids = table.column("id").to_numpy(zero_copy_only=False)
    lists = table.column("neighbours").combine_chunks()
    k = len(lists[0]) if len(lists) else 0
    values = lists.flatten().to_numpy(zero_copy_only=False)
    if len(values) != len(ids) * k:
        raise PoolSchemaError(f"{path}: every post needs the same number of neighbours")
    order = np.argsort(ids, kind="stable")
    ids, neighbours = ids[order], values.reshape(len(ids), k)[order]
    if stamp is not None:
        _CACHE.clear()  # one graph at a time: it can be large
        _CACHE[path] = (stamp, ids, neighbours)
    return ids, neighbours


def knn_candidates(path: str, k: int, labelled: np.ndarray) -> np.ndarray:
    """Sorted unique ids: the first ``k`` neighbours of every id in ``labelled``, less
    the labelled ids themselves. ConfigError when the file holds fewer than ``k``
    neighbours a post, or has no row for a labelled id."""
    ids, neighbours = read_neighbours(path)
    labelled = np.sort(np.asarray(labelled))  # mask_excluded needs it sorted
    if k > neighbours.shape[1]:
        raise ConfigError(f"--candidates knn:{k}: {path} holds {neighbours.shape[1]} "
                          "neighbours a post; build it with a larger --k")
    if len(labelled) == 0:
        raise ConfigError("--candidates knn:K needs labelled posts (--exclude, or the "
                          "loop's labelled set): their neighbours are the candidates")
    pos = np.minimum(np.searchsorted(ids, labelled), len(ids) - 1)
    found = ids[pos] == labelled
    if not found.all():
        first = labelled[~found][0]
        raise ConfigError(f"{path}: no neighbours for the labelled id "
                          f"{getattr(first, 'item', lambda: first)()!r}; is it this "
                          "pool's graph? (alray neighbours)")
    near = np.unique(neighbours[pos, :k])
    return near[mask_excluded(near, labelled)]


__all__ = ["build_neighbours", "knn_candidates", "read_neighbours", "search_rows",
           "write_neighbours"]
