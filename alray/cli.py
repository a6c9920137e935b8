"""The ``alray`` command. Thin: parse options, build a config, call one library function.

Jobs in ``jobs/`` call these same commands, so a job and its CLI share one option set.
Every ``AlrayError`` becomes one line per problem on stderr and exit status 2.
"""
from __future__ import annotations

import functools
import json
import sys

import click
import numpy as np

from alray.config import GeneratorConfig, PoolConfig, branch_widths_for
from alray.errors import AlrayError, ConfigError

EXIT_BAD_INPUT = 2


def _fail(problems: list[str]) -> None:
    for line in problems:
        click.echo(f"alray: error: {line}", err=True)
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


def pool_config(id_column: str, label_column: str, embedding_columns: tuple[str, ...]
                ) -> PoolConfig:
    columns = {}
    for item in embedding_columns:
        name, sep, column = item.partition("=")
        if not sep or not name or not column:
            raise ConfigError(f"--embedding-column {item!r}: expected MODALITY=COLUMN")
        columns[name] = column
    kwargs = {"id_column": id_column, "label_column": label_column}
    if columns:
        kwargs["embedding_columns"] = columns
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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="alray")
def main() -> None:
    """alray: active learning on Ray - which posts should assessors label next."""
    import os
    # Ray Data logs every dataset's plan at INFO on the console; keep that in its log file
    os.environ.setdefault("RAY_DATA_LOGGING_CONFIG",
                          os.path.join(os.path.dirname(__file__), "ray_data_logging.yaml"))


@main.command()
@click.argument("pool")
@click.option("--classes", type=int, default=None, help="Number of classes: labels must be in [0, N).")
@click.option("--dim", "dims", multiple=True, metavar="MODALITY=DIM",
              help="Expected embedding dimension; repeat per modality (default: inferred).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--max-examples", type=int, default=20, show_default=True,
              help="Problems listed per kind (all are counted).")
@pool_options
@friendly_errors
def validate(pool, classes, dims, as_json, max_examples, id_column, label_column,
             embedding_columns):
    """Check that POOL (a Parquet file or directory of shards) follows the pool contract."""
    config = pool_config(id_column, label_column, embedding_columns)
    expected = _parse_dims(dims)
    if classes is not None and classes < 1:
        raise ConfigError(f"--classes must be >= 1, got {classes}")
    report = _run_validation(pool, config, classes, expected, max_examples)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        _print_report(report)
    sys.exit(0 if report.ok else EXIT_BAD_INPUT)


def _run_validation(pool, config, classes, dims, max_examples=20):
    from alray.pool.validate import validate_pool
    bar = Progress(total=0, desc="validate", unit="shard")
    report = validate_pool(pool, config, n_classes=classes, dims=dims or None,
                           max_examples=max_examples,
                           progress=lambda i, n, rows: (setattr(bar.bar, "total", n),
                                                        bar.to(i, f"{rows:,} rows")))
    bar.close()
    return report


def _parse_dims(items) -> dict[str, int]:
    dims = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            dims[name] = int(value)
        except ValueError:
            raise ConfigError(f"--dim {item!r}: expected MODALITY=INTEGER") from None
    return dims


def _print_report(report) -> None:
    s = report.summary
    if not report.ok:
        for problem in report.problems:
            click.echo(f"alray: error: {problem}", err=True)
        for kind, count in sorted(report.counts.items()):
            click.echo(f"alray: error: {count:,} problem(s) of kind '{kind}'", err=True)
        click.echo(f"{report.uri}: INVALID ({sum(report.counts.values()):,} problems)")
        return
    click.echo(f"{report.uri}: valid")
    click.echo(f"  rows       {s.rows:,} in {s.shards} shard(s), {s.bytes / 2**20:,.1f} MiB")
    click.echo(f"  labelled   {s.labelled:,} ({s.labelled / max(s.rows, 1):.1%})")
    click.echo(f"  ids        {s.id_type}")
    for modality, share in s.coverage().items():
        click.echo(f"  {modality:<10} dim {s.dims.get(modality, '?')}, present in {share:.1%}")
    if s.classes:
        counts = [s.classes[c] for c in sorted(s.classes)]
        click.echo(f"  classes    {len(counts)} seen; largest {max(counts):,}, "
                   f"smallest {min(counts):,} (ratio {max(counts) / max(min(counts), 1):.1f})")
        click.echo("  histogram  " + _histogram(s.classes))


