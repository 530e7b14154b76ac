"""Issue 24: nothing lost on Ctrl-C or a full disk, nothing trained twice, every bad input a
one-line error. Each test here failed on 9518d0f."""

import contextlib
import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from oversight_gr import records
from oversight_gr.rl.rundir import plan_run_dir
from oversight_gr.rl.run import run_training
from oversight_gr.rl.trainer import TrainConfig, Trainer
from oversight_gr.interrupts import Interrupted

TINY = dict(num_envs=8, rollout_steps=4, hidden=8, eval_envs=8)
PER_UPDATE = 8 * 4


def _cfg(**kw):
    return TrainConfig(**{**TINY, "total_env_steps": 4 * PER_UPDATE, **kw})


def _temps(d):
    return sorted(p.name for p in d.rglob("*.tmp"))


# -- work lost: Ctrl-C ----------------------------------------------------------------------------
def test_ctrl_c_before_the_first_checkpoint_checkpoints_and_the_same_call_resumes(tmp_path):
    """The first Ctrl-C stops after the update in progress and checkpoints (9518d0f: nothing
    saved, "finished work has been saved" printed, and the directory then refused)."""
    cfg = _cfg(eval_every=PER_UPDATE)
    straight = run_training(cfg, None)

    def ctrl_c(trainer, _scalars):
        if trainer.updates == 1:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted, match=r"keeps the checkpoint at 64 env steps; the same "
                       r"command resumes"):
        run_training(cfg, tmp_path, checkpoint_every=0, progress=ctrl_c)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    assert int(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["env_steps"]) == 64
    assert plan_run_dir(tmp_path, cfg.to_dict()).action == "resume"
    resumed = run_training(cfg, tmp_path, checkpoint_every=0)
    assert resumed["metrics"] == straight["metrics"]
    assert [p["env_steps"] for p in resumed["curve"]] == [32, 64, 96, 128]
    assert resumed["curve"] == [{**p, "wall_seconds": q["wall_seconds"]}
                                for p, q in zip(straight["curve"], resumed["curve"])]


def test_a_second_ctrl_c_says_what_was_lost_and_the_directory_is_not_refused(tmp_path):
    """A Ctrl-C that cannot wait (the second): the message says nothing was saved, and the
    same command starts the run again (9518d0f: "holds ['tb'] but no config.json")."""
    cfg = _cfg()

    def hard_stop(trainer, _scalars):
        raise KeyboardInterrupt

    with pytest.raises(Interrupted, match=r"nothing was saved yet .*the same command starts"):
        run_training(cfg, tmp_path, checkpoint_every=0, progress=hard_stop)
    assert not (tmp_path / "checkpoint.pt").exists()
    assert run_training(cfg, tmp_path, checkpoint_every=0)["env_steps"] == 4 * PER_UPDATE


