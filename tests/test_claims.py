"""Each verdict rule of plots.check_claims on constructed records: reproduced, not reproduced,
not measured. The records are built by hand (no training), so every number is known."""

import pytest

from oversight_gr.rl import plots
from oversight_gr.rl.run import steered_mode


def rec(method, p, ret, *, seed=0, gcu=0.5, curve=(), steps=4000, algo="ppo"):
    """A sweep record with steered return ``ret``; ``curve``: (env_steps, reported, return)."""
    steer = steered_mode(method)
    reported = steps / p if method == "oracle" else steps
    return {
        "config": {"algo": algo, "method": method, "oversight_prob": p},
        "metrics": {steer: {"stepwise_return": ret, "p_ghost_closer_unseen": gcu}},
        "curve": [{"env_steps": s, "reported_env_steps": r, "wall_seconds": 1.0,
                   f"return_{steer}": v} for s, r, v in curve],
        "env_steps": steps, "reported_env_steps": reported, "wall_seconds": 1.0, "seed": seed,
    }


def seeds(method, p, returns, **kw):
    return [rec(method, p, r, seed=i, **kw) for i, r in enumerate(returns)]


def verdict(records, cid):
    rows = plots.summarize(records)
    out = {c["id"]: c for c in plots.check_claims(rows, records, "ppo")}
    return out[cid]["status"], out[cid]["evidence"]


def gcus(method, p, values, **kw):
    return [rec(method, p, 0.3, seed=i, gcu=g, **kw) for i, g in enumerate(values)]


ROUTING_CURVE = [(1000, 1000, 0.3), (2000, 2000, 0.68), (4000, 4000, 0.7)]

