"""A sweep's learning curves compared: one random baseline, label savings with
censoring, and paired tests. Tables in, tables out (pandas); no files, no figures
(``report`` writes them).

**One baseline.** Every variant is compared with the plain random arm of its seed:
random sampling with the same learner (training and model options). Random arms that
differ only in how a random query is drawn (``sampling``, ``sampling_beta``,
``candidates`` N, ``neighbours``: a random pick among random scores, or among a random
subset, is still a uniform random pick; not with ``candidates=knn:K``, a pick among the
labelled posts' neighbours) are pooled: per seed, their curves are averaged step by step
into one baseline. A random arm with class balance is not passive learning (its query
depends on the model's predictions) and is never a baseline; it is a variant like any
other. A variant with no such arm gets no saving and no test (never a silent fallback).

**Savings.** Per seed, the target is ``share x`` the baseline's own final accuracy (one
noisy point); the labels to reach it are interpolated between steps; the saving is
``1 - L_variant / L_random``. A seed whose variant never reaches the target is censored
at the horizon: its saving is at most ``1 - horizon / L_random`` (``stats.saving``) and
every mean that includes it is a bound, never a mean over the seeds that made it. A
target the baseline meets at its first point has no saving (undefined, "n/a"). The same
savings are also measured against the **smoothed passive curve**: the baseline's curves
pooled over seeds (mean per step) and made non-decreasing by isotonic regression
(``stats.isotonic``); its last value is the passive plateau, the target a fixed number.
"""
from __future__ import annotations

import numpy as np

from alray.experiments import stats

SHARES = (0.95, 0.98, 0.99, 1.0)
RANDOM = "random"
REFERENCE = "margin"
POOLED = "random (pooled)"
SAMPLING_OPTIONS = frozenset({"sampling", "sampling_beta", "candidates", "neighbours"})
# choices of which posts get labelled: an arm with one on is not passive learning
ACTIVE_OPTIONS = frozenset({"class_balance", "cluster_margin", "initial_strategy"})
BASELINE, POOLED_IN = "baseline", "pooled into the baseline"  # roles of random arms


def pct(share: float) -> int:
    return int(round(share * 100))


# --- which arm is whose baseline -----------------------------------------------------------
def parse_variant(variant: str) -> tuple[str, dict[str, str]]:
    """``"margin class_balance=0.05 sampling=top"`` -> ``("margin", {...: "0.05", ...})``."""
    strategy, *extras = variant.split(" ")
    return strategy, {k: v for k, _, v in (e.partition("=") for e in extras)}


def _is_off(value: str) -> bool:
    try:
        return float(value) == 0
    except ValueError:
        return value.strip().lower() in ("false", "none", "", "top", "random")


def is_plain_random(variant: str) -> bool:
    """Random sampling: the random strategy without an option that makes it active."""
    strategy, options = parse_variant(variant)
    # candidates knn:K: a pick among the labelled posts' neighbours is not a uniform one
    near = options.get("candidates", "").startswith("knn:")
    return strategy == RANDOM and not near and all(
        _is_off(options[k]) for k in ACTIVE_OPTIONS & set(options))


def learner_options(variant: str) -> tuple[tuple[str, str], ...]:
    """The options that change the learner rather than the query: a baseline shares them."""
    _, options = parse_variant(variant)
    return tuple(sorted((k, v) for k, v in options.items()
                        if k not in SAMPLING_OPTIONS | ACTIVE_OPTIONS))


def baseline_plan(variants) -> tuple[dict[str, tuple[str, ...]], dict[str, str | None]]:
    """``(arms, baseline_of)``: baseline name -> the plain random arms it pools (a single
    arm is its own name), and variant -> its baseline's name (None: there is none)."""
    groups: dict[tuple, list[str]] = {}
    for v in sorted(variants):
        if is_plain_random(v):
            groups.setdefault(learner_options(v), []).append(v)
    names = {key: arms[0] if len(arms) == 1 else " ".join([POOLED, *(f"{k}={v}" for k, v in key)])
             for key, arms in groups.items()}
    arms = {names[key]: tuple(a) for key, a in groups.items()}
    return arms, {v: names.get(learner_options(v)) for v in variants}


