"""``alray cluster``: cluster a pool once (Cluster-Margin's groups, ``--clusters``)."""
from __future__ import annotations

import os

import click

from alray.cli.common import Progress, connect_ray, friendly_errors, pool_config, pool_options
from alray.cli.options import compute_config, options


@click.command()
@click.argument("pool")
@click.option("--out", required=True, help="Parquet file to write: id, centroid, group.")
@click.option("--k", type=int, default=1000, show_default=True,
              help="k-means centroids.")
@click.option("--groups", type=int, default=0, show_default=True,
              help="Average-linkage groups of the centroids (Cluster-Margin's clusters); "
                   "0 = the centroids themselves.")
@click.option("--dims", type=int, default=64, show_default=True,
              help="Random-projection dimensions the posts are clustered in.")
@click.option("--seed", type=int, default=0, show_default=True)
@options(("local", "address", "actors", "num_cpus_per_actor"))
@pool_options
@friendly_errors
def cluster(pool, out, k, groups, dims, seed, id_column, label_column, embedding_columns,
            **p):
    """Cluster POOL's posts (distributed mini-batch k-means, then average linkage)."""
    from alray.scoring.clusters import cluster_pool

    compute = compute_config(p)
    if not compute.local:
        connect_ray(compute.address, os.path.dirname(os.path.abspath(out)))
    bar = Progress(total=3, desc="cluster", unit="pass")
    summary = cluster_pool(pool, out, k, groups, seed,
                           pool_config(id_column, label_column, embedding_columns),
                           compute, dims, progress=lambda done, total: bar.to(done))
    bar.close()
    click.echo(f"wrote {summary['out']}: {summary['rows']:,} posts in {summary['groups']:,} "
               f"groups of {summary['k']:,} centroids (largest {summary['largest']:,}, "
               f"smallest {summary['smallest']:,})")
