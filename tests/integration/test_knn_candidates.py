"""--candidates knn:K on Ray: the graph built on Ray tasks, the resident pool's query
equal to Ray Data streaming's and to the in-process path's step after step, and a loop
whose every query lies among the labelled posts' neighbours (the same labels with and
without Ray)."""
from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
from click.testing import CliRunner

from alray.config import ComputeConfig, PoolConfig, ScoreConfig
from alray.scoring.neighbours import build_neighbours, knn_candidates, read_neighbours
from alray.scoring.pipeline import score_pool
from alray.scoring.resident import ResidentPool
from tests.integration.test_resident import LOCAL, RESIDENT, checkpoint, pool  # noqa: F401
from tests.unit.test_loop_resume import LOOP_ARGS, pools, results  # noqa: F401

STREAMING = ComputeConfig(score_actors=1, score_cpus_per_actor=0.5, score_batch_size=50)
ON_RAY = ComputeConfig(score_actors=2, score_cpus_per_actor=0.5)


def assert_same(a: dict, b: dict) -> None:
    """The same query; scores equal but for float32 rounding: the paths score batches
    of other sizes once the candidates are picked (BLAS kernels of other shapes), and
    BALD, a difference of entropies, turns a last-bit difference into ~1e-7."""
    assert a.keys() == b.keys()
    for name in a:
        x, y = a[name], b[name]
        np.testing.assert_allclose(x.column("score").to_numpy(), y.column("score").to_numpy(),
                                   rtol=1e-4, atol=1e-6)
        x, y = (t.drop_columns(["score", "predicted_prob"]) for t in (x, y))
        assert x.equals(y), name


def test_resident_equals_streaming_equals_local_as_labels_arrive(ray_session, pool,
                                                                 checkpoint, tmp_path):
    graph = str(tmp_path / "graph.parquet")
    build_neighbours(pool, graph, k=6, dims=8, seed=1, compute=ON_RAY)
    score = ScoreConfig(strategies=("margin", "bald", "random"), query_size=8,
                        mc_samples=5, seed=4, candidates="knn:4", neighbours=graph)
    labelled = [0, 1, 1005, 2100, 2101]
    resident = ResidentPool.open(pool, PoolConfig(), RESIDENT)
    try:
        for step in (1, 2, 3):
            got = resident.score(checkpoint, score, labelled, step, carry=True)
            want = score_pool(pool, checkpoint, score, exclude_ids=labelled, step=step,
                              compute=LOCAL, carry=True)
            assert_same(want, got)
            if step == 1:
                assert_same(score_pool(pool, checkpoint, score, exclude_ids=labelled,
                                       step=step, compute=STREAMING, carry=True), got)
            near = set(knn_candidates(graph, 4, np.sort(labelled)))
            for table in got.values():
                assert set(table.column("id").to_pylist()) <= near
            labelled += got["margin"].column("id").to_pylist()
    finally:
        resident.close()


def test_a_loop_queries_the_neighbours_of_what_it_labelled(ray_session, pools, tmp_path):
    from alray.cli import main

    graph = str(tmp_path / "graph.parquet")
    build_neighbours(pools[0], graph, k=5, dims=8, seed=0, compute=ON_RAY)
    runs = {}
    for name, extra in (("ray", ["--actors", "2", "--num-cpus-per-actor", "0.5"]),
                        ("local", ["--local"])):
        run_dir = tmp_path / name
        args = [a for a in LOOP_ARGS if a != "--local"]
        out = CliRunner().invoke(main, [
            "loop", "--pool", pools[0], "--val", pools[1], "--run-dir", str(run_dir),
            "--steps", "3", *args, *extra, "--candidates", "knn:3", "--neighbours", graph])
        assert out.exit_code == 0, out.output
        runs[name] = results(run_dir)[0]
    assert runs["ray"].equals(runs["local"])
    labels = runs["ray"]
    ids, near = read_neighbours(graph)
    for step in (1, 2, 3):
        before = labels.filter(pc.less(labels.column("step"), step))
        picked = labels.filter(pc.equal(labels.column("step"), step))
        known = np.sort(before.column("id").to_numpy())
        allowed = set(near[np.searchsorted(ids, known), :3].ravel()) - set(known)
        assert picked.num_rows == 5
        assert set(picked.column("id").to_pylist()) <= allowed
