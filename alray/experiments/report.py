"""Learning curves as pictures.

``plot_run`` draws one run's curve (validation accuracy and macro-F1 of every head
against the number of labelled posts), written next to the run as ``curve.png``.
"""
from __future__ import annotations

import os

import numpy as np
import pyarrow as pa


METRICS = ("accuracy", "macro_f1")


def plot_run(metrics: pa.Table, out: str | os.PathLike, title: str = "") -> str:
    """Write a PNG of ``metrics`` (the run's metrics table) to ``out``; returns the path."""
    plt = _pyplot()
    rows = metrics.to_pydict()
    heads = sorted({name.rsplit("_", 1)[0] for name in rows if name.endswith("_accuracy")
                    and not name.endswith("balanced_accuracy")})
    fig, axes = plt.subplots(1, len(METRICS), figsize=(10, 4), constrained_layout=True)
    for ax, metric in zip(axes, METRICS):
        for head in heads:
            style = {"linewidth": 2.2} if head == "fused" else {"linewidth": 1, "alpha": 0.7}
            ax.plot(rows["labelled"], rows[f"{head}_{metric}"], marker=".", label=head, **style)
        ax.set_xlabel("labelled posts")
        ax.set_ylabel(f"validation {metric.replace('_', '-')}")
        ax.grid(alpha=0.3)
    axes[0].legend(title="head")
    fig.suptitle(title)
    return _save(fig, plt, os.fspath(out))


__all__ = ["plot_run"]


# --- sweeps: curves over seeds, intervals, label savings ------------------------------
SHARES = (0.95, 0.98, 0.99, 1.0)
BASELINE = "random"