def role(variant: str, arms: dict[str, tuple[str, ...]]) -> str:
    """BASELINE, POOLED_IN or "" (a variant compared with a baseline)."""
    if variant in arms:
        return BASELINE
    return POOLED_IN if any(variant in a for a in arms.values()) else ""


def add_pooled(curves, arms: dict[str, tuple[str, ...]], metric: str = "accuracy"):
    """``curves`` plus one curve per seed for each pooled baseline: the mean of its arms'
    ``metric`` and labelled-set size at each step."""
    import pandas as pd

    parts = [curves]
    for name, members in arms.items():
        if len(members) > 1:
            rows = curves[curves["variant"].isin(members)]
            pooled = rows.groupby(["seed", "step"], as_index=False)[["labelled", metric]].mean()
            parts.append(pooled.assign(variant=name, strategy=RANDOM))
    return pd.concat(parts, ignore_index=True)


def reference_of(variant: str, variants, reference: str = REFERENCE) -> str | None:
    """The variant ``variant`` is tested against: ``reference`` itself if it names a
    variant; else plain ``reference`` (the strategy with ``variant``'s learner options and
    every query option off: does this option beat it?), else the variant of that strategy
    with the same options, or its only variant. None for the reference itself or when
    there is no unambiguous one."""
    variants = sorted(variants)
    if reference in variants:
        found = reference
    else:
        same = [v for v in variants if parse_variant(v)[0] == reference]
        options = parse_variant(variant)[1]
        plain = [v for v in same if learner_options(v) == learner_options(variant)
                 and all(_is_off(x) or x == "top" for k, x in parse_variant(v)[1].items()
                         if k in SAMPLING_OPTIONS | ACTIVE_OPTIONS)]
        exact = [v for v in same if parse_variant(v)[1] == options]
        found = plain[0] if plain else exact[0] if exact else (
            same[0] if len(same) == 1 else None)
    return None if found == variant else found


# --- per seed --------------------------------------------------------------------------------
def smoothed_passive(curves, name: str, metric: str = "accuracy") -> dict:
    """The baseline ``name``'s curves pooled over seeds and fitted non-decreasing
    (isotonic, weighted by seeds per step): ``labelled``, ``mean``, ``fit`` ``(steps,)``,
    ``final`` (the fit's plateau) and, per share, ``target`` and passive ``labels``."""
    rows = curves[curves["variant"] == name]
    by_step = rows.groupby("step").agg(labelled=("labelled", "mean"), mean=(metric, "mean"),
                                       seeds=(metric, "size")).sort_index()
    fit = stats.isotonic(by_step["mean"], by_step["seeds"])
    final = float(fit[-1])
    x = by_step["labelled"].to_numpy(float)
    return {"labelled": x, "mean": by_step["mean"].to_numpy(float), "fit": fit, "final": final,
            "target": {pct(s): s * final for s in SHARES},
            "labels": {pct(s): stats.labels_to_reach(x, fit, s * final) for s in SHARES}}


def _labels_kind(mine: float, first: float) -> str:
    if np.isnan(mine):
        return stats.AT_LEAST  # never reached: more than the horizon
    return stats.UNDEFINED if mine <= first + 1e-9 else stats.EXACT  # met at the start


