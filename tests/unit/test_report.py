"""The sweep report's files and tables, on hand-made curves whose answers are known."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from alray.experiments import plots
from alray.experiments.compare import compare_sweep
from alray.experiments.report import savings_markdown, summary_page, write_report

X = (2000, 2500, 3000)


def _sweep(tmp_path, arms: dict) -> str:
    rows = [(variant, variant.split(" ")[0], seed, step, X[step], acc, acc - 0.05)
            for variant, per_seed in arms.items() for seed, curve in enumerate(per_seed)
            for step, acc in enumerate(curve)]
    curves = pd.DataFrame(rows, columns=["variant", "strategy", "seed", "step", "labelled",
                                         "fused_accuracy", "fused_macro_f1"])
    sweep = tmp_path / "sweep"
    sweep.mkdir()
    curves.to_parquet(sweep / "curves.parquet")
    return str(sweep)


ARMS = {
    "random": [[0.40, 0.50, 0.49]] * 3,
    "margin": [[0.40, 0.44, 0.48], [0.40, 0.58, 0.60], [0.40, 0.58, 0.60]],
    "entropy": [[0.40, 0.52, 0.55], [0.40, 0.53, 0.55], [0.40, 0.51, 0.56]],
}


def test_report_files_and_the_censored_saving(tmp_path):
    files = write_report(_sweep(tmp_path, ARMS), tmp_path / "report")
    names = sorted(os.path.basename(f) for f in files)
    assert names == ["curves-all.png", "curves-entropy.png", "curves-margin.png",
                     "per_seed.csv", "savings.png", "summary.md"]
    assert all(os.path.getsize(f) > 0 for f in files)
    assert not [f for f in os.listdir(tmp_path / "report") if "tmp" in f]
    page = (tmp_path / "report" / "summary.md").read_text()
    # the overview table is the page's third paragraph (alray demo prints it)
    assert page.split("\n\n")[2].startswith("| variant | seeds | random baseline |")
    savings = page.split("## Labels to reach")[1].split("##")[0]
    margin = next(line for line in savings.splitlines() if line.startswith("| margin | 3 |"))
    # 2 of 3 seeds reached random's final; the third is censored: a bound, sign flipped
    assert margin.endswith("| >= 2,500 (2/3) | -2.9 [-42.1, 36.4]% | <= -3.4% | <= -2.7% "
                           "| <= -2.0% |")
    assert "random's final accuracy" in page and "isotonic" in page
    assert "Against the reference (margin)" in page and "| entropy | margin | 3 |" in page
    per_seed = pd.read_csv(tmp_path / "report" / "per_seed.csv")
    assert len(per_seed) == 9 and "saving_100_kind" in per_seed


def test_report_with_another_reference_and_no_random_arm(tmp_path):
    sweep = _sweep(tmp_path, {"margin": ARMS["margin"], "entropy": ARMS["entropy"]})
    files = write_report(sweep, tmp_path / "report", reference="entropy")
    page = (tmp_path / "report" / "summary.md").read_text()
    assert "No plain random arm" in page and "| margin | entropy | 3 |" in page
    assert "savings.png" not in [os.path.basename(f) for f in files]


def test_savings_figure_has_no_zero_width_bars(tmp_path, monkeypatch):
    """One seed: no interval, so no error bar at all; a censored bound: no error bar."""
    arms = {"random": [[0.40, 0.50, 0.49]], "margin": [[0.40, 0.58, 0.60]],
            "entropy": [[0.40, 0.44, 0.48]]}
    figures = []
    real = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, out: figures.append(fig) or real(fig, out))
    write_report(_sweep(tmp_path, arms), tmp_path / "report")
    savings = figures[-1].axes[0]
    from matplotlib.container import ErrorbarContainer
    bars = [c for c in savings.containers if isinstance(c, ErrorbarContainer)]
    segments = [s for c in bars for s in c.lines[2][0].get_segments()] if bars else []
    assert segments == []  # one seed each: not one error bar, zero-width or not
    hatched = [p for p in savings.patches if p.get_hatch()]
    assert len(hatched) >= 1  # entropy never reached 100% of random's final: a bound


def test_one_seed_cells_have_no_interval_and_step_zero_targets_are_na():
    curves = pd.DataFrame(
        [(v, 0, s, X[s], a) for v, c in {"random": [0.50, 0.45, 0.48],
                                          "margin": [0.50, 0.47, 0.55]}.items()
         for s, a in enumerate(c)], columns=["variant", "seed", "step", "labelled", "accuracy"])
    result = compare_sweep(curves)
    table = savings_markdown(result["summary"][result["summary"]["role"] == ""])
    row = table.splitlines()[2]
    # met at step 0 by both: no labels, no saving (never "0.0 [0.0, 0.0]%")
    assert row == "| margin | 1 | " + "n/a (1/1, 1 at the start) | " * 4 + "n/a | " * 3 + "n/a |"
    page = summary_page(result, [])
    assert "| margin | 1 | random | 0.550 | " in page


def test_a_saving_from_fewer_seeds_says_so():
    arms = {"random": [[0.50, 0.45, 0.48], [0.40, 0.50, 0.49]],
            "margin": [[0.50, 0.47, 0.55], [0.40, 0.58, 0.60]]}
    curves = pd.DataFrame([(v, seed, s, X[s], a) for v, per in arms.items()
                           for seed, c in enumerate(per) for s, a in enumerate(c)],
                          columns=["variant", "seed", "step", "labelled", "accuracy"])
    summary = compare_sweep(curves)["summary"]
    row = savings_markdown(summary[summary["role"] == ""]).splitlines()[2]
    # seed 0: random is at its target at step 0 (n/a); seed 1: 1 - 2250/2450 = 8.2%
    assert row.endswith("| 8.2% (1 of 2 seeds) |")
    assert "2,250 (2/2, 1 at the start)" in row


def test_no_pyplot_and_no_backend_switch():
    """The library draws with Figure + Agg canvas: pyplot is never imported, and the
    process's backend is left as it was."""
    code = ("import matplotlib, sys; matplotlib.use('pdf'); import tempfile, pandas as pd\n"
            "from alray.experiments import plots\n"
            "fig, ax = plots.new_figure(2, 2); ax.plot([0, 1]);\n"
            "plots.save_figure(fig, tempfile.mkdtemp() + '/f.png')\n"
            "assert 'matplotlib.pyplot' not in sys.modules\n"
            "assert matplotlib.get_backend() == 'pdf', matplotlib.get_backend()\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    for module in ("report.py", "plots.py", "correlation_report.py"):
        text = open(os.path.join(os.path.dirname(plots.__file__), module)).read()
        assert "pyplot" not in text.replace("pyplot's", "") and "matplotlib.use" not in text


@pytest.mark.parametrize("share", [0.95, 1.0])
def test_the_pooled_mean_curve_never_exceeds_its_members(share):
    rng = np.random.default_rng(0)
    arms = {"random sampling=top": [list(0.4 + np.sort(rng.uniform(0, 0.2, 3)))] * 2,
            "random sampling=softmax": [list(0.4 + np.sort(rng.uniform(0, 0.2, 3)))] * 2}
    curves = pd.DataFrame([(v, seed, s, X[s], a) for v, per in arms.items()
                           for seed, c in enumerate(per) for s, a in enumerate(c)],
                          columns=["variant", "seed", "step", "labelled", "accuracy"])
    bands = compare_sweep(curves)["bands"]
    pooled = bands[bands["variant"] == "random (pooled)"]["mean"].to_numpy()
    top = bands[bands["variant"] == "random sampling=top"]["mean"].to_numpy()
    soft = bands[bands["variant"] == "random sampling=softmax"]["mean"].to_numpy()
    np.testing.assert_allclose(pooled, (top + soft) / 2)
    assert share  # parametrised only to run on two draws of the same shape


def test_the_loop_and_correlation_figures(tmp_path):
    import pyarrow as pa

    metrics = pa.table({"labelled": [100, 120], "fused_accuracy": [0.5, 0.6],
                        "fused_macro_f1": [0.4, 0.5], "image_accuracy": [0.45, 0.5],
                        "image_macro_f1": [0.3, 0.4], "fused_balanced_accuracy": [0.4, 0.5]})
    groups = [{"seed": s, "group": g, "accuracy": 0.5 + 0.01 * g, "mean_loss": g,
               "mean_margin": -g} for s in (0, 1) for g in range(3)]
    passive = [{"seed": 0, "accuracy": 0.5}, {"seed": 1, "accuracy": 0.49}]
    for path in (plots.plot_run(metrics, tmp_path / "curve.png", "a run"),
                 plots.plot_groups(groups, passive, ["loss", "margin"],
                                   str(tmp_path / "correlation.png"))):
        assert os.path.getsize(path) > 0
    assert sorted(os.listdir(tmp_path)) == ["correlation.png", "curve.png"]


def _named_sweep(tmp_path, name: str, arms: dict, loop: dict | None = None) -> str:
    """``_sweep`` in its own folder, with a sweep.json holding ``loop`` if given."""
    import json

    folder = tmp_path / name
    folder.mkdir()
    path = _sweep(folder, arms)
    if loop is not None:
        (folder / "sweep" / "sweep.json").write_text(json.dumps({"loop": loop}))
    return path


LOOP = {"pool_uri": "/p/pool", "val_uri": "/p/val", "initial": 2000}


def test_two_paired_sweeps_are_reported_together(tmp_path):
    main = _named_sweep(tmp_path, "main", ARMS, LOOP)
    frozen = _named_sweep(tmp_path, "frozen", {
        "random freeze_batchnorm=True": [[0.40, 0.45, 0.47]] * 3,
        "bald freeze_batchnorm=True": [[0.40, 0.50, 0.52]] * 3}, LOOP)
    write_report([main, frozen], tmp_path / "report")
    page = (tmp_path / "report" / "summary.md").read_text()
    # the frozen arm has its own learner's baseline, and a row in the study's table
    assert "| bald freeze_batchnorm=True | 3 | random freeze_batchnorm=True |" in page
    study = page.split("## The study's table")[1].split("![")[0]
    # one passive: random's plateau 0.49 (isotonic of 0.40, 0.50, 0.49 -> 0.495, pooled)
    assert "passive: `random` smoothed" in study and "`random`'s smoothed plateau" in study
    bald = next(line for line in study.splitlines() if line.startswith("| bald"))
    # 95% of 0.495 = 0.47025: 2000 + 0.07025 / 0.10 * 500 = 2,351 in every seed
    assert bald.startswith("| bald freeze_batchnorm=True | 3 | 2,351 [2,351, 2,351] (3/3) |")
    assert os.path.exists(tmp_path / "report" / "curves-bald_freeze_batchnorm-True.png")


def test_sweeps_that_share_a_variant_or_are_not_paired_are_refused(tmp_path):
    from alray.errors import ConfigError

    main = _named_sweep(tmp_path, "main", ARMS, LOOP)
    again = _named_sweep(tmp_path, "again", {"random": ARMS["random"]}, LOOP)
    with pytest.raises(ConfigError, match="'random' is in both .*main.*again"):
        write_report([main, again], tmp_path / "report")
    other = _named_sweep(tmp_path, "other", {"bald": ARMS["entropy"]},
                         dict(LOOP, initial=100))
    with pytest.raises(ConfigError, match="other.*initial is 100 but .*main.* has 2000"):
        write_report([main, other], tmp_path / "report")
    assert not os.path.exists(tmp_path / "report")


def test_the_report_command_takes_several_sweeps(tmp_path):
    from click.testing import CliRunner

    from alray.cli import main

    first = _named_sweep(tmp_path, "first", ARMS, LOOP)
    second = _named_sweep(tmp_path, "second", {"bald": ARMS["entropy"]}, LOOP)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", first, second, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "| bald | 3 | random |" in (out / "summary.md").read_text()
    clash = CliRunner().invoke(main, ["report", first, first, "--out", str(out)])
    assert clash.exit_code != 0 and "is in both" in clash.output
