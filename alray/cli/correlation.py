"""``alray correlation``: the study's correlation experiment (``alray.experiments.correlation``).

The experiment comes from a YAML file (``jobs/configs/correlation.yaml``, ``kind:
correlation``) and/or options; options win. Its sizes and any loop option live under
``set`` (``initial``, ``candidates``, ``group_size``, dotted ``train.*``/``model.*`` keys);
``--smoke`` shrinks it to its ``smoke:`` section on a small generated pool.
"""
from __future__ import annotations

from pathlib import Path

import click
import yaml

from alray.cli.common import Progress, friendly_errors
from alray.experiments.files import key_values, parse_seeds, read_experiment, smoke_experiment
from alray.config import LoopConfig, TrainConfig
from alray.errors import ConfigError

SIZES = {"initial": 2000, "candidates": 10_000, "group_size": 100}


def build_correlation(file_data: dict, opts: dict) -> dict:
    """``run_correlation``'s keyword arguments from an experiment file's values,
    overridden by options (``pool``, ``val``, ``seeds``, ``initial``, ``candidates``,
    ``group_size``, ``set``: ``KEY=VALUE`` strings, ``smoke``, ``out``)."""
    from alray.experiments.correlation import check_sizes
    from alray.loop.setup import apply_overrides, shape_model
    from alray.pool.io import absolute_uri

    kind = file_data.get("kind", "sweep") if file_data else "correlation"
    if kind != "correlation":
        raise ConfigError(f"the experiment file is of kind {kind!r}; `alray correlation` "
                          "runs kind: correlation (use `alray sweep` for sweeps)")
    data = smoke_experiment(dict(file_data), opts["out"]) if opts.get("smoke") else dict(file_data)
    pool, val = opts.get("pool") or data.get("pool"), opts.get("val") or data.get("val")
    if not pool or not val:
        raise ConfigError("the correlation experiment needs a pool and a validation pool "
                          "(--pool, --val)")
    settings = {**SIZES, **(data.get("set") or {})}
    settings.update({k: yaml.safe_load(v)
                     for k, v in key_values(opts.get("set", ()), "--set").items()})
    settings.update({k: opts[k] for k in SIZES if opts.get(k) is not None})
    sizes = {k: settings.pop(k) for k in ("candidates", "group_size")}
    seeds = parse_seeds(opts.get("seeds") or data.get("seeds", "0-4"))
    check_sizes(settings.get("initial"), sizes["candidates"], sizes["group_size"], seeds)
    loop = LoopConfig(pool_uri=absolute_uri(pool), val_uri=absolute_uri(val),
                      train=TrainConfig())
    loop = shape_model(apply_overrides(loop, settings), settings.get("model.n_classes"))
    return {"pool_uri": loop.pool_uri, "val_uri": loop.val_uri, "columns": loop.columns,
            "model": loop.model, "train": loop.train, "seeds": seeds, "initial": loop.initial, **sizes, "out": str(Path(opts["out"]).resolve())}


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

    opts["set"], opts["smoke"] = opts.pop("set_"), smoke
    kwargs = build_correlation(read_experiment(config_file) if config_file else {}, opts)
    n_groups = kwargs["candidates"] // max(1, kwargs["group_size"])
    click.echo(f"correlation: seeds {list(kwargs['seeds'])}, {kwargs['initial']:,} initial, "
               f"{kwargs['candidates']:,} candidates in {n_groups} groups of "
               f"{kwargs['group_size']} -> {kwargs['out']}")
    bar = Progress(len(kwargs["seeds"]) * (1 + n_groups), "models", unit="model")
    try:
        result = run_correlation(**kwargs, address=address, cpus_per_task=cpus_per_task,
                                 progress=lambda done, total: bar.to(done))
    finally:
        bar.close()
    for row in result["summary"]:
        click.echo(f"  {row['pair']}: Spearman {row['rho']:+.4f} "
                   f"[{row['low']:+.4f}, {row['high']:+.4f}] over {row['seeds']} seeds")
    click.echo(f"wrote {kwargs['out']}/summary.md, groups.parquet, correlation.png")