def _targets(row: dict, prefix: str, x, y, targets: dict, theirs: dict) -> None:
    """Fill ``row`` with labels, saving and their kinds for each share's target."""
    for p in (pct(s) for s in SHARES):
        target = targets.get(p, np.nan)
        if np.isnan(target):
            row.update({f"{prefix}labels_{p}": np.nan, f"{prefix}saving_{p}": np.nan,
                        f"{prefix}labels_{p}_kind": stats.UNDEFINED,
                        f"{prefix}saving_{p}_kind": stats.UNDEFINED})
            continue
        mine = stats.labels_to_reach(x, y, target)
        row[f"{prefix}labels_{p}"] = mine
        row[f"{prefix}labels_{p}_kind"] = _labels_kind(mine, x[0])
        value, kind = stats.saving(mine, theirs[p], x[0], x[-1])
        row[f"{prefix}saving_{p}"], row[f"{prefix}saving_{p}_kind"] = value, kind


def seed_results(curves, metric: str = "accuracy", arms=None, baseline_of=None,
                 passive: dict | None = None):
    """One row per (variant, seed) of ``curves`` (columns variant, seed, step, labelled,
    ``metric``): final value, normalised AUC, and per share of the baseline's final value
    (paired: the baseline curve of the same seed) the labels to reach it, the saving and
    their kinds (``stats``); ``smooth_*`` columns the same against the smoothed passive
    curve. Pooled baselines must already be in ``curves`` (``add_pooled``)."""
    import pandas as pd

    if arms is None:
        arms, baseline_of = baseline_plan(curves["variant"].unique())
        curves = add_pooled(curves, arms, metric)
    passive = passive or {n: smoothed_passive(curves, n, metric) for n in arms}
    by_run = {key: g.sort_values("step") for key, g in curves.groupby(["variant", "seed"])}
    rows = []
    for (variant, seed), g in by_run.items():
        base_name = variant if variant in arms else baseline_of.get(variant)
        x, y = g["labelled"].to_numpy(float), g[metric].to_numpy(float)
        row = {"variant": variant, "seed": seed, "baseline": base_name or "",
               "final": float(y[-1]), "labelled": float(x[-1]), "auc": stats.normalised_auc(x, y)}
        base = by_run.get((base_name, seed))
        compared = base is not None and not role(variant, arms)
        targets = ({pct(s): s * float(base[metric].iloc[-1]) for s in SHARES} if compared
                   else {})
        theirs = {p: stats.labels_to_reach(base["labelled"], base[metric], t)
                  for p, t in targets.items()}
        _targets(row, "", x, y, targets, theirs)
        smooth = passive.get(base_name)
        _targets(row, "smooth_", x, y, smooth["target"] if smooth else {},
                 smooth["labels"] if smooth else {})
        rows.append(row)
    return pd.DataFrame(rows)


# --- over seeds ------------------------------------------------------------------------------
def _aggregate(g, column: str) -> dict:
    """Mean over seeds of ``column`` with its kinds (``{column}_kind``; exact if none):
    a labels count never reached (NaN, at least) counts at the seed's horizon."""
    kinds = np.asarray(g[f"{column}_kind"] if f"{column}_kind" in g else [stats.EXACT] * len(g))
    values = g[column].to_numpy(float)
    if "labels_" in column:
        values = np.where(kinds == stats.AT_LEAST, g["labelled"].to_numpy(float), values)
    r = stats.censored_mean(values, kinds)
    return {column: r["mean"], f"{column}_low": r["low"], f"{column}_high": r["high"],
            f"{column}_kind": r["kind"], f"{column}_n": r["n"]}


