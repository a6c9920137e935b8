"""bench/passive_curve.py's pure parts: the sizes, the epoch cut and the reach points
read off the isotonic-smoothed curve."""
from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from passive_curve import epochs_for, parse_sizes, reach_points  # noqa: E402


def test_sizes_are_sorted_distinct_and_all_is_the_labelled_count():
    assert parse_sizes("5000,all,2000,2000", 9000) == [2000, 5000, 9000]
    with pytest.raises(SystemExit, match="12000"):
        parse_sizes("2000,12000", 9000)


def test_the_epoch_cut_keeps_small_fits_whole_and_floors_large_ones():
    assert epochs_for(2000, 45, 0, 3) == 45             # no budget: the study's protocol
    assert epochs_for(2000, 45, 90_000, 10) == 45
    assert epochs_for(10_000, 45, 90_000, 3) == 9
    assert epochs_for(100_000, 45, 90_000, 10) == 10     # never below the floor


def test_reach_points_come_from_the_smoothed_curve():
    # a dip at 40k is noise: isotonic pools it with 20k before the crossing is read
    out = reach_points([2000, 20000, 40000, 100000], [0.50, 0.62, 0.60, 0.64])
    assert out["smoothed"] == pytest.approx([0.50, 0.61, 0.61, 0.64])
    assert out["final"] == pytest.approx(0.64)
    # 95% of 0.64 = 0.608: between 2k (0.50) and 20k (0.61), linearly
    assert out["reach"]["0.95"] == pytest.approx(2000 + (0.608 - 0.50) / 0.11 * 18000)
    assert out["reach"]["1"] == 100000
    flat = reach_points([2000, 4000], [0.7, 0.7])
    assert flat["reach"]["0.95"] == 2000 and not math.isnan(flat["reach"]["1"])
