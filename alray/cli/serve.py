"""``alray serve`` (the online scoring service) and ``alray online queue`` (its routed
posts -> the run's next query for assessors). ``jobs/serve.py`` runs the same command."""
from __future__ import annotations

import os
import stat

import click

from alray.cli.common import friendly_errors, pool_config, pool_options, show_columns_option
from alray.cli.options import options, overrides
from alray.errors import ConfigError

TOKEN_ENV = "ALRAY_SERVE_TOKEN"


def read_token(token_file: str | None) -> str | None:
    """The bearer token: the file's first line, else $ALRAY_SERVE_TOKEN, else None. A
    token file others can read is refused, as ssh refuses such a key."""
    if token_file:
        try:
            mode = os.stat(token_file).st_mode
            if mode & (stat.S_IRWXG | stat.S_IRWXO):
                raise ConfigError(f"--token-file {token_file}: readable by other users "
                                  f"(mode {stat.S_IMODE(mode):04o}); chmod 600 it")
            with open(token_file) as f:
                token = f.readline().strip()
        except OSError as exc:
            raise ConfigError(f"--token-file {token_file}: cannot read it ({exc.strerror})"
                              ) from None
        if not token:
            raise ConfigError(f"--token-file {token_file}: the file is empty")
        return token
    return os.environ.get(TOKEN_ENV) or None


@click.command()
@click.option("--checkpoint", default=None,
              help="Checkpoint to serve [default: the --run-dir's latest].")
@click.option("--run-dir", default=None,
              help="Loop run: routed posts go to RUN/online/, new checkpoints are served.")
@click.option("--route-budget", type=float, default=0.02, show_default=True,
              help="Share of posts routed to assessors.")
@click.option("--calibration-pool", default=None,
              help="Pool whose scores set the first threshold [default: first traffic].")
@click.option("--calibration-rows", type=int, default=20_000, show_default=True)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8000, show_default=True)
@click.option("--replicas", type=int, default=1, show_default=True)
@click.option("--min-replicas", type=int, default=None, help="Autoscale from this many...")
@click.option("--max-replicas", type=int, default=None, help="... to this many replicas.")
@click.option("--num-cpus", type=float, default=1.0, show_default=True,
              help="CPUs per replica (its torch threads).")
@click.option("--num-gpus", type=float, default=0.0, show_default=True,
              help="GPUs per replica.")
@click.option("--batch-requests", type=int, default=16, show_default=True,
              help="Requests joined into one forward pass (serve.batch).")
@click.option("--batch-wait-ms", type=float, default=5.0, show_default=True)
@click.option("--max-body-mb", type=float, default=64.0, show_default=True)
@click.option("--max-posts", type=int, default=20_000, show_default=True,
              help="Posts one request may hold (a compressed body is counted decoded).")
@click.option("--max-decoded-mb", type=float, default=256.0, show_default=True,
              help="Size one request's posts may decode to.")
@click.option("--checkpoint-root", default=None,
              help="/reload loads only below this folder [default: the run's "
                   "checkpoints, else the --checkpoint's folder].")
@click.option("--top-classes", type=int, default=3, show_default=True)
@options(("strategy", "head", "mc_samples", "seed"))
@click.option("--poll-s", type=float, default=2.0, show_default=True,
              help="How often replicas look for a new checkpoint.")
@click.option("--id-type", type=click.Choice(["int64", "string"]), default="int64",
              show_default=True)
@click.option("--token-file", default=None,
              help=f"Bearer token required on every request [default: ${TOKEN_ENV}].")
@click.option("--address", default=None, help="Ray cluster [default: embedded Ray].")
@pool_options
@show_columns_option
@friendly_errors
def serve(**p):
    """Score posts over HTTP as they arrive and route the uncertain ones to assessors."""
    from alray.cli.common import connect_ray
    from alray.config import ScoreConfig
    from alray.serve.config import ServeConfig
    from alray.serve.runner import check_bind, check_port, serve_forever

    token = read_token(p["token_file"])
    check_bind(p["host"], token)  # before anything starts
    config = ServeConfig(
        checkpoint=p["checkpoint"], run_dir=p["run_dir"],
        score=ScoreConfig.from_dict({k[len("score."):]: v for k, v in overrides(
            p, ("strategy", "head", "mc_samples", "seed")).items() if k.startswith("score.")}),
        route_budget=p["route_budget"], top_classes=p["top_classes"],
        calibration_pool=p["calibration_pool"], calibration_rows=p["calibration_rows"],
        host=p["host"], port=p["port"], replicas=p["replicas"],
        min_replicas=p["min_replicas"], max_replicas=p["max_replicas"],
        num_cpus=p["num_cpus"], num_gpus=p["num_gpus"],
        max_batch_requests=p["batch_requests"], batch_wait_s=p["batch_wait_ms"] / 1000,
        max_body_mb=p["max_body_mb"], poll_s=p["poll_s"], id_type=p["id_type"],
        columns=pool_config(p["id_column"], p["label_column"], p["embedding_columns"],
                            p["show_columns"]),
        max_posts=p["max_posts"], max_decoded_mb=p["max_decoded_mb"],
        checkpoint_root=p["checkpoint_root"])
    if not (p["address"] or os.environ.get("RAY_ADDRESS")):
        check_port(config.host, config.port)  # an embedded Ray: nobody else's Serve
    import ray.serve  # noqa: F401  (its console logger exists before Ray's logs are routed)
    logs = p["run_dir"] or os.path.dirname(os.path.abspath(p["checkpoint"]))
    connect_ray(p["address"], logs)
    summary = serve_forever(config, token, p["address"], echo=click.echo)
    click.echo(f"stopped: {summary['posts_seen']:,} posts scored, "
               f"{summary['posts_routed']:,} routed"
               + (f" (in {summary['routed_dir']})" if summary["routed_dir"] else ""))


@click.group()
def online():
    """The online service's routed posts."""


@online.command("queue")
@click.argument("run_dir")
@friendly_errors
def queue(run_dir):
    """Make the posts `alray serve` routed in RUN_DIR its next query for assessors."""
    from alray.serve.queue import queue_routed

    out = queue_routed(run_dir)
    click.echo(f"step {out['step']}: {out['queued']} routed posts queued in {out['query']} "
               f"({out['dropped']} already labelled or sent twice)"
               + (f"; new pool shard {out['pool_shard']}" if out["pool_shard"] else ""))
    refused = out["refused"]
    if refused:
        click.echo(f"alray: {len(refused)} routed posts refused: their id is in the pool "
                   "with other embeddings, so a label would train the pool's row (ids: "
                   f"{', '.join(map(str, refused[:10]))}{' ...' if len(refused) > 10 else ''})",
                   err=True)
    click.echo(f"label it, then: alray labels import {run_dir} FILE && "
               f"alray loop --run-dir {run_dir} --resume")
