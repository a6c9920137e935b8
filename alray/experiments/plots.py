"""Every figure alray draws, with matplotlib's object API.

A ``Figure`` gets its own Agg canvas (``new_figure``), so library code never touches
pyplot's global state or switches the process's backend (a notebook or GUI importing
alray keeps its own). ``save_figure`` is the one way a figure reaches disk: written to
a temporary file beside the target and renamed over it, so a reader never sees half a
PNG. The functions take plain data (tables, dicts) that the computations returned.
"""
from __future__ import annotations

import os

import numpy as np

METRICS = ("accuracy", "macro_f1")
BOUND_MARKERS = {"at most": "v", "at least": "^"}  # where the true value lies


def new_figure(width: float, height: float, ncols: int = 1, **subplots):
    """``(figure, axes)``: a constrained-layout figure on its own Agg canvas."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, ncols, **subplots)  # one Axes, or a (ncols,) array


def save_figure(fig, out: str | os.PathLike, dpi: int = 110) -> str:
    """Write ``fig`` as a PNG at ``out`` atomically (temp file, then rename)."""
    out = os.fspath(out)
    tmp = os.path.join(os.path.dirname(out) or ".", f".{os.path.basename(out)}.tmp.png")
    try:
        fig.savefig(tmp, dpi=dpi)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def _colours() -> list[str]:
    import matplotlib

    return matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]


# --- one loop ----------------------------------------------------------------------------
def plot_run(metrics, out: str | os.PathLike, title: str = "") -> str:
    """One run's curve: validation accuracy and macro-F1 of every head against the
    labelled-set size. ``metrics``: the run's metrics table (pyarrow)."""
    rows = metrics.to_pydict()
    heads = sorted({name.rsplit("_", 1)[0] for name in rows if name.endswith("_accuracy")
                    and not name.endswith("balanced_accuracy")})
    fig, axes = new_figure(10, 4, ncols=len(METRICS))
    for ax, metric in zip(axes, METRICS):
        for head in heads:
            style = {"linewidth": 2.2} if head == "fused" else {"linewidth": 1, "alpha": 0.7}
            ax.plot(rows["labelled"], rows[f"{head}_{metric}"], marker=".", label=head, **style)
        ax.set_xlabel("labelled posts")
        ax.set_ylabel(f"validation {metric.replace('_', '-')}")
        ax.grid(alpha=0.3)
    axes[0].legend(title="head")
    fig.suptitle(title)
    return save_figure(fig, out)


