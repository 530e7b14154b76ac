"""Audits for naive_early_stop: hidden spot checks, the label budget, and model selection."""

import pytest
import torch
from torch import nn

from oversight_gr.agents.audit import (
    AuditLedger,
    BestSnapshot,
    audit_policy,
    training_oversight,
)
from oversight_gr.agents.reference import diamond_seeker
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
    ledger.record_training(outcome)
    assert ledger.terminal_episodes == 125 and ledger.training_labels == 50
    assert ledger.affordable() == 0  # 50 seen > 0.1 * 125: nothing left for audits
    ledger.record_training(torch.full((10, 100), U))  # 1000 unseen terminals
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
