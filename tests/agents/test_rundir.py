"""A run directory is never silently overwritten: same config resumes or is finished, a
different config is refused (naming the fields) unless extended or overwritten on request."""

import json

import pytest

from oversight_gr.agents.rundir import plan_run_dir

CFG = {"method": "routing", "total_env_steps": 20000, "seed": 0, "device": "cpu", "threads": 1}


def _saved(d, cfg=CFG, checkpoint=True, results=False):
    d.mkdir(parents=True, exist_ok=True)
    (d / "config.json").write_text(json.dumps(cfg))
    if checkpoint:
        (d / "checkpoint.pt").write_bytes(b"ckpt")
    if results:
        (d / "results.json").write_text("{}")
    return d


def test_new_resume_finished(tmp_path):
    assert plan_run_dir(tmp_path / "fresh", CFG).action == "new"
    assert plan_run_dir(_saved(tmp_path / "r"), CFG).action == "resume"
    done = _saved(tmp_path / "f", results=True)
    before = {p.name: p.read_bytes() for p in done.iterdir()}
    assert plan_run_dir(done, CFG).action == "finished"
    assert {p.name: p.read_bytes() for p in done.iterdir()} == before  # untouched
    # where it runs does not change what it computes
    assert plan_run_dir(done, {**CFG, "device": "cuda", "threads": 4}).action == "finished"


def test_changed_config_is_refused_naming_the_fields(tmp_path):
    d = _saved(tmp_path / "r", results=True)
    with pytest.raises(ValueError, match=r"total_env_steps: 20000 -> 30000.*--extend.*"
                                         r"--overwrite"):
        plan_run_dir(d, {**CFG, "total_env_steps": 30000})
    with pytest.raises(ValueError, match=r"seed: 0 -> 1"):
        plan_run_dir(d, {**CFG, "seed": 1})
    assert (d / "checkpoint.pt").read_bytes() == b"ckpt"


def test_extend_only_lengthens(tmp_path):
    d = _saved(tmp_path / "r", results=True)
    plan = plan_run_dir(d, {**CFG, "total_env_steps": 30000}, on_change="extend")
    assert plan.action == "extend" and plan.saved_config == CFG
    with pytest.raises(ValueError, match="only lengthens"):
        plan_run_dir(d, {**CFG, "total_env_steps": 10000}, on_change="extend")
    with pytest.raises(ValueError, match="seed: 0 -> 1"):
        plan_run_dir(d, {**CFG, "seed": 1}, on_change="extend")


def test_overwrite_removes_the_old_run(tmp_path):
    d = _saved(tmp_path / "r", results=True)
    (d / "notes.txt").write_text("mine")
    assert plan_run_dir(d, {**CFG, "seed": 1}, on_change="overwrite").action == "new"
    assert sorted(p.name for p in d.iterdir()) == ["notes.txt"]  # only the run's files go


def test_bad_dirs_and_files_are_named(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="is an existing file"):
        plan_run_dir(tmp_path / "file", CFG)
    d = tmp_path / "bad"
    d.mkdir()
    (d / "config.json").write_text("{truncated")
    with pytest.raises(ValueError, match=r"bad/config.json is unreadable"):
        plan_run_dir(d, CFG)
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"holds \['checkpoint.pt'\] but no config.json"):
        plan_run_dir(orphan, CFG)
    with pytest.raises(ValueError, match="on_change must be one of"):
        plan_run_dir(tmp_path / "x", CFG, on_change="replace")
