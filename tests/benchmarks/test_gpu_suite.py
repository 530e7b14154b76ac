"""benchmarks/gpu_suite.py: the time budget, stopping a step cleanly, and merging results."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]



WRITE_SECTION = (
    "import os, sys; sys.path.insert(0, {bench!r}); from _results_doc import update_section; "
    "update_section({name!r}, '## {name}\\n\\nvalue 42')"
)


def test_budget_stops_a_long_step_and_skips_what_does_not_fit(load_bench, tmp_path,
                                                              monkeypatch):
    gs = load_bench("gpu_suite")
    steps = (gs.Step("quick", 0.0, 0.5), gs.Step("slow", 0.0, 0.5), gs.Step("late", 30.0, 1.0))

    def commands(step, device, tiny, out):
        if step == "quick":
            code = WRITE_SECTION.format(bench=str(ROOT / "benchmarks"), name="quick")
        else:  # writes its section, then runs far past its share of the budget
            code = WRITE_SECTION.format(bench=str(ROOT / "benchmarks"), name=step) + \
                "; import time; time.sleep(120)"
        return [[sys.executable, "-c", code]]

    monkeypatch.setattr(gs, "commands", commands)
    monkeypatch.setattr(gs, "RESERVE_S", 0.0)
    summary = gs.run_suite(tmp_path / "out", "cpu", budget_s=8.0, tiny=True, steps=steps)
    status = {s["name"]: s["status"] for s in summary["steps"]}
    assert status == {"quick": "ok", "slow": "stopped at budget", "late": "skipped: budget"}
    assert summary["wall_s"] < 30  # the 120 s sleep was cut at its share of the budget
    saved = json.loads((tmp_path / "out" / "suite.json").read_text())
    assert saved["steps"] == summary["steps"] and saved["device_name"].startswith("CPU")
    sections = (tmp_path / "out" / "sections.md").read_text()
    assert "value 42" in sections and "BEGIN slow" in sections  # what "slow" wrote is kept
    assert (tmp_path / "out.tar.gz").stat().st_size > 0  # one file to bring back
    assert gs._unpacked(tmp_path / "out.tar.gz").joinpath("sections.md").read_text() == sections


def test_merge_heads_each_section_with_the_device(load_bench, tmp_path):
    gs = load_bench("gpu_suite")
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "figures" / "f.png").write_bytes(b"png")
    (out / "suite.json").write_text(json.dumps({
        "device": "cuda", "device_name": "NVIDIA H200", "budget_s": 540, "started": "then",
        "steps": [{"name": "train_throughput_gpu", "status": "ok", "seconds": 12.0}]}))
    (out / "sections.md").write_text(
        "# Results\n\n<!-- BEGIN train_throughput_gpu -->\n## Trainer speed\n\n| a |\n"
        "<!-- END train_throughput_gpu -->\n")
    results = tmp_path / "docs" / "RESULTS.md"
    results.parent.mkdir()
    results.write_text("# Results\n\n<!-- BEGIN other -->\nkept\n<!-- END other -->\n")
    assert gs.merge(out, results) == ["train_throughput_gpu"]
    text = results.read_text()
    assert "kept" in text and "Device: **NVIDIA H200** (`cuda`)" in text
    assert text.index("## Trainer speed") < text.index("Device:") < text.index("| a |")
    assert (tmp_path / "docs" / "figures" / "f.png").read_bytes() == b"png"


def test_unknown_step_and_bad_budget_are_refused(load_bench, tmp_path):
    gs = load_bench("gpu_suite")
    with pytest.raises(ValueError, match="unknown step 'nope'"):
        gs.commands("nope", "cpu", True, tmp_path)
    with pytest.raises(SystemExit):
        gs.main(["run", "--out", str(tmp_path), "--device", "cpu", "--budget-minutes", "0"])


def test_cpu_dry_run_of_every_step(load_bench, tmp_path):
    """The same script end to end at tiny sizes on the CPU: every step runs and writes its
    section, the sweep its records, and the merge puts them into a RESULTS.md."""
    import subprocess

    out = tmp_path / "dry"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_suite.py"), "run",
                           "--out", str(out), "--device", "cpu", "--tiny",
                           "--budget-minutes", "6"], capture_output=True, text=True,
                          timeout=600, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    suite = json.loads((out / "suite.json").read_text())
    assert [s["status"] for s in suite["steps"]] == ["ok"] * 4, suite["steps"]
    gs = load_bench("gpu_suite")
    names = set(gs.read_sections(out / "sections.md"))
    assert names == {"train_throughput_gpu", "batched_runs_gpu", "oversight_sweep_paper_gpu",
                     "vision_table2_gpu"}
    assert len(list((out / "sweep_paper" / "records").glob("*.json"))) == 16  # 4 methods x 2 x 2
    results = tmp_path / "docs" / "RESULTS.md"
    results.parent.mkdir()
    assert set(gs.merge(tmp_path / "dry.tar.gz", results)) == names
    assert (tmp_path / "docs" / "figures" / "vision_table2_gpu_setting8.png").exists()


def test_a_failed_report_marks_its_step_failed(load_bench, tmp_path, monkeypatch):
    """A step whose training ran but whose report command (the one that writes its section)
    failed is not "ok": its section is missing."""
    gs = load_bench("gpu_suite")
    steps = (gs.Step("trained", 0.0, 1.0),)
    monkeypatch.setattr(gs, "commands", lambda *a: [[sys.executable, "-c", "pass"]])
    monkeypatch.setattr(gs, "report_commands",
                        lambda *a: [[sys.executable, "-c", "raise SystemExit(3)"]])
    monkeypatch.setattr(gs, "RESERVE_S", 0.0)
    summary = gs.run_suite(tmp_path / "out", "cpu", budget_s=60.0, tiny=True, steps=steps)
    assert summary["steps"][0]["status"] == "report failed"
    assert summary["steps"][0]["report"] == "failed"
