"""The demo: per-seed summary, the gap rule, summary.json, and the learning-curve figure."""

import json

import pytest

from oversight_gr.rl.demo import DEMO_SETTINGS, _schedule, gap_summary, run_demo


def test_gap_against_the_better_baseline_and_seeds_ahead():
    gap = gap_summary({"routing": [0.7, 0.6, 0.2], "naive": [0.5, 0.65, 0.1],
                       "filtering": [0.4, 0.3, 0.5]})
    assert gap["best_baseline"] == "naive"  # mean 0.417 vs 0.4
    assert gap["mean_gap"] == pytest.approx(0.5 - 1.25 / 3)
    assert gap["per_seed_gap"] == pytest.approx([0.2, -0.05, -0.3])  # vs each seed's best
    assert gap["ahead"] == 1 and gap["seeds"] == 3
    # the mean gap's interval over seeds: Welch's, routing's runs against the best baseline's
    from scipy import stats

    ci = stats.ttest_ind([0.7, 0.6, 0.2], [0.5, 0.65, 0.1], equal_var=False).confidence_interval()
    assert gap["interval"] == pytest.approx([ci.low, ci.high])


def test_schedule_puts_routing_alone_when_there_are_workers():
    assert _schedule(("routing", "naive", "filtering"), 2) == [["routing"],
                                                              ["naive", "filtering"]]
    assert _schedule(("routing", "naive", "filtering"), 1) == [["routing", "naive",
                                                               "filtering"]]
    assert _schedule(("routing", "naive", "filtering"), 3) == [["routing"], ["naive"],
                                                              ["filtering"]]


def test_run_demo_summary_has_one_value_per_seed():
    s = run_demo(seeds=2, first_seed=3, workers=1, num_envs=16, hidden=8,
                 total_env_steps=16 * 32 * 2, eval_envs=16)
    assert s["seeds"] == [3, 4]
    assert set(s["methods"]) == {"routing", "naive", "filtering"}
    for v in s["methods"].values():
        assert v["env_steps"] == 1024 and len(v["steered_return"]) == 2
    assert len(s["records"]) == 6 and len(s["records"][0]["curve"]) == 2
    with pytest.raises(ValueError, match="need routing"):
        run_demo(methods=("naive",))
    with pytest.raises(ValueError, match="at least one other"):
        run_demo(methods=("routing",))
    with pytest.raises(ValueError, match="oversight_prob must be in"):
        run_demo(oversight_prob=2.0)


def test_worker_processes_give_the_numbers_of_one_process():
    tiny = dict(seeds=2, first_seed=3, num_envs=16, hidden=8, total_env_steps=16 * 32 * 2,
                eval_envs=16)
    one, two = run_demo(workers=1, **tiny), run_demo(workers=2, **tiny)  # two: spawned lanes
    for m in ("routing", "naive", "filtering"):
        assert two["methods"][m]["steered_return"] == one["methods"][m]["steered_return"], m


def test_cli_demo_writes_summary_and_figures(tmp_path, capsys):
    from oversight_gr.cli import main

    assert main(["demo", "--env-steps", "16384", "--seeds", "2", "--workers", "1",
                 "--run-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "seed 0  seed 1" in out and "better baseline" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["methods"]["routing"]["env_steps"] == DEMO_SETTINGS["num_envs"] * 32  # one update
    assert len(summary["methods"]["naive"]["steered_return"]) == 2
    assert (tmp_path / "learning_curves.png").stat().st_size > 1000
    assert (tmp_path / "routing_policy_arrows.png").exists()