def mean_interval(values, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t ``level`` interval over seeds: ``(mean, low, high)``.

    With n seeds the half-width is t_{n-1} * s / sqrt(n), not 1.96 (or 0.95) standard
    errors: with 5 seeds t is 2.78, so a normal interval would claim too much. NaN
    values (a seed that never reached a target) are dropped; fewer than two seeds give
    no interval (NaN bounds).
    """
    from scipy import stats

    x = np.asarray(values, dtype=np.float64)
    x = x[~np.isnan(x)]
    if len(x) == 0:
        return (np.nan, np.nan, np.nan)
    mean = float(x.mean())
    if len(x) < 2:
        return (mean, np.nan, np.nan)
    half = float(stats.t.ppf(0.5 + level / 2, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x)))
    return (mean, mean - half, mean + half)


def labels_to_reach(labelled, accuracy, target: float) -> float:
    """The first labelled-set size whose accuracy is >= ``target`` (NaN: never)."""
    labelled, accuracy = np.asarray(labelled, float), np.asarray(accuracy, float)
    hit = np.flatnonzero(accuracy >= target - 1e-12)
    return float(labelled[hit[0]]) if len(hit) else np.nan


def normalised_auc(labelled, accuracy) -> float:
    """Area under the learning curve over its labelled range, divided by that range:
    the curve's mean accuracy, comparable across runs of the same length."""
    x, y = np.asarray(labelled, float), np.asarray(accuracy, float)
    if len(x) < 2 or x[-1] == x[0]:
        return float(y.mean())
    return float(np.trapezoid(y, x) / (x[-1] - x[0]))


def _baselines(curves) -> dict[str, str]:
    """variant -> the random variant it is compared with (same extra options if any)."""
    variants = sorted(curves["variant"].unique())
    randoms = sorted(v for v in variants if v.split(" ")[0] == BASELINE)
    out = {}
    for v in variants:
        extras = v.partition(" ")[2]
        same = [r for r in randoms if r.partition(" ")[2] == extras]
        if same or randoms:
            out[v] = (same or randoms)[0]
    return out


def seed_results(curves, metric: str = "accuracy"):
    """One row per (variant, seed): final value, normalised AUC and, against the random
    run of the same seed (paired: same initial set), the labels needed to reach each
    share of random's final value and the saving ``1 - L_variant / L_random``."""
    import pandas as pd

    baselines, rows = _baselines(curves), []
    by_run = {key: g.sort_values("step") for key, g in curves.groupby(["variant", "seed"])}
    for (variant, seed), g in by_run.items():
        row = {"variant": variant, "seed": seed, "final": float(g[metric].iloc[-1]),
               "labelled": float(g["labelled"].iloc[-1]),
               "auc": normalised_auc(g["labelled"], g[metric])}
        base = by_run.get((baselines.get(variant), seed))
        for share in SHARES:
            pct = int(round(share * 100))
            if base is None:
                row[f"labels_{pct}"] = row[f"saving_{pct}"] = np.nan
                continue
            target = share * float(base[metric].iloc[-1])
            mine = labels_to_reach(g["labelled"], g[metric], target)
            theirs = labels_to_reach(base["labelled"], base[metric], target)
            row[f"labels_{pct}"] = mine
            row[f"saving_{pct}"] = 1 - mine / theirs if theirs > 0 else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def summarise(per_seed):
    """Per variant: mean and t-interval of every per-seed column, and a paired t-test of
    the AUC against the variant's random baseline (p-value; NaN for random itself)."""
    import pandas as pd
    from scipy import stats

    rows = []
    baselines = _baselines(per_seed)
    for variant, g in per_seed.groupby("variant"):
        row = {"variant": variant, "seeds": int(g["seed"].nunique())}
        for column in [c for c in g.columns if c not in ("variant", "seed")]:
            mean, low, high = mean_interval(g[column])
            row[column], row[f"{column}_low"], row[f"{column}_high"] = mean, low, high
        base = per_seed[per_seed["variant"] == baselines.get(variant)]
        paired = g.merge(base, on="seed", suffixes=("", "_base"))
        row["auc_p_value"] = np.nan
        if variant != baselines.get(variant) and len(paired) >= 2:
            diff = paired["auc"] - paired["auc_base"]
            if np.ptp(diff) > 1e-12:  # a constant difference has no t statistic
                row["auc_p_value"] = float(stats.ttest_rel(paired["auc"],
                                                           paired["auc_base"]).pvalue)
        rows.append(row)
    return pd.DataFrame(rows)


def curve_bands(curves, metric: str = "accuracy"):
    """Per (variant, step): mean labelled and the mean and t-interval of ``metric``."""
    import pandas as pd

    rows = []
    for (variant, step), g in curves.groupby(["variant", "step"]):
        mean, low, high = mean_interval(g[metric])
        rows.append({"variant": variant, "step": step, "labelled": g["labelled"].mean(),
                     "mean": mean, "low": low, "high": high, "seeds": len(g)})
    return pd.DataFrame(rows).sort_values(["variant", "step"])


# --- pictures and the summary ----------------------------------------------------------
def _pyplot():
    import matplotlib
    matplotlib.use("Agg")  # files only: no display on servers and clusters
    import matplotlib.pyplot as plt
    return plt


def plot_comparison(bands, variants: list[str], out: str, title: str,
                    metric: str = "accuracy") -> str:
    """Mean curves with t-interval bands for ``variants`` (random drawn first, grey)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.8), constrained_layout=True)
    order = sorted(variants, key=lambda v: (v.split(" ")[0] != BASELINE, v))
    colours = iter(plt.rcParams["axes.prop_cycle"].by_key()["color"])
    for variant in order:
        g = bands[bands["variant"] == variant]
        colour = "0.35" if variant.split(" ")[0] == BASELINE else next(colours)
        seeds = int(g["seeds"].max())
        ax.plot(g["labelled"], g["mean"], color=colour, lw=1.8,
                label=f"{variant} ({seeds} seed{'s' * (seeds > 1)})")
        ax.fill_between(g["labelled"], g["low"], g["high"], color=colour, alpha=0.18, lw=0)
    ax.set_xlabel("labelled posts")
    ax.set_ylabel(f"validation {metric.replace('_', '-')} (fused head)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return _save(fig, plt, out)


def plot_savings(summary, out: str) -> str:
    """Label savings against random at each share of random's final accuracy, with
    t-intervals over seeds; a missing bar means some seed never reached the target."""
    plt = _pyplot()
    rows = summary[summary["variant"].str.split(" ").str[0] != BASELINE]
    fig, ax = plt.subplots(figsize=(7.5, 4.2), constrained_layout=True)
    width = 0.8 / max(1, len(SHARES))
    x = np.arange(len(rows))
    for i, share in enumerate(SHARES):
        pct = int(round(share * 100))
        mean = rows[f"saving_{pct}"].to_numpy(float)
        err = np.vstack([mean - rows[f"saving_{pct}_low"].to_numpy(float),
                         rows[f"saving_{pct}_high"].to_numpy(float) - mean])
        ax.bar(x + (i - (len(SHARES) - 1) / 2) * width, 100 * mean, width,
               yerr=100 * np.nan_to_num(err), capsize=2, label=f"{pct}% of random's final")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(x, rows["variant"], rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("labels saved vs random (%)")
    ax.set_title("Label savings (mean and 95% t-interval over seeds)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, plt, out)


def _save(fig, plt, out: str) -> str:
    tmp = os.path.join(os.path.dirname(out) or ".", f".{os.path.basename(out)}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def _cell(row, column: str, fmt: str, scale: float = 1.0) -> str:
    mean, low, high = row[column], row[f"{column}_low"], row[f"{column}_high"]
    if np.isnan(mean):
        return "not reached"
    if np.isnan(low):
        return format(mean * scale, fmt)
    return f"{mean * scale:{fmt}} [{low * scale:{fmt}}, {high * scale:{fmt}}]"


def summary_markdown(summary) -> str:
    """The summary table: final accuracy, AUC, labels to 95-100% of random's final and
    the savings, each with its 95% t-interval over seeds."""
    head = ["variant", "seeds", "final accuracy", "AUC (mean acc.)", "p (AUC vs random)"]
    head += [f"labels to {int(s * 100)}%" for s in SHARES]
    head += [f"saving at {int(s * 100)}%" for s in SHARES]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for _, row in summary.iterrows():
        cells = [row["variant"], str(row["seeds"]), _cell(row, "final", ".3f"),
                 _cell(row, "auc", ".3f"),
                 "" if np.isnan(row["auc_p_value"]) else f"{row['auc_p_value']:.3g}"]
        cells += [_cell(row, f"labels_{int(s * 100)}", ",.0f") for s in SHARES]
        cells += [_cell(row, f"saving_{int(s * 100)}", ".1f", 100) + "%"
                  if not np.isnan(row[f"saving_{int(s * 100)}"]) else "n/a" for s in SHARES]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_report(sweep_dir: str | os.PathLike, out: str | os.PathLike) -> list[str]:
    """Figures and ``summary.md`` for the sweep in ``sweep_dir``; returns the files."""
    import pandas as pd

    from alray.errors import StateError

    curves_path = os.path.join(sweep_dir, "curves.parquet")
    if not os.path.exists(curves_path):
        raise StateError(f"{sweep_dir}: no curves.parquet; is it a finished sweep folder?")
    curves = pd.read_parquet(curves_path).rename(columns={"fused_accuracy": "accuracy",
                                                           "fused_macro_f1": "macro_f1"})
    os.makedirs(out, exist_ok=True)
    bands = curve_bands(curves)
    variants = sorted(curves["variant"].unique())
    files = [plot_comparison(bands, variants, os.path.join(out, "curves-all.png"),
                             "All strategies (mean, 95% t-interval over seeds)")]
    baselines = _baselines(curves)
    for variant in variants:
        base = baselines.get(variant)
        if base and base != variant:
            name = variant.replace(" ", "_").replace("=", "-")
            files.append(plot_comparison(bands, [base, variant],
                                         os.path.join(out, f"curves-{name}.png"),
                                         f"{variant} vs {base}"))
    per_seed = seed_results(curves)
    summary = summarise(per_seed)
    if len(summary) > 1:
        files.append(plot_savings(summary, os.path.join(out, "savings.png")))
    per_seed.to_csv(os.path.join(out, "per_seed.csv"), index=False)
    md = os.path.join(out, "summary.md")
    with open(md + ".tmp", "w") as f:
        f.write(_summary_page(curves, summary, files))
    os.replace(md + ".tmp", md)
    return files + [os.path.join(out, "per_seed.csv"), md]


def _summary_page(curves, summary, figures: list[str]) -> str:
    steps = int(curves["step"].max())
    lines = ["# Sweep report\n",
             f"{curves['variant'].nunique()} variants, seeds "
             f"{sorted(curves['seed'].unique().tolist())}, {steps} steps. Intervals are "
             "95% Student-t intervals over seeds; savings and labels-to-target are paired "
             "with the random run of the same seed (same initial set); p is a paired t-test "
             "of the normalised AUC against random.\n",
             summary_markdown(summary)]
    lines += [f"![{os.path.basename(f)}]({os.path.basename(f)})\n" for f in figures]
    return "\n".join(lines)