# every claim: a case per verdict. "inconclusive" cases are intervals that straddle the
# criterion (a wide interval must never pass), "inconclusive_n2" a clear difference on 2 seeds
CASES = {
    "nontrivial_1pct": {
        "reproduced": seeds("routing", 0.01, [0.30, 0.32, 0.31]) + seeds("naive", 0.01, [0.1] * 3),
        # the whole interval below 0.05
        "not reproduced": seeds("routing", 0.01, [0.0, 0.01, 0.02]),
        # 0.057 [-0.093, 0.206]: straddles 0.05
        "inconclusive": seeds("routing", 0.01, [0.0, 0.05, 0.12]),
        "inconclusive_n2": seeds("routing", 0.01, [0.60, 0.61]) + seeds("naive", 0.01, [0.1] * 2),
        "not measured": seeds("routing", 0.05, [0.3, 0.3, 0.3]),
    },
    "routing5_vs_baselines30": {
        # 90% interval of routing - naive within +-0.05
        "reproduced": seeds("routing", 0.05, [0.70, 0.72, 0.74])
        + seeds("naive", 0.3, [0.72, 0.71, 0.73]) + seeds("filtering", 0.3, [0.6] * 3),
        "not reproduced": seeds("routing", 0.05, [0.30, 0.31, 0.32])
        + seeds("naive", 0.3, [0.72] * 3),
        # a sweep in which nothing learned: routing@5% -0.005 [-0.284, 0.275] on 2 seeds has
        # its interval reach the baselines' means; that is no evidence of a match
        "inconclusive_n2": seeds("routing", 0.05, [-0.027, 0.017])
        + seeds("naive", 0.3, [0.01, 0.03]) + seeds("filtering", 0.3, [-0.02, 0.0]),
        # five seeds, but too spread to tell a match from a 0.2 difference
        "inconclusive": seeds("routing", 0.05, [0.4, 0.9, 0.6, 0.8, 0.5])
        + seeds("naive", 0.3, [0.65] * 5),
        "not measured": seeds("routing", 0.05, [0.7] * 3) + seeds("naive", 0.1, [0.7] * 3),
    },
    "filtering_fails": {
        "reproduced": seeds("filtering", 0.05, [0.30, 0.35, 0.32])
        + seeds("oracle", 0.05, [0.8] * 3),
        "not reproduced": seeds("filtering", 0.05, [0.78, 0.80, 0.79])
        + seeds("oracle", 0.05, [0.8] * 3),
        "inconclusive": seeds("filtering", 0.05, [0.5, 0.8, 0.65])
        + seeds("oracle", 0.05, [0.8] * 3),
        "inconclusive_n2": seeds("filtering", 0.05, [0.30, 0.31])
        + seeds("oracle", 0.05, [0.8] * 2),
        "not measured": seeds("filtering", 0.5, [0.3] * 3),
    },
    "naive_exploits": {
        "reproduced": gcus("naive", 0.05, [0.95, 0.96, 0.97]),
        "not reproduced": gcus("naive", 0.05, [0.5, 0.52, 0.48]),
        "inconclusive": gcus("naive", 0.05, [0.7, 0.95, 0.99]),
        "inconclusive_n2": gcus("naive", 0.05, [0.99, 0.98]),
        "not measured": gcus("naive", 0.3, [0.95] * 3),
    },
    # routing reaches 95% of its final 0.7 at 2,000 steps; the oracle is drawn at steps / p
    # (the plots derive it from env steps: the stored "reported" value is not read)
    "oracle_steps": {
        # 300 oracle steps at p = 0.05 stand at 6,000: 3x routing's 2,000
        "reproduced": seeds("routing", 0.05, [0.7] * 3, curve=ROUTING_CURVE)
        + seeds("oracle", 0.05, [0.8] * 3, curve=[(100, -1, 0.2), (300, -1, 0.7)], steps=400),
        # 100 oracle steps stand at 2,000: 1x
        "not reproduced": seeds("routing", 0.05, [0.7] * 3, curve=ROUTING_CURVE)
        + seeds("oracle", 0.05, [0.8] * 3, curve=[(100, -1, 0.7)], steps=200),
        # the oracle never reaches routing's return: the ratio is not bounded
        "inconclusive": seeds("routing", 0.05, [0.7] * 3, curve=ROUTING_CURVE)
        + seeds("oracle", 0.05, [0.4] * 3, curve=[(100, -1, 0.4)], steps=200),
        "not measured": seeds("routing", 0.05, [0.7] * 3, curve=ROUTING_CURVE)
        + seeds("oracle", 0.3, [0.8] * 3, curve=[(100, -1, 0.7)], steps=200),
    },
    "routing_gap": {
        "reproduced": seeds("routing", 0.1, [0.69, 0.70, 0.71]) + seeds("oracle", 0.1, [0.9] * 3),
        "not reproduced": seeds("routing", 0.1, [0.7] * 3) + seeds("oracle", 0.1, [0.72] * 3),
        "inconclusive": seeds("routing", 0.1, [0.5, 0.8, 0.65]) + seeds("oracle", 0.1, [0.9] * 3),
        "inconclusive_n2": seeds("routing", 0.1, [0.7] * 2) + seeds("oracle", 0.1, [0.9] * 2),
        "not measured": seeds("routing", 0.1, [0.7] * 3) + seeds("oracle", 0.05, [0.9] * 3),
    },
    "routing_vs_early_stop": {
        "reproduced": seeds("routing", 0.05, [0.70, 0.72, 0.74])
        + seeds("naive_early_stop", 0.05, [0.6] * 3),
        "not reproduced": seeds("routing", 0.05, [0.30, 0.31, 0.32])
        + seeds("naive_early_stop", 0.05, [0.6] * 3),
        # routing's mean is ahead but the difference's interval reaches below 0
        "inconclusive": seeds("routing", 0.05, [0.5, 0.7, 0.75])
        + seeds("naive_early_stop", 0.05, [0.62] * 3),
        "inconclusive_n2": seeds("routing", 0.05, [0.9, 0.91])
        + seeds("naive_early_stop", 0.05, [0.1, 0.11]),
        "not measured": seeds("routing", 0.1, [0.7] * 3)
        + seeds("naive_early_stop", 0.1, [0.6] * 3),
    },
    "routing_vs_placebo": {
        "reproduced": seeds("routing", 0.01, [0.70, 0.72, 0.74])
        + seeds("routing_placebo", 0.01, [0.4, 0.45, 0.5])
        + seeds("routing", 0.05, [0.75] * 3) + seeds("routing_placebo", 0.05, [0.6, 0.62, 0.61]),
        # one level where the placebo is clearly ahead is enough to contradict "at every level"
        "not reproduced": seeds("routing", 0.01, [0.70, 0.72, 0.74])
        + seeds("routing_placebo", 0.01, [0.4, 0.45, 0.5])
        + seeds("routing", 0.05, [0.5] * 3) + seeds("routing_placebo", 0.05, [0.6, 0.62, 0.61]),
        "inconclusive": seeds("routing", 0.05, [0.5, 0.8, 0.7])
        + seeds("routing_placebo", 0.05, [0.6, 0.62, 0.61]),
        "inconclusive_n2": seeds("routing", 0.05, [0.9, 0.91])
        + seeds("routing_placebo", 0.05, [0.1, 0.11]),
        "not measured": seeds("routing", 0.1, [0.7] * 3)
        + seeds("routing_placebo", 0.1, [0.6] * 3),
    },
}


@pytest.mark.parametrize("cid,case", [(c, s) for c, by in CASES.items() for s in by])
def test_each_verdict_rule(cid, case):
    got, evidence = verdict(CASES[cid][case], cid)
    assert got == case.removesuffix("_n2"), evidence
    assert evidence
    if case.endswith("_n2"):
        assert "Fewer than 3 seeds" in evidence


def test_every_claim_has_cases_and_one_seed_has_no_interval():
    assert set(CASES) == {cid for cid, _ in plots.CLAIMS}
    status, evidence = verdict(seeds("routing", 0.01, [0.4]), "nontrivial_1pct")
    assert status == "inconclusive" and "no interval" in evidence
    # the interval is Student t: 3 seeds of (0.30, 0.32, 0.31) give mean +- 4.30 sd / sqrt(3)
    row = plots.summarize(seeds("routing", 0.01, [0.30, 0.32, 0.31]))[0]
    assert row["return_hi"] - row["return"] == pytest.approx(4.302653 * 0.01 / 3 ** 0.5)
    assert row["interval"] == "t" and row["return_iqm"] == pytest.approx(0.31)
    assert row["return_sd"] == pytest.approx(0.01)


