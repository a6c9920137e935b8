"""``alray score``: score a pool with a checkpoint and write the query."""
from __future__ import annotations

import click

from alray.cli.common import (
    Progress, friendly_errors, pool_config, pool_options, sampling_options)


@click.command()
@click.option("--pool", required=True, help="Pool: a Parquet file or directory of shards.")
@click.option("--checkpoint", required=True, help="Model checkpoint directory.")
@click.option("--strategy", "strategies", default="margin", show_default=True,
              help="Strategy, or several separated by commas (e.g. margin,bald).")
@click.option("--query-size", type=int, default=20, show_default=True)
@click.option("--exclude", default=None, metavar="LABELS",
              help="Parquet or CSV file with an id column: posts already labelled.")
@click.option("--out", required=True, help="Query Parquet file to write.")
@click.option("--step", type=int, default=0, show_default=True)
@click.option("--mc-samples", type=int, default=20, show_default=True)
@click.option("--actors", type=int, default=1, show_default=True)
@click.option("--num-cpus-per-actor", type=float, default=None,
              help="CPUs per scoring actor [default: 0.5 locally, else 1].")
@click.option("--num-gpus-per-actor", type=float, default=0.0, show_default=True)
@click.option("--batch-size", type=int, default=4096, show_default=True)
@click.option("--head", default="fused", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--local", is_flag=True, help="Score in this process, without Ray.")
@click.option("--address", default=None, help="Ray cluster address (default: embedded Ray).")
@click.option("--show", type=int, default=10, show_default=True, help="Rows printed per strategy.")
@click.option("--scores-out", default=None, metavar="DIR",
              help="Also write every post's score per strategy to this Parquet directory.")
@sampling_options
@pool_options
@friendly_errors
def score(pool, checkpoint, strategies, query_size, exclude, out, step, mc_samples, actors,
          num_cpus_per_actor, num_gpus_per_actor, batch_size, head, seed, local, address,
          show, scores_out, sampling, sampling_beta, class_balance, candidates, id_column,
          label_column, embedding_columns):
    """Score --pool with --checkpoint; write the top --query-size posts per strategy."""
    from alray.config import ScoreConfig
    config = pool_config(id_column, label_column, embedding_columns)
    names = tuple(s.strip() for s in strategies.split(",") if s.strip())
    if num_cpus_per_actor is None:
        num_cpus_per_actor = 1.0 if address else 0.5
    cfg = ScoreConfig(strategies=names, query_size=query_size, head=head,
                      mc_samples=mc_samples, seed=seed, batch_size=batch_size, actors=actors,
                      num_cpus_per_actor=num_cpus_per_actor,
                      num_gpus_per_actor=num_gpus_per_actor, sampling=sampling,
                      sampling_beta=sampling_beta, sampling_step=step,
                      class_balance=class_balance, candidates=candidates)
    from alray.pool.load import read_ids_file
    exclude_ids = read_ids_file(exclude, config.id_column) if exclude else None
    run_scoring(pool, checkpoint, cfg, config, exclude_ids, not local, address, out, step,
                 show, scores_out)


def run_scoring(pool, checkpoint, cfg, config, exclude_ids, use_ray, address, out, step,
                 show=10, scores_out=None):
    from alray.scoring.pipeline import score_pool, write_query
    bar = Progress(total=0, desc="score", unit="row")
    tables = score_pool(pool, checkpoint, cfg, config, exclude_ids=exclude_ids,
                        use_ray=use_ray, address=address, scores_out=scores_out,
                        progress=lambda done, total: (setattr(bar.bar, "total", total),
                                                      bar.to(done)))
    bar.close()
    table = write_query(tables, out, step=step)
    for name, query in tables.items():
        click.echo(f"== {name}: top {min(show, query.num_rows)} of {query.num_rows}")
        click.echo(f"{'rank':>5} {'id':>12} {'score':>12} {'class':>6} {'prob':>7}")
        for row in query.slice(0, show).to_pylist():
            click.echo(f"{row['rank']:>5} {str(row['id']):>12} {row['score']:>12.6f} "
                       f"{row['predicted_class']:>6} {row['predicted_prob']:>7.4f}")
    click.echo(f"wrote {out} ({table.num_rows} rows, {len(tables)} strategies)")


