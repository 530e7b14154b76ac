"""A run directory is never silently overwritten: same config resumes or is finished, a
different config is refused (naming the fields) unless extended or overwritten on request."""

import json

import pytest

from oversight_gr.rl.rundir import plan_run_dir

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
    with pytest.raises(ValueError, match=r"bad/config.json: not readable JSON"):
        plan_run_dir(d, CFG)
    orphan = tmp_path / "orphan"
    orphan.mkdir()
    (orphan / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(ValueError, match=r"holds \['checkpoint.pt'\] but no config.json"):
        plan_run_dir(orphan, CFG)
    with pytest.raises(ValueError, match="on_change must be one of"):
        plan_run_dir(tmp_path / "x", CFG, on_change="replace")


def test_groups_compare_run_by_run(tmp_path):
    group = [CFG, {**CFG, "seed": 1}]
    d = _saved(tmp_path / "g", cfg=group)
    for r in range(2):
        (d / f"run{r}").mkdir()
    assert plan_run_dir(d, group, results=("run0/results.json", "run1/results.json")).action \
        == "resume"
    (d / "run0" / "results.json").write_text("{}")
    (d / "run1" / "results.json").write_text("{}")
    assert plan_run_dir(d, group, results=("run0/results.json", "run1/results.json")).action \
        == "finished"
    longer = [{**c, "total_env_steps": 40000} for c in group]
    assert plan_run_dir(d, longer, on_change="extend").action == "extend"
    with pytest.raises(ValueError, match=r"runs: 2 -> 3"):
        plan_run_dir(d, group + [{**CFG, "seed": 2}])
    plan_run_dir(d, [CFG], on_change="overwrite")
    assert not list(d.iterdir())  # run<r>/ folders go with the run


def test_corrupt_checkpoint_and_config_name_the_file(tmp_path):
    from oversight_gr.rl.trainer import TrainConfig, Trainer

    cfg = TrainConfig(num_envs=8, rollout_steps=4, hidden=8, total_env_steps=64, eval_envs=8)
    Trainer(cfg).save(tmp_path)
    ckpt = tmp_path / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ValueError, match=r"checkpoint.pt is not a readable checkpoint"):
        Trainer.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**cfg.to_dict(), "hidden": "wide"}))
    with pytest.raises(ValueError, match=r"config.json is not a usable run config .*hidden"):
        Trainer.load(tmp_path)


def test_a_config_json_lacking_a_field_is_refused_like_a_record(tmp_path):
    """A config.json written before a field existed is not filled in with today's default
    (which would credit the run to a setting it never trained with): refused, naming it."""
    from oversight_gr.rl.trainer import TrainConfig, Trainer

    cfg = TrainConfig(num_envs=8, rollout_steps=4, hidden=8, total_env_steps=64, eval_envs=8)
    Trainer(cfg).save(tmp_path)
    old = cfg.to_dict()
    del old["gate_input"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"config.json .*lacks fields \['gate_input'\]"):
        Trainer.load(tmp_path)


def test_cli_train_refuses_a_changed_config_before_training(tmp_path, capsys):
    from oversight_gr.cli import main

    base = ["train", "--num-envs", "8", "--rollout-steps", "4", "--hidden", "8",
            "--eval-envs", "8", "--no-tensorboard", "--run-dir", str(tmp_path / "r")]
    assert main(base + ["--total-env-steps", "64"]) == 0
    before = (tmp_path / "r" / "results.json").read_bytes()
    with pytest.raises(SystemExit) as exc:
        main(base + ["--total-env-steps", "128"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "total_env_steps: 64 -> 128" in err and "--extend" in err
    assert (tmp_path / "r" / "results.json").read_bytes() == before
    assert main(base + ["--total-env-steps", "128", "--extend"]) == 0
    extended = json.loads((tmp_path / "r" / "results.json").read_text())
    assert extended["env_steps"] == 128
    assert main(base + ["--total-env-steps", "128"]) == 0  # finished: nothing is redone
    assert "already holds this finished run" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(base + ["--checkpoint-every", "-3"])
    (tmp_path / "file").write_text("x")
    with pytest.raises(SystemExit):
        main(base[:-1] + [str(tmp_path / "file"), "--total-env-steps", "64"])
    assert "is an existing file" in capsys.readouterr().err


def test_a_second_process_training_into_the_same_run_dir_is_refused(tmp_path):
    import subprocess
    import sys
    import time

    from oversight_gr.rl.run import run_training
    from oversight_gr.rl.trainer import TrainConfig

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from oversight_gr.rl.rundir import "
         "hold_run_dir\nwith hold_run_dir(sys.argv[1]):\n    print('held', flush=True); "
         "time.sleep(60)", str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        cfg = TrainConfig(num_envs=8, rollout_steps=4, hidden=8, total_env_steps=32, eval_envs=8)
        with pytest.raises(ValueError, match=rf"is in use by pid {holder.pid}"):
            run_training(cfg, tmp_path, tensorboard=False)
        assert not (tmp_path / "checkpoint.pt").exists()
    finally:
        holder.kill()
        holder.wait()
    time.sleep(0.1)  # the lock went with the killed process
    cfg = TrainConfig(num_envs=8, rollout_steps=4, hidden=8, total_env_steps=32, eval_envs=8)
    assert run_training(cfg, tmp_path, tensorboard=False)["env_steps"] == 32


def test_a_finished_run_with_an_unusable_record_names_the_file(tmp_path):
    from oversight_gr.rl.run import run_training
    from oversight_gr.rl.trainer import TrainConfig

    cfg = TrainConfig(num_envs=8, rollout_steps=4, hidden=8, total_env_steps=32, eval_envs=8)
    run_training(cfg, tmp_path, tensorboard=False)
    record = json.loads((tmp_path / "results.json").read_text())
    del record["metrics"]
    (tmp_path / "results.json").write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"results.json: not a usable rl_run record \(missing "
                                         r"required fields \['metrics'\]\).*--overwrite"):
        run_training(cfg, tmp_path, tensorboard=False)


def test_an_interrupted_extension_resumes_instead_of_passing_for_finished(tmp_path):
    d = _saved(tmp_path / "r", results=True)
    longer = {**CFG, "total_env_steps": 30000}
    assert plan_run_dir(d, longer, on_change="extend").action == "extend"
    assert not (d / "results.json").exists()  # the shorter run's record is gone
    (d / "config.json").write_text(json.dumps(longer))  # the extension's first checkpoint
    assert plan_run_dir(d, longer).action == "resume"  # killed, then the same command again


def test_eval_refuses_a_group_directory(tmp_path):
    from oversight_gr.rl.run import run_training
    from oversight_gr.rl.trainer import TrainConfig
    from oversight_gr.cli import main

    cfg = TrainConfig(num_envs=8, rollout_steps=4, hidden=8, total_env_steps=32, eval_envs=8)
    run_training([cfg, TrainConfig(**{**cfg.to_dict(), "seed": 1})], tmp_path, tensorboard=False)
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--run-dir", str(tmp_path)])
    assert exc.value.code == 2