def test_cli_train_ctrl_c_prints_what_was_kept(tmp_path):
    """A real SIGINT to `oversight-gr train`: exit 130, one line naming the checkpoint kept,
    and `eval` works on what was kept."""
    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "oversight_gr.cli", "train", "--run-dir", str(run_dir),
           "--num-envs", "8", "--rollout-steps", "4", "--hidden", "8", "--eval-envs", "8",
           "--total-env-steps", str(10**9), "--checkpoint-every", "0", "--no-tensorboard"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # the progress bar is drawn at the first update: training is under way
        buf = ""
        while "step" not in buf:
            ch = proc.stderr.read(1)
            assert ch, f"train ended early: {buf}"
            buf += ch
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 130
    last = err.strip().splitlines()[-1]
    assert "keeps the checkpoint at" in last and "Traceback" not in err, err
    out = subprocess.run([sys.executable, "-m", "oversight_gr.cli", "eval", "--run-dir",
                          str(run_dir), "--num-envs", "8"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr


# -- work lost: a full disk ---------------------------------------------------------------------------
class _FullDisk:
    """Writes to files named ``target`` fail with ENOSPC once ``armed``."""

    def __init__(self, monkeypatch, target):
        self.armed, self.target = False, target
        real = records.os.fdopen

        def fdopen(fd, *args, **kwargs):
            f = real(fd, *args, **kwargs)
            name = os.readlink(f"/proc/self/fd/{fd}")
            if self.armed and f".{self.target}." in os.path.basename(name):
                def write(_data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                f.write = write
            return f

        monkeypatch.setattr(records.os, "fdopen", fdopen)


def test_a_full_disk_at_the_final_save_keeps_the_last_checkpoint_and_no_temp(tmp_path,
                                                                              monkeypatch):
    cfg = _cfg()
    disk = _FullDisk(monkeypatch, "checkpoint.pt")

    def fill(trainer, _scalars):
        disk.armed = trainer.updates >= 2  # checkpoints at updates 1 and 2 fit, then full

    with pytest.raises(records.WriteError, match=r"could not write .*checkpoint.pt \(No space "
                       r"left on device\).*the checkpoint at 64 env steps is kept"):
        run_training(cfg, tmp_path, checkpoint_every=1, progress=fill)
    assert _temps(tmp_path) == []
    assert int(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["env_steps"]) == 64
    disk.armed = False
    assert run_training(cfg, tmp_path, checkpoint_every=1)["env_steps"] == 4 * PER_UPDATE


@contextlib.contextmanager
def _small_tmpfs(tmp_path, size: str):
    """A tmpfs of ``size`` mounted under tmp_path (skips where it cannot be mounted)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)])


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_really_full_tmpfs_keeps_the_old_file(tmp_path):
    with _small_tmpfs(tmp_path, "256k") as mnt:
        records.write_json_atomic(mnt / "r.json", {"good": 1})
        with pytest.raises(records.WriteError, match=r"No space left on device.*previous "
                           r"content is unchanged"):
            records.write_json_atomic(mnt / "r.json", {"pad": "x" * 1_000_000})
        assert json.loads((mnt / "r.json").read_text()) == {"good": 1}
        assert sorted(p.name for p in mnt.iterdir()) == ["r.json"]


def test_temps_of_killed_writers_are_removed_by_the_next_write(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".checkpoint.pt.{dead.pid}.abc123.tmp"  # SIGKILL mid-write
    left.write_bytes(b"half")
    live = tmp_path / f".checkpoint.pt.{os.getppid()}.def456.tmp"  # a live writer's
    live.write_bytes(b"busy")
    records.write_atomic(tmp_path / "checkpoint.pt", lambda f: f.write(b"ok"))
    assert not left.exists() and live.exists()


def test_a_lost_curve_json_does_not_shorten_the_resumed_curve(tmp_path):
    """The checkpoint holds the curve up to itself (9518d0f: after deleting a truncated
    curve.json the resumed record silently lacked every point before the checkpoint)."""
    cfg = _cfg(eval_every=PER_UPDATE)

    def ctrl_c(trainer, _scalars):
        if trainer.updates == 2:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(Interrupted):
        run_training(cfg, tmp_path, tensorboard=False, progress=ctrl_c)
    (tmp_path / "curve.json").write_text('[{"env_steps": 3')  # truncated, then deleted
    (tmp_path / "curve.json").unlink()
    resumed = run_training(cfg, tmp_path, tensorboard=False)
    assert [p["env_steps"] for p in resumed["curve"]] == [32, 64, 96, 128]


# -- compute wasted ---------------------------------------------------------------------------------
SWEEP = dict(preset="quick", seeds=1, num_envs=8, total_env_steps=512, hidden=8, eval_envs=8,
             eval_every=0, algos=("reinforce",))


def test_grid_repeats_are_scheduled_once(tmp_path):
    """`--oversight 0.1 0.1` / `--methods naive naive` (9518d0f: trained twice, "2 of 2 runs
    done"; with --workers 2 the repeat collided on the run's lock)."""
    from oversight_gr.rl.sweep import SweepConfig, build_specs, run_sweep

    sweep = SweepConfig(**SWEEP, methods=("naive", "naive"), oversight=(0.1, 0.1),
                        out=str(tmp_path))
    specs = build_specs(sweep)
    assert len(specs) == 1
    outcomes = list(run_sweep(sweep, specs + specs))  # a caller's repeats too
    assert [o.status for o in outcomes] == ["done"]


def test_a_budget_below_one_update_is_refused_and_a_rounded_one_stated(tmp_path, capsys):
    """9518d0f: --total-env-steps 100 trained 16,384 steps without a word."""
    from oversight_gr.cli import main
    from oversight_gr.rl.sweep import SweepConfig, run_sweep

    with pytest.raises(ValueError, match=r"total_env_steps 100 is less than one update .*"
                       r"512 x 32 = 16,384"):
        run_training(TrainConfig(total_env_steps=100), tmp_path / "a")
    with pytest.raises(ValueError, match=r"total_env_steps 100 is less than one update"):
        next(run_sweep(SweepConfig(**{**SWEEP, "total_env_steps": 100}, out=str(tmp_path))))
    with pytest.raises(SystemExit) as exc:
        main(["train", "--total-env-steps", "100", "--run-dir", str(tmp_path / "b")])
    assert exc.value.code == 2 and not (tmp_path / "b").exists()
    assert "total_env_steps 100 is less than one update" in capsys.readouterr().err
    assert main(["train", "--run-dir", str(tmp_path / "c"), "--num-envs", "8",
                 "--rollout-steps", "4", "--hidden", "8", "--eval-envs", "8",
                 "--total-env-steps", "40", "--no-tensorboard"]) == 0
    assert "note: training whole updates of 32 env steps (num_envs x rollout_steps): 64 env " \
        "steps for --total-env-steps 40" in capsys.readouterr().out


def test_num_envs_is_bounded_by_a_message_naming_it(capsys):
    """9518d0f: --num-envs 10**9 tried to allocate 8 GB (train, gym.make_vec)."""
    import gymnasium as gym

    from oversight_gr.cli import main

    with pytest.raises(ValueError, match=r"TrainConfig.num_envs must be in \[1, 1048576\]"):
        TrainConfig(num_envs=10**9)
    with pytest.raises(ValueError, match=r"num_envs must be an int in \[1, 1,048,576\], got "
                       r"1000000000"):
        gym.make_vec("OversightGrid-v0", num_envs=10**9)
    with pytest.raises(SystemExit):
        main(["eval", "--run-dir", "nowhere", "--num-envs", str(10**9)])
    assert "--num-envs must be an int in [1, 1,048,576]" in capsys.readouterr().err


# -- bad input ---------------------------------------------------------------------------------------
def test_seeds_are_checked_naming_the_argument(capsys):
    """9518d0f: reset(seed=2**64) "Overflow when unpacking long long"; reset(seed=2**32 + 5)
    silently played seed 5's episodes."""
    import gymnasium as gym
    import numpy as np

    from oversight_gr.cli import main

    env = gym.make("OversightGrid-v0")
    vec = gym.make_vec("OversightGrid-v0", num_envs=3)
    for seed in (2**64, 2**32 + 5, -1):
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*32 - 1\]"):
            env.reset(seed=seed)
        with pytest.raises(ValueError, match=r"seed must be an int in \[0, 2\*\*32 - 1\]"):
            vec.reset(seed=seed)
    a, _ = env.reset(seed=np.int64(7))  # a numpy integer is an integer
    b, _ = env.reset(seed=7)
    assert (a == b).all()
    with pytest.raises(SystemExit):
        main(["eval", "--run-dir", "nowhere", "--seed", str(46 * 10**21)])
    assert "--seed must be an int in [0, 2**32 - 1]" in capsys.readouterr().err


def test_strings_and_bools_are_not_numbers_and_numpy_ints_are_ints():
    import gymnasium as gym
    import numpy as np

    for bad in ("0.1", True):  # 9518d0f stored them as 0.1 and 1.0
        with pytest.raises(ValueError, match="oversight_prob must be a number"):
            gym.make("OversightGrid-v0", oversight_prob=bad)
        with pytest.raises(ValueError, match="TrainConfig.oversight_prob must be a number"):
            TrainConfig(oversight_prob=bad)
    env = gym.make("OversightGrid-v0", size=np.arange(8)[6])  # 9518d0f: refused
    assert env.observation_space.shape == (4, 6, 6)
    cfg = TrainConfig(size=np.int64(6), seed=np.int32(3), oversight_prob=np.float32(0.5))
    assert cfg.to_dict()["size"] == 6 and type(cfg.size) is int and type(cfg.seed) is int
    json.dumps(cfg.to_dict())
    from oversight_gr.rl.sweep import SweepConfig

    with pytest.raises(ValueError, match=r"SweepConfig.oversight\[0\] must be a number"):
        SweepConfig(oversight=("0.1",))


def test_a_sweep_override_that_is_not_a_number_names_the_field():
    """9518d0f: "invalid literal for int() with base 10: 'abc'"."""
    from oversight_gr.rl.sweep import SweepConfig

    with pytest.raises(ValueError, match=r"SweepConfig.train: total_env_steps must be an int, "
                       r"got 'abc'"):
        SweepConfig(train=("total_env_steps=abc",))
    with pytest.raises(ValueError, match=r"SweepConfig.train: lr must be a number, got 'x'"):
        SweepConfig(train=("lr=x",))


def test_a_hand_edited_claim_is_named_in_the_message(tmp_path):
    """A claim of a live pid without a start time (pid 1) is left alone, and the message
    names the claim file to delete (9518d0f: it did not)."""
    from oversight_gr.rl.sweep import SweepConfig, _HOST, build_specs, claim_path, run_sweep

    sweep = SweepConfig(**SWEEP, methods=("naive",), oversight=(0.1,), out=str(tmp_path))
    (spec,) = build_specs(sweep)
    path = claim_path(tmp_path, spec.key)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"pid": 1, "host": _HOST}))
    (outcome,) = run_sweep(sweep)
    assert outcome.status == "claimed"
    assert f"if no sweep is running it, delete {path}" in outcome.error