def _histogram(classes) -> str:
    """A one-line sparkline of class sizes, largest first (the long tail at a glance)."""
    blocks = " ▁▂▃▄▅▆▇█"
    counts = sorted(classes.values(), reverse=True)
    top = max(counts)
    return "".join(blocks[max(1, round(8 * c / top))] for c in counts)


@main.command()
@click.argument("out")
@click.option("--rows", type=int, default=GeneratorConfig.rows, show_default=True)
@click.option("--val-rows", type=int, default=GeneratorConfig.val_rows, show_default=True)
@click.option("--classes", type=int, default=GeneratorConfig.classes, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--set", "knobs", multiple=True, metavar="KNOB=VALUE",
              help="Any other generator knob (see docs/formats.md), e.g. --set label_noise=0.2")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--dataset", type=click.Choice(["synthetic", "digits"]), default="synthetic",
              show_default=True, help="digits: scikit-learn's handwritten digits as a "
              "two-view pool (left and right image halves); the size options do not apply.")
@friendly_errors
def generate(out, rows, val_rows, classes, seed, knobs, overwrite, dataset):
    """Generate a study-like synthetic pool (or the digits pool) into OUT/pool and OUT/val."""
    from alray.pool import io
    loc = io.locate(out)
    if loc.fs.get_file_info(loc.path).type != io.pafs.FileType.NotFound and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    if dataset == "digits":
        from alray.pool.digits import write_digits_pool
        result = write_digits_pool(out, seed)
        click.echo(f"wrote {result['pool']} ({result['rows']:,} digits) and {result['val']} "
                   f"({result['val_rows']:,})")
        return
    options = {"rows": rows, "val_rows": val_rows, "classes": classes, "seed": seed,
               **_parse_knobs(knobs)}
    _run_generation(out, GeneratorConfig.from_dict(options))


def _run_generation(out, cfg):
    from alray.pool.synthetic import generate_pool
    bar = Progress(total=cfg.rows + cfg.val_rows, desc="generate", unit="row")
    result = generate_pool(out, cfg, progress=lambda done, total: bar.to(done))
    bar.close()
    click.echo(f"wrote {result['pool']} ({cfg.rows:,} rows) and {result['val']} "
               f"({cfg.val_rows:,} rows)")
    return result


def _parse_knobs(items) -> dict:
    import yaml
    knobs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KNOB=VALUE")
        knobs[name] = yaml.safe_load(value)
    return knobs


@main.command()
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
    result = _run_training(pool_uri, val_uri, config, out, classes, epochs, heads, seed,
                           initial if labels_from_pool else None, labels_file)
    click.echo(f"wrote checkpoint {out} ({result['rows']:,} labelled posts)")


