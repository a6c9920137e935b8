"""Clustering a pool once, Cluster-Margin queries exact against a central reference, and
TypiClust cold starts."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from alray.acquisition.diversity import round_robin
from alray.cli import main
from alray.config import ComputeConfig, ScoreConfig
from alray.pool import io
from alray.scoring.clusters import cluster_pool, read_clusters
from alray.scoring.pipeline import score_pool
from tests.conftest import make_pool_table, write_pool
from tests.unit.test_scorer import build_checkpoint

LOCAL = ComputeConfig(local=True, score_batch_size=37)


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    root = tmp_path_factory.mktemp("clusters")
    return write_pool(root / "pool", [make_pool_table(150, seed=i, first_id=1000 * i)
                                      for i in range(3)])


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def clusters(pool, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("c") / "clusters.parquet")
    summary = cluster_pool(pool, out, k=24, groups=8, seed=1, compute=ComputeConfig(local=True),
                           dims=8)
    assert summary["rows"] == 450 and summary["groups"] == 8
    return out


def test_every_post_gets_one_group_and_the_same_seed_the_same_clustering(pool, clusters,
                                                                         tmp_path):
    ids, groups = read_clusters(clusters)
    assert sorted(ids.tolist()) == sorted(io.read_table(pool).column("id").to_pylist())
    assert set(groups.tolist()) == set(range(8))
    again = str(tmp_path / "again.parquet")
    cluster_pool(pool, again, k=24, groups=8, seed=1, compute=ComputeConfig(local=True), dims=8)
    assert pq.read_table(again).equals(pq.read_table(clusters))


@pytest.mark.parametrize("strategy", ["margin", "entropy"])
def test_cluster_margin_equals_a_central_reference(pool, checkpoint, clusters, strategy):
    score = ScoreConfig(strategies=(strategy,), query_size=12, cluster_margin=5.0,
                        clusters=clusters)
    got = score_pool(pool, checkpoint, score, exclude_ids=[0, 1, 1000], compute=LOCAL)[strategy]
    # centrally: every candidate's score, the exact top 60, then the round robin
    everything = score_pool(pool, checkpoint, ScoreConfig(strategies=(strategy,),
                                                          query_size=447),
                            exclude_ids=[0, 1, 1000], compute=ComputeConfig(local=True))
    table = everything[strategy]
    ids, scores = table.column("id").to_numpy(), table.column("score").to_numpy()
    top = np.lexsort((ids, -scores))[:60]
    known_ids, known_groups = read_clusters(clusters)
    groups = known_groups[np.searchsorted(known_ids, ids[top])]
    expected = ids[top][round_robin(scores[top], ids[top], groups, 12)]
    assert got.column("id").to_pylist() == expected.tolist()
    assert got.column("rank").to_pylist() == list(range(1, 13))
    # spread: the query covers at least as many groups as the plain top 12 does
    assert len(set(groups[:12])) <= len(set(known_groups[np.searchsorted(known_ids,
                                                                          expected)]))


def test_cluster_margin_in_a_loop_and_typiclust_cold_start(pool, clusters, tmp_path):
    val = write_pool(tmp_path / "val", [make_pool_table(60, seed=9, first_id=9000)])
    args = ["loop", "--pool", pool, "--val", val, "--run-dir", str(tmp_path / "run"),
            "--initial", "20", "--initial-strategy", "typiclust", "--query-size", "10",
            "--cluster-margin", "4", "--clusters", clusters, "--steps", "2", "--epochs",
            "2", "--classes", "5", "--local"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    labels = pq.read_table(tmp_path / "run" / "labels.parquet")
    initial = [i for i, s in zip(labels.column("id").to_pylist(),
                                 labels.column("step").to_pylist()) if s == 0]
    assert len(initial) == len(set(initial)) == 20
    again = CliRunner().invoke(main, [*args[:6], str(tmp_path / "run2"), *args[7:]])
    assert again.exit_code == 0, again.output
    labels2 = pq.read_table(tmp_path / "run2" / "labels.parquet")
    assert labels2.equals(labels)  # seeded: the same typical posts and queries


def test_clustering_on_ray_parts(ray_session, pool, tmp_path):
    out = str(tmp_path / "ray.parquet")
    summary = cluster_pool(pool, out, k=12, groups=0, seed=2,
                           compute=ComputeConfig(score_actors=2, score_cpus_per_actor=0.5),
                           dims=8)
    ids, groups = read_clusters(out)
    assert summary["rows"] == len(ids) == 450 and set(groups.tolist()) <= set(range(12))


def test_cluster_margin_on_the_resident_pool_equals_the_local_path(ray_session, pool,
                                                                   checkpoint, clusters):
    # the resident pool answers loops and sweeps by default: it must widen to the top
    # k_m and run the round robin too, not return plain margin's query
    from alray.config import PoolConfig
    from alray.scoring.resident import ResidentPool

    score = ScoreConfig(strategies=("margin",), query_size=12, cluster_margin=5.0,
                        clusters=clusters)
    labelled = [0, 1, 1000]
    resident = ResidentPool.open(pool, PoolConfig(), ComputeConfig(
        score_actors=2, score_cpus_per_actor=0.5, score_batch_size=37))
    try:
        got = resident.score(checkpoint, score, labelled)["margin"]
        plain = resident.score(checkpoint, score.replace(cluster_margin=0.0),
                               labelled)["margin"]
    finally:
        resident.close()
    want = score_pool(pool, checkpoint, score, exclude_ids=labelled, compute=LOCAL)["margin"]
    assert got.column("id").to_pylist() == want.column("id").to_pylist()
    assert got.column("rank").to_pylist() == list(range(1, 13))
    assert got.column("id").to_pylist() != plain.column("id").to_pylist()
