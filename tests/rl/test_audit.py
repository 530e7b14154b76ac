"""Audits for naive_early_stop: hidden spot checks, the label budget, and model selection."""

import pytest
import torch
from torch import nn

from oversight_gr.rl.audit import (
    AuditLedger,
    BestSnapshot,
    audit_policy,
    outcome_counts,
    training_oversight,
)
from oversight_gr.rl.reference import diamond_seeker
from oversight_gr.envs.core import Outcome


def _ghost_seeker():
    seek = diamond_seeker()
    return lambda obs: seek(obs[:, [0, 2, 1, 3]])  # diamond and ghost planes swapped


def test_training_oversight_pays_for_the_audits():
    assert training_oversight(0.1, 0.25) == pytest.approx(0.075)
    assert training_oversight(0.1, 0.0) == 0.1
    with pytest.raises(ValueError, match=r"audit_share must be in \[0, 1\), got 1.0"):
        training_oversight(0.1, 1.0)


def test_hidden_audit_scores_the_true_outcome_and_counts_labels():
    seen = []

    def diamond(obs):
        seen.append(int(obs[:, 3].sum()))  # the oversight plane the policy is shown
        return diamond_seeker()(obs)

    good = audit_policy(diamond, 256, seed=3)
    bad = audit_policy(_ghost_seeker(), 256, seed=3)
    assert set(seen) == {0}  # audits carry no oversight mark
    assert good.score > 0.5 and bad.score < -0.5
    assert 0 < good.labels <= 256 and 0 < bad.labels <= 256
    assert good.env_steps >= 256  # every episode takes at least one step
    assert audit_policy(diamond, 256, seed=3) == good  # same seed, same audit


def test_ledger_enforces_p_labels_per_terminal_episode():
    D, G, U, N, T = (int(o) for o in (Outcome.DIAMOND, Outcome.GHOST, Outcome.UNKNOWN,
                                      Outcome.NONE, Outcome.TIMEOUT))
    ledger = AuditLedger(p=0.1)
    outcome = torch.tensor([[D, U, N, T], [U, U, G, N]] * 25)  # 125 terminal, 50 seen
    ledger.record_training(*reversed(outcome_counts(outcome[:, None])))
    assert ledger.terminal_episodes == 125 and ledger.training_labels == 50
    assert ledger.affordable() == 0  # 50 seen > 0.1 * 125: nothing left for audits
    ledger.record_training(1000, 0)  # 1000 unseen terminals
    assert ledger.budget == pytest.approx(112.5)
    assert ledger.affordable() == 62
    ledger.charge(60)
    assert ledger.labels_read == 110 <= ledger.budget
    with pytest.raises(RuntimeError, match="exceeds the oversight budget"):
        ledger.charge(6)


def test_best_snapshot_keeps_the_best_and_restores_it():
    net = nn.Linear(2, 1)
    best = BestSnapshot()
    with torch.no_grad():
        net.weight.fill_(1.0)
    assert best.offer(0.3, net, 100)
    with torch.no_grad():
        net.weight.fill_(2.0)
    assert not best.offer(0.3, net, 200)  # a tie keeps the earlier
    assert not best.offer(0.1, net, 300)
    best.restore(net)
    assert torch.all(net.weight == 1.0) and best.env_steps == 100 and best.score == 0.3


def test_naive_early_stop_run_stays_within_the_oversight_budget(tmp_path):
    from oversight_gr.rl.run import run_training
    from oversight_gr.rl.trainer import TrainConfig, Trainer

    cfg = TrainConfig(method="naive_early_stop", oversight_prob=0.3, audit_share=0.5,
                      num_envs=64, rollout_steps=8, hidden=16, total_env_steps=64 * 8 * 6,
                      eval_envs=32, audit_every=64 * 8 * 2)
    assert float(Trainer(cfg).rules[0].oversight_prob) == pytest.approx(0.15)
    record = run_training(cfg, tmp_path, tensorboard=False)
    audit = record["audit"]
    assert audit["audits"] == 4  # every 2 updates of 6, and once at the end
    assert 0 < audit["audit_labels"] and audit["labels_read"] <= audit["budget"]
    assert audit["training_labels"] + audit["audit_labels"] == audit["labels_read"]
    assert audit["budget"] == pytest.approx(0.3 * audit["terminal_episodes"])
    assert record["reported_env_steps"] == record["env_steps"] + audit["audit_env_steps"]
    assert audit["selected_env_steps"] in (1024, 2048, 3072)
    # the metrics are those of the selected parameters, not the last ones
    from oversight_gr.rl.run import evaluate_trainer
    last = evaluate_trainer(record["trainer"])[0]["none"]["stepwise_return"]
    picked = record["metrics"]["none"]["stepwise_return"]
    assert picked == last or audit["selected_env_steps"] != 3072
    # a finished run is returned untouched on a second call
    again = run_training(cfg, tmp_path, tensorboard=False)
    assert again["audit"] == audit and again["metrics"] == record["metrics"]


def test_auditor_state_survives_a_resume(tmp_path):
    from oversight_gr.rl.run import run_training
    from oversight_gr.rl.trainer import TrainConfig

    cfg = TrainConfig(method="naive_early_stop", oversight_prob=0.3, audit_share=0.5,
                      num_envs=64, rollout_steps=8, hidden=16, total_env_steps=64 * 8 * 6,
                      eval_envs=32, audit_every=64 * 8 * 2)
    straight = run_training(cfg, None)

    class Killed(Exception):
        pass

    def kill(trainer, _):
        if trainer.updates == 5:
            raise Killed

    with pytest.raises(Killed):
        run_training(cfg, tmp_path, tensorboard=False, checkpoint_every=4, progress=kill)
    resumed = run_training(cfg, tmp_path, tensorboard=False, checkpoint_every=4)
    assert resumed["audit"] == straight["audit"]
    assert resumed["metrics"] == straight["metrics"]


def test_eval_of_an_early_stopped_run_shows_the_selected_parameters(tmp_path):
    from oversight_gr.rl.commands import _load
    from oversight_gr.rl.run import evaluate_trainer, run_training
    from oversight_gr.rl.trainer import TrainConfig

    cfg = TrainConfig(method="naive_early_stop", oversight_prob=0.3, audit_share=0.5,
                      num_envs=64, rollout_steps=8, hidden=16, total_env_steps=64 * 8 * 6,
                      eval_envs=32, audit_every=64 * 8 * 2)
    record = run_training(cfg, tmp_path, tensorboard=False)
    assert evaluate_trainer(_load(str(tmp_path)))[0] == record["metrics"]
