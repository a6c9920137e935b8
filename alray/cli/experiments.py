"""``alray sweep`` (Ray Tune grids) and ``alray report`` (curves, savings, paired tests).

A sweep comes from a YAML file (``jobs/configs/*.yaml``) and/or options; options win.
Any loop option is ``--set KEY=VALUE`` (dotted ``LoopConfig`` keys, e.g.
``--set train.epochs=45``) and any list of values to grid over is ``--grid KEY=V1,V2``.
``--smoke`` shrinks the experiment to its ``smoke:`` section on a small generated pool.
"""
from __future__ import annotations


import click

from alray.cli.common import friendly_errors, pool_config, pool_options
from alray.cli.options import SCIENCE, compute_config, options, overrides
from alray.experiments.files import build_sweep, read_experiment

# every loop science option by its loop name; strategy and seed are the grid's lists
SWEEP_SCIENCE = tuple(o.name for o in SCIENCE if o.name not in ("strategy", "seed"))
# the shared resident pool's (alray.experiments.shared_pool); trials fine-tune in-process
SWEEP_COMPUTE = ("actors", "num_cpus_per_actor", "score_batch_size", "resident",
                 "resident_dtype", "resident_memory")


@click.command()
@click.option("--config", "config_file", default=None, metavar="FILE.yaml",
              help="An experiment file (see jobs/configs/).")
@click.option("--smoke", is_flag=True, help="Run the experiment's small smoke size.")
@click.option("--pool", default=None)
@click.option("--val", default=None)
@click.option("--strategies", "--strategy", "strategies", default=None,
              help="Comma-separated [default: random,margin].")
@click.option("--seeds", "--seed", "seeds", default=None, help="0-4 or 0,1,2 [default: 0-4].")
@click.option("--steps", type=int, default=None, help="[default: 100]")
@click.option("--out", required=True, help="The sweep's folder.")
@click.option("--set", "set_", multiple=True, metavar="KEY=VALUE",
              help="A loop option, e.g. train.freeze_batchnorm=true, initial=2000.")
@click.option("--grid", multiple=True, metavar="KEY=V1,V2",
              help="Also grid over a loop option, e.g. train.freeze_batchnorm=true,false.")
@click.option("--cpus-per-trial", type=float, default=None, help="[default: 1]")
@click.option("--gpus-per-trial", type=float, default=None, help="[default: 0]")
@click.option("--max-concurrent", type=int, default=None)
@click.option("--resume", is_flag=True, help="Continue an interrupted sweep in --out.")
@click.option("--address", default=None, help="Ray cluster [default: embedded Ray].")
@options(SWEEP_SCIENCE, with_default=False)
@click.option("--actors", type=int, default=None,
              help="Actors of the resident pool the trials share [default: 1].")
@click.option("--num-cpus-per-actor", type=float, default=None,
              help="CPUs each of them reserves [default: 0.01, out of the trials' own: "
                   "a trial waits while they score its step].")
@click.option("--resident/--streaming", "resident", default=None,
              help="--streaming: each trial reads the pool itself every step, in its own "
                   "process, instead of the shared resident pool [default: resident].")
@options(("score_batch_size", "resident_dtype", "resident_memory"), with_default=False)
@pool_options
@friendly_errors
def sweep(config_file, smoke, resume, address, **opts):
    """Run a strategy x seed grid of simulated loops on Ray Tune.

    Every science option of ``alray loop`` is an option here under the same name; one
    not given comes from the experiment file (its ``set``), else the loop's default.
    The trials score with one resident pool the sweep opens for all of them, each with
    its own weights; --streaming: each trial reads the pool itself every step."""
    from alray.cli.common import VERBOSE, connect_ray
    from alray.experiments.sweep import run_sweep

    compute = compute_config(opts)
    cfg = sweep_config(config_file, smoke, resume, opts)
    n = len(cfg.strategies) * len(cfg.seeds)
    for values in cfg.grid.values():
        n *= len(values)
    click.echo(f"sweep: {n} trials ({', '.join(cfg.strategies)} x seeds "
               f"{list(cfg.seeds)}{' x ' + ', '.join(cfg.grid) if cfg.grid else ''}), "
               f"{cfg.steps} steps each -> {cfg.out}")
    connect_ray(address, cfg.out)
    # Tune's trial tables only with --verbose: alray prints what the sweep wrote
    curves = run_sweep(cfg, resume=resume, verbose=1 if VERBOSE["on"] else 0,
                       compute=compute)
    click.echo(f"wrote {cfg.out}/curves.parquet ({curves.num_rows} rows); "
               f"next: alray report {cfg.out} --out REPORT")


def sweep_config(config_file, smoke: bool, resume: bool, opts: dict):
    """The SweepConfig of ``alray sweep``'s parameters: a resumed sweep's own, or the
    experiment file overridden by the options given."""
    from alray.experiments.sweep import load_sweep

    opts = {k: v for k, v in opts.items() if k not in SWEEP_COMPUTE}  # not the science
    science = overrides(opts, SWEEP_SCIENCE)
    for name in SWEEP_SCIENCE:
        opts.pop(name, None)
    given = [opts.pop(k, None) for k in ("id_column", "label_column", "embedding_columns")]
    if given != ["id", "label", ()] and given != [None, None, None]:
        science["columns"] = pool_config(*given).to_dict()
    opts["set"], opts["smoke"], opts["overrides"] = opts.pop("set_", ()), smoke, science
    if resume and not config_file and not any(v for k, v in opts.items()
                                              if k not in ("out", "set", "grid", "smoke")):
        return load_sweep(opts["out"])
    return build_sweep(read_experiment(config_file) if config_file else {}, opts)


@click.command()
@click.argument("sweep_dirs", nargs=-1, required=True, metavar="SWEEP_DIR...")
@click.option("--out", required=True, help="Folder for the figures and summary.md.")
@click.option("--reference", default="margin", show_default=True,
              help="The strategy (or exact variant) every variant is also tested against.")
@friendly_errors
def report(sweep_dirs, out, reference):
    """Learning curves with t-intervals, label savings against one random baseline
    (censored where a seed never reached), paired tests, and a summary of a sweep, or
    of several paired sweeps (same pool, validation set and initial size) together."""
    from alray.experiments.report import write_report

    files = write_report(list(sweep_dirs), out, reference)
    for path in files:
        click.echo(f"wrote {path}")
