"""``alray loop`` and ``alray labels import``: the active-learning run from the shell.

Each science option maps to one dotted key of ``LoopConfig``; on ``--resume`` the options
given again are compared with the frozen config, so a run never silently changes course.
"""
from __future__ import annotations

import click
from click.core import ParameterSource

from alray.cli.common import (
    Progress, friendly_errors, pool_config, pool_options, sampling_options)
from alray.config import ComputeConfig, LoopConfig, ModelConfig, ScoreConfig, TrainConfig
from alray.errors import ConfigError

# CLI parameter -> LoopConfig key; the only place these pairs live
FROZEN_OPTIONS = {
    "pool": "pool_uri", "val": "val_uri", "initial": "initial", "seed": "seed",
    "assessors": "assessors", "strategy": "score.strategies", "query_size": "score.query_size",
    "mc_samples": "score.mc_samples", "head": "score.head", "heads": "model.heads",
    "dropout": "model.dropout", "learning_loss": "model.learning_loss",
    "epochs": "train.epochs", "fine_tune_epochs": "train.fine_tune_epochs", "lr": "train.lr",
    "weight_decay": "train.weight_decay", "batch_size": "train.batch_size",
    "adaptive_batch": "train.adaptive_batch", "freeze_batchnorm": "train.freeze_batchnorm",
    "loss_weighting": "train.loss_weighting", "classes": "model.n_classes",
    "sampling": "score.sampling", "sampling_beta": "score.sampling_beta",
    "class_balance": "score.class_balance", "candidates": "score.candidates",
}


