"""benchmarks/oversight_sweep.py: the RESULTS section it writes (tiny sweep, in-process)."""

from __future__ import annotations

import pytest

TINY = ["--num-envs", "8", "--total-env-steps", "512", "--hidden", "8", "--eval-envs", "8",
        "--eval-every", "256", "--quiet", "--seeds", "2", "--methods", "routing", "naive",
        "--oversight", "0.1", "0.3"]


def test_section_has_the_note_trends_and_every_level_curves(load_bench, tmp_path,
                                                            monkeypatch):
    results, figures = tmp_path / "RESULTS.md", tmp_path / "figures"
    monkeypatch.setenv("OVERSIGHT_GR_RESULTS", str(results))
    monkeypatch.setenv("OVERSIGHT_GR_FIGURES", str(figures))
    note = tmp_path / "note.md"
    note.write_text("Reading: a hand-written reading of the numbers.\n")
    bench = load_bench("oversight_sweep")
    argv = [*TINY, "--out", str(tmp_path / "sweep"), "--section", "tiny_sweep"]
    assert bench.main([*argv, "--note-file", str(note)]) == 0
    text = results.read_text()
    assert "<!-- BEGIN tiny_sweep -->" in text and "Reading: a hand-written reading" in text
    assert "Along the learning curves (ppo" in text and "| naive | 10% |" in text
    assert "tiny_sweep_curves_ppo_all_levels.png" in text
    assert (figures / "tiny_sweep_curves_ppo_all_levels.png").stat().st_size > 1000
    # the command written down reruns the sweep; the note and --report-only are not part of it
    assert "--note-file" not in text and "--section tiny_sweep" in text
    with pytest.raises(SystemExit):
        bench.main([*argv, "--report-only", "--note-file", str(tmp_path / "missing.md")])


def test_the_budget_line_names_settings_that_differ_between_methods(load_bench):
    from oversight_gr.rl.sweep import SweepConfig, build_specs

    bench = load_bench("oversight_sweep")
    assert bench.method_settings(build_specs(SweepConfig(preset="quick"))) == ""
    standard = build_specs(SweepConfig(preset="standard"))
    assert bench.method_settings(standard) == "; routing: unlabelled_sharpness 6.0"
    assert "routing: unlabelled_sharpness 6.0" in bench.budget_line(SweepConfig(preset="standard"),
                                                                    standard)
