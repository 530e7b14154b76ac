"""The issue-25 checks of benchmarks/lm_era.py on hand-made records."""

import importlib.util
import math
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "lm_era.py"


def _bench():
    spec = importlib.util.spec_from_file_location("lm_era_bench", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _rec(method, q, seed, forget, retain, attack):
    return {"method": method, "q": q, "seed": seed, "final_forget": forget,
            "final_retain": retain, "attack_forget": attack}


def test_paired_differences_and_the_q05_target():
    b = _bench()
    recs = []
    for s in range(3):
        recs += [_rec("sgtm", 0.5, s, 4.5 + 0.01 * s, 4.20, 4.4),
                 _rec("sgtm_control", 0.5, s, 4.35 + 0.01 * s, 4.19, 4.3),
                 _rec("filter", 0.5, s, 4.4, 4.2, 4.35),
                 _rec("sgtm_placebo", 0.5, s, 4.35 + 0.01 * s, 4.21, 4.3)]
    # paired by seed: the seed offsets cancel, so the interval has zero width
    m, ci, n = b.paired(recs, "sgtm", "sgtm_control", 0.5, "final_forget")
    assert n == 3 and math.isclose(m, 0.15) and ci < 1e-9
    lines = b.targets(recs)
    assert lines[0].startswith("- sgtm, q=0.5") and "forget +0.150" in lines[0]
    assert "retain +0.010" in lines[0] and lines[0].endswith("holds)")
    assert "minus data filtering: forget +0.110" in lines[1]
    assert "placebo" in lines[2] and "forget +0.000" in lines[2]
    # a retain cost above 0.05 fails the target
    recs = [dict(r, final_retain=4.3) if r["method"] == "sgtm" else r for r in recs]
    assert b.targets(recs)[0].endswith("does not hold)")
    # one seed: no interval
    assert b._fmt(b.paired(recs[:4], "sgtm", "sgtm_control", 0.5, "final_forget")) == "+0.150"


def test_trained_models_count_a_control_once_per_seed_and_report_every_method():
    b = _bench()
    recs = [dict(_rec(m, q, s, 4.4, 4.3, 4.3), pre_retain=4.2 + 0.01 * s + (m == "sgtm") * 0.2,
                 train_seconds=60.0, after_seconds=10.0)
            for m in ("sgtm", "sgtm_control") for q in (0.25, 0.5, 1.0) for s in range(3)]
    trained = b.trained_models(recs)
    # 9 sgtm trainings (one per q and seed), 3 control trainings (one per seed)
    assert sorted((t["method"], t["seed"]) for t in trained if t["method"] == "sgtm_control") \
        == [("sgtm_control", s) for s in range(3)]
    assert len(trained) == 12
    per = b.per_method_retain(trained)
    assert list(per) == ["sgtm", "sgtm_control"]
    assert per["sgtm_control"]["n"] == 3 and math.isclose(per["sgtm_control"]["mean"], 4.21)
    assert per["sgtm"]["n"] == 9 and math.isclose(per["sgtm"]["mean"], 4.41)


def test_sgtm_is_compared_with_era_control_only_when_the_controls_are_one_training():
    b = _bench()
    have = {"sgtm", "era", "era_control"}
    assert b.matched_control("sgtm", have, shared=True) == "era_control"
    assert b.matched_control("sgtm", have, shared=False) is None
    assert b.matched_control("sgtm", have | {"sgtm_control"}, shared=True) == "sgtm_control"
    assert b.matched_control("era", have, shared=True) == "era_control"
    recs = []
    for s in range(3):
        recs += [_rec("sgtm", 0.5, s, 4.5, 4.20, 4.4), _rec("era_control", 0.5, s, 4.35, 4.19, 4.3)]
    line = b.targets(recs, shared_control=True)[0]
    assert line.startswith("- sgtm, q=0.5, minus its matched control (era_control)")
    assert "forget +0.150" in line
    # with SGTM's own expansion the ERA control is no control of SGTM: no comparison
    assert b.targets(recs, shared_control=False) == []
    # the config of a grid's config.json decides it
    assert b.era_config({"sgtm_layers": None, "sgtm_k": None}).shared_control
    assert not b.era_config({"sgtm_layers": [0, 1, 2], "sgtm_k": 16}).shared_control
