"""What every command shares: error handling, pool column options, progress bars, the
connection to Ray.

Every ``AlrayError`` becomes one line per problem on stderr and exit status 2, followed
by where Ray's logs are when this command routed them to a file.
"""
from __future__ import annotations

import functools
import sys

import click
from alray.config import PoolConfig
from alray.errors import AlrayError, ConfigError

EXIT_BAD_INPUT = 2
RAY_LOG = "ray.log"  # in a command's logs/ folder (its run or output folder)
VERBOSE = {"on": False}  # `alray --verbose`: Ray's own logs on the terminal


def connect_ray(address: str | None, folder) -> None:
    """Connect to Ray (``alray.runtime.connect``) with Ray's logs appended to
    ``FOLDER/logs/ray.log`` instead of the terminal; ``alray --verbose`` keeps Ray's
    defaults and forwards the workers' output too."""
    from pathlib import Path
    from alray.runtime import connect

    if VERBOSE["on"]:
        connect(address, log_to_driver=True)
    else:
        connect(address, log_file=Path(folder) / "logs" / RAY_LOG)


def connect_unless_local(compute, folder) -> None:
    """``connect_ray`` to the compute options' address, unless they say ``--local``."""
    if not compute.local:
        connect_ray(compute.address, folder)


def _ray_log_line() -> None:
    from alray.runtime import ray_log

    if ray_log() is not None:
        click.echo(f"alray: Ray's logs: {ray_log()} (alray --verbose shows them here)",
                   err=True)


def _fail(problems: list[str]) -> None:
    for line in problems:
        click.echo(f"alray: error: {line}", err=True)
    _ray_log_line()
    sys.exit(EXIT_BAD_INPUT)


def friendly_errors(fn):
    """Turn AlrayError into clean lines and exit 2; a bug still says what it was."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except AlrayError as exc:
            _fail(exc.problems)
        except KeyboardInterrupt:
            click.echo("alray: interrupted", err=True)
            sys.exit(130)
        except Exception:
            _ray_log_line()  # then the traceback: a bug still says what it was
            raise
    return wrapper


def pool_options(fn):
    """Column-name options shared by every command that reads a pool."""
    fn = click.option("--id-column", default="id", show_default=True)(fn)
    fn = click.option("--label-column", default="label", show_default=True)(fn)
    fn = click.option("--embedding-column", "embedding_columns", multiple=True,
                      metavar="MODALITY=COLUMN",
                      help="Modality and its column; repeat per modality "
                           "[default: image=image_emb, text=text_emb].")(fn)
    return fn


def show_columns_option(fn):
    """``--show-columns``: pool columns copied into every query (score, loop, serve)."""
    return click.option("--show-columns", default=None, metavar="COLUMNS",
                        help="Other columns of the pool (e.g. url,title) copied into every "
                             "query file for the assessors; comma-separated.")(fn)


def pool_config(id_column: str, label_column: str, embedding_columns: tuple[str, ...],
                show_columns: str | None = None) -> PoolConfig:
    columns = {}
    for item in embedding_columns:
        name, sep, column = item.partition("=")
        if not sep or not name or not column:
            raise ConfigError(f"--embedding-column {item!r}: expected MODALITY=COLUMN")
        columns[name] = column
    kwargs = {"id_column": id_column, "label_column": label_column}
    if columns:
        kwargs["embedding_columns"] = columns
    if show_columns:
        kwargs["show_columns"] = tuple(c.strip() for c in show_columns.split(",") if c.strip())
    return PoolConfig(**kwargs)


class Progress:
    """A tqdm bar on stderr; silent when stderr is not a terminal and quiet is asked."""

    def __init__(self, total: int, desc: str, unit: str = "it"):
        from tqdm import tqdm
        self.bar = tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "row",
                        file=sys.stderr,
                        dynamic_ncols=True, mininterval=0.5)
        self.done = 0

    def to(self, done: int, postfix: str | None = None) -> None:
        self.bar.update(done - self.done)
        self.done = done
        if postfix:
            self.bar.set_postfix_str(postfix, refresh=False)

    def close(self) -> None:
        self.bar.close()



def parse_knobs(items) -> dict:
    import yaml
    knobs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KNOB=VALUE")
        knobs[name] = yaml.safe_load(value)
    return knobs


def sampling_options(fn):
    """How the query is drawn from the scores (docs/acquisition.md); score and loop."""
    fn = click.option("--candidates", type=int, default=0, show_default=True,
                      help="Score only a seeded random subset of this many unlabelled "
                           "posts (new each step); 0 = the whole pool.")(fn)
    fn = click.option("--class-balance", type=float, default=0.0, show_default=True,
                      help="Share of the query: rounds over predicted classes, each "
                           "class at most ceil(share x query size) posts before the best "
                           "remaining fill the query; 0 = off.")(fn)
    fn = click.option("--sampling-beta", type=float, default=1.0, show_default=True,
                      help="Inverse temperature of stochastic sampling.")(fn)
    fn = click.option("--sampling", type=click.Choice(["top", "softmax", "power", "rank"]),
                      default="top", show_default=True,
                      help="top: the best scores; softmax/power/rank: a seeded stochastic "
                           "batch (Gumbel-top-k; rank needs --scores-out).")(fn)
    return fn




def export_options(fn):
    """Where the assessors work: ``--export label-studio`` also writes each query as
    Label Studio tasks and its labelling config (docs/assessors.md)."""
    fn = click.option("--class-names", default=None, metavar="FILE",
                      help="Class names, one a line (class 0 first), for the assessors' "
                           "tool [default: the class numbers].")(fn)
    fn = click.option("--export", "export", type=click.Choice(["none", "label-studio"]),
                      default="none", show_default=True,
                      help="Also write the query as Label Studio tasks and config.")(fn)
    return fn


def class_names_of(path: str | None) -> list[str] | None:
    from alray.loop.labelstudio.tasks import read_class_names

    return read_class_names(path) if path else None


def show_input_warnings() -> None:
    """alray's input warnings as ``alray: warning: ...`` lines on stderr (not Python's
    ``file:line: InputWarning:`` form); any other warning as Python shows it."""
    import warnings

    from alray.errors import InputWarning

    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, InputWarning):
            click.echo(f"alray: warning: {message}", err=True)
        else:
            shown(message, category, filename, lineno, file, line)
    warnings.showwarning = show
    # for this command only: the caller (a test, a notebook) gets its own display back
    click.get_current_context().call_on_close(
        lambda: setattr(warnings, "showwarning", shown))
