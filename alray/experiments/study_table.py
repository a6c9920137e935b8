"""The study's table: labels to reach 95/98/99/100% of *one* passive curve's final
accuracy, for every arm of a report (its baselines too).

``compare`` measures each variant against the random arm of its own learner. The study's
table instead fixes one passive curve (plain random, the default learner) and asks every
arm, a BALD with frozen batch norm included, how many labels it needed to reach the same
accuracies. The passive curve is the smoothed one of ``compare.smoothed_passive`` (the
plain arm's curves pooled over seeds, fitted non-decreasing); its last value is the
plateau and the targets are shares of it, the same for every seed.

Per seed a target met at the first step counts as that step's labelled size but only as
a bound (it may have needed fewer: ``AT_MOST``); one never met counts at the horizon, also
a bound (``AT_LEAST``). The mean over seeds is exact (with a t-interval) only when every
seed measured it (``stats.censored_mean``); ``reached`` says how many seeds did.
"""
from __future__ import annotations

import numpy as np

from alray.experiments import stats
from alray.experiments.compare import SHARES, learner_options, pct


def _off(value: str) -> bool:
    return value.strip().lower() in ("false", "0", "0.0", "none", "")


def passive_name(arms: dict) -> str | None:
    """The baseline of the default learner (every learner option absent or off, as in
    ``freeze_batchnorm=False``), else the only baseline; None when that is ambiguous."""
    plain = [name for name in arms if all(_off(v) for _, v in learner_options(name))]
    if len(plain) == 1:
        return plain[0]
    return next(iter(arms)) if len(arms) == 1 else None


def _seed_labels(x, y, target: float) -> tuple[float, str]:
    """Labels to reach ``target`` on one curve and its kind (exact or a bound)."""
    found = stats.labels_to_reach(x, y, target)
    if np.isnan(found):
        return float(x[-1]), stats.AT_LEAST
    if found <= x[0] + 1e-9:
        return float(x[0]), stats.AT_MOST
    return found, stats.EXACT


def study_rows(curves, passive: dict, metric: str = "accuracy") -> list[dict]:
    """Per variant of ``curves`` (columns variant, seed, step, labelled, ``metric``): the
    censored mean over seeds of the labels to reach each of ``passive['target']`` (share
    in percent -> accuracy), with ``seeds`` and, per share, ``reached`` (seeds whose curve
    met the target) and ``at_start`` (of those, met at the first step)."""
    rows = []
    for variant, runs in curves.groupby("variant"):
        row = {"variant": variant, "seeds": int(runs["seed"].nunique())}
        per_seed = [g.sort_values("step") for _, g in runs.groupby("seed")]
        for p, target in passive["target"].items():
            found = [_seed_labels(g["labelled"].to_numpy(float), g[metric].to_numpy(float),
                                  target) for g in per_seed]
            values, kinds = zip(*found)
            row[p] = stats.censored_mean(values, kinds)
            row[f"reached_{p}"] = sum(k != stats.AT_LEAST for k in kinds)
            row[f"at_start_{p}"] = sum(k == stats.AT_MOST for k in kinds)
        rows.append(row)
    return rows


def _labels_cell(r: dict, reached: int, at_start: int, seeds: int) -> str:
    if r["kind"] == stats.UNDEFINED:
        value = "n/a"  # some seeds above the start, some below the horizon: no bound
    elif r["kind"] == stats.AT_MOST:
        value = f"<= {r['mean']:,.0f}"
    elif r["kind"] == stats.AT_LEAST:
        value = f">= {r['mean']:,.0f}"
    elif np.isnan(r["low"]):
        value = f"{r['mean']:,.0f}"
    else:
        value = f"{r['mean']:,.0f} [{r['low']:,.0f}, {r['high']:,.0f}]"
    start = f", {at_start} at the start" if at_start else ""
    return f"{value} ({reached}/{seeds}{start})"


def study_markdown(curves, passive: dict, name: str, metric: str = "accuracy") -> str:
    """The table: a first row with the smoothed passive curve's own labels to each
    target, then one row per variant (mean [95% t-interval] (seeds that reached))."""
    shares = [pct(s) for s in SHARES]
    head = ["arm", "seeds"] + [f"labels to {p}% (reached)" for p in shares]
    fit = [f"{passive['labels'][p]:,.0f}" if np.isfinite(passive["labels"][p]) else "n/a"
           for p in shares]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
             "| " + " | ".join([f"passive: `{name}` smoothed", "pooled", *fit]) + " |"]
    for row in study_rows(curves, passive, metric):
        cells = [_labels_cell(row[p], row[f"reached_{p}"], row[f"at_start_{p}"], row["seeds"])
                 for p in shares]
        lines.append("| " + " | ".join([row["variant"], str(row["seeds"]), *cells]) + " |")
    return "\n".join(lines) + "\n"