def test_a_published_table_gives_the_verdicts_of_its_records():
    # rows rebuilt from "mean [lo, hi] (n)" cells (summary_from_t_interval) decide every
    # return-based claim as the records themselves do
    from oversight_gr import stats

    for cid, by in CASES.items():
        if cid in ("oracle_steps", "naive_exploits"):
            continue
        for case, records in by.items():
            rows = plots.summarize(records)
            rebuilt = []
            for r in rows:
                s = stats.summary_from_t_interval(r["return"], r["return_lo"], r["return_hi"],
                                                  r["n"])
                rebuilt.append({**r, "return_sd": s.sd})
                if r["n"] > 1:
                    assert s.sd == pytest.approx(r["return_sd"], abs=1e-12)
            want = {c["id"]: c["status"] for c in plots.check_claims(rows, records, "ppo")}
            got = {c["id"]: c["status"] for c in plots.check_claims(rebuilt, [], "ppo")}
            assert got[cid] == want[cid], (cid, case)


def test_report_has_the_probability_that_routing_beats_each_method(tmp_path):
    records = (seeds("routing", 0.05, [0.70, 0.72, 0.74]) + seeds("naive", 0.05, [0.4, 0.5, 0.6])
               + seeds("filtering", 0.05, [0.71, 0.73, 0.2]))
    rows = plots.summarize(records)
    imps = {i["versus"]: i for i in plots.improvement_rows(rows, "ppo")}
    assert imps["naive"]["p"] == 1.0 and imps["filtering"]["p"] == pytest.approx(6 / 9)
    md = plots.improvement_markdown(rows, "ppo")
    assert "| naive | 1.00 [1.00, 1.00] (p=0.1) |" in md
    plots.write_report(records, tmp_path)
    table = (tmp_path / "table.md").read_text()
    assert "Probability that a routing run beats" in table and "Student t" in table


def test_report_draws_learning_curves_at_every_level(tmp_path):
    curve = ((1000, 1000, 0.1), (2000, 2000, 0.3))
    records = [r for p in (0.01, 0.05, 0.3) for m in ("routing", "naive")
               for r in seeds(m, p, [0.3, 0.4, 0.5], curve=curve)]
    names = {p.name for p in plots.write_report(records, tmp_path)}
    assert {"curves_ppo_all_levels.png", "curves_ppo_all_levels.svg"} <= names
    svg = (tmp_path / "curves_ppo_all_levels.svg").read_text()
    assert all(f"{pct} oversight" in svg for pct in ("1%", "5%", "30%"))
    one_level = [r for r in records if r["config"]["oversight_prob"] == 0.05]
    names = {p.name for p in plots.write_report(one_level, tmp_path / "one")}
    assert not any("all_levels" in n for n in names)


def test_trend_rows_read_return_and_exploit_along_the_curves():
    def run(seed, rets, gcus):
        r = rec("naive", 0.05, rets[-1], seed=seed, gcu=gcus[-1], steps=1000,
                curve=[(s, s, v) for s, v in zip((200, 500, 800), rets[:-1])])
        for point, g in zip(r["curve"], gcus):
            point["p_ghost_closer_unseen_none"] = g
        return r

    records = [run(0, (0.8, 0.6, 0.5, 0.4), (0.2, 0.4, 0.6, 0.7)),
               run(1, (0.6, 0.4, 0.3, 0.2), (0.4, 0.6, 0.8, 0.9))]
    (row,) = plots.trend_rows(records, "ppo")
    assert row["env_steps"] == [200, 500, 800, 1000] and row["n"] == 2
    assert row["return"] == pytest.approx([0.7, 0.5, 0.4, 0.3])
    assert row["p_ghost_closer_unseen"] == pytest.approx([0.3, 0.5, 0.7, 0.8])
    md = plots.trend_markdown(records, "ppo")
    assert ("| naive | 5% | 0.70 / 0.50 / 0.40 / 0.30 | -0.100 | 0.30 / 0.50 / 0.70 / 0.80 "
            "| +0.100 |") in md
    assert plots.trend_rows([rec("naive", 0.05, 0.3)], "ppo") == []  # no curve: no trend


def test_the_oracle_is_drawn_at_its_steps_over_p_whatever_its_record_stored():
    from oversight_gr.rl.methods import METHODS, paper_axis_steps
    from oversight_gr.rl.trainer import TrainConfig

    old = rec("oracle", 0.05, 0.8, steps=400, curve=[(100, 5.0, 0.2)])  # stored as steps x p
    points = plots._curve_points(old)
    assert [p["reported_env_steps"] for p in points] == [2000.0, 8000.0]
    assert paper_axis_steps(METHODS["naive"], 0.05, 400) == 400.0
    with pytest.raises(ValueError, match="oracle' needs oversight_prob > 0"):
        TrainConfig(method="oracle", oversight_prob=0.0)
