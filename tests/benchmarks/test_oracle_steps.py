"""benchmarks/oracle_steps.py: the ratio of the oracle's A / p to routing's steps."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests"))
from test_claims import seeds  # noqa: E402


def test_ratio_reads_the_oracle_at_its_steps_over_p(load_bench):
    # routing at 5% reaches 95% of its final 0.7 at 2,000 steps
    sweep = seeds("routing", 0.05, [0.7] * 3,
                  curve=[(1000, 1000, 0.3), (2000, 2000, 0.68), (4000, 4000, 0.7)])
    # the dense oracle (at p = 0.1) first passes 0.665 after 300 steps
    oracle = seeds("oracle", 0.1, [0.8] * 3, steps=400,
                   curve=[(100, -1, 0.2), (200, -1, 0.6), (300, -1, 0.7)])
    (row,) = load_bench("oracle_steps").ratio_rows(sweep, oracle, 0.1)
    assert row["target"] == pytest.approx(0.665) and row["routing_steps"] == 2000
    assert row["oracle_steps"] == pytest.approx(300)  # actual steps, not the oracle's own axis
    assert row["oracle_axis"] == pytest.approx(6000) and row["ratio"] == pytest.approx(3.0)


def test_filtering_is_read_beside_the_oracle_at_its_overseen_steps(load_bench):
    sweep = seeds("filtering", 0.1, [0.5] * 3, steps=4000, curve=[(2000, 2000, 0.3)])
    oracle = seeds("oracle", 0.1, [0.8] * 3, steps=400,
                   curve=[(100, -1, 0.2), (200, -1, 0.6), (300, -1, 0.7)])
    (row,) = load_bench("oracle_steps").filtering_rows(sweep, oracle, 0.1)
    # 10% of 4,000 steps: the oracle's curve at 400 steps (its final point, 0.8)
    assert row["labelled_steps"] == pytest.approx(400) and row["source"] == "dense"
    assert row["oracle_at_labelled"] == pytest.approx(0.8) and row["filtering_final"] == 0.5
