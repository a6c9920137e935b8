"""alray neighbours and --candidates knn:K: the graph against brute force, its seeds,
IVF recall, the options' errors, the candidate set, and the knn query against a
central reference on the local and resident paths (in this process)."""
from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from alray.cli import main
from alray.cli.options import CandidatesType
from alray.config import ComputeConfig, PoolConfig, ScoreConfig
from alray.errors import ConfigError, PoolExhaustedError
from alray.pool import io
from alray.pool.schema import infer_dims
from alray.scoring.clusters import projected, projection
from alray.scoring.neighbours import build_neighbours, knn_candidates, read_neighbours
from alray.scoring.pipeline import score_pool
from tests.conftest import make_pool_table, write_pool
from tests.unit.test_resident import assert_same, resident_query
from tests.unit.test_scorer import build_checkpoint, reference_query

LOCAL = ComputeConfig(local=True, score_batch_size=23)


@pytest.fixture(scope="module")
def pool3(tmp_path_factory):
    tables = [make_pool_table(n, seed=i, first_id=1000 * i + 7)
              for i, n in enumerate((70, 45, 90))]
    return write_pool(tmp_path_factory.mktemp("pool") / "pool", tables)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_checkpoint(tmp_path_factory.mktemp("ckpt") / "model")


@pytest.fixture(scope="module")
def graph(pool3, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("knn") / "neighbours.parquet")
    build_neighbours(pool3, out, k=8, dims=6, seed=3, compute=LOCAL)
    return out


def brute_force(pool, k: int, dims: int, seed: int):
    """Sorted ids and each one's k nearest others, by numpy distances in the same
    projection."""
    pool_dims = infer_dims(pool, PoolConfig())
    ids, feats = projected(io.read_table(pool), PoolConfig(), pool_dims,
                           projection(pool_dims, dims, seed))
    order = np.argsort(ids)
    ids, feats = ids[order], feats[order].astype(np.float64)
    dist = ((feats[:, None, :] - feats[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(dist, np.inf)
    return ids, ids[np.argsort(dist, axis=1, kind="stable")[:, :k]], dist


def test_flat_graph_is_brute_force(pool3, graph):
    ids, near = read_neighbours(graph)
    ref_ids, ref_near, _ = brute_force(pool3, 8, 6, 3)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(near, ref_near)
    table = pq.read_table(graph)
    assert table.schema.field("neighbours").type.value_type == table.schema.field("id").type
    assert table.schema.metadata[b"alray.k"] == b"8"


def test_the_graph_is_seeded_and_the_same_on_ray_tasks(ray_session, pool3, graph, tmp_path):
    again, other, on_ray = (str(tmp_path / f"{n}.parquet") for n in ("a", "b", "ray"))
    build_neighbours(pool3, again, k=8, dims=6, seed=3, compute=LOCAL)
    build_neighbours(pool3, other, k=8, dims=6, seed=4, compute=LOCAL)
    ray_compute = ComputeConfig(score_actors=2, score_cpus_per_actor=0.5)
    seen = []
    build_neighbours(pool3, on_ray, k=8, dims=6, seed=3, compute=ray_compute,
                     progress=lambda done, total: seen.append((done, total)))
    assert pq.read_table(again).equals(pq.read_table(graph))
    assert pq.read_table(on_ray).equals(pq.read_table(graph))
    assert not pq.read_table(other).equals(pq.read_table(graph))
    assert seen[-1] == (205, 205) and len(seen) == 8  # 2 actors x 4 ranges of rows


def test_ivf_recall_is_measured_and_exact_when_every_list_is_searched(tmp_path):
    pool = write_pool(tmp_path / "pool", [make_pool_table(1500, 16, 8, seed=5)])
    exact = str(tmp_path / "flat.parquet")
    build_neighbours(pool, exact, k=10, dims=16, seed=1, compute=LOCAL)
    _, truth = read_neighbours(exact)
    recall = {}
    for nprobe in (1, 4, 30):
        out = str(tmp_path / f"ivf{nprobe}.parquet")
        summary = build_neighbours(pool, out, k=10, dims=16, seed=1, index="ivf",
                                   nlist=30, nprobe=nprobe, compute=LOCAL)
        assert summary["nlist"] == 30
        _, got = read_neighbours(out)
        recall[nprobe] = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, truth)])
    # one list of 30 misses many neighbours; probing them all is the exact search
    assert recall[1] < recall[4] < recall[30] == 1.0
    assert recall[4] > 0.5


