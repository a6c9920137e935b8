"""Clustering the pool once, in parts, for diverse queries (Cluster-Margin) and cold
starts (TypiClust).

Why these pieces: scikit-learn's ``MiniBatchKMeans`` (a well-kept k-means; faiss-cpu
would be faster at millions of rows but adds a native dependency) runs on each part of
the pool as its own task (Ray tasks, or in this process with ``local``); the parts'
centroids, weighted by their counts, are clustered again into the final ``k``; a second
pass assigns every post to its nearest centroid. Average-linkage agglomerative
clustering of those ``k`` centroids (Cluster-Margin's hierarchical step, on centroids
instead of on millions of posts) gives the ``groups`` the query is spread over. Posts
are clustered on a seeded Gaussian random projection of their concatenated embeddings
(zeros for a missing modality) to ``dims`` dimensions: distances are kept within a
small factor (Johnson-Lindenstrauss) at a fraction of the arithmetic.

The result is a Parquet file ``id, centroid, group`` keyed by id, written atomically.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import pyarrow as pa

from alray.config import ComputeConfig, PoolConfig
from alray.errors import ConfigError, PoolSchemaError
from alray.pool import io
from alray.pool.arrays import arrays_from_table
from alray.pool.schema import infer_dims
from alray.seeds import derive_seed, rng

Progress = Callable[[int, int], None]


def projection(dims: dict, out_dims: int, seed: int) -> np.ndarray:
    """``(sum of dims, out_dims)`` float32 Gaussian matrix, seeded, scaled so squared
    distances are kept in expectation."""
    total = int(sum(dims.values()))
    return (rng(seed, "projection").standard_normal((total, out_dims)) /
            np.sqrt(out_dims)).astype(np.float32)


def projected(batch, columns: PoolConfig, dims: dict, matrix: np.ndarray):
    """``(ids, (rows, out_dims) features)`` of one Arrow batch."""
    data = arrays_from_table(batch, columns, dims)
    stacked = np.concatenate([data.features[m] for m in dims], axis=1)
    return data.ids, stacked @ matrix


def read_part(shards, columns: PoolConfig, dims: dict, matrix: np.ndarray):
    ids, feats = [], []
    read = [columns.id_column, *columns.embedding_columns.values()]
    for shard in shards:
        for batch in io.iter_batches(shard, read):
            i, f = projected(batch, columns, dims, matrix)
            ids.append(i)
            feats.append(f)
    return np.concatenate(ids), np.concatenate(feats)


def fit_part(shards, columns: dict, dims: dict, matrix, k: int, seed: int) -> dict:
    """One part's k-means: ``{"centroids": (k', d), "counts": (k',)}``."""
    from sklearn.cluster import MiniBatchKMeans

    _, feats = read_part(shards, PoolConfig.from_dict(columns), dims, matrix)
    km = MiniBatchKMeans(n_clusters=min(k, len(feats)), random_state=seed % 2**31,
                         batch_size=4096, n_init=1, max_iter=50).fit(feats)
    counts = np.bincount(km.labels_, minlength=km.n_clusters)
    keep = counts > 0
    return {"centroids": km.cluster_centers_[keep].astype(np.float32),
            "counts": counts[keep]}


def assign_part(shards, columns: dict, dims: dict, matrix, centroids) -> dict:
    """Each post of the part with its nearest centroid: ``{"ids", "centroid"}``."""
    ids, feats = read_part(shards, PoolConfig.from_dict(columns), dims, matrix)
    nearest = np.empty(len(ids), np.int64)
    c2 = (centroids * centroids).sum(axis=1)
    for start in range(0, len(ids), 65536):  # bounded memory: a block of distances
        block = feats[start:start + 65536]
        nearest[start:start + 65536] = np.argmin(c2[None, :] - 2 * block @ centroids.T, axis=1)
    return {"ids": ids, "centroid": nearest}


def cluster_pool(pool_uri: str, out: str, k: int, groups: int = 0, seed: int = 0,
                 columns: PoolConfig = PoolConfig(), compute: ComputeConfig = ComputeConfig(),
                 dims: int = 64, progress: Progress | None = None) -> dict:
    """Cluster the pool into ``k`` k-means centroids and (``groups`` > 0) that many
    average-linkage groups of centroids; write ``id, centroid, group`` to ``out``
    (``group`` = ``centroid`` without ``groups``). Returns a summary dict."""
    from sklearn.cluster import KMeans

    if k < 2 or groups < 0 or (groups and groups > k):
        raise ConfigError(f"clustering needs k >= 2 and 0 <= groups <= k, got k={k}, "
                          f"groups={groups}")
    shards = io.pool_shards(pool_uri)
    pool_dims = infer_dims(pool_uri, columns)
    matrix = projection(pool_dims, dims, seed)
    parts = split_shards(shards, compute)
    run = runner(compute)
    fits = run(fit_part, [(p, columns.to_dict(), pool_dims, matrix, k,
                           derive_seed(seed, "kmeans", i)) for i, p in enumerate(parts)])
    if progress:
        progress(1, 3)
    cents = np.concatenate([f["centroids"] for f in fits])
    weights = np.concatenate([f["counts"] for f in fits]).astype(np.float64)
    if len(cents) < k:
        raise PoolSchemaError(f"{pool_uri}: {len(cents)} distinct points, fewer than k={k}")
    final = KMeans(n_clusters=k, random_state=derive_seed(seed, "merge") % 2**31,
                   n_init=1).fit(cents, sample_weight=weights).cluster_centers_
    final = final.astype(np.float32)
    assigned = run(assign_part, [(p, columns.to_dict(), pool_dims, matrix, final)
                                 for p in parts])
    if progress:
        progress(2, 3)
    ids = np.concatenate([a["ids"] for a in assigned])
    centroid = np.concatenate([a["centroid"] for a in assigned])
    group_of = _linkage(final, groups) if groups else np.arange(k)
    table = pa.table({"id": ids, "centroid": centroid, "group": group_of[centroid]})
    io.write_table(table, out)
    if progress:
        progress(3, 3)
    sizes = np.bincount(group_of[centroid])
    return {"rows": len(ids), "k": k, "groups": int(group_of.max()) + 1, "out": str(out),
            "largest": int(sizes.max()), "smallest": int(sizes[sizes > 0].min())}


def _linkage(centroids: np.ndarray, groups: int) -> np.ndarray:
    from sklearn.cluster import AgglomerativeClustering

    return AgglomerativeClustering(n_clusters=groups, linkage="average").fit(
        centroids).labels_.astype(np.int64)


def split_shards(shards, compute: ComputeConfig) -> list[list]:
    """Shards dealt into parts of about equal row counts, one per worker."""
    n = 1 if compute.local else max(1, min(len(shards), compute.score_actors * 2))
    rows = [io.open_parquet(s).metadata.num_rows for s in shards]
    parts, load = [[] for _ in range(n)], np.zeros(n)
    for i in np.argsort(rows)[::-1]:  # biggest first into the lightest part
        j = int(np.argmin(load))
        parts[j].append(shards[i])
        load[j] += rows[i]
    return [p for p in parts if p]


def runner(compute: ComputeConfig):
    if compute.local:
        return lambda fn, arglists: [fn(*args) for args in arglists]

    def on_ray(fn, arglists):
        import ray

        from alray.runtime import require_ray

        require_ray()
        task = ray.remote(num_cpus=compute.cpus_per_actor)(fn)
        return ray.get([task.remote(*args) for args in arglists])
    return on_ray


def typical_ids(pool_uri: str, columns: PoolConfig, n: int, seed: int,
                dims: int = 64) -> np.ndarray:
    """TypiClust's cold start: ``n`` labelled posts, the most typical of each of ``n``
    k-means clusters of the labelled posts (``alray.acquisition.diversity``), in the
    order picked (largest cluster first)."""
    from sklearn.cluster import MiniBatchKMeans

    from alray.acquisition.diversity import typical_picks
    from alray.pool.load import read_ids_and_labels

    pool_dims = infer_dims(pool_uri, columns)
    ids, feats = read_part(io.pool_shards(pool_uri), columns, pool_dims,
                            projection(pool_dims, dims, seed))
    all_ids, labels = read_ids_and_labels(pool_uri, columns)
    labelled = np.isin(ids, all_ids[labels >= 0])
    ids, feats = ids[labelled], feats[labelled]
    if n > len(ids):
        raise ConfigError(f"{pool_uri}: a TypiClust initial set of {n:,} asked, the pool "
                          f"has {len(ids):,} labelled posts")
    order = np.argsort(ids, kind="stable")  # independent of the shards' order
    ids, feats = ids[order], feats[order]
    groups = MiniBatchKMeans(n_clusters=n, random_state=derive_seed(seed, "typiclust") % 2**31,
                             batch_size=4096, n_init=1, max_iter=50).fit_predict(feats)
    return ids[typical_picks(feats, groups, n)]


def read_clusters(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``(ids sorted, group of each)`` from a ``cluster_pool`` file."""
    table = io.read_table(path, columns=["id", "group"])
    ids = table.column("id").to_numpy(zero_copy_only=False)
    order = np.argsort(ids, kind="stable")
    return ids[order], table.column("group").to_numpy()[order]


def groups_of(ids: np.ndarray, known_ids: np.ndarray, known_groups: np.ndarray,
              source: str) -> np.ndarray:
    """``(n,)`` group of each of ``ids`` (``known_ids`` sorted); ConfigError naming the
    first id the clustering does not know."""
    pos = np.searchsorted(known_ids, ids)
    pos = np.minimum(pos, len(known_ids) - 1)
    found = known_ids[pos] == ids
    if not found.all():
        raise ConfigError(f"{source}: no cluster for id {ids[~found][0]!r}; cluster the "
                          "pool again (alray cluster)")
    return known_groups[pos]


__all__ = ["cluster_pool", "groups_of", "projected", "projection", "read_clusters",
           "typical_ids"]