def summarise(per_seed, arms: dict | None = None):
    """Per variant: its baseline and role, the number of seeds, and over seeds the mean
    and t-interval (or bound, ``stats.censored_mean``) of the final value, AUC, labels and
    savings, with ``reached_*`` (seeds whose curve reached each target) and ``at_start_*``
    (of those, the seeds already there at the first step: no labels count)."""
    import pandas as pd

    arms = arms if arms is not None else baseline_plan(per_seed["variant"].unique())[0]
    rows = []
    for variant, g in per_seed.groupby("variant"):
        row = {"variant": variant, "baseline": g["baseline"].iloc[0],
               "role": role(variant, arms), "seeds": int(g["seed"].nunique())}
        for column in ("final", "auc"):
            row.update(_aggregate(g, column))
        for prefix in ("", "smooth_"):
            for p in (pct(s) for s in SHARES):
                row.update(_aggregate(g, f"{prefix}labels_{p}"))
                row.update(_aggregate(g, f"{prefix}saving_{p}"))
                reached = np.isfinite(g[f"{prefix}labels_{p}"].to_numpy(float))
                row[f"{prefix}reached_{p}"] = int(reached.sum())
                row[f"{prefix}at_start_{p}"] = int(  # reached at the first step: no labels
                    (reached & (g[f"{prefix}labels_{p}_kind"] == stats.UNDEFINED)).sum())
        rows.append(row)
    return pd.DataFrame(rows)


def paired_comparisons(per_seed, against: dict[str, str | None], metric: str = "auc"):
    """Per variant with a partner in ``against`` (variant -> the variant it is tested
    against): the paired difference of ``metric`` over shared seeds (mean, t-interval,
    seeds ahead), the paired t-test's and the exact sign-flip test's p-values, and both
    Holm-corrected over the table's rows."""
    import pandas as pd

    value = per_seed.pivot_table(index="seed", columns="variant", values=metric)
    rows = []
    for variant, other in sorted(against.items()):
        if other is None or variant not in value or other not in value:
            continue
        pair = value[[variant, other]].dropna()
        a, b = pair[variant].to_numpy(), pair[other].to_numpy()
        mean, low, high = stats.mean_interval(a - b)
        rows.append({"variant": variant, "against": other, "pairs": len(pair),
                     "diff": mean, "diff_low": low, "diff_high": high,
                     "ahead": int((a > b).sum()), "p_t": stats.paired_t_test(a, b),
                     "p_flip": stats.sign_flip_test(a, b)})
    table = pd.DataFrame(rows, columns=["variant", "against", "pairs", "diff", "diff_low",
                                        "diff_high", "ahead", "p_t", "p_flip"])
    table["holm_t"] = stats.holm(table["p_t"].to_numpy(float))
    table["holm_flip"] = stats.holm(table["p_flip"].to_numpy(float))
    return table


def curve_bands(curves, metric: str = "accuracy"):
    """Per (variant, step): mean labelled, and the mean and t-interval of ``metric``."""
    import pandas as pd

    rows = []
    for (variant, step), g in curves.groupby(["variant", "step"]):
        mean, low, high = stats.mean_interval(g[metric])
        rows.append({"variant": variant, "step": step, "labelled": g["labelled"].mean(),
                     "mean": mean, "low": low, "high": high, "seeds": len(g)})
    return pd.DataFrame(rows).sort_values(["variant", "step"])


def compare_sweep(curves, reference: str = REFERENCE, metric: str = "accuracy") -> dict:
    """Everything the report shows, as data: ``curves`` (with pooled baselines),
    ``arms``, ``passive`` (smoothed curve per baseline), ``per_seed``, ``summary``,
    ``vs_random`` and ``vs_reference`` (paired AUC tests) and ``bands``."""
    variants = sorted(curves["variant"].unique())
    arms, baseline_of = baseline_plan(variants)
    curves = add_pooled(curves, arms, metric)
    passive = {name: smoothed_passive(curves, name, metric) for name in arms}
    per_seed = seed_results(curves, metric, arms, baseline_of, passive)
    tested = [v for v in variants if not role(v, arms)]
    return {"curves": curves, "arms": arms, "passive": passive, "per_seed": per_seed,
            "summary": summarise(per_seed, arms), "reference": reference,
            "vs_random": paired_comparisons(per_seed, {v: baseline_of[v] for v in tested}),
            "vs_reference": paired_comparisons(
                per_seed, {v: reference_of(v, tested, reference) for v in tested}),
            "bands": curve_bands(curves, metric)}
