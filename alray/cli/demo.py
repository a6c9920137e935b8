"""``alray demo``: the main job end to end on the embedded default (README command 1).

Generate a study-like pool, validate it, train the passive model, score it on Ray Data,
run a short simulated loop (Ray Data scoring, Ray Train fine-tuning) and a smoke sweep on
Ray Tune with its report.
"""
from __future__ import annotations

import sys

import click

from alray.cli.common import EXIT_BAD_INPUT, friendly_errors
from alray.cli.pool import print_report, run_generation, run_validation
from alray.cli.score import run_scoring
from alray.cli.options import SEED_KEYS
from alray.cli.train import run_training
from alray.config import PoolConfig
from alray.pool.synthetic import GeneratorConfig


@click.command()
@click.option("--out", default="data/demo", show_default=True, help="Folder for the demo's files.")
@click.option("--rows", type=int, default=250_000, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--loop-steps", type=int, default=5, show_default=True)
@friendly_errors
def demo(out, rows, seed, loop_steps):
    """The main job end to end on the embedded default: generate, validate, train, score,
    a short loop and a smoke sweep with its report."""
    import time
    started = time.perf_counter()
    cfg = GeneratorConfig(rows=rows, seed=seed)
    click.echo(f"== 1. generate a study-like pool of {rows:,} posts")
    result = run_generation(out, cfg)
    click.echo("== 2. validate it")
    report = run_validation(result["pool"], PoolConfig(), cfg.classes, None)
    print_report(report)
    if not report.ok:
        sys.exit(EXIT_BAD_INPUT)
    initial = min(2000, rows)
    click.echo(f"== 3. train the passive model on {initial:,} random labels (the study's "
               "45 epochs)")
    run_training(result["pool"], result["val"], PoolConfig(), f"{out}/passive.ckpt",
                 {"initial": initial, "model.n_classes": cfg.classes,
                  **{key: seed for key in SEED_KEYS}})
    click.echo("== 4. score the pool on an embedded Ray (Ray Data actors, streaming top-k): "
               "margin and BALD (K=20 MC dropout), 20 posts each")
    from alray.config import ComputeConfig, ScoreConfig
    from alray.pool.load import sample_labelled_ids
    labelled = sample_labelled_ids(result["pool"], PoolConfig(), initial, seed)
    score_cfg = ScoreConfig(strategies=("margin", "bald"), query_size=20, seed=seed)
    run_scoring(result["pool"], f"{out}/passive.ckpt", score_cfg, PoolConfig(), labelled,
                ComputeConfig(), f"{out}/query.parquet", 0, show=5)
    click.echo(f"== 5. a short simulated active-learning loop (margin, {loop_steps} steps of 20 "
               "posts): resident scoring actors, a long-lived Ray Train worker fine-tuning")
    import shutil
    from alray.cli.loop import invoke_loop
    shutil.rmtree(f"{out}/run-margin", ignore_errors=True)  # the pool was just regenerated
    invoke_loop(["--pool", result["pool"], "--val", result["val"], "--run-dir",
                 f"{out}/run-margin", "--initial", str(initial),
                 "--steps", str(loop_steps), "--seed", str(seed), "--classes",
                 str(cfg.classes)])
    _demo_sweep(out)
    click.echo(f"demo finished in {time.perf_counter() - started:.1f} s")


def _demo_sweep(out: str) -> None:
    """Step 6 of the demo: the shipped uncertainty experiment at its smoke size."""
    import os
    import shutil
    from pathlib import Path

    config = Path(__file__).resolve().parents[2] / "jobs" / "configs" / "uncertainty.yaml"
    if not config.exists():  # an installed package has no jobs/ folder
        click.echo("== 6. (skipped: jobs/configs/uncertainty.yaml is not here)")
        return
    click.echo("== 6. a smoke sweep on Ray Tune (random, least confident, margin, entropy "
               "x 2 seeds, paired) and its report")
    from alray.experiments.files import build_sweep, read_experiment
    from alray.experiments.report import write_report
    from alray.experiments.sweep import run_sweep
    sweep_dir, report_dir = f"{out}/sweep-smoke", f"{out}/report-smoke"
    shutil.rmtree(sweep_dir, ignore_errors=True)
    sweep = build_sweep(read_experiment(config), {"out": sweep_dir, "smoke": True})
    run_sweep(sweep, verbose=0)
    files = write_report(sweep_dir, report_dir)
    click.echo(Path(report_dir, "summary.md").read_text().split("\n\n")[2])
    click.echo(f"figures: {', '.join(os.path.basename(f) for f in files if f.endswith('.png'))}"
               f" in {report_dir}")