def loop_options(fn):
    """The options of ``alray loop`` (and ``jobs/run_loop.py``), science then compute."""
    options = [
        click.option("--pool", default=None, help="Pool: a Parquet file or directory."),
        click.option("--val", default=None, help="Labelled validation pool."),
        click.option("--run-dir", required=True, help="The run directory (created or resumed)."),
        click.option("--resume", is_flag=True, help="Continue the run in --run-dir."),
        click.option("--resume-if-exists", is_flag=True,
                     help="Resume when --run-dir holds a run, else start one (for jobs)."),
        click.option("--allow-pool-change", is_flag=True,
                     help="Resume although the pool's files changed."),
        click.option("--strategy", default="margin", show_default=True),
        click.option("--initial", type=int, default=2000, show_default=True),
        click.option("--query-size", type=int, default=20, show_default=True),
        click.option("--steps", type=int, default=100, show_default=True,
                     help="Steps after the passive one (a resumed run may extend it)."),
        click.option("--seed", type=int, default=0, show_default=True),
        click.option("--classes", type=int, default=None,
                     help="Class count [default: inferred from the labels]."),
        click.option("--assessors", is_flag=True,
                     help="Write each query for human assessors and stop."),
        click.option("--mc-samples", type=int, default=20, show_default=True),
        click.option("--head", default="fused", show_default=True, help="Head to score with."),
        click.option("--heads", type=click.Choice(["multi", "fused"]), default="multi",
                     show_default=True),
        click.option("--dropout", type=float, default=0.5, show_default=True),
        click.option("--learning-loss", is_flag=True, help="Train a loss-prediction module."),
        click.option("--epochs", type=int, default=45, show_default=True),
        click.option("--fine-tune-epochs", type=int, default=1, show_default=True),
        click.option("--lr", type=float, default=1e-3, show_default=True),
        click.option("--weight-decay", type=float, default=5e-4, show_default=True),
        click.option("--batch-size", type=int, default=512, show_default=True),
        click.option("--adaptive-batch/--fixed-batch", default=True, show_default=True),
        click.option("--freeze-batchnorm/--no-freeze-batchnorm", default=False,
                     show_default=True),
        click.option("--loss-weighting", type=click.Choice(["learned", "equal"]),
                     default="learned", show_default=True),
        click.option("--actors", type=int, default=1, show_default=True),
        click.option("--num-cpus-per-actor", type=float, default=None,
                     help="CPUs per scoring actor [default: 0.5 locally, else 1]."),
        click.option("--num-gpus-per-actor", type=float, default=0.0, show_default=True),
        click.option("--score-batch-size", type=int, default=4096, show_default=True),
        click.option("--train-workers", type=int, default=1, show_default=True),
        click.option("--train-gpus-per-worker", type=float, default=0.0, show_default=True),
        click.option("--train-cpus-per-worker", type=float, default=None),
        click.option("--local", is_flag=True, help="Score and train in this process, no Ray."),
        click.option("--address", default=None, help="Ray cluster [default: embedded Ray]."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return sampling_options(pool_options(fn))


def _explicit(ctx: click.Context) -> set[str]:
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}


def new_config(p: dict) -> LoopConfig:
    if not p["pool"] or not p["val"]:
        raise ConfigError("a new run needs --pool and --val")
    columns = pool_config(p["id_column"], p["label_column"], p["embedding_columns"])
    model = ModelConfig(heads=p["heads"], dropout=p["dropout"],
                        learning_loss=p["learning_loss"],
                        modality_dims={m: 1 for m in columns.modalities},
                        branch_widths={m: (1,) for m in columns.modalities})
    train = TrainConfig(epochs=p["epochs"], fine_tune_epochs=p["fine_tune_epochs"],
                        lr=p["lr"], weight_decay=p["weight_decay"],
                        batch_size=p["batch_size"], adaptive_batch=p["adaptive_batch"],
                        freeze_batchnorm=p["freeze_batchnorm"],
                        loss_weighting=p["loss_weighting"], seed=p["seed"])
    from alray.pool.io import absolute_uri
    return LoopConfig(pool_uri=absolute_uri(p["pool"]), val_uri=absolute_uri(p["val"]),
                      initial=p["initial"],
                      steps=p["steps"], seed=p["seed"], assessors=p["assessors"],
                      columns=columns, model=model, train=train, score=_score(p))


def _score(p: dict) -> ScoreConfig:
    cpus = p["num_cpus_per_actor"]
    if cpus is None:
        cpus = 1.0 if p["address"] else 0.5
    return ScoreConfig(strategies=(p["strategy"],), query_size=p["query_size"],
                       head=p["head"], mc_samples=p["mc_samples"], seed=p["seed"],
                       batch_size=p["score_batch_size"], actors=p["actors"],
                       num_cpus_per_actor=cpus, num_gpus_per_actor=p["num_gpus_per_actor"],
                       sampling=p["sampling"], sampling_beta=p["sampling_beta"],
                       class_balance=p["class_balance"], candidates=p["candidates"])


def _overrides(p: dict, given: set[str]) -> dict:
    """The frozen keys the user gave again on resume (compared with the frozen run)."""
    out = {}
    from alray.pool.io import absolute_uri
    for name in given & set(FROZEN_OPTIONS):
        value = absolute_uri(p[name]) if name in ("pool", "val") else p[name]
        out[FROZEN_OPTIONS[name]] = (value,) if name == "strategy" else value
    if given & {"id_column", "label_column", "embedding_columns"}:
        out["columns"] = pool_config(p["id_column"], p["label_column"],
                                     p["embedding_columns"]).to_dict()
    return out


def _compute(p: dict) -> ComputeConfig:
    return ComputeConfig(local=p["local"], address=p["address"],
                         train_workers=p["train_workers"],
                         train_gpus_per_worker=p["train_gpus_per_worker"],
                         train_cpus_per_worker=p["train_cpus_per_worker"])


@click.command()
@loop_options
@friendly_errors
@click.pass_context
def loop(ctx, **p):
    """Run the active-learning loop (simulation, or --assessors), resumable at any point."""
    start_or_resume(p, _explicit(ctx))


def invoke_loop(args: list[str]):
    """Run ``alray loop ARGS`` from Python (the demo's tour); returns the outcome."""
    with loop.make_context("loop", list(args)) as ctx:
        return start_or_resume(ctx.params, _explicit(ctx))


def start_or_resume(p: dict, given: set[str]):
    from alray.loop.run import run_loop
    from alray.loop.setup import new_run, reopen_run, shape_model
    from alray.loop.state import RunDir

    resume = p["resume"] or (p["resume_if_exists"] and RunDir.exists(p["run_dir"]))
    if resume:
        run = reopen_run(p["run_dir"], _overrides(p, given), p["allow_pool_change"])
        run.config = run.config.replace(score=_compute_score(run.config.score, p))
        click.echo(f"resuming {p['run_dir']} at step {run.read_state().step + 1}")
    else:
        run = new_run(p["run_dir"], shape_model(new_config(p), p["classes"]))
    steps = p["steps"] if "steps" in given or not resume else run.config.steps
    outcome = _run_with_bar(run, _compute(p), steps, run_loop)
    _report(run, outcome)
    return outcome


def _compute_score(frozen: ScoreConfig, p: dict) -> ScoreConfig:
    mine = _score(p)
    return frozen.replace(actors=mine.actors, num_cpus_per_actor=mine.num_cpus_per_actor,
                          num_gpus_per_actor=mine.num_gpus_per_actor,
                          batch_size=mine.batch_size)


def _run_with_bar(run, compute, steps, run_loop):
    if not compute.local:
        import ray.data
        # one bar per step is ours; Ray Data's per-dataset bars would scroll over it
        ray.data.DataContext.get_current().enable_progress_bars = False
    bar = Progress(total=steps + 1, desc=f"loop {run.config.strategy}", unit="step")
    done = run.read_state().step + 1
    bar.to(done)

    def progress(step, last, row):
        bar.to(step + 1, f"acc {row.get('fused_accuracy', 0):.3f} labelled {row['labelled']:,}")
    try:
        return run_loop(run, compute, progress=progress, steps=steps)
    finally:
        bar.close()


def _report(run, outcome) -> None:
    from alray.experiments.plots import plot_run

    metrics = outcome.metrics
    if metrics is not None and metrics.num_rows:
        curve = plot_run(metrics, run.path / "curve.png",
                         f"{run.config.strategy}, seed {run.config.seed}")
        click.echo(f"learning curve: {curve}")
        rows = metrics.to_pylist()
        every = max(1, len(rows) // 10)
        click.echo("step  labelled  fused acc  macro-F1")
        for row in rows[::every] + ([rows[-1]] if (len(rows) - 1) % every else []):
            click.echo(f"{row['step']:>4}  {row['labelled']:>8,}  "
                       f"{row.get('fused_accuracy', float('nan')):>9.3f}  "
                       f"{row.get('fused_macro_f1', float('nan')):>8.3f}")
    if outcome.status == "waiting_for_labels":
        click.echo(f"{outcome.message}\nlabel it, then: alray labels import {run.path} FILE "
                   f"&& alray loop --run-dir {run.path} --resume")
    elif outcome.status == "pool_exhausted":
        click.echo(f"stopped after step {outcome.step}: {outcome.message}")
    else:
        click.echo(f"run {run.path}: {outcome.step} steps done")


@click.group()
def labels():
    """Assessors' labels for a run in --assessors mode."""


@labels.command("import")
@click.argument("run_dir")
@click.argument("file")
@click.option("--id-column", default=None, help="Id column of FILE [default: the run's].")
@click.option("--label-column", default=None, help="Label column of FILE [default: the run's].")
@friendly_errors
def import_(run_dir, file, id_column, label_column):
    """Import FILE (CSV or Parquet: id, label) as the answers to RUN_DIR's open query."""
    from alray.loop.assessors import import_labels

    summary = import_labels(run_dir, file, id_column=id_column, label_column=label_column)
    click.echo(f"step {summary['step']}: {summary['labelled']} labelled, "
               f"{summary['skipped']} skipped; resume with: alray loop --run-dir {run_dir} "
               "--resume")
