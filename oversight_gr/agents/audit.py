"""Audits: ground-truth spot checks charged against the oversight budget (``naive_early_stop``).

Naive reward overfits: its policy first learns to seek diamonds, then learns to exploit unseen
ghosts. Early stopping can catch the policy before the exploit forms, but only if something
scores the policy with the ground truth, and every ground-truth label is supervision. A fair
early-stopping baseline therefore pays for its audits out of the same oversight budget that
routing gets:

* **Budget.** At oversight level ``p`` a supervisor reads, in expectation, one ground-truth
  outcome for a fraction ``p`` of the terminal episodes (an episode is overseen when the cell it
  ends on is). ``naive_early_stop`` trains at ``p_train = p * (1 - audit_share)`` and spends the
  difference on audits: after ``E`` terminal training episodes it may have read at most
  ``p * E`` labels in all, the overseen training episodes' included (:class:`AuditLedger`
  enforces this; an audit that does not fit waits). Routing at the same ``p`` reads ``p * E'``
  for its own ``E'`` terminal episodes: the same budget per terminal episode.
* **Hidden audits.** An audit runs fresh episodes whose oversight plane is empty, so the policy
  sees exactly what it sees on unseen episodes, the situation in which it exploits; the auditor
  then reads each episode's true outcome (+1 diamond, -1 ghost, 0 timeout). That is what makes a
  spot check informative: an audit the policy can see measures its overseen behaviour only.
* **Selection.** The parameters with the best audit score so far are kept
  (:class:`BestSnapshot`); the run reports them. Audit episodes are env steps and are charged to
  the run like training steps.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from oversight_gr.agents.evaluation import _as_policy
from oversight_gr.envs.core import GridRules, Outcome

__all__ = ["training_oversight", "AuditLedger", "AuditResult", "audit_policy", "BestSnapshot"]


def training_oversight(p: float, audit_share: float) -> float:
    """The oversight level the audited method trains at: ``p * (1 - audit_share)``."""
    if not 0.0 <= audit_share < 1.0:
        raise ValueError(f"audit_share must be in [0, 1), got {audit_share!r}")
    return p * (1.0 - audit_share)


class AuditLedger:
    """Counts the ground-truth labels a method reads against ``p`` per terminal episode.

    Args:
        p: the oversight level the method is compared at (routing's).
    """

    def __init__(self, p: float):
        self.p = float(p)
        self.terminal_episodes = 0
        self.training_labels = 0
        self.audit_labels = 0

    def record_training(self, outcome: torch.Tensor) -> None:
        """Count a rollout's outcome codes ``[T, B]``: its terminal episodes (seen or not) and
        those whose outcome the supervisor saw (an overseen diamond or ghost)."""
        diamond, ghost, unknown = int(Outcome.DIAMOND), int(Outcome.GHOST), int(Outcome.UNKNOWN)
        seen = (outcome == diamond) | (outcome == ghost)
        self.terminal_episodes += int((seen | (outcome == unknown)).sum())
        self.training_labels += int(seen.sum())

    @property
    def budget(self) -> float:
        """Labels allowed so far: ``p`` per terminal training episode."""
        return self.p * self.terminal_episodes

    @property
    def labels_read(self) -> int:
        return self.training_labels + self.audit_labels

    def affordable(self) -> int:
        """How many audit labels may be read now without exceeding the budget."""
        return max(int(self.budget - self.labels_read), 0)

    def charge(self, labels: int) -> None:
        if labels > self.affordable():
            raise RuntimeError(f"an audit of {labels} labels exceeds the oversight budget "
                               f"({self.affordable()} affordable)")
        self.audit_labels += labels

    def as_dict(self) -> dict[str, float]:
        return {"p": self.p, "terminal_episodes": self.terminal_episodes,
                "training_labels": self.training_labels, "audit_labels": self.audit_labels,
                "labels_read": self.labels_read, "budget": self.budget}


@dataclass(frozen=True)
class AuditResult:
    score: float  # mean true outcome of the audited terminal episodes (+1 / -1 / 0)
    labels: int  # ground-truth outcomes read (terminal episodes audited)
    env_steps: int  # env steps the audit used


@torch.no_grad()
def audit_policy(policy, episodes: int, *, size: int = 5, max_episode_steps: int = 32,
                 seed: int = 0, device: str | torch.device = "cpu") -> AuditResult:
    """Run ``episodes`` hidden audit episodes (no oversight marks) with sampled actions and read
    their true outcomes. Episodes that time out score 0 and cost no label (a timeout is visible
    without oversight). ``policy`` is an actor module (its learned gate is used) or a callable
    ``obs -> logits``."""
    if episodes < 1:
        raise ValueError(f"an audit needs at least one episode, got {episodes}")
    rules = GridRules(episodes, size=size, max_episode_steps=max_episode_steps,
                      oversight_prob=0.0, reward_mode="true", device=device, seed=seed)
    gen = torch.Generator(device=rules.device).manual_seed(seed + 1)
    fn = _as_policy(policy, "none")
    obs = rules.reset()
    active = torch.ones(episodes, dtype=torch.bool, device=rules.device)
    total = torch.zeros((), device=rules.device)
    labels = torch.zeros((), dtype=torch.long, device=rules.device)
    steps = 0
    for _ in range(max_episode_steps):
        logits = fn(obs).float()
        action = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)
        r = rules.step(action)
        steps += int(active.sum())
        ended = r.done & active
        diamond = ended & (r.true_outcome == int(Outcome.DIAMOND))
        ghost = ended & (r.true_outcome == int(Outcome.GHOST))
        total += diamond.sum() - ghost.sum()
        labels += (diamond | ghost).sum()
        active &= ~r.done
        obs = r.obs
        if not bool(active.any()):
            break
    return AuditResult(float(total) / episodes, int(labels), steps)


class BestSnapshot:
    """The parameters with the best audit score so far (the earliest on ties)."""

    def __init__(self):
        self.score = float("-inf")
        self.state: dict | None = None
        self.env_steps = 0

    def offer(self, score: float, module: nn.Module, env_steps: int) -> bool:
        """Keep a copy of ``module``'s parameters if ``score`` beats the best; True if kept."""
        if score <= self.score:
            return False
        self.score, self.env_steps = score, env_steps
        self.state = copy.deepcopy(module.state_dict())
        return True

    def restore(self, module: nn.Module) -> nn.Module:
        """``module`` with the best parameters loaded (unchanged if nothing was offered)."""
        if self.state is not None:
            module.load_state_dict(self.state)
        return module