def test_results_json_metrics_of_the_wrong_type_are_refused_naming_the_file(tmp_path):
    """9518d0f: the record check passed, then TypeError while printing or plotting."""
    cfg = _cfg(total_env_steps=PER_UPDATE)
    run_training(cfg, tmp_path, tensorboard=False)
    path = tmp_path / "results.json"
    record = json.loads(path.read_text())
    for steer, field, bad in [("none", "p_diamond", "0.5"), ("none", "n_episodes", 1.5),
                              ("none", "stepwise_return", None)]:
        broken = json.loads(json.dumps(record))
        broken["metrics"]["diamond" if "diamond" in broken["metrics"] else steer][field] = bad
        path.write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=rf"results.json: not a usable rl_run record "
                           rf"\(metrics\[.*\]\[{field!r}\] is not a"):
            run_training(cfg, tmp_path, tensorboard=False)
    assert records.problem({**record, "curve": [{"env_steps": "1"}]}, "rl_run") is not None


def test_a_full_disk_while_storing_a_sweep_record_stops_cleanly_and_loses_nothing(
        tmp_path, monkeypatch):
    """9518d0f: a raw OSError; the first run's record lost and the second never ran."""
    from oversight_gr.rl.sweep import SweepConfig, build_specs, record_path, run_sweep

    sweep = SweepConfig(**SWEEP, methods=("naive", "filtering"), oversight=(0.1,),
                        out=str(tmp_path), checkpoint_every=1)
    first, second = build_specs(sweep)
    disk = _FullDisk(monkeypatch, f"{first.key}.json")
    disk.armed = True
    with pytest.raises(records.WriteError, match=r"sweep stopped: could not write .*No space "
                       r"left on device.*checkpoint in .* is kept and resumes it"):
        list(run_sweep(sweep))
    assert _temps(tmp_path) == [] and not record_path(tmp_path, first.key).exists()
    disk.armed = False
    outcomes = {o.spec.key: o.status for o in run_sweep(sweep)}
    assert outcomes == {first.key: "done", second.key: "done"}


