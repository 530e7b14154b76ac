"""A plain PyTorch training loop over ``gym.make_vec("OversightGrid-v0")``, no RL library.

What it shows: how to drive the native vector env from your own code. ``gym.make_vec`` returns
the batched env (all copies stepped by one set of torch ops); observations are ``uint8
[num_envs, 4, n, n]`` planes; autoreset is same-step, so where an episode ends ``step`` already
returns the next episode's first observation and the ended one's last frame is in
``info["final_obs"]`` (bootstrap a truncated episode from it); the end-of-episode keys
(``outcome``, ``overseen``, ``length``, each with a ``_key`` mask) say what a supervisor saw,
and ``eval_true_outcome`` is the ground truth, read here only to report behaviour. The learner
is a small advantage actor-critic (n-step returns) over a convolutional network, trained on the
env's default proxy reward (+1 for any terminal, -1 for a ghost the supervisor saw).

Run::

    python examples/plain_torch_loop.py                    # 200k env steps, ~10 s on a core
    python examples/plain_torch_loop.py --env-steps 20000 --oversight-prob 0.5
"""

from __future__ import annotations

import argparse
from collections import Counter

import gymnasium as gym
import numpy as np
import torch
from torch import nn

import oversight_gr  # noqa: F401  (registers OversightGrid-v0)
from oversight_gr.envs import Outcome


LAST = 2000  # episodes the figures are taken over


class ActorCritic(nn.Module):
    def __init__(self, size: int, hidden: int = 64):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(4, 16, 3, padding=1), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(16 * size * size, hidden), nn.ReLU())
        self.pi, self.v = nn.Linear(hidden, 4), nn.Linear(hidden, 1)

    def forward(self, obs: np.ndarray) -> tuple[torch.distributions.Categorical, torch.Tensor]:
        h = self.body(torch.as_tensor(obs, dtype=torch.float32))
        return torch.distributions.Categorical(logits=self.pi(h)), self.v(h).squeeze(-1)


def train(env_steps: int, num_envs: int = 32, rollout: int = 16, gamma: float = 0.97,
          seed: int = 0, oversight_prob: float = 0.1, log_every: int = 20) -> dict:
    torch.manual_seed(seed)
    envs = gym.make_vec("OversightGrid-v0", num_envs=num_envs, oversight_prob=oversight_prob)
    model = ActorCritic(envs.single_observation_space.shape[-1])
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    obs, _ = envs.reset(seed=seed)
    returns, outcomes, true_outcomes, running = [], [], [], np.zeros(num_envs)
    steps, update = 0, 0
    while steps < env_steps:
        logps, values, rewards, ends, boot = [], [], [], [], []
        entropy = 0.0
        for _ in range(rollout):
            dist, value = model(obs)
            action = dist.sample()
            obs, reward, term, trunc, info = envs.step(action.numpy())
            logps.append(dist.log_prob(action)), values.append(value)
            entropy = entropy + dist.entropy().mean() / rollout
            # a truncated episode goes on in principle: its value is bootstrapped from the last
            # frame it reached (info["final_obs"]), not from the next episode's first frame
            bootstrap = torch.zeros(num_envs)
            if trunc.any():
                with torch.no_grad():
                    bootstrap[trunc] = model(info["final_obs"][trunc])[1]
            rewards.append(torch.as_tensor(reward) + gamma * bootstrap)
            ends.append(torch.as_tensor(term | trunc, dtype=torch.float32))
            running += reward
            done = term | trunc
            if done.any():  # the end-of-episode keys are set where their "_key" mask is True
                returns += running[done].tolist()
                running[done] = 0
                outcomes += info["outcome"][info["_outcome"]].tolist()
                true_outcomes += info["eval_true_outcome"][info["_eval_true_outcome"]].tolist()
        with torch.no_grad():
            ret = model(obs)[1]
        targets = []
        for t in reversed(range(rollout)):  # n-step returns, cut at episode ends
            ret = rewards[t] + gamma * (1 - ends[t]) * ret
            targets.append(ret)
        targets = torch.stack(targets[::-1])
        values, logps = torch.stack(values), torch.stack(logps)
        advantages = (targets - values).detach()
        loss = (-(advantages * logps).mean() + 0.5 * (targets - values).pow(2).mean()
                - 0.01 * entropy)
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += rollout * num_envs
        update += 1
        if update % log_every == 0 or steps >= env_steps:
            recent = returns[-LAST:] or [float("nan")]
            print(f"env steps {steps:>8}  episodes {len(returns):>7}  "
                  f"mean return (last {len(recent)}) {np.mean(recent):.3f}")
    def shares(codes: list[int]) -> dict[str, float]:
        counts = Counter(Outcome(c).name for c in codes[-LAST:])
        return {name: n / max(len(codes[-LAST:]), 1) for name, n in sorted(counts.items())}

    return {
        "env_steps": steps,
        "episodes": len(returns),
        "mean_return_last": float(np.mean(returns[-LAST:])) if returns else float("nan"),
        "outcome_shares": shares(outcomes),
        "true_outcome_shares": shares(true_outcomes),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env-steps", type=int, default=200_000, help="training budget")
    ap.add_argument("--num-envs", type=int, default=32)
    ap.add_argument("--oversight-prob", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    result = train(args.env_steps, args.num_envs, seed=args.seed,
                   oversight_prob=args.oversight_prob)
    print(f"last {LAST} episodes, what the supervisor saw:",
          {k: round(v, 3) for k, v in result["outcome_shares"].items()})
    print(f"last {LAST} episodes, ground truth (evaluation only):",
          {k: round(v, 3) for k, v in result["true_outcome_shares"].items()})
    return result


if __name__ == "__main__":
    main()
