"""The report of a sweep: ``summary.md``, ``per_seed.csv`` and the figures.

``compare.compare_sweep`` computes everything (one random baseline, censored savings,
paired tests); this module only formats it as tables and writes the files. How to read
the numbers: docs/statistics.md.
"""
from __future__ import annotations

import os

import numpy as np

from alray.experiments import stats
from alray.experiments.compare import BASELINE, REFERENCE, SHARES, compare_sweep, pct
from alray.experiments.study_table import passive_name, study_markdown

BOUND_SIGNS = {stats.AT_MOST: "<= ", stats.AT_LEAST: ">= "}


def _cell(row, column: str, fmt: str, scale: float = 1.0, unit: str = "") -> str:
    """``mean [low, high]``, ``<= bound``, ``>= bound`` or ``n/a`` for one summary cell."""
    kind = row.get(f"{column}_kind", stats.EXACT)
    mean, low, high = row[column], row[f"{column}_low"], row[f"{column}_high"]
    if kind == stats.UNDEFINED or np.isnan(mean):
        return "n/a"
    if kind in BOUND_SIGNS:
        return f"{BOUND_SIGNS[kind]}{mean * scale:{fmt}}{unit}"
    if np.isnan(low):
        return f"{mean * scale:{fmt}}{unit}"
    return f"{mean * scale:{fmt}} [{low * scale:{fmt}}, {high * scale:{fmt}}]{unit}"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cells) + " |" for cells in rows]
    return "\n".join(lines) + "\n"


def overview_markdown(summary) -> str:
    """Variant, seeds, its random baseline, final accuracy and AUC with intervals."""
    rows = []
    for _, r in summary.iterrows():
        base = r["role"] or r["baseline"] or "none (no plain random arm)"
        rows.append([r["variant"], str(r["seeds"]), base, _cell(r, "final", ".3f"),
                     _cell(r, "auc", ".3f")])
    return _table(["variant", "seeds", "random baseline", "final accuracy",
                   "AUC (mean acc.)"], rows)


def comparisons_markdown(table) -> str:
    """A paired-test table (``compare.paired_comparisons``), AUC differences in points."""
    def p(value):
        return "n/a" if np.isnan(value) else f"{value:.3g}"

    rows = [[r["variant"], r["against"], str(r["pairs"]),
             _cell({"d": r["diff"], "d_low": r["diff_low"], "d_high": r["diff_high"]},
                   "d", "+.2f", 100), f"{r['ahead']}/{r['pairs']}", p(r["p_t"]),
             p(r["p_flip"]), p(r["holm_t"]), p(r["holm_flip"])]
            for _, r in table.iterrows()]
    if not rows:
        return "No pairs to test.\n"
    return _table(["variant", "against", "seeds", "AUC difference (points)", "seeds ahead",
                   "p (t-test)", "p (sign-flip)", "Holm p (t)", "Holm p (sign-flip)"], rows)


def savings_markdown(summary, prefix: str = "") -> str:
    """Labels to reach each target (seeds that reached it) and the savings, per variant."""
    rows = []
    for _, r in summary.iterrows():
        cells = [r["variant"], str(r["seeds"])]
        for p in (pct(s) for s in SHARES):
            start = r[f"{prefix}at_start_{p}"]
            cells.append(f"{_cell(r, f'{prefix}labels_{p}', ',.0f')} "
                         f"({r[f'{prefix}reached_{p}']}/{r['seeds']}"
                         f"{f', {start} at the start' if start else ''})")
        for p in (pct(s) for s in SHARES):
            cell, n = _cell(r, f"{prefix}saving_{p}", ".1f", 100, "%"), r[f"{prefix}saving_{p}_n"]
            cells.append(cell if cell == "n/a" or n == r["seeds"] else
                         f"{cell} ({n} of {r['seeds']} seeds)")
        rows.append(cells)
    head = ["variant", "seeds"] + [f"labels to {pct(s)}% (reached)" for s in SHARES]
    return _table(head + [f"saving at {pct(s)}%" for s in SHARES], rows)


