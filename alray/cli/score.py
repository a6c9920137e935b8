"""``alray score``: score a pool with a checkpoint and write the query."""
from __future__ import annotations

from pathlib import Path

import click

from alray.cli.common import (Progress, class_names_of, connect_unless_local, export_options,
                               friendly_errors, pool_config, pool_options,
                               show_columns_option)
from alray.cli.options import SCORE_COMPUTE, SCORE_SCIENCE, compute_config, options, overrides


@click.command()
@click.option("--pool", required=True, help="Pool: a Parquet file or directory of shards.")
@click.option("--checkpoint", required=True, help="Model checkpoint directory.")
@click.option("--exclude", default=None, metavar="LABELS",
              help="Parquet or CSV file with an id column: posts already labelled.")
@click.option("--out", required=True, help="Query Parquet file to write.")
@click.option("--step", type=int, default=0, show_default=True,
              help="The loop step: fresh sampling noise and candidates per step.")
@click.option("--show", type=int, default=10, show_default=True, help="Rows printed per strategy.")
@click.option("--scores-out", default=None, metavar="DIR",
              help="Also write every post's score per strategy to this Parquet directory.")
@options((*SCORE_SCIENCE, *SCORE_COMPUTE))
@pool_options
@show_columns_option
@export_options
@friendly_errors
def score(pool, checkpoint, exclude, out, step, show, scores_out, id_column, label_column,
          embedding_columns, show_columns, export, class_names, **p):
    """Score --pool with --checkpoint; write the top --query-size posts per strategy."""
    from alray.config import ScoreConfig
    from alray.pool.load import read_ids_file

    columns = pool_config(id_column, label_column, embedding_columns, show_columns)
    cfg = ScoreConfig.from_dict({k[len("score."):]: v for k, v in
                                 overrides(p, SCORE_SCIENCE).items() if k.startswith("score.")})
    exclude_ids = read_ids_file(exclude, columns.id_column) if exclude else None
    table = run_scoring(pool, checkpoint, cfg, columns, exclude_ids, compute_config(p), out,
                        step, show, scores_out)
    if export == "label-studio":
        from alray.loop.labelstudio.tasks import write_label_studio
        from alray.model import read_model_json

        paths = write_label_studio(table, Path(out).with_suffix(""),
                                   n_classes=read_model_json(checkpoint)["n_classes"],
                                   class_names=class_names_of(class_names))
        click.echo(f"Label Studio: tasks {paths['tasks']}, labelling config {paths['config']}")


def run_scoring(pool, checkpoint, cfg, columns, exclude_ids, compute, out, step,
                show=10, scores_out=None):
    from alray.scoring.pipeline import score_pool, write_query

    connect_unless_local(compute, Path(out).parent)
    bar = Progress(total=0, desc="score", unit="row")
    tables = score_pool(pool, checkpoint, cfg, columns, exclude_ids=exclude_ids,
                        compute=compute, step=step, scores_out=scores_out,
                        progress=lambda done, total: (setattr(bar.bar, "total", total),
                                                      bar.to(done)))
    bar.close()
    table = write_query(tables, out, step=step, shown=columns.show_columns)
    for name, query in tables.items():
        click.echo(f"== {name}: top {min(show, query.num_rows)} of {query.num_rows}")
        click.echo(f"{'rank':>5} {'id':>12} {'score':>12} {'class':>6} {'prob':>7}")
        for row in query.slice(0, show).to_pylist():
            click.echo(f"{row['rank']:>5} {str(row['id']):>12} {row['score']:>12.6f} "
                       f"{row['predicted_class']:>6} {row['predicted_prob']:>7.4f}")
    click.echo(f"wrote {out} ({table.num_rows} rows, {len(tables)} strategies)")
    return table
