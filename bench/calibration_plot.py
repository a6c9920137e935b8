"""Passive curves of several pools (``bench/passive_curve.py``'s curve.json) against the
study's: a figure (accuracy against labels, one line per curve, the study's points
overlaid) and a markdown table (study, each curve, their mean), point by point.

    .venv/bin/python bench/calibration_plot.py data/curves/w0 data/curves/w1 \
        --names "world 0,world 1" --out docs/reproduction/calibration
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

from passive_curve import STUDY, reach_points, write_atomic

SHARES = ("0.95", "0.98", "0.99", "1")


def load(spec: str) -> dict:
    """One curve from ``DIR`` or ``DIR+DIR+...`` (runs of the same pool that measured
    different sizes, e.g. in parallel): points merged by size, reach recomputed."""
    points = {}
    for directory in spec.split("+"):
        with open(os.path.join(directory, "curve.json")) as f:
            points.update({p["labels"]: p for p in json.load(f)["points"]})
    rows = [points[n] for n in sorted(points)]
    return {"points": rows, **reach_points([p["labels"] for p in rows],
                                           [p["fused_accuracy"] for p in rows])}


def at(curve: dict, labels: int) -> float:
    """The measured fused accuracy at ``labels`` (NaN when not a measured size)."""
    hits = [p["fused_accuracy"] for p in curve["points"] if p["labels"] == labels]
    return hits[0] if hits else float("nan")


def table(curves: list[dict], names: list[str]) -> str:
    study = {"at 2k": STUDY["accuracy_at_2k"], "final": STUDY["final"],
             **{s: STUDY["reach"]["1.0" if s == "1" else s] for s in SHARES}}
    rows = [dict(study, name="study (5 seeds)")]
    for curve, name in zip(curves, names):
        rows.append({"name": name, "at 2k": at(curve, 2000), "final": curve["final"],
                     **{s: curve["reach"][s] for s in SHARES}})
    keys = ["at 2k", "final", *SHARES]
    if len(curves) > 1:
        rows.append({"name": "mean", **{k: float(np.mean([r[k] for r in rows[1:]]))
                                         for k in keys}})
    head = "| | accuracy at 2k | final (smoothed) | 95% | 98% | 99% | 100% |\n" \
           "|---|---:|---:|---:|---:|---:|---:|\n"
    body = ""
    for r in rows:
        cells = [f"{r['at 2k']:.3f}", f"{r['final']:.3f}"] + \
                [f"{r[s] / 1000:.1f}k" for s in SHARES]
        body += f"| {r['name']} | " + " | ".join(cells) + " |\n"
    return head + body


def figure(curves: list[dict], names: list[str], out: str) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from alray.experiments.plots import save_figure

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for curve, name in zip(curves, names):
        x = [p["labels"] for p in curve["points"]]
        ax.plot(x, [p["fused_accuracy"] for p in curve["points"]], "o-", label=name)
    final = STUDY["final"]
    reach = STUDY["reach"]
    xs = [2000] + [reach[s] for s in ("0.95", "0.98", "0.99", "1.0")]
    ys = [STUDY["accuracy_at_2k"]] + [float(s) * final for s in ("0.95", "0.98", "0.99", "1.0")]
    ax.plot(xs, ys, "k*", markersize=11, label="study (2k; 95/98/99/100% of final)")
    ax.set_xlabel("labelled posts (random)")
    ax.set_ylabel("validation accuracy (fused head)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = save_figure(fig, os.path.join(out, "passive-curves.png"))
    plt.close(fig)
    return path


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("curves", nargs="+",
                   help="Directories holding curve.json; DIR+DIR merges runs of one pool.")
    p.add_argument("--names", default=None, help="Comma-separated, one per curve.")
    p.add_argument("--out", required=True)
    args = p.parse_args(argv)
    names = args.names.split(",") if args.names else args.curves
    if len(names) != len(args.curves):
        raise SystemExit(f"--names: {len(names)} names for {len(args.curves)} curves")
    curves = [load(c) for c in args.curves]
    os.makedirs(args.out, exist_ok=True)
    text = table(curves, names)
    write_atomic(os.path.join(args.out, "table.md"), text)
    print(text)
    print(figure(curves, names, args.out))


if __name__ == "__main__":
    main()
