"""The study's table (labels to shares of one passive plateau) on hand-made curves whose
answers are worked by hand."""
from __future__ import annotations

import pandas as pd

from alray.experiments.compare import compare_sweep
from alray.experiments.study_table import passive_name, study_markdown, study_rows
from alray.experiments.stats import AT_LEAST, AT_MOST, EXACT, UNDEFINED

X = (100, 200, 300)  # labelled at steps 0, 1, 2
FROZEN = "freeze_batchnorm=True"


def _curves(arms: dict[str, list[list[float]]]) -> pd.DataFrame:
    """variant -> one accuracy curve per seed (seed = position)."""
    rows = [(variant, seed, step, X[step], acc)
            for variant, per_seed in arms.items() for seed, curve in enumerate(per_seed)
            for step, acc in enumerate(curve)]
    return pd.DataFrame(rows, columns=["variant", "seed", "step", "labelled", "accuracy"])


ARMS = {
    # passive: plateau 0.8, so targets 0.76, 0.784, 0.792, 0.8 reached at 260/284/292/300
    "random": [[0.5, 0.7, 0.8], [0.5, 0.7, 0.8]],
    # 95%: 100 + 0.26/0.4 * 100 = 165 and 100 + 0.26/0.3 * 100 = 186.7; 100%: 175 and 200
    "margin": [[0.5, 0.9, 0.9], [0.5, 0.8, 0.9]],
    # another learner, measured against the same passive targets
    f"random {FROZEN}": [[0.5, 0.6, 0.7], [0.5, 0.6, 0.7]],  # never: >= 300
    f"bald {FROZEN}": [[0.8, 0.85, 0.9], [0.79, 0.85, 0.9]],  # at the start, or at 116.7
    "entropy": [[0.5, 0.6, 0.7], [0.8, 0.8, 0.8]],  # one never, one at the start: no bound
}


def _rows():
    result = compare_sweep(_curves(ARMS))
    name = passive_name(result["arms"])
    return result, name, {r["variant"]: r for r in study_rows(result["curves"],
                                                               result["passive"][name])}


def test_the_passive_is_the_plain_random_arm_whatever_the_others():
    result, name, _ = _rows()
    assert name == "random" and set(result["arms"]) == {"random", f"random {FROZEN}"}
    assert passive_name({f"random {FROZEN}": ()}) == f"random {FROZEN}"
    # a grid over the option: its off value is the default learner
    assert passive_name({f"random {FROZEN}": (), "random freeze_batchnorm=False": ()}) == \
        "random freeze_batchnorm=False"
    assert passive_name({f"random {FROZEN}": (), "random dropout=0.2": ()}) is None
    passive = result["passive"]["random"]
    assert passive["final"] == 0.8
    assert [round(passive["labels"][p], 6) for p in (95, 98, 99, 100)] == [260, 284, 292, 300]


def test_labels_per_arm_exact_and_censored():
    _, _, rows = _rows()
    margin = rows["margin"]
    assert margin[95]["kind"] == EXACT and abs(margin[95]["mean"] - (165 + 560 / 3) / 2) < 1e-9
    assert margin[100]["kind"] == EXACT and abs(margin[100]["mean"] - 187.5) < 1e-9
    assert margin["reached_100"] == 2 and margin["at_start_100"] == 0
    frozen = rows[f"random {FROZEN}"]  # never reached: counted at the horizon, a bound
    assert frozen[95]["kind"] == AT_LEAST and frozen[95]["mean"] == 300
    assert frozen["reached_95"] == 0
    bald = rows[f"bald {FROZEN}"]
    assert bald[95]["kind"] == AT_MOST and bald[95]["mean"] == 100 and bald["at_start_95"] == 2
    # 100%: seed 0 at the start (<= 100), seed 1 at 100 + 0.01 / 0.06 * 100
    assert bald[100]["kind"] == AT_MOST and abs(bald[100]["mean"] - (100 + 350 / 3) / 2) < 1e-9
    assert bald["reached_100"] == 2 and bald["at_start_100"] == 1
    assert rows["entropy"][95]["kind"] == UNDEFINED and rows["entropy"]["reached_95"] == 1


def test_the_markdown_table():
    result, name, _ = _rows()
    lines = study_markdown(result["curves"], result["passive"][name], name).splitlines()
    assert lines[0] == ("| arm | seeds | labels to 95% (reached) | labels to 98% (reached) | "
                        "labels to 99% (reached) | labels to 100% (reached) |")
    assert lines[2] == "| passive: `random` smoothed | pooled | 260 | 284 | 292 | 300 |"
    table = {line.split(" | ")[0][2:]: line for line in lines[3:]}
    # margin 100%: mean 187.5, t-interval 187.5 -+ 12.706 * 12.5 over 2 seeds
    assert table["margin"].endswith("| 188 [29, 346] (2/2) |")
    assert table[f"random {FROZEN}"].endswith("| >= 300 (0/2) |")
    assert f"| bald {FROZEN} | 2 | <= 100 (2/2, 2 at the start) |" in table[f"bald {FROZEN}"]
    assert table[f"bald {FROZEN}"].endswith("| <= 108 (2/2, 1 at the start) |")
    assert "| entropy | 2 | n/a (1/2, 1 at the start) |" in table["entropy"]
