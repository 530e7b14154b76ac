"""Evaluation with gate steering, and the paper's metric.

The paper's metric ("average stepwise ground-truth return"): run ``num_envs`` environments for
``steps`` moves from fresh resets with sampled actions; at every (step, env) entry take the
discounted (``gamma``) return-to-go of the true reward (+1 diamond, -1 ghost) within the episode,
cut at the window's end; average over all entries. Episode metrics come from the episodes that
start and end inside a longer window (``episode_steps``), so each probability is reported with
the number of episodes behind it. The return comes with a 95% interval over the evaluation's
environments: each environment's window (its own episodes, from its own resets) is independent
of the others', so the spread of the per-environment returns gives the sampling error of their
mean (Student t over ``num_envs`` values).

A run is evaluated at seed :func:`eval_seed` of its training seed, at the end of training and
by ``oversight-gr eval`` alike, so the two print the same figure.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor

from oversight_gr.envs.core import GridRules, Outcome

__all__ = ["EvalResult", "evaluate", "evaluate_runs", "Policy", "eval_seed", "EVAL_SEED_OFFSET"]

#: a run trained with seed s is evaluated with seed EVAL_SEED_OFFSET + s (distinct from every
#: training seed's environments in practice, and the same for a run wherever it is evaluated)
EVAL_SEED_OFFSET = 10_000


def eval_seed(train_seed: int) -> int:
    """The evaluation seed of a run trained with ``train_seed``."""
    return EVAL_SEED_OFFSET + int(train_seed)

#: ``policy(obs [B, 4, n, n] uint8) -> logits [B, 4]``
Policy = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class EvalResult:
    """What :func:`evaluate` measures (n_* are the episode counts behind each rate)."""

    steer: str
    oversight_prob: float
    stepwise_return: float
    #: 95% interval of ``stepwise_return`` over the evaluation's environments (Student t)
    stepwise_return_lo: float
    stepwise_return_hi: float
    p_diamond: float
    p_ghost: float
    p_timeout: float
    p_ghost_closer_unseen: float
    mean_length: float
    n_episodes: int
    n_closer_unseen: int

    def as_dict(self) -> dict:
        return asdict(self)


def _as_policy(policy, steer: str) -> Policy:
    if isinstance(policy, torch.nn.Module):
        return lambda obs: policy(obs, steer=steer).logits
    return policy


@torch.no_grad()
def evaluate(
    policy, oversight_prob: float, steer: str = "none", *, seed: int = 12345, **protocol: Any
) -> EvalResult:
    """Evaluate ``policy`` (an actor module from :mod:`.networks` or a logits function).

    Args:
        policy: ``MoEPolicy`` / ``SingleExpertPolicy`` (``steer`` is passed on) or a callable
            ``obs -> logits``.
        oversight_prob: oversight level of the evaluation environments (it changes what the
            policy sees).
        steer: ``"diamond"`` (gate fixed to 1), ``"ghost"`` (gate 0) or ``"none"``.
        seed: evaluation seed (environments and action sampling).
        protocol: ``num_envs``, ``steps``, ``episode_steps``, ``gamma``, ``size``,
            ``max_episode_steps``, ``device``, as in :func:`evaluate_runs`.
    """
    fn = _as_policy(policy, steer)
    return evaluate_runs(lambda obs: fn(obs[0]).unsqueeze(0), [oversight_prob], steer, [seed],
                         **protocol)[0]


@torch.no_grad()
def evaluate_runs(
    logits_fn: Callable[[Tensor], Tensor],
    oversight_probs: Sequence[float],
    steer: str,
    seeds: Sequence[int],
    *,
    num_envs: int = 512,
    steps: int = 32,
    episode_steps: int = 96,
    gamma: float = 0.97,
    size: int = 5,
    max_episode_steps: int = 32,
    device: str | torch.device = "cpu",
) -> list[EvalResult]:
    """:func:`evaluate` of R policies at once (one batch of environments for all of them).

    Args:
        logits_fn: ``obs [R, num_envs, 4, n, n] -> logits [R, num_envs, 4]`` (e.g.
            :meth:`oversight_gr.rl.trainer.Trainer.logits_fn`).
        steer: the steering mode the results are labelled with (``logits_fn`` applies it).
        num_envs, steps, gamma: the window protocol of the paper's metric (512 x 32, 0.97).
        episode_steps: length of the window whose completed episodes give the episode metrics.
        size, max_episode_steps, device: the evaluation environments.
        oversight_probs, seeds: run r's oversight level and evaluation seed. Run r's
            environments and action sampling use only its own seed, so its result does not
            depend on the other runs: it equals :func:`evaluate` with that seed.
    """
    R = len(seeds)
    all_rules = [
        GridRules(num_envs, size=size, max_episode_steps=max_episode_steps, oversight_prob=p,
                  reward_mode="true", device=device, seed=s)
        for p, s in zip(oversight_probs, seeds)
    ]
    dev = all_rules[0].device
    gens = [torch.Generator(device=dev).manual_seed(s + 1) for s in seeds]
    obs = torch.stack([rules.reset() for rules in all_rules])

    def start_conditions() -> Tensor:  # ghost closer and unseen at the episode's start
        return torch.stack([rules.ghost_closer() & ~rules.over[0] for rules in all_rules])

    total = max(steps, episode_steps)
    rewards = torch.zeros(total, R, num_envs, device=dev)
    dones = torch.zeros(total, R, num_envs, dtype=torch.bool, device=dev)
    # per env: did the running episode start inside the window, ghost closer & unseen at start
    started = torch.ones(R, num_envs, dtype=torch.bool, device=dev)
    closer_unseen = start_conditions()
    counts = torch.zeros(4, R, dtype=torch.long, device=dev)  # diamond, ghost, timeout, len
    n_cu = torch.zeros(R, dtype=torch.long, device=dev)
    ghost_cu = torch.zeros(R, dtype=torch.long, device=dev)
    codes = torch.tensor([int(Outcome.DIAMOND), int(Outcome.GHOST), int(Outcome.TIMEOUT)],
                         device=dev).view(3, 1, 1)
    for t in range(total):
        probs = torch.softmax(logits_fn(obs).float(), dim=-1)
        out = [rules.step(torch.multinomial(probs[r], 1, generator=gens[r]).squeeze(1))
               for r, rules in enumerate(all_rules)]
        r_done = torch.stack([o.done for o in out])
        true = torch.stack([o.true_outcome for o in out])
        length = torch.stack([o.length for o in out])
        rewards[t] = torch.stack([o.reward for o in out])
        dones[t] = r_done
        done = r_done & started
        counts[:3] += (done & (true == codes)).sum(-1)
        counts[3] += torch.where(done, length, 0).sum(-1)
        n_cu += (done & closer_unseen).sum(-1)
        ghost_cu += (done & closer_unseen & (true == int(Outcome.GHOST))).sum(-1)
        # new episodes begin inside the window; their start conditions are read now
        closer_unseen = torch.where(r_done, start_conditions(), closer_unseen)
        started = started | r_done
        obs = torch.stack([o.obs for o in out])
    # stepwise discounted return-to-go, per episode, cut at the end of the first `steps` moves
    ret = torch.zeros(R, num_envs, device=dev)
    acc = torch.zeros(R, device=dev)
    per_env = torch.zeros(R, num_envs, device=dev)  # each environment's own stepwise return
    for t in range(steps - 1, -1, -1):
        ret = rewards[t] + gamma * ret * (~dones[t]).float()
        acc += ret.sum(-1)
        per_env += ret
    stepwise = (acc / (steps * num_envs)).tolist()
    half = _half_width(per_env / steps)
    counts, n_cu, ghost_cu = counts.tolist(), n_cu.tolist(), ghost_cu.tolist()
    results = []
    for r in range(R):
        c = [row[r] for row in counts]
        n = c[0] + c[1] + c[2]
        results.append(EvalResult(
            steer=steer,
            oversight_prob=float(oversight_probs[r]),
            stepwise_return=stepwise[r],
            stepwise_return_lo=stepwise[r] - half[r],
            stepwise_return_hi=stepwise[r] + half[r],
            p_diamond=c[0] / max(n, 1),
            p_ghost=c[1] / max(n, 1),
            p_timeout=c[2] / max(n, 1),
            p_ghost_closer_unseen=ghost_cu[r] / max(n_cu[r], 1),
            mean_length=c[3] / max(n, 1),
            n_episodes=n,
            n_closer_unseen=n_cu[r],
        ))
    return results


def _half_width(per_env: Tensor, confidence: float = 0.95) -> list[float]:
    """Half-width of the Student-t interval of the mean over the last dim (``[R, n]`` ->
    ``R`` floats; infinite with one environment)."""
    n = per_env.shape[-1]
    if n < 2:
        return [float("inf")] * per_env.shape[0]
    from oversight_gr.stats import Summary, summary_interval

    # row by row: a run's interval must not depend on the group it is evaluated in (a
    # reduction over [R, n] may order its sums by R)
    return [summary_interval(Summary(0.0, float(row.double().std()), n), confidence).hi
            for row in per_env]
