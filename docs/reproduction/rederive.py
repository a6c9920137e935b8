"""Re-derive the tests of every stored sweep from its per-seed results.

    .venv/bin/python docs/reproduction/rederive.py > docs/reproduction/rederived.md

The sweeps in docs/reproduction/*/ were reported before alray's report was corrected
(docs/statistics.md); their curves are not stored, their per-seed results are
(per_seed.csv: final accuracy, normalised AUC, labels to each target, NaN when a seed
never reached it). From those this prints, per table, each variant's paired tests of the
AUC against the plain random arm and against plain margin (paired t and the exact
sign-flip test, both Holm-corrected within the table's family of tests), and how many
seeds reached random's final accuracy. With n seeds the smallest two-sided sign-flip p
is 2 / 2^n: 0.25 with 3 seeds, 0.0625 with 5, so no 3- or 5-seed table can pass it at
0.05, and that is what it says.
"""
from __future__ import annotations

import glob
import os

import numpy as np
import pandas as pd

from alray.experiments.stats import holm, paired_t_test, sign_flip_test

OFF = {"0", "0.0", "top", "False", "false", ""}


def learner(variant: str) -> tuple[str, bool]:
    """(strategy, whether every extra option is at its off value)."""
    name, _, extras = variant.partition(" ")
    plain = all(part.partition("=")[2] in OFF for part in extras.split() if part)
    return name, plain


def reference(variants, strategy: str) -> str | None:
    found = [v for v in variants if learner(v) == (strategy, True)]
    return found[0] if found else None


def table(path: str) -> str:
    per_seed = pd.read_csv(path)
    variants = sorted(per_seed["variant"].unique())
    rows, tests = [], []
    for against in ("random", "margin"):
        base = reference(variants, against)
        if base is None:
            continue
        b = per_seed[per_seed["variant"] == base].set_index("seed")
        for v in variants:
            if v == base or (against == "margin" and v == reference(variants, "random")):
                continue  # the same test as random against margin, counted once
            a = per_seed[per_seed["variant"] == v].set_index("seed")
            seeds = sorted(set(a.index) & set(b.index))
            da, db = a.loc[seeds, "auc"].to_numpy(), b.loc[seeds, "auc"].to_numpy()
            ahead = int((da > db).sum())
            tests.append((against, v, len(seeds), float(np.mean(da - db)), ahead,
                          paired_t_test(da, db), sign_flip_test(da, db)))
    t_holm, flip_holm = holm([t[5] for t in tests]), holm([t[6] for t in tests])
    head = ("| against | variant | seeds | AUC difference | seeds ahead | t p | t p (Holm) "
            "| sign-flip p | sign-flip p (Holm) |")
    lines = [head, "|" + "---|" * 9]
    for (against, v, n, diff, ahead, t, f), th, fh in zip(tests, t_holm, flip_holm):
        lines.append(f"| {against} | {v} | {n} | {diff:+.4f} | {ahead}/{n} | {t:.3g} | "
                     f"{th:.3g} | {f:.3g} | {fh:.3g} |")
    reached = per_seed.groupby("variant")["labels_100"].apply(lambda s: int(s.notna().sum()))
    seeds = per_seed.groupby("variant")["seed"].nunique()
    lines += ["", "Seeds that reached random's final accuracy (the rest are censored at "
              "the horizon): " + ", ".join(f"{v} {reached[v]}/{seeds[v]}" for v in variants)]
    return "\n".join(lines)


def main() -> None:
    root = os.path.dirname(os.path.abspath(__file__))
    print("# The stored sweeps, re-derived (docs/reproduction/rederive.py)\n")
    for path in sorted(glob.glob(os.path.join(root, "*", "per_seed.csv"))):
        print(f"## {os.path.basename(os.path.dirname(path))}\n")
        print(table(path) + "\n")


if __name__ == "__main__":
    main()