def summary_page(result: dict, figures: list[str]) -> str:
    """``summary.md``: the overview table first, then the baseline, the paired tests,
    the savings against random's final accuracy and against the smoothed passive curve."""
    curves, summary, arms = result["curves"], result["summary"], result["arms"]
    tested = summary[summary["role"] == ""]
    first, horizon = curves["labelled"].min(), curves["labelled"].max()
    lines = [
        "# Sweep report\n",
        f"{summary['variant'].nunique()} variants, seeds {sorted(curves['seed'].unique().tolist())}, "
        f"{int(curves['step'].max())} steps ({first:,.0f} -> {horizon:,.0f} labelled). Intervals "
        "are 95% Student-t intervals over seeds; a value from one seed has none. How to read "
        "this page: docs/statistics.md.\n",
        overview_markdown(summary),
        "## The random baseline\n",
        _baseline_text(arms),
        "## Paired tests of the AUC\n",
        "Normalised AUC (mean accuracy over the labelled range), paired by seed (same "
        "initial set and weights). Both tests are two-sided; the sign-flip test is exact "
        "(its smallest p is 2/2^n for n seeds). Holm-corrected within each table.\n",
        "Against random:\n", comparisons_markdown(result["vs_random"]),
        f"Against the reference ({result['reference']}):\n",
        comparisons_markdown(result["vs_reference"]),
        "## Labels to reach a share of random's final accuracy\n",
        "Per seed, the target is the share of that seed's random baseline's *own final "
        "accuracy* (one noisy point), the labels to reach it are interpolated between steps, "
        "and the saving is 1 - labels / random's labels. (k/n): seeds whose curve reached "
        f"the target by {horizon:,.0f} labels (\"at the start\": already at the first "
        "step, no labels count); a seed that never did counts at the horizon, so the mean "
        "becomes a bound (<=, >=). n/a: random already met the target at the first step "
        "(nothing to save); a saving from fewer seeds than the variant has says so.\n",
        savings_markdown(tested) if len(tested) else "No variant to compare.\n",
        "## Against the smoothed passive curve\n",
        _passive_text(result["passive"]),
        savings_markdown(summary, "smooth_"),
        *_study_section(result),
    ]
    lines += [f"![{os.path.basename(f)}]({os.path.basename(f)})\n" for f in figures]
    return "\n".join(lines)


def _study_section(result: dict) -> list[str]:
    """The study's table against one passive curve (none without a plain random arm)."""
    name = passive_name(result["arms"])
    if name is None:
        return []
    passive = result["passive"][name]
    return ["## The study's table: labels to a share of one passive plateau\n",
            f"Every arm against the same targets: shares of `{name}`'s smoothed plateau "
            f"({passive['final']:.4f}), its own learner or not. Per seed, a target met at the "
            "first step counts as that step's labels, a bound (<=); one never met counts at "
            "the horizon (>=); a mean is exact, with its 95% t-interval, only when every seed "
            "measured it, and n/a when seeds are bounded both ways. (k/n): seeds that reached "
            "the target.\n",
            study_markdown(result["curves"], passive, name)]


def _baseline_text(arms: dict) -> str:
    if not arms:
        return ("No plain random arm in this sweep: no savings and no tests against random.\n")
    parts = [f"`{name}` (pools {', '.join(members)}: their curves averaged per seed)"
             if len(members) > 1 else f"`{name}`" for name, members in arms.items()]
    return ("Every variant is compared with one plain random arm per seed, of the same "
            "learner (training and model options): " + "; ".join(parts) + ". Random arms "
            "that differ only in how the random query is drawn (sampling, candidates) are "
            "pooled; random with class balance is not passive learning and is tested as a "
            "variant.\n")


def _passive_text(passive: dict) -> str:
    lines = ["The baseline's curves pooled over seeds (mean per step), fitted non-decreasing "
             "by isotonic regression; its last value is the passive plateau, and the targets "
             "are shares of it, the same for every seed. Passive labels to each target:"]
    for name, p in passive.items():
        labels = ", ".join(f"{k}%: {v:,.0f}" if np.isfinite(v) else f"{k}%: n/a"
                           for k, v in p["labels"].items())
        lines.append(f"`{name}` plateau {p['final']:.4f} ({labels}).")
    return " ".join(lines) + "\n"


def _saving_figure(tested, out: str) -> str:
    from alray.experiments.plots import plot_savings

    savings = {f"{pct(s)}% of random's final": {
        key: tested[f"saving_{pct(s)}{suffix}"].to_numpy()
        for key, suffix in (("mean", ""), ("low", "_low"), ("high", "_high"), ("kind", "_kind"))}
        for s in SHARES}
    return plot_savings(list(tested["variant"]), savings, out,
                        "Labels saved vs random (mean, 95% t-interval over seeds)")


