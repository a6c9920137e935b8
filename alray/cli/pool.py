"""``alray validate``, ``alray generate`` and ``alray pool pack``: checking, making and
rewriting pools."""
from __future__ import annotations

import json
import sys

import click

from alray.cli.common import (
    EXIT_BAD_INPUT, Progress, friendly_errors, parse_knobs, pool_config, pool_options,
    show_columns_option)
from alray.pool.synthetic import PRESETS, GeneratorConfig, preset_options
from alray.errors import ConfigError


@click.command()
@click.argument("pool")
@click.option("--classes", type=int, default=None, help="Number of classes: labels must be in [0, N).")
@click.option("--dim", "dims", multiple=True, metavar="MODALITY=DIM",
              help="Expected embedding dimension; repeat per modality (default: inferred).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--max-examples", type=int, default=20, show_default=True,
              help="Problems listed per kind (all are counted).")
@pool_options
@show_columns_option
@friendly_errors
def validate(pool, classes, dims, as_json, max_examples, id_column, label_column,
             embedding_columns, show_columns):
    """Check that POOL (a Parquet file or directory of shards) follows the pool contract."""
    config = pool_config(id_column, label_column, embedding_columns, show_columns)
    if config.show_columns:  # every shard has them, or the file and column are named
        from alray.pool import io
        from alray.scoring.plan import check_shown
        for shard in io.pool_shards(pool):
            check_shown(config, io.open_parquet(shard).schema_arrow.names, shard.uri)
    expected = _parse_dims(dims)
    if classes is not None and classes < 1:
        raise ConfigError(f"--classes must be >= 1, got {classes}")
    report = run_validation(pool, config, classes, expected, max_examples)
    if as_json:
        click.echo(json.dumps(report.to_dict(), indent=2, default=str))
    else:
        print_report(report)
    sys.exit(0 if report.ok else EXIT_BAD_INPUT)


def run_validation(pool, config, classes, dims, max_examples=20):
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


def print_report(report) -> None:
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
        click.echo(f"  {modality:<10} dim {s.dims.get(modality, '?')}, present in {share:.1%}"
                   f", {s.layouts.get(modality, '?')} layout")
    if s.classes:
        counts = [s.classes[c] for c in sorted(s.classes)]
        click.echo(f"  classes    {len(counts)} seen; largest {max(counts):,}, "
                   f"smallest {min(counts):,} (ratio {max(counts) / max(min(counts), 1):.1f})")
        click.echo("  histogram  " + _histogram(s.classes))
    if s.rows > PACK_HINT_ROWS and any("list" in v for v in s.layouts.values()):
        click.echo(f"  hint       list-layout embeddings decode ~8x slower than packed ones: "
                   f"`alray pool pack {report.uri} OUT` (docs/formats.md)")


PACK_HINT_ROWS = 1_000_000  # below this, decoding a list-layout pool takes seconds


def _histogram(classes) -> str:
    """A one-line sparkline of class sizes, largest first (the long tail at a glance)."""
    blocks = " ▁▂▃▄▅▆▇█"
    counts = sorted(classes.values(), reverse=True)
    top = max(counts)
    return "".join(blocks[max(1, round(8 * c / top))] for c in counts)


@click.command()
@click.argument("out")
@click.option("--rows", type=int, default=None,
              help=f"Pool rows [default: {GeneratorConfig.rows:,}, or the preset's]")
@click.option("--val-rows", type=int, default=None,
              help=f"Validation rows [default: {GeneratorConfig.val_rows:,}, or the preset's]")
@click.option("--classes", type=int, default=None,
              help=f"Classes [default: {GeneratorConfig.classes}, or the preset's]")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default=None,
              help="Named generator settings (docs/reproduction.md); --rows, --val-rows, "
                   "--classes and --set override them.")
@click.option("--set", "knobs", multiple=True, metavar="KNOB=VALUE",
              help="Any other generator knob (see docs/formats.md), e.g. --set label_noise=0.2")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@click.option("--dataset", type=click.Choice(["synthetic", "digits"]), default="synthetic",
              show_default=True, help="digits: scikit-learn's handwritten digits as a "
              "two-view pool (left and right image halves); the size options do not apply.")
@friendly_errors
def generate(out, rows, val_rows, classes, seed, preset, knobs, overwrite, dataset):
    """Generate a study-like synthetic pool (or the digits pool) into OUT/pool and OUT/val."""
    from alray.pool import io
    if preset and dataset != "synthetic":
        raise ConfigError(f"--preset {preset} is a synthetic pool's; not with --dataset {dataset}")
    loc = io.locate(out)
    if loc.fs.get_file_info(loc.path).type != io.pafs.FileType.NotFound and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    if dataset == "digits":
        from alray.pool.digits import write_digits_pool
        result = write_digits_pool(out, seed)
        click.echo(f"wrote {result['pool']} ({result['rows']:,} digits) and {result['val']} "
                   f"({result['val_rows']:,})")
        return
    given = {"rows": rows, "val_rows": val_rows, "classes": classes}
    options = {**(preset_options(preset) if preset else {}), "seed": seed,
               **{k: v for k, v in given.items() if v is not None}, **parse_knobs(knobs)}
    run_generation(out, GeneratorConfig.from_dict(options))


def run_generation(out, cfg):
    from alray.pool.synthetic import generate_pool
    bar = Progress(total=cfg.rows + cfg.val_rows, desc="generate", unit="row")
    result = generate_pool(out, cfg, progress=lambda done, total: bar.to(done))
    bar.close()
    click.echo(f"wrote {result['pool']} ({cfg.rows:,} rows) and {result['val']} "
               f"({cfg.val_rows:,} rows)")
    return result


@click.group("pool")
def pool_group() -> None:
    """Rewrite pools (see docs/formats.md)."""


@pool_group.command("pack")
@click.argument("in_uri", metavar="IN")
@click.argument("out", metavar="OUT")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32",
              show_default=True, help="float16 halves the bytes and rounds the vectors.")
@click.option("--overwrite", is_flag=True, help="Replace OUT if it exists.")
@pool_options
@friendly_errors
def pack(in_uri, out, dtype, overwrite, id_column, label_column, embedding_columns):
    """Rewrite the pool IN into the directory OUT with its embeddings packed as
    fixed-size binary vectors (~8x faster to decode); every other column unchanged."""
    from alray.pool import io
    from alray.pool.pack import pack_pool
    config = pool_config(id_column, label_column, embedding_columns)
    loc = io.locate(out)
    if loc.fs.get_file_info(loc.path).type != io.pafs.FileType.NotFound and not overwrite:
        raise ConfigError(f"{out} exists; pass --overwrite to replace it")
    bar = Progress(total=0, desc="pack", unit="row")
    result = pack_pool(in_uri, out, dtype, config,
                       progress=lambda done, total: (setattr(bar.bar, "total", total),
                                                     bar.to(done)))
    bar.close()
    click.echo(f"wrote {result['pool']}: {result['rows']:,} rows in {result['shards']} "
               f"shard(s), packed {dtype}, {result['bytes_out'] / 2**20:,.1f} MiB "
               f"(was {result['bytes_in'] / 2**20:,.1f} MiB)")
