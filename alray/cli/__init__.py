"""The ``alray`` command. Thin: parse options, build a config, call one library function.

One module per command group, each registered here explicitly; jobs in ``jobs/`` call
these same commands, so a job and its CLI share one option set.
"""
from __future__ import annotations

import os

import click

from alray.cli import (
    cluster, correlation, demo, experiments, loop, pool, score, serve, train)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="alray")
@click.option("-v", "--verbose", is_flag=True,
              help="Show Ray's own logs and progress here too [default: Ray's logs go "
                   "to logs/ray.log in the command's run or output folder].")
def main(verbose: bool) -> None:
    """alray: active learning on Ray - which posts should assessors label next."""
    from alray.cli.common import VERBOSE, show_input_warnings
    VERBOSE["on"] = verbose
    show_input_warnings()
    # Ray Data logs every dataset's plan at INFO on the console; keep that in its log file
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG",
                          os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                       "ray_data_logging.yaml"))


for command in (pool.validate, pool.generate, pool.pool_group, train.train, score.score,
                loop.loop, loop.labels, experiments.sweep, experiments.report,
                correlation.correlation, cluster.cluster, cluster.neighbours, demo.demo,
                serve.serve, serve.online):
    main.add_command(command)

__all__ = ["main"]
