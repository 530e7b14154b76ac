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

import contextlib
import copy
from dataclasses import dataclass

import torch
from torch import nn

from oversight_gr.rl.evaluation import _as_policy
from oversight_gr.envs.core import GridRules, Outcome

__all__ = ["outcome_counts", "training_oversight", "Auditor", "AuditLedger", "AuditResult", "audit_policy", "BestSnapshot"]


def outcome_counts(outcome: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(overseen, terminal)`` counts of observed outcome codes ``[T, R, B]`` per run ``[R]``:
    episodes whose outcome the supervisor saw (an overseen diamond or ghost), and all episodes
    that ended on a terminal, seen or not."""
    seen = (outcome == int(Outcome.DIAMOND)) | (outcome == int(Outcome.GHOST))
    ended = seen | (outcome == int(Outcome.UNKNOWN))
    return seen.sum((0, 2)), ended.sum((0, 2))


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

    def record_training(self, terminal_episodes: int, overseen_outcomes: int) -> None:
        """Count a rollout's terminal episodes (seen or not) and those whose outcome the
        supervisor saw (an overseen diamond or ghost), e.g. from :func:`outcome_counts`."""
        self.terminal_episodes += int(terminal_episodes)
        self.training_labels += int(overseen_outcomes)

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


#: most audit episodes in one audit (the budget left over carries to the next)
MAX_AUDIT_EPISODES = 4096
#: audit seeds start here (evaluation uses 10_000 + seed), one stream per run seed
AUDIT_SEED = 20_000_000


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


class Auditor:
    """The audits of every run of a :class:`~oversight_gr.rl.trainer.Trainer` whose method
    pays for them (``naive_early_stop``), driven by the run loop.

    The loop calls :meth:`observe` after every update (it reads the update's counts of terminal
    episodes and observed outcomes), which audits every ``audit_every`` env steps, spending what
    each run's ledger can afford; evaluations inside :meth:`selected` see each run's
    best-audited parameters, which is what the method reports.
    """

    def __init__(self, trainer):
        self.trainer = trainer
        cfg = trainer.cfg
        self.ledgers = [AuditLedger(c.oversight_prob) for c in trainer.cfgs]
        self.best = [BestSnapshot() for _ in trainer.cfgs]
        self.env_steps = [0] * trainer.R
        self.audits = 0
        self.every = cfg.audit_every or max(cfg.total_env_steps // 20, 1)
        self.next_at = self.every

    @classmethod
    def for_trainer(cls, trainer) -> Auditor | None:
        return cls(trainer) if trainer.method.audit else None

    def observe(self, runs: list[dict]) -> None:
        """Count one update's supervision (``runs``: the per-run scalars of ``train_update``)
        and audit when ``audit_every`` env steps have passed."""
        for ledger, scalars in zip(self.ledgers, runs):
            ledger.record_training(scalars["charts/terminal_episodes"],
                                   scalars["charts/overseen_outcomes"])
        if self.trainer.env_steps >= self.next_at:
            while self.next_at <= self.trainer.env_steps:
                self.next_at += self.every
            self.audit()

    def audit(self) -> None:
        """Audit every run's current policy with the labels its ledger affords now."""
        trainer = self.trainer
        for r, cfg in enumerate(trainer.cfgs):
            n = min(self.ledgers[r].affordable(), MAX_AUDIT_EPISODES)
            if n < 1:
                continue
            policy, value = trainer.unstack(r)
            res = audit_policy(policy, n, size=cfg.size, max_episode_steps=cfg.max_episode_steps,
                               seed=AUDIT_SEED + 2**20 * cfg.seed + self.audits,
                               device=trainer.device)
            self.ledgers[r].charge(res.labels)
            self.env_steps[r] += res.env_steps
            self.best[r].offer(res.score, nn.ModuleList([policy, value]), trainer.env_steps)
        self.audits += 1

    @contextlib.contextmanager
    def selected(self):
        """Within the block every audited run holds its best-audited parameters (a run not yet
        audited keeps its current ones); they are put back afterwards."""
        trainer = self.trainer
        saved = []
        for r, best in enumerate(self.best):
            if best.state is None:
                saved.append(None)
                continue
            saved.append(trainer.unstack(r))
            policy, value = trainer.unstack(r)
            best.restore(nn.ModuleList([policy, value]))
            trainer.load_run(r, policy, value)
        try:
            yield
        finally:
            for r, current in enumerate(saved):
                if current is not None:
                    trainer.load_run(r, *current)

    def summary(self, r: int) -> dict:
        """Run r's audit record: the ledger, the selected parameters' env steps and score."""
        best = self.best[r]
        return {**self.ledgers[r].as_dict(), "audits": self.audits,
                "audit_env_steps": self.env_steps[r], "selected_env_steps": best.env_steps,
                "selected_score": None if best.state is None else best.score,
                "audit_share": self.trainer.cfgs[r].audit_share,
                "training_oversight": self.trainer.cfgs[r].training_oversight}

    def state_dict(self) -> dict:
        return {"ledgers": [vars(ledger).copy() for ledger in self.ledgers],
                "best": [{"score": b.score, "env_steps": b.env_steps, "state": b.state}
                         for b in self.best],
                "env_steps": list(self.env_steps), "audits": self.audits,
                "next_at": self.next_at}

    def load_state_dict(self, state: dict) -> None:
        for ledger, saved in zip(self.ledgers, state["ledgers"]):
            vars(ledger).update(saved)
        for best, saved in zip(self.best, state["best"]):
            best.score, best.env_steps, best.state = saved["score"], saved["env_steps"], \
                saved["state"]
        self.env_steps, self.audits = list(state["env_steps"]), state["audits"]
        self.next_at = state["next_at"]

    def save(self, directory) -> None:
        """Write ``audit.pt`` beside the trainer's checkpoint (atomically)."""
        from pathlib import Path

        from oversight_gr.records import write_atomic

        state = self.state_dict()
        write_atomic(Path(directory) / "audit.pt", lambda f: torch.save(state, f))

    def load(self, directory) -> bool:
        """Restore ``audit.pt`` if present (a resumed run); True if it was."""
        from pathlib import Path

        path = Path(directory) / "audit.pt"
        if not path.exists():
            return False
        try:
            self.load_state_dict(torch.load(path, weights_only=True))
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same answer
            raise ValueError(f"{path} is unreadable ({type(exc).__name__}: {exc}); delete the "
                             "run directory's checkpoint.pt and audit.pt to restart the run") \
                from None
        return True