# what pairs seeds across sweeps: the same seed draws the same initial set only from the
# same pool with the same initial size (and the same validation set scores them alike)
PAIRED_KEYS = ("pool_uri", "val_uri", "initial")


def _sweep_loop(sweep_dir: str) -> dict | None:
    import json

    path = os.path.join(sweep_dir, "sweep.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f).get("loop")


def _check_paired(sweep_dirs: list[str]) -> None:
    """Refuse sweeps whose seeds are not paired (their loops' PAIRED_KEYS differ)."""
    from alray.errors import ConfigError

    loops = [(d, _sweep_loop(d)) for d in sweep_dirs]
    loops = [(d, loop) for d, loop in loops if loop is not None]
    for d, loop in loops[1:]:
        first_dir, first = loops[0]
        for key in PAIRED_KEYS:
            if loop.get(key) != first.get(key):
                raise ConfigError(f"{d}: {key} is {loop.get(key)!r} but {first_dir} has "
                                  f"{first.get(key)!r}; sweeps reported together must "
                                  "share the pool, validation set and initial size")


def read_curves(sweep_dirs):
    """The curves of one sweep folder or several, concatenated, with ``accuracy`` and
    ``macro_f1`` the fused head's. Several sweeps must be paired (``PAIRED_KEYS``) and
    name each variant once (a grid option in one of them tells arms apart)."""
    import pandas as pd

    from alray.errors import ConfigError, StateError

    dirs = [os.fspath(sweep_dirs)] if isinstance(sweep_dirs, (str, os.PathLike)) else [
        os.fspath(d) for d in sweep_dirs]
    if not dirs:
        raise ConfigError("no sweep folder to report")
    parts, seen = [], {}
    for d in dirs:
        path = os.path.join(d, "curves.parquet")
        if not os.path.exists(path):
            raise StateError(f"{d}: no curves.parquet; is it a finished sweep folder?")
        part = pd.read_parquet(path)
        for variant in part["variant"].unique():
            if variant in seen:
                raise ConfigError(f"variant {variant!r} is in both {seen[variant]} and {d}; "
                                  "a grid option (e.g. --grid train.freeze_batchnorm=true) "
                                  "names the arms of one sweep apart")
            seen[variant] = d
        parts.append(part)
    _check_paired(dirs)
    curves = pd.concat(parts, ignore_index=True)
    return curves.rename(columns={"fused_accuracy": "accuracy", "fused_macro_f1": "macro_f1"})


def write_report(sweep_dirs, out: str | os.PathLike,
                 reference: str = REFERENCE) -> list[str]:
    """Figures, ``per_seed.csv`` and ``summary.md`` for the sweep in ``sweep_dirs`` (a
    folder, or several paired ones reported together: ``read_curves``), its variants
    tested against random and against ``reference`` (a strategy or a variant); returns
    the files written."""
    from alray.experiments.plots import plot_comparison

    curves = read_curves(sweep_dirs)
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    result = compare_sweep(curves, reference)
    bands, summary = result["bands"], result["summary"]
    roles = dict(zip(summary["variant"], summary["role"]))
    baselines = {v: role == BASELINE for v, role in roles.items() if role}
    smooth = {n: (p["labelled"], p["fit"]) for n, p in result["passive"].items()}
    files = [plot_comparison(bands, sorted(bands["variant"].unique()),
                             os.path.join(out, "curves-all.png"),
                             "All strategies (mean, 95% t-interval over seeds)", baselines,
                             smooth)]
    tested = summary[(summary["role"] == "") & (summary["baseline"] != "")]
    for variant, base in zip(tested["variant"], tested["baseline"]):
        name = variant.replace(" ", "_").replace("=", "-")
        files.append(plot_comparison(bands, [base, variant], os.path.join(
            out, f"curves-{name}.png"), f"{variant} vs {base}", {base: True},
            {base: smooth[base]}))
    if len(tested):
        files.append(_saving_figure(tested, os.path.join(out, "savings.png")))
    csv = os.path.join(out, "per_seed.csv")
    result["per_seed"].to_csv(csv + ".tmp", index=False)
    os.replace(csv + ".tmp", csv)
    md = os.path.join(out, "summary.md")
    with open(md + ".tmp", "w") as f:
        f.write(summary_page(result, files))
    os.replace(md + ".tmp", md)
    return files + [csv, md]