@pytest.mark.parametrize("kwargs, message", [
    ({"k": 0}, "--k must be an integer >= 1"),
    ({"k": 205}, "--k 205 needs a pool of more than 205 posts"),
    ({"k": 3, "index": "hnsw"}, "--index must be one of flat, ivf"),
    ({"k": 3, "index": "ivf", "nprobe": 0}, "--nprobe >= 1"),
    ({"k": 3, "index": "ivf", "nlist": 500}, "--nlist 500 is more than the pool's 205"),
])
def test_bad_options_are_refused(pool3, tmp_path, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        build_neighbours(pool3, str(tmp_path / "n.parquet"), compute=LOCAL, **kwargs)
    assert not (tmp_path / "n.parquet").exists()


def test_the_cli_writes_the_graph_and_names_a_missing_pool(pool3, tmp_path, graph):
    out = tmp_path / "cli.parquet"
    result = CliRunner().invoke(main, ["neighbours", pool3, str(out), "--k", "8",
                                       "--dims", "6", "--seed", "3", "--local"])
    assert result.exit_code == 0, result.output
    assert "8 neighbours of each of 205 posts (flat" in result.output
    assert pq.read_table(out).equals(pq.read_table(graph))
    missing = CliRunner().invoke(main, ["neighbours", str(tmp_path / "nope"), str(out),
                                        "--k", "2", "--local"])
    assert missing.exit_code != 0 and "nope" in missing.output


@pytest.mark.parametrize("options, message", [
    ({"candidates": "knn:0", "neighbours": "g"}, "or knn:K with an integer K >= 1"),
    ({"candidates": "knn:x", "neighbours": "g"}, "got 'knn:x'"),
    ({"candidates": "knn:5"}, "candidates knn:5 needs neighbours"),
    ({"candidates": "100"}, "got '100'"),
])
def test_knn_candidates_config_errors(options, message):
    with pytest.raises(ConfigError, match=message):
        ScoreConfig(**options)


def test_a_random_pick_among_neighbours_is_a_variant_not_the_baseline():
    from alray.experiments.compare import baseline_plan, is_plain_random, reference_of

    arms = ["random candidates=0", "random candidates=knn:10", "margin candidates=0",
            "margin candidates=knn:10"]
    assert is_plain_random("random candidates=0")
    assert not is_plain_random("random candidates=knn:10")
    _, baseline_of = baseline_plan(arms)
    assert set(baseline_of.values()) == {"random candidates=0"}
    assert reference_of("margin candidates=knn:10", arms) == "margin candidates=0"


def test_knn_options_parse():
    score = ScoreConfig(candidates="knn:12", neighbours="g.parquet")
    assert score.knn == 12 and ScoreConfig(candidates=300).knn == 0
    assert ScoreConfig(candidates=0, neighbours="g").knn == 0  # a sweep's grid: unread
    assert ScoreConfig.from_dict(score.to_dict()) == score
    parse = CandidatesType().convert
    assert parse("300", None, None) == 300 and parse("knn:5", None, None) == "knn:5"


def test_candidates_are_the_labelled_posts_first_k_neighbours(pool3, graph):
    ids, near = read_neighbours(graph)
    labelled = np.sort(ids[[0, 5, 9, 100]])
    got = knn_candidates(graph, 3, labelled)
    want = set(near[np.searchsorted(ids, labelled), :3].ravel()) - set(labelled)
    assert list(got) == sorted(want)
    assert len(knn_candidates(graph, 8, labelled)) > len(got)  # K <= the graph's K: a prefix
    with pytest.raises(ConfigError, match="holds 8 neighbours a post"):
        knn_candidates(graph, 9, labelled)
    with pytest.raises(ConfigError, match="no neighbours for the labelled id 5"):
        knn_candidates(graph, 3, np.array([5, 7]))
    with pytest.raises(ConfigError, match="needs labelled posts"):
        knn_candidates(graph, 3, np.zeros(0, np.int64))


STRATEGIES = ("margin", "bald", "random", "entropy")


def test_knn_query_is_the_central_reference_locally_and_resident(pool3, graph, checkpoint):
    """Only the candidates are scored: the query equals brute force over exactly the
    candidate rows, and the resident parts give the same query."""
    score = ScoreConfig(strategies=STRATEGIES, query_size=6, mc_samples=4, seed=2,
                        candidates="knn:4", neighbours=graph)
    labelled = [7, 12, 1007, 1030, 2050, 2090]
    ids, near, _ = brute_force(pool3, 8, 6, 3)
    cands = set(near[np.searchsorted(ids, labelled), :4].ravel()) - set(labelled)
    assert 6 < len(cands) < len(ids) - len(labelled)
    local = score_pool(pool3, checkpoint, score, exclude_ids=labelled, compute=LOCAL)
    ref = reference_query(pool3, checkpoint, score, set(ids) - cands)
    for name in ("margin", "bald", "entropy"):  # random's reference is its own stream
        np.testing.assert_array_equal(local[name].column("id").to_numpy(), ref[name][0])
    assert set(local["random"].column("id").to_pylist()) <= cands
    assert_same(local, resident_query(pool3, checkpoint, score, labelled, carry=False))


def test_fewer_candidates_than_the_query_is_refused(pool3, graph, checkpoint):
    score = ScoreConfig(query_size=40, candidates="knn:2", neighbours=graph)
    with pytest.raises(PoolExhaustedError, match="larger than the .* candidates of "
                                                 "--candidates knn:2 .* raise K"):
        score_pool(pool3, checkpoint, score, exclude_ids=[7, 8], compute=LOCAL)


def test_string_ids_keep_their_type(pool3, graph, tmp_path):
    import pyarrow as pa

    table = io.read_table(pool3)
    table = table.set_column(0, "id", pa.array([f"p{i}" for i in table.column("id").to_pylist()]))
    pool = write_pool(tmp_path / "strpool", [table])
    out = str(tmp_path / "g.parquet")
    build_neighbours(pool, out, k=8, dims=6, seed=3, compute=LOCAL)
    assert pq.read_table(out).schema.field("neighbours").type.value_type == pa.string()
    ids, near = read_neighbours(out)
    int_ids, int_near = read_neighbours(graph)
    want = {f"p{i}": [f"p{j}" for j in row] for i, row in zip(int_ids, int_near)}
    assert {i: list(row) for i, row in zip(ids, near)} == want
    got = knn_candidates(out, 2, np.array(["p7", "p1007"], dtype=object))
    assert set(got) == set(want["p7"][:2] + want["p1007"][:2]) - {"p7", "p1007"}
