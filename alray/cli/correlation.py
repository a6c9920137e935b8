"""``alray correlation``: the study's correlation experiment (``alray.experiments.correlation``).

The experiment comes from a YAML file (``jobs/configs/correlation.yaml``, ``kind:
correlation``) and/or options; options win. Its sizes and any loop option live under
``set`` (``initial``, ``candidates``, ``group_size``, dotted ``train.*``/``model.*`` keys);
``--smoke`` shrinks it to its ``smoke:`` section on a small generated pool.
"""
from __future__ import annotations

import click

from alray.cli.common import Progress, connect_ray, friendly_errors
from alray.experiments.files import build_correlation, read_experiment


@click.command()
@click.option("--config", "config_file", default=None, metavar="FILE.yaml",
              help="An experiment file of kind correlation (jobs/configs/correlation.yaml).")
@click.option("--smoke", is_flag=True, help="Run the experiment's small smoke size.")
@click.option("--pool", default=None)
@click.option("--val", default=None)
@click.option("--seeds", default=None, help="0-4 or 0,1,2 [default: 0-4].")
@click.option("--initial", type=int, default=None, help="Initial set [default: 2000].")
@click.option("--candidates", type=int, default=None, help="Posts scored [default: 10000].")
@click.option("--group-size", type=int, default=None, help="[default: 100]")
@click.option("--set", "set_", multiple=True, metavar="KEY=VALUE",
              help="A loop option, e.g. train.epochs=45, train.freeze_batchnorm=true.")
@click.option("--cpus-per-task", type=float, default=1.0, show_default=True,
              help="CPUs of each Ray task (one fine-tune each).")
@click.option("--out", required=True, help="Folder for groups.parquet, summary.md, the plot.")
@click.option("--address", default=None, help="Ray cluster [default: embedded Ray].")
@friendly_errors
def correlation(config_file, smoke, address, cpus_per_task, **opts):
    """Group accuracy vs group mean loss / margin (the study's tables 1-2), done right:
    disjoint groups, several seeds, Spearman with intervals."""
    from alray.experiments.correlation import run_correlation
    from alray.experiments.correlation_report import write_outputs

    opts["set"], opts["smoke"] = opts.pop("set_"), smoke
    kwargs = build_correlation(read_experiment(config_file) if config_file else {}, opts)
    out = kwargs.pop("out")
    n_groups = kwargs["candidates"] // max(1, kwargs["group_size"])
    click.echo(f"correlation: seeds {list(kwargs['seeds'])}, {kwargs['initial']:,} initial, "
               f"{kwargs['candidates']:,} candidates in {n_groups} groups of "
               f"{kwargs['group_size']} -> {out}")
    connect_ray(address, kwargs["out"])
    bar = Progress(len(kwargs["seeds"]) * (1 + n_groups), "models", unit="model")
    try:
        result = run_correlation(**kwargs, cpus_per_task=cpus_per_task,
                                 progress=lambda done, total: bar.to(done))
    finally:
        bar.close()
    write_outputs(result, out)
    for row in result["summary"]:
        click.echo(f"  {row['pair']}: Spearman {row['rho']:+.4f} "
                   f"[{row['low']:+.4f}, {row['high']:+.4f}] over {row['seeds']} seeds")
    click.echo(f"wrote {out}/summary.md, groups.parquet, correlation.png")