# --- sweeps ------------------------------------------------------------------------------
def plot_comparison(bands, variants: list[str], out: str, title: str,
                    baselines: dict[str, bool] | None = None, smooth: dict | None = None,
                    metric: str = "accuracy") -> str:
    """Mean curves of ``variants`` with their t-interval bands. ``bands``: rows of
    (variant, labelled, mean, low, high, seeds); a one-seed curve has NaN bounds and so
    no band. ``baselines``: random arms drawn first in grey (True: the baseline itself,
    solid; False: an arm pooled into it, dotted, no band); ``smooth``: name ->
    ``(labelled, fit)`` smoothed passive curves, drawn dashed."""
    baselines = baselines or {}
    fig, ax = new_figure(7.5, 4.8)
    order = sorted(variants, key=lambda v: (v not in baselines, v))
    colours = iter(_colours() * 4)
    for variant in order:
        g = bands[bands["variant"] == variant]
        seeds = int(g["seeds"].max())
        label = f"{variant} ({seeds} seed{'s' * (seeds > 1)})"
        if variant in baselines and not baselines[variant]:
            ax.plot(g["labelled"], g["mean"], color="0.6", lw=1, ls=":", label=label)
            continue
        colour = "0.3" if variant in baselines else next(colours)
        ax.plot(g["labelled"], g["mean"], color=colour, lw=1.8, label=label)
        ax.fill_between(g["labelled"], g["low"], g["high"], color=colour, alpha=0.18, lw=0)
    for name, (x, fit) in (smooth or {}).items():
        ax.plot(x, fit, color="0.1", lw=1, ls="--", label=f"{name}, isotonic fit")
    ax.set_xlabel("labelled posts")
    ax.set_ylabel(f"validation {metric.replace('_', '-')} (fused head)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    return save_figure(fig, out)


def plot_savings(variants: list[str], savings: dict[str, dict], out: str, title: str) -> str:
    """Label savings per variant, one bar per target. ``savings``: target label ->
    ``{"mean", "low", "high": (n,) arrays, "kind": (n,) strings}`` (``stats`` kinds).
    An exact mean gets its t-interval when it has one (never a zero-width bar for one
    seed); a bound (some seed never reached the target) is a hatched bar with a marker
    pointing where the true value lies; an undefined value gets no bar."""
    from matplotlib.patches import Patch

    fig, ax = new_figure(7.5, 4.4)
    width = 0.8 / max(1, len(savings))
    x = np.arange(len(variants))
    for i, (label, s) in enumerate(savings.items()):
        pos = x + (i - (len(savings) - 1) / 2) * width
        mean = 100 * np.asarray(s["mean"], float)
        kind = np.asarray(s["kind"], object)
        colour = _colours()[i % len(_colours())]
        exact, bound = kind == "exact", np.isin(kind, list(BOUND_MARKERS))
        ax.bar(pos[exact], mean[exact], width, color=colour, label=label)
        ax.bar(pos[bound], mean[bound], width, color=colour, alpha=0.45, hatch="//",
               edgecolor=colour)
        for b, marker in BOUND_MARKERS.items():
            at = kind == b
            ax.scatter(pos[at], mean[at], marker=marker, color="0.15", s=18, zorder=3)
        low, high = 100 * np.asarray(s["low"], float), 100 * np.asarray(s["high"], float)
        bars = exact & np.isfinite(low) & np.isfinite(high)
        ax.errorbar(pos[bars], mean[bars], yerr=[mean[bars] - low[bars], high[bars] - mean[bars]],
                    fmt="none", ecolor="0.2", capsize=2, lw=0.9)
    handles, labels = ax.get_legend_handles_labels()
    handles.append(Patch(facecolor="0.8", hatch="//", edgecolor="0.4"))
    labels.append("hatched: a bound, some seed never reached (v: at most)")
    ax.axhline(0, color="0.3", lw=0.8)
    ax.set_xticks(x, variants, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("labels saved (%)")
    ax.set_title(title, fontsize=10)
    ax.legend(handles, labels, fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, out)


# --- the correlation experiment ------------------------------------------------------------
def plot_groups(groups: list[dict], passive: list[dict], pairs: list[str], out: str) -> str:
    """Each group model's accuracy gain over its seed's passive model against the
    group's mean of each of ``pairs`` (``mean_loss``, ``mean_margin``), one colour per
    seed (a shift per seed does not change the per-seed Spearman)."""
    base = {p["seed"]: p["accuracy"] for p in passive}
    fig, axes = new_figure(10, 4.2, ncols=len(pairs), sharey=True)
    for seed in sorted(base):
        rows = [g for g in groups if g["seed"] == seed]
        gain = [100 * (g["accuracy"] - base[seed]) for g in rows]
        for ax, pair in zip(axes, pairs):
            ax.scatter([g[f"mean_{pair}"] for g in rows], gain, s=12, alpha=0.7,
                       label=f"seed {seed}")
    for ax, pair in zip(axes, pairs):
        ax.set_xlabel(f"group mean {pair}" + (" (p1 - p2)" if pair == "margin" else ""))
        ax.axhline(0, color="0.3", lw=0.8)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation accuracy gain over passive (points)")
    axes[-1].legend(fontsize=8)
    fig.suptitle("One model per disjoint group, fine-tuned from the passive weights")
    return save_figure(fig, out)
