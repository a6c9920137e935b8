"""``alray cluster``: cluster a pool once (Cluster-Margin's groups, ``--clusters``);
``alray neighbours``: its nearest-neighbour graph once (``--candidates knn:K``)."""
from __future__ import annotations

import os

import click

from alray.cli.common import (Progress, connect_unless_local, friendly_errors, pool_config,
                              pool_options)
from alray.cli.options import compute_config, options
from alray.config import ComputeConfig


def projection_options(what: str):
    """``--dims`` and ``--seed`` of the random projection both commands work in."""
    def add(fn):
        fn = click.option("--seed", type=int, default=0, show_default=True)(fn)
        return click.option("--dims", type=int, default=64, show_default=True,
                            help=f"Random-projection dimensions the posts are {what}.")(fn)
    return add


def connected(p: dict, out: str) -> ComputeConfig:
    """The compute options, with Ray connected unless ``--local``."""
    compute = compute_config(p)
    connect_unless_local(compute, os.path.dirname(os.path.abspath(out)))
    return compute


@click.command()
@click.argument("pool")
@click.option("--out", required=True, help="Parquet file to write: id, centroid, group.")
@click.option("--k", type=int, default=1000, show_default=True,
              help="k-means centroids.")
@click.option("--groups", type=int, default=0, show_default=True,
              help="Average-linkage groups of the centroids (Cluster-Margin's clusters); "
                   "0 = the centroids themselves.")
@projection_options("clustered in")
@options(("local", "address", "actors", "num_cpus_per_actor"))
@pool_options
@friendly_errors
def cluster(pool, out, k, groups, dims, seed, id_column, label_column, embedding_columns,
            **p):
    """Cluster POOL's posts (distributed mini-batch k-means, then average linkage)."""
    from alray.scoring.clusters import cluster_pool

    compute = connected(p, out)
    bar = Progress(total=3, desc="cluster", unit="pass")
    summary = cluster_pool(pool, out, k, groups, seed,
                           pool_config(id_column, label_column, embedding_columns),
                           compute, dims, progress=lambda done, total: bar.to(done))
    bar.close()
    click.echo(f"wrote {summary['out']}: {summary['rows']:,} posts in {summary['groups']:,} "
               f"groups of {summary['k']:,} centroids (largest {summary['largest']:,}, "
               f"smallest {summary['smallest']:,})")


@click.command()
@click.argument("pool")
@click.argument("out")
@click.option("--k", type=int, required=True, help="Neighbours kept for every post.")
@click.option("--index", type=click.Choice(["flat", "ivf"]), default="flat",
              show_default=True, help="flat: exact; ivf: faiss IVF-Flat, approximate.")
@click.option("--nlist", type=int, default=0, show_default=True,
              help="IVF lists; 0 = about 4 x sqrt(rows).")
@click.option("--nprobe", type=int, default=64, show_default=True,
              help="IVF lists searched a query (more: slower, better recall; "
                   "docs/acquisition.md says why 64).")
@click.option("--train-size", type=int, default=0, show_default=True,
              help="IVF: posts its k-means is trained on (a seeded sample); 0 = 40 a list.")
@projection_options("compared in")
@options(("local", "address", "actors", "num_cpus_per_actor"))
@pool_options
@friendly_errors
def neighbours(pool, out, k, index, nlist, nprobe, train_size, dims, seed, id_column,
               label_column, embedding_columns, **p):
    """Write every post of POOL's K nearest neighbours to OUT (for --candidates knn:K)."""
    from alray.scoring.neighbours import build_neighbours

    compute = connected(p, out)
    bar = Progress(total=0, desc="neighbours", unit="row")
    summary = build_neighbours(
        pool, out, k, dims, seed, index, nlist, nprobe, train_size,
        pool_config(id_column, label_column, embedding_columns), compute,
        progress=lambda done, total: (setattr(bar.bar, "total", total), bar.to(done)))
    bar.close()
    lists = (f", {summary['nlist']:,} lists, nprobe {summary['nprobe']}"
             if summary["nlist"] else "")
    click.echo(f"wrote {summary['out']}: {summary['k']} neighbours of each of "
               f"{summary['rows']:,} posts ({summary['index']}{lists}; read "
               f"{summary['read_s']:.1f} s, index {summary['build_s']:.1f} s, search "
               f"{summary['search_s']:.1f} s)")
