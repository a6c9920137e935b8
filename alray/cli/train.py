"""``alray train``: the passive-phase model from a pool's labels or an assessors' file."""
from __future__ import annotations

import click
import numpy as np

from alray.cli.common import Progress, friendly_errors, pool_config, pool_options
from alray.config import branch_widths_for
from alray.errors import ConfigError


@click.command()
@click.option("--pool", "pool_uri", required=True, help="Pool with the features (and labels).")
@click.option("--val", "val_uri", default=None, help="Labelled validation pool to evaluate on.")
@click.option("--labels-from-pool", is_flag=True,
              help="Use the pool's own labels (simulation).")
@click.option("--labels", "labels_file", default=None,
              help="Parquet or CSV with id and label columns (assessors' answers).")
@click.option("--initial", type=int, default=2000, show_default=True,
              help="With --labels-from-pool: a seeded random labelled set of this size.")
@click.option("--out", required=True, help="Checkpoint directory to write.")
@click.option("--classes", type=int, default=50, show_default=True)
@click.option("--epochs", type=int, default=45, show_default=True)
@click.option("--heads", type=click.Choice(["multi", "fused"]), default="multi", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@pool_options
@friendly_errors
def train(pool_uri, val_uri, labels_from_pool, labels_file, initial, out, classes, epochs,
          heads, seed, id_column, label_column, embedding_columns):
    """Train a passive-phase model and write its checkpoint."""
    config = pool_config(id_column, label_column, embedding_columns)
    if labels_from_pool == bool(labels_file):
        raise ConfigError("give exactly one of --labels-from-pool and --labels FILE")
    result = run_training(pool_uri, val_uri, config, out, classes, epochs, heads, seed,
                           initial if labels_from_pool else None, labels_file)
    click.echo(f"wrote checkpoint {out} ({result['rows']:,} labelled posts)")


def run_training(pool_uri, val_uri, config, out, classes, epochs, heads, seed, initial,
                  labels_file=None):
    from alray.config import ModelConfig, TrainConfig
    from alray.model import FusionNet, save_checkpoint
    from alray.pool.load import load_rows, read_labels_file, sample_labelled_ids
    from alray.pool.schema import infer_dims
    from alray.train import evaluate, fit
    import torch
    if labels_file:
        labels = read_labels_file(labels_file, config.id_column, config.label_column)
        data = load_rows(pool_uri, config, ids=np.asarray(list(labels)), labels=labels)
    else:
        data = load_rows(pool_uri, config, ids=sample_labelled_ids(pool_uri, config, initial, seed))
    dims = infer_dims(pool_uri, config)
    widths = branch_widths_for(dims)
    model_cfg = ModelConfig(n_classes=classes, heads=heads, modality_dims=dims,
                            branch_widths=widths)
    train_cfg = TrainConfig(epochs=epochs, seed=seed)
    with torch.random.fork_rng(devices=[]):  # seeded init without touching global state
        torch.manual_seed(seed)
        model = FusionNet(model_cfg)
    bar = Progress(total=epochs, desc="train", unit="epoch")
    history = fit(model, data, train_cfg,
                  progress=lambda epoch, n, loss: bar.to(epoch, f"loss {loss:.3f}"))
    bar.close()
    extra = {"labelled": int(len(data)), "seed": seed, "final_loss": float(history[-1]["loss"])}
    if val_uri:
        val = load_rows(val_uri, config)
        metrics = evaluate(model, val)
        extra["val"] = metrics
        for head, m in metrics.items():
            click.echo(f"  {head:<6} accuracy {m['accuracy']:.3f}  macro-F1 {m['macro_f1']:.3f}"
                       f"  balanced {m['balanced_accuracy']:.3f}")
    save_checkpoint(out, model, model_cfg, extra=extra)
    return {"rows": len(data), "extra": extra}


