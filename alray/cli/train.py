"""``alray train``: the passive-phase model from a pool's labels or an assessors' file."""
from __future__ import annotations

import click

from alray.cli.common import Progress, friendly_errors, pool_config, pool_options
from alray.cli.options import TRAIN_SCIENCE, default_of, options, overrides
from alray.errors import ConfigError


@click.command()
@click.option("--pool", "pool_uri", required=True, help="Pool with the features (and labels).")
@click.option("--val", "val_uri", default=None, help="Labelled validation pool to evaluate on.")
@click.option("--labels-from-pool", is_flag=True,
              help="Use the pool's own labels (simulation): a seeded random initial set "
                   "of --initial posts, the loop's step 0.")
@click.option("--labels", "labels_file", default=None,
              help="Parquet or CSV with id and label columns (assessors' answers).")
@click.option("--out", required=True, help="Checkpoint directory to write.")
@options(TRAIN_SCIENCE)
@pool_options
@friendly_errors
def train(pool_uri, val_uri, labels_from_pool, labels_file, out, id_column, label_column,
          embedding_columns, **p):
    """Train a passive-phase model and write its checkpoint."""
    columns = pool_config(id_column, label_column, embedding_columns)
    if labels_from_pool == bool(labels_file):
        raise ConfigError("give exactly one of --labels-from-pool and --labels FILE")
    result = run_training(pool_uri, val_uri, columns, out, overrides(p, TRAIN_SCIENCE),
                          labels_file)
    click.echo(f"wrote checkpoint {out} ({result['rows']:,} labelled posts)")


def run_training(pool_uri, val_uri, columns, out, science: dict, labels_file=None) -> dict:
    """Load the labelled rows, fit, evaluate, write the checkpoint; ``science``: dotted
    option keys (``train.epochs``, ``model.heads``, ``initial``, ``seed``, ...)."""
    from alray.config import TrainConfig
    from alray.model import save_checkpoint
    from alray.pool.load import load_labelled_file, load_rows
    from alray.train.passive import model_for_pool, passive_rows, train_passive

    model_opts = {k[len("model."):]: v for k, v in science.items() if k.startswith("model.")}
    n_classes = model_opts.pop("n_classes", None)
    model = model_for_pool(pool_uri, columns, n_classes, val_uri, **model_opts)
    train_cfg = TrainConfig.from_dict({k[len("train."):]: v for k, v in science.items()
                                       if k.startswith("train.")})
    if labels_file:
        data = load_labelled_file(pool_uri, columns, labels_file, model.n_classes)
    else:
        data = passive_rows(pool_uri, columns, science.get("initial", default_of("initial")),
                            train_cfg.seed, science.get("initial_strategy", "random"))
    val = load_rows(val_uri, columns) if val_uri else None
    bar = Progress(total=train_cfg.epochs, desc="train", unit="epoch")
    result = train_passive(data, model, train_cfg, val,
                           progress=lambda epoch, n, loss: bar.to(epoch, f"loss {loss:.3f}"))
    bar.close()
    for head, m in result["metrics"].items():
        click.echo(f"  {head:<6} accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}"
                   f"  balanced {m['balanced_accuracy']:.3f}")
    extra = {"labelled": len(data), "seed": train_cfg.seed,
             "final_loss": float(result["history"][-1]["loss"]), "val": result["metrics"]}
    save_checkpoint(out, result["model"], model, extra=extra,
                    train_state=result["train_state"])
    return {"rows": len(data), "extra": extra}
