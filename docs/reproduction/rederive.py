"""Re-derive the tests of every stored sweep from its per-seed results.

    .venv/bin/python docs/reproduction/rederive.py > docs/reproduction/rederived.md

The sweeps in docs/reproduction/*/ were reported before alray's report was corrected
(docs/statistics.md); their curves are not stored, their per-seed results are
(per_seed.csv: final accuracy, normalised AUC, labels to each target, NaN when a seed
never reached it). From those this prints, per table, each variant's paired tests of the
AUC against the plain random arm and against plain margin (each with the variant's own
training options, e.g. frozen batch norm) (paired t and the exact
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


QUERY_OPTIONS = {"sampling", "sampling_beta", "candidates", "class_balance", "cluster_margin"}


def learner(variant: str) -> tuple[str, tuple, bool]:
    """(strategy, its training options, whether every query option is off). A variant is
    compared with the arm of the same training options (as alray report does)."""
    name, _, extras = variant.partition(" ")
    options = dict(part.partition("=")[::2] for part in extras.split() if part)
    training = tuple(sorted((k, v) for k, v in options.items() if k not in QUERY_OPTIONS))
    plain = all(v in OFF for k, v in options.items() if k in QUERY_OPTIONS)
    return name, training, plain


def reference(variants, strategy: str, like: str | None = None) -> str | None:
    """The plain ``strategy`` arm with the training options of ``like``."""
    training = learner(like)[1] if like else ()
    found = [v for v in variants if learner(v) == (strategy, training, True)]
    return found[0] if found else None


def table(path: str) -> str:
    per_seed = pd.read_csv(path)
    variants = sorted(per_seed["variant"].unique())
    rows, tests = [], []
    for against in ("random", "margin"):
        for v in variants:
            base = reference(variants, against, v)
            if base is None or v == base or (against == "margin" and
                                             v == reference(variants, "random", v)):
                continue  # the same test as random against margin, counted once
            b = per_seed[per_seed["variant"] == base].set_index("seed")
            a = per_seed[per_seed["variant"] == v].set_index("seed")
            seeds = sorted(set(a.index) & set(b.index))
            da, db = a.loc[seeds, "auc"].to_numpy(), b.loc[seeds, "auc"].to_numpy()
            ahead = int((da > db).sum())
            tests.append((base, v, len(seeds), float(np.mean(da - db)), ahead,
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
