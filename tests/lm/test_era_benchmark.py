"""The issue-16 target checks of benchmarks/lm_era.py on hand-made summary rows."""

import importlib.util
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "lm_era.py"


def _bench():
    spec = importlib.util.spec_from_file_location("lm_era_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(method, q, forget, retain, attack, ci=0.01):
    return {"method": method, "q": q, "n": 3, "final_forget": (forget, ci),
            "final_retain": (retain, ci), "attack_forget": (attack, ci)}


def test_targets_pass_and_fail():
    b = _bench()
    rows = [_row("era", 0.25, 4.8, 4.52, 4.75), _row("filter", 0.25, 4.6, 4.5, 4.55),
            _row("filter", 1.0, 4.9, 4.5, 4.85), _row("plain", None, 4.6, 4.55, 4.58),
            _row("expand_control", None, 4.65, 4.5, 4.6)]
    lines = b.targets(rows)
    assert len(lines) == 3
    assert "+0.300" in lines[0] and lines[0].endswith("holds")
    assert "forget +0.150" in lines[1] and "retain +0.020" in lines[1]
    assert lines[1].endswith("holds")
    assert lines[2].endswith("holds (significant)")
    # retain cost above 0.05 fails the routing target; a smaller gap fails the topic target
    rows[0] = _row("era", 0.25, 4.8, 4.6, 4.5)
    rows[2] = _row("filter", 1.0, 4.7, 4.5, 4.65)
    lines = b.targets(rows)
    assert all(line.endswith("does not hold") for line in lines)
    rows[1] = _row("filter", 0.25, 4.6, 4.5, 4.49)
    assert b.targets(rows)[2].endswith("holds only nominally (not significant)")
    d, ci = b._diff_ci((1.0, float("nan")), (0.5, 0.3))
    assert d == 0.5 and math.isclose(ci, 0.3)
