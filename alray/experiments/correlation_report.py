"""The correlation experiment's outputs: the study's table beside ours, the scatter
plot, and the files of a run. ``alray.experiments.correlation.run_correlation`` computes
the result and returns it; the caller hands it to ``write_outputs``."""
from __future__ import annotations

import os

import numpy as np

from alray.experiments.correlation import PAIRS, STUDY
from alray.experiments.plots import plot_groups


def _fmt(value: float, spec: str = "+.4f") -> str:
    return "n/a" if value is None or not np.isfinite(value) else format(value, spec)


def summary_markdown(result: dict) -> str:
    """The study's table, ours beside it, then one row per seed and pair."""
    s = result["settings"]
    lines = ["# Correlation experiment (tables 1-2)\n",
             f"Seeds {s['seeds']}; per seed: {s['initial']:,} initial posts, "
             f"{s['candidates']:,} candidates in {s['candidates'] // s['group_size']} "
             f"disjoint groups of {s['group_size']}, one fine-tuned model per group from "
             "the passive weights. Spearman over seeds: mean rho, 95% Student-t interval, "
             "p of a t-test of rho = 0 over seeds. Per seed: scipy's p and a 95% "
             f"bootstrap interval over groups ({s['bootstrap']} resamples).\n",
             "| data | pair | Spearman | 95% interval | p-value | study Spearman | "
             "study p-value |", "|---|---|---|---|---|---|---|"]
    for row in result["summary"]:
        study_rho, study_p = STUDY[row["pair"]]
        lines.append(f"| posts (alray, {row['seeds']} seeds) | {PAIRS[row['pair']]} | "
                     f"{_fmt(row['rho'])} | [{_fmt(row['low'])}, {_fmt(row['high'])}] | "
                     f"{_fmt(row['p_value'], '.3g')} | {study_rho:+.4f} | {study_p:.4f} |")
    lines += ["", "| seed | pair | Spearman | 95% bootstrap interval | p-value | "
              "passive accuracy | group accuracy (min-max) |", "|---|---|---|---|---|---|---|"]
    for row in result["per_seed"]:
        acc = [g["accuracy"] for g in result["groups"] if g["seed"] == row["seed"]]
        base = next(p["accuracy"] for p in result["passive"] if p["seed"] == row["seed"])
        lines.append(f"| {row['seed']} | {PAIRS[row['pair']]} | {_fmt(row['rho'])} | "
                     f"[{_fmt(row['low'])}, {_fmt(row['high'])}] | "
                     f"{_fmt(row['p_value'], '.3g')} | {base:.4f} | "
                     f"{min(acc):.4f}-{max(acc):.4f} |")
    return "\n".join(lines) + "\n\n![correlation.png](correlation.png)\n"


def write_outputs(result: dict, out: str | os.PathLike) -> list[str]:
    """``groups.parquet``, ``posts.parquet``, ``summary.json``, ``summary.md`` and
    ``correlation.png`` in ``out``, each written atomically; returns the paths."""
    import pyarrow as pa

    from alray.pool.io import write_json, write_table

    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, n) for n in ("groups.parquet", "posts.parquet",
                                            "summary.json", "summary.md", "correlation.png")]
    write_table(pa.Table.from_pylist(result["groups"]), paths[0])
    write_table(pa.table(result["posts"]), paths[1])
    write_json(paths[2], {k: result[k] for k in ("settings", "passive", "per_seed", "summary")})
    tmp = f"{paths[3]}.tmp"
    with open(tmp, "w") as f:
        f.write(summary_markdown(result))
    os.replace(tmp, paths[3])
    plot_groups(result["groups"], result["passive"], list(PAIRS), paths[4])
    return paths