# -- every subcommand, every bad output path: one clean line ------------------------------------------
def _leaf_commands(parser, prefix=()):
    import argparse

    subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subs:
        yield prefix
        return
    for name, sub in subs[0].choices.items():
        yield from _leaf_commands(sub, prefix + (name,))


#: each subcommand's arguments with one output path ({P}: a folder, {F}: a file) and the
#: cheapest settings that would otherwise run; a subcommand missing here fails the test below
TINY_TRAIN = ["--num-envs", "8", "--rollout-steps", "4", "--total-env-steps", "32", "--hidden",
              "8", "--eval-envs", "8"]
OUTPUT_ARGS = {
    ("train",): [["--run-dir", "{P}", *TINY_TRAIN]],
    ("eval",): [["--run-dir", "{P}"]],
    ("steer",): [["--run-dir", "{RUN}", "--out", "{F}"], ["--run-dir", "{RO_RUN}"]],
    ("demo",): [["--run-dir", "{P}", "--env-steps", "64", "--seeds", "1", "--workers", "1"]],
    ("sweep",): [["--out", "{P}", "--seeds", "1", "--num-envs", "8", "--total-env-steps", "512",
                  "--quiet", "--no-report"]],
    ("vision", "table2"): [["--out", "{P}"]],
    ("lm", "era"): [["--out", "{P}"], ["--out", "{GOOD}", "--figure", "{F}"]],
    ("lm", "steer"): [["--json", "{F}"]],
}


@pytest.fixture(scope="module")
def bad_places(tmp_path_factory):
    """Places no output can go: under a regular file, a name too long, a path too long, and a
    read-only folder (a read-only tmpfs as root, where permissions do not bind; else 0o555)."""
    root = tmp_path_factory.mktemp("bad")
    (root / "a_file").write_text("x")
    ro = root / "ro"
    ro.mkdir()
    cfg = TrainConfig(**{**TINY, "total_env_steps": PER_UPDATE})
    mounted = False
    if os.geteuid() == 0:
        mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(ro)],
                                 capture_output=True).returncode == 0
        if not mounted:
            pytest.skip("root, and cannot mount a read-only tmpfs")
    Trainer(cfg).save(ro / "run")
    if mounted:
        subprocess.run(["mount", "-o", "remount,ro", str(ro)], check=True)
    else:
        os.chmod(ro / "run", 0o555)
        os.chmod(ro, 0o555)
    good = root / "good"
    Trainer(cfg).save(good / "run")
    places = {"under a file": root / "a_file" / "out",
              "name too long": root / ("n" * 300),
              "path too long": root.joinpath(*["d" * 200] * 25),
              "read-only": ro / "out"}
    yield places, good, ro / "run"
    if mounted:
        subprocess.run(["umount", str(ro)])
    else:
        os.chmod(ro, 0o755)
        os.chmod(ro / "run", 0o755)


