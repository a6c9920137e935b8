"""``alray loop`` and ``alray labels import``: the active-learning run from the shell.

The science options are ``alray.cli.options``'s (the same names and defaults as ``alray
sweep``); on ``--resume`` the ones given again are compared with the frozen config, so a
run never silently changes course.
"""
from __future__ import annotations

import click
from click.core import ParameterSource

from alray.cli.common import (Progress, class_names_of, connect_unless_local, export_options,
                               friendly_errors, pool_config, pool_options,
                               show_columns_option)
from alray.cli.options import COMPUTE, SCIENCE, STEPS, compute_config, options, overrides
from alray.errors import ConfigError

SCIENCE_NAMES = tuple(o.name for o in SCIENCE)


def loop_options(fn):
    """The options of ``alray loop`` (and ``jobs/run_loop.py``): run, science, compute."""
    fn = options((*SCIENCE_NAMES, *(o.name for o in COMPUTE)))(fn)
    fn = STEPS.decorator()(fn)
    for option in reversed([
        click.option("--pool", default=None, help="Pool: a Parquet file or directory."),
        click.option("--val", default=None, help="Labelled validation pool."),
        click.option("--run-dir", required=True, help="The run directory (created or resumed)."),
        click.option("--resume", is_flag=True, help="Continue the run in --run-dir."),
        click.option("--resume-if-exists", is_flag=True,
                     help="Resume when --run-dir holds a run, else start one (for jobs)."),
        click.option("--allow-pool-change", is_flag=True,
                     help="Resume although the pool's files changed."),
        click.option("--assessors", is_flag=True,
                     help="Write each query for human assessors and stop."),
    ]):
        fn = option(fn)
    return export_options(pool_options(show_columns_option(fn)))


def _explicit(ctx: click.Context) -> set[str]:
    return {name for name in ctx.params
            if ctx.get_parameter_source(name) == ParameterSource.COMMANDLINE}


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
    """Open or create the run (``alray.loop.open_or_create``), run it, report."""
    from alray.loop.run import run_loop
    from alray.loop.setup import new_config, open_or_create
    from alray.pool.io import absolute_uri

    columns = pool_config(p["id_column"], p["label_column"], p["embedding_columns"],
                          p["show_columns"])

    def fresh():
        if not p["pool"] or not p["val"]:
            raise ConfigError("a new run needs --pool and --val")
        science = overrides(p, SCIENCE_NAMES)
        science["assessors"] = p["assessors"]
        return new_config(p["pool"], p["val"], columns, science)

    again = overrides({k: v for k, v in p.items() if k in given}, SCIENCE_NAMES)
    again.update({k: absolute_uri(p[k]) if k in ("pool", "val") else p[k]
                  for k in ("pool", "val", "assessors") if k in given})
    again = {{"pool": "pool_uri", "val": "val_uri"}.get(k, k): v for k, v in again.items()}
    if given & {"id_column", "label_column", "embedding_columns", "show_columns"}:
        again["columns"] = columns.to_dict()
    resume = True if p["resume"] else (None if p["resume_if_exists"] else False)
    run, resumed = open_or_create(p["run_dir"], resume, fresh, again,
                                  p["steps"] if "steps" in given or not resume else None,
                                  p["allow_pool_change"])
    if resumed:
        click.echo(f"resuming {p['run_dir']} at step {run.read_state().step + 1}")
    compute = compute_config(p)
    connect_unless_local(compute, run.path)
    steps = p["steps"] if "steps" in given or not resumed else run.budget
    outcome = _run_with_bar(run, compute, steps, run_loop)
    _report(run, outcome)
    if outcome.status == "waiting_for_labels" and p["export"] == "label-studio":
        from alray.loop.labelstudio.tasks import write_run_query

        paths = write_run_query(run.path, class_names=class_names_of(p["class_names"]))
        click.echo(f"Label Studio: tasks {paths['tasks']}, labelling config {paths['config']}")
    return outcome


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
@click.option("--class-names", default=None, metavar="FILE",
              help="Class names, one a line: Label Studio choices given as names.")
@friendly_errors
def import_(run_dir, file, id_column, label_column, class_names):
    """Import FILE as the answers to RUN_DIR's open query: a CSV or Parquet of id and
    label, or a Label Studio export (JSON, JSON-MIN or CSV; docs/assessors.md)."""
    from alray.loop.assessors import import_labels

    summary = import_labels(run_dir, file, id_column=id_column, label_column=label_column,
                            class_names=class_names_of(class_names))
    click.echo(f"step {summary['step']}: {summary['labelled']} labelled, "
               f"{summary['skipped']} skipped; resume with: alray loop --run-dir {run_dir} "
               "--resume")