def _run_training(pool_uri, val_uri, config, out, classes, epochs, heads, seed, initial,
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


@main.command()
@click.option("--pool", required=True, help="Pool: a Parquet file or directory of shards.")
@click.option("--checkpoint", required=True, help="Model checkpoint directory.")
@click.option("--strategy", "strategies", default="margin", show_default=True,
              help="Strategy, or several separated by commas (e.g. margin,bald).")
@click.option("--query-size", type=int, default=20, show_default=True)
@click.option("--exclude", default=None, metavar="LABELS",
              help="Parquet or CSV file with an id column: posts already labelled.")
@click.option("--out", required=True, help="Query Parquet file to write.")
@click.option("--step", type=int, default=0, show_default=True)
@click.option("--mc-samples", type=int, default=20, show_default=True)
@click.option("--actors", type=int, default=1, show_default=True)
@click.option("--num-cpus-per-actor", type=float, default=None,
              help="CPUs per scoring actor [default: 0.5 locally, else 1].")
@click.option("--num-gpus-per-actor", type=float, default=0.0, show_default=True)
@click.option("--batch-size", type=int, default=4096, show_default=True)
@click.option("--head", default="fused", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--local", is_flag=True, help="Score in this process, without Ray.")
@click.option("--address", default=None, help="Ray cluster address (default: embedded Ray).")
@click.option("--show", type=int, default=10, show_default=True, help="Rows printed per strategy.")
@click.option("--scores-out", default=None, metavar="DIR",
              help="Also write every post's score per strategy to this Parquet directory.")
@sampling_options
@pool_options
@friendly_errors
def score(pool, checkpoint, strategies, query_size, exclude, out, step, mc_samples, actors,
          num_cpus_per_actor, num_gpus_per_actor, batch_size, head, seed, local, address,
          show, scores_out, sampling, sampling_beta, class_balance, candidates, id_column,
          label_column, embedding_columns):
    """Score --pool with --checkpoint; write the top --query-size posts per strategy."""
    from alray.config import ScoreConfig
    config = pool_config(id_column, label_column, embedding_columns)
    names = tuple(s.strip() for s in strategies.split(",") if s.strip())
    if num_cpus_per_actor is None:
        num_cpus_per_actor = 1.0 if address else 0.5
    cfg = ScoreConfig(strategies=names, query_size=query_size, head=head,
                      mc_samples=mc_samples, seed=seed, batch_size=batch_size, actors=actors,
                      num_cpus_per_actor=num_cpus_per_actor,
                      num_gpus_per_actor=num_gpus_per_actor, sampling=sampling,
                      sampling_beta=sampling_beta, sampling_step=step,
                      class_balance=class_balance, candidates=candidates)
    from alray.pool.load import read_ids_file
    exclude_ids = read_ids_file(exclude, config.id_column) if exclude else None
    _run_scoring(pool, checkpoint, cfg, config, exclude_ids, not local, address, out, step,
                 show, scores_out)


def _run_scoring(pool, checkpoint, cfg, config, exclude_ids, use_ray, address, out, step,
                 show=10, scores_out=None):
    from alray.scoring.pipeline import score_pool, write_query
    bar = Progress(total=0, desc="score", unit="row")
    tables = score_pool(pool, checkpoint, cfg, config, exclude_ids=exclude_ids,
                        use_ray=use_ray, address=address, scores_out=scores_out,
                        progress=lambda done, total: (setattr(bar.bar, "total", total),
                                                      bar.to(done)))
    bar.close()
    table = write_query(tables, out, step=step)
    for name, query in tables.items():
        click.echo(f"== {name}: top {min(show, query.num_rows)} of {query.num_rows}")
        click.echo(f"{'rank':>5} {'id':>12} {'score':>12} {'class':>6} {'prob':>7}")
        for row in query.slice(0, show).to_pylist():
            click.echo(f"{row['rank']:>5} {str(row['id']):>12} {row['score']:>12.6f} "
                       f"{row['predicted_class']:>6} {row['predicted_prob']:>7.4f}")
    click.echo(f"wrote {out} ({table.num_rows} rows, {len(tables)} strategies)")


if __name__ == "__main__":
    main()


# the loop's commands live in their own module; importing it registers them on ``main``
from alray import cli_loop  # noqa: E402,F401
from alray import cli_sweep  # noqa: E402,F401
from alray import cli_correlation  # noqa: E402,F401
from alray import cli_demo  # noqa: E402,F401
from alray import cli_serve  # noqa: E402,F401