def test_every_subcommand_refuses_an_unusable_output_path_in_one_line(bad_places, capsys):
    from oversight_gr.cli import build_parser, main

    places, good, ro_run = bad_places
    assert set(_leaf_commands(build_parser())) == set(OUTPUT_ARGS)  # every subcommand covered
    for command, variants in OUTPUT_ARGS.items():
        for variant in variants:
            fixed = not any("{P}" in a or "{F}" in a for a in variant)
            for what, place in ({"read-only run dir": ro_run} if fixed else places).items():
                argv = [*command] + [a.format(P=place, F=place / "x.png", RUN=good / "run",
                                              RO_RUN=ro_run, GOOD=good / "era")
                                     for a in variant]
                with pytest.raises(SystemExit) as exc:
                    main(argv)
                err = capsys.readouterr().err.strip()
                assert exc.value.code in (1, 2), (argv, what, err)
                lines = [line for line in err.splitlines() if "warning" not in line]
                assert len(lines) == 1 and lines[0].startswith("oversight-gr: error: "), (
                    command, what, err)
                assert "Traceback" not in err


def test_train_into_a_run_whose_config_json_lacks_a_field_names_it(tmp_path):
    cfg = _cfg()
    old = cfg.to_dict()
    del old["gate_input"]
    tmp_path.joinpath("config.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"config.json lacks fields \['gate_input'\]"):
        run_training(cfg, tmp_path)


def test_sweep_ctrl_c_says_what_is_kept(tmp_path, monkeypatch, capsys):
    """One worker: the run in flight stops at its next update with a checkpoint; the line
    names the records kept and how the runs in flight resume."""
    from oversight_gr.rl import sweep as sweep_module
    from oversight_gr.cli import main

    def ctrl_c(_work_dir):
        return lambda trainer, _scalars: os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(sweep_module, "_progress_reporter", ctrl_c)
    argv = ["sweep", "--out", str(tmp_path), "--methods", "naive", "filtering", "--oversight",
            "0.1", "--seeds", "1", "--num-envs", "8", "--total-env-steps", "512", "--hidden",
            "8", "--eval-envs", "8", "--eval-every", "0", "--algos", "reinforce",
            "--checkpoint-every", "1", "--quiet", "--no-report"]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 130
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "sweep interrupted: 0 of 2 runs have records" in err and "checkpoints in" in err
    assert list((tmp_path / "work").glob("*/checkpoint.pt"))
    assert not list((tmp_path / "claims").glob("*.json"))  # released for the next start


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_training_onto_a_really_full_tmpfs_is_one_clean_error(tmp_path):
    """torch.save reports a full disk as RuntimeError("unexpected pos ..."): the checkpoint is
    serialised in memory first, so the OSError reaches the one error path (9518d0f: a raw
    traceback)."""
    with _small_tmpfs(tmp_path, "200k") as mnt:
        (mnt / "filler").write_bytes(b"x" * 150_000)
        cfg = TrainConfig(**{**TINY, "hidden": 64, "total_env_steps": 2 * PER_UPDATE})
        with pytest.raises(records.WriteError, match=r"checkpoint.pt \(No space left on device"
                           r"\).*no checkpoint had been written"):
            run_training(cfg, mnt / "run", tensorboard=False)
        assert _temps(mnt) == []


def test_a_run_that_cannot_save_for_a_full_disk_stops_the_sweep(tmp_path, monkeypatch):
    """The run's own checkpoint cannot be written: the sweep stops (the next runs would fail
    the same way after training) instead of training them all for nothing."""
    from oversight_gr.rl.sweep import SweepConfig, run_sweep

    sweep = SweepConfig(**SWEEP, methods=("naive", "filtering"), oversight=(0.1,),
                        out=str(tmp_path), checkpoint_every=1)
    disk = _FullDisk(monkeypatch, "checkpoint.pt")
    disk.armed = True
    with pytest.raises(records.WriteError, match=r"sweep stopped: naive/reinforce/p=0.1/seed=0 "
                       r"failed: could not write .*No space left on device"):
        list(run_sweep(sweep))
    assert not list((tmp_path / "claims").glob("*.json"))
