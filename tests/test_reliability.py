"""Issue 24: nothing lost on Ctrl-C or a full disk, nothing trained twice, every bad input a
one-line error. Each test here failed on 9518d0f."""

import errno
import json
import os
import signal
import subprocess
import sys

import pytest
import torch

from oversight_gr import records
from oversight_gr.agents.rundir import plan_run_dir
from oversight_gr.agents.run import run_training
from oversight_gr.agents.trainer import TrainConfig, Trainer
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


@pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")
def test_a_really_full_tmpfs_keeps_the_old_file(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)],
                      capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        records.write_json_atomic(mnt / "r.json", {"good": 1})
        with pytest.raises(records.WriteError, match=r"No space left on device.*previous "
                           r"content is unchanged"):
            records.write_json_atomic(mnt / "r.json", {"pad": "x" * 1_000_000})
        assert json.loads((mnt / "r.json").read_text()) == {"good": 1}
        assert sorted(p.name for p in mnt.iterdir()) == ["r.json"]
    finally:
        subprocess.run(["umount", str(mnt)])


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
