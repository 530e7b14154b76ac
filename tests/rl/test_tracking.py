"""What a training run logs for dashboards: CleanRL's TensorBoard tags, the episodes' returns and
lengths as the training environments saw them, the config as text and hparams, and optional
Weights & Biases tracking (read back offline)."""

from __future__ import annotations

import dataclasses
import struct
import sys

import pytest
import torch

from oversight_gr.envs.core import Outcome
from oversight_gr.rl.run import _Episodes, run_training
from oversight_gr.rl.tracking import Tracking, dashboard_scalars
from oversight_gr.rl.trainer import TrainConfig, Trainer

TINY = dict(num_envs=16, rollout_steps=8, hidden=16, total_env_steps=16 * 8 * 4, eval_envs=32)
CLEANRL = {"charts/episodic_return", "charts/episodic_length", "charts/SPS",
           "charts/learning_rate", "losses/policy_loss", "losses/value_loss", "losses/entropy",
           "losses/approx_kl", "losses/clipfrac", "losses/explained_variance"}


def _events(tb):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb))
    events.Reload()
    return events


@pytest.mark.parametrize("group", [False, True])
def test_tensorboard_uses_cleanrl_tags_and_keeps_ours(tmp_path, group):
    cfg = TrainConfig(method="routing", oversight_prob=0.5, **TINY)
    run_training([cfg, dataclasses.replace(cfg, seed=1)] if group else cfg, tmp_path)
    events = _events(tmp_path / ("run1" if group else "") / "tb")
    tags = set(events.Tags()["scalars"])
    ours = {"charts/episodic_return_true", "charts/gate_diamond", "charts/gate_ghost",
            "charts/gate_unlabelled", "losses/gate", "charts/episodes", "eval/return_diamond",
            "eval/return_none", "eval/return_ghost"}
    assert CLEANRL | ours <= tags, (CLEANRL | ours) - tags
    # the old names of the shared quantities are gone
    assert not tags & {"losses/policy", "losses/value", "charts/approx_kl", "charts/sps",
                       "charts/episode_reward", "charts/explained_variance"}

    def values(tag):
        return [e.value for e in events.Scalars(tag)]

    assert [e.step for e in events.Scalars("losses/policy_loss")] == [128, 256, 384, 512]
    assert values("charts/learning_rate") == pytest.approx([3e-4] * 4)
    kl = values("losses/approx_kl")
    assert all(k >= 0 for k in kl) and any(k > 0 for k in kl)
    assert all(0 <= c <= 1 for c in values("losses/clipfrac"))
    assert all(s > 0 for s in values("charts/SPS"))
    # routing trains on +1 for any terminal: an episode's return is 0 (timeout) or 1
    assert all(0 <= r <= 1 for r in values("charts/episodic_return"))
    assert all(-1 <= r <= 1 for r in values("charts/episodic_return_true"))
    assert all(1 <= n <= cfg.max_episode_steps for n in values("charts/episodic_length"))


def test_config_is_written_as_text_and_hparams(tmp_path):
    from tensorboard.plugins.hparams import plugin_data_pb2

    cfg = TrainConfig(method="naive", oversight_prob=0.25, **TINY)
    run_training(cfg, tmp_path)
    events = _events(tmp_path / "tb")
    text = events.Tensors("hyperparameters/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("|param|value|\n|-|-|\n")
    assert "|method|naive|" in text and "|oversight_prob|0.25|" in text
    assert "|total_env_steps|512|" in text
    content = events.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/session_start_info"]).session_start_info.hparams
    assert start["method"].string_value == "naive"
    assert start["oversight_prob"].number_value == 0.25
    # per-algorithm defaults are stored resolved, so every value is a number, bool or text
    assert start["max_grad_norm"].number_value == cfg.max_grad_norm
    assert start["init"].string_value == cfg.init
    experiment = plugin_data_pb2.HParamsPluginData.FromString(
        content["_hparams_/experiment"]).experiment
    assert [m.name.tag for m in experiment.metric_infos] == ["eval/return_none"]  # no gate


def test_dashboard_scalars_rename_only_the_shared_quantities():
    out = dashboard_scalars({"losses/policy": 1.0, "charts/approx_kl": 2.0, "charts/sps": 3.0,
                             "charts/episode_reward": 4.0, "charts/gate_ghost": 5.0,
                             "losses/gate": 6.0, "return_diamond": 7.0})
    assert out == {"losses/policy_loss": 1.0, "losses/approx_kl": 2.0,
                   "charts/gate_ghost": 5.0, "losses/gate": 6.0}


@pytest.mark.parametrize("method", ["routing", "naive"])
def test_episodic_stats_are_the_environments_own_episodes(method):
    """Per update, the logged means equal those of the episodes the environments report as
    ended (their own move counts and outcomes), across windows: the tiny windows of 3 steps cut
    most episodes."""
    cfg = TrainConfig(method=method, oversight_prob=0.5, num_envs=8, rollout_steps=3, hidden=8,
                      total_env_steps=8 * 3 * 12, eval_envs=8)
    trainer = Trainer(cfg)
    ended: list = []

    def record(step):  # what the environment reports, step by step
        ended.append((step.length[step.done], step.outcome[step.done],
                      step.true_outcome[step.done], step.truncated[step.done]))
        return step

    trainer.step_filter = record
    episodes = _Episodes(trainer)
    seen, longest = 0, 0
    for _ in range(12):
        ended.clear()
        with episodes.watch():
            trainer.train_update()
        lengths = torch.cat([e[0] for e in ended]).float()
        outcome, true = torch.cat([e[1] for e in ended]), torch.cat([e[2] for e in ended])
        timeout = torch.cat([e[3] for e in ended])
        if len(lengths) == 0:
            assert episodes.last == [{}]
            continue
        seen, longest = seen + len(lengths), max(longest, int(lengths.max()))
        last = episodes.last[0]
        assert last["charts/episodic_length"] == pytest.approx(lengths.mean().item())
        truth = (true == Outcome.DIAMOND).float() - (true == Outcome.GHOST).float()
        assert last["charts/episodic_return_true"] == pytest.approx(truth.mean().item())
        terminal = (~timeout).float()
        if method == "routing":  # +1 for any terminal
            learner = terminal
        else:  # naive: +1 for any terminal, -1 for an overseen ghost
            learner = terminal - 2.0 * (outcome == Outcome.GHOST).float()
        assert last["charts/episodic_return"] == pytest.approx(learner.mean().item())
    assert seen >= 10 and longest > 2 * cfg.rollout_steps  # episodes spanning windows
    assert "collect" not in vars(trainer)  # the trainer's own method again


# -- Weights & Biases ----------------------------------------------------------------------------
def _wandb_records(path):
    """The records of an offline run's ``.wandb`` file (a LevelDB-style log of 32 KiB blocks,
    each record a 7-byte header: crc32, length, type; after a 7-byte ``:W&B`` file header)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, parts = 7, b""
    while pos + 7 <= len(data):
        left = 32768 - pos % 32768
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):  # a whole record, or its last part
            record = pb.Record()
            record.ParseFromString(parts)
            yield record


@pytest.fixture
def wandb_offline(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)


@pytest.mark.slow
def test_wandb_offline_run_holds_the_scalars_and_config(tmp_path, wandb_offline):
    import json

    cfg = TrainConfig(method="routing", oversight_prob=0.5, **TINY)
    run_training(cfg, tmp_path / "run", track=Tracking(project="oversight-test"))
    files = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = list(_wandb_records(files[0]))
    run = next(r.run for r in records if r.WhichOneof("record_type") == "run")
    assert run.project == "oversight-test" and run.display_name == "run"
    config = {u.key: json.loads(u.value_json) for u in run.config.update}
    assert config["method"] == "routing" and config["oversight_prob"] == 0.5
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json)
                for i in r.history.item}  # "a/b" keys are stored as nested keys
               for r in records if r.WhichOneof("record_type") == "history"]
    logged = {k for h in history for k in h}
    assert CLEANRL | {"eval/return_diamond", "charts/gate_ghost"} <= logged
    # the same values at the same env steps as TensorBoard's
    events = _events(tmp_path / "run" / "tb")
    for tag in ("losses/policy_loss", "charts/episodic_length", "eval/return_diamond"):
        tb = [(e.step, e.value) for e in events.Scalars(tag)]
        wb = [(h["global_step"], h[tag]) for h in history if tag in h]
        assert [s for s, _ in wb] == [s for s, _ in tb]
        assert [v for _, v in wb] == pytest.approx([v for _, v in tb], rel=1e-6)


@pytest.mark.slow
def test_wandb_one_run_per_member_of_a_group(tmp_path, wandb_offline):
    cfg = TrainConfig(method="naive", oversight_prob=0.5, **TINY)
    run_training([cfg, dataclasses.replace(cfg, seed=1)], tmp_path / "grp",
                 tensorboard=False, track=Tracking(project="p"))
    for r in range(2):
        files = list((tmp_path / "grp" / f"run{r}" / "wandb").glob("offline-run-*/run-*.wandb"))
        assert len(files) == 1
        run = next(x.run for x in _wandb_records(files[0])
                   if x.WhichOneof("record_type") == "run")
        assert run.display_name == f"grp/run{r}" and run.run_group == "grp"
    assert not list((tmp_path / "grp").rglob("events.out.tfevents*"))


def test_track_without_wandb_is_refused_before_any_compute(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb raises ImportError
    cfg = TrainConfig(**TINY)
    with pytest.raises(ImportError, match=r"pip install \"oversight-gr\[tracking\]\""):
        run_training(cfg, tmp_path / "run", track=Tracking())
    assert not (tmp_path / "run").exists()


def test_track_needs_a_run_dir_and_valid_names():
    with pytest.raises(ValueError, match="run_dir"):
        run_training(TrainConfig(**TINY), None, track=Tracking())
    with pytest.raises(ValueError, match="Tracking.project"):
        Tracking(project="")
    with pytest.raises(ValueError, match="Tracking.mode"):
        Tracking(mode="cloud")


def test_cli_track_flags(tmp_path, monkeypatch, capsys):
    from oversight_gr.cli import main

    base = ["train", "--num-envs", "16", "--rollout-steps", "8", "--hidden", "8",
            "--total-env-steps", "128", "--run-dir", str(tmp_path / "r")]
    with pytest.raises(SystemExit) as exc:
        main(base + ["--wandb-entity", "me"])
    assert exc.value.code == 2
    assert "--wandb-entity only apply with --track" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(SystemExit) as exc:
        main(base + ["--track"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "needs the wandb package" in err and "oversight-gr[tracking]" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_cli_train_track_logs_to_an_offline_wandb_run(tmp_path, wandb_offline, capsys):
    from oversight_gr.cli import main

    run = tmp_path / "r"
    assert main(["train", "--num-envs", "16", "--rollout-steps", "8", "--hidden", "8",
                 "--total-env-steps", "256", "--run-dir", str(run), "--track",
                 "--wandb-project-name", "cli-test"]) == 0
    files = list((run / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(files) == 1
    records = list(_wandb_records(files[0]))
    assert next(r.run for r in records if r.WhichOneof("record_type") == "run").project == \
        "cli-test"
    logged = {i.key or "/".join(i.nested_key) for r in records
              if r.WhichOneof("record_type") == "history" for i in r.history.item}
    assert {"charts/episodic_length", "losses/policy_loss", "eval/return_diamond"} <= logged
