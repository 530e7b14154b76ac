"""Reference policies that calibrate the evaluator: an exact optimal policy and a
ghost-ignoring diamond-seeker (both as ``obs -> logits`` functions)."""

from __future__ import annotations

import torch
from torch import Tensor

from oversight_gr.envs.core import GridRules

__all__ = ["optimal_policy", "diamond_seeker"]

_BIG = 1e4


def _positions(obs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    flat = obs.flatten(2)  # [B, 4, C]
    return flat[:, 0].argmax(1), flat[:, 1].argmax(1), flat[:, 2].argmax(1)


def optimal_policy(size: int = 5, gamma: float = 0.97, iters: int = 200):
    """The exact optimal policy for the true reward (+1 diamond, -1 ghost, discount ``gamma``),
    by value iteration over (agent, ghost, diamond) cells; returns ``obs -> logits``."""
    rules = GridRules(1, size=size)
    c = rules.num_cells
    nxt = rules.next_cell.view(c, 4)  # [C, 4]
    a = torch.arange(c)
    # V[agent, ghost, diamond]
    v = torch.zeros(c, c, c)
    g_idx = a.view(1, c, 1).expand(c, c, c)
    d_idx = a.view(1, 1, c).expand(c, c, c)
    for _ in range(iters):
        q = []
        for act in range(4):
            s2 = nxt[:, act].view(c, 1, 1).expand(c, c, c)
            reward = (s2 == d_idx).float() - (s2 == g_idx).float()
            cont = ((s2 != d_idx) & (s2 != g_idx)).float()
            q.append(reward + gamma * cont * v[s2, g_idx, d_idx])
        v = torch.stack(q).amax(0)
    q = torch.stack(q, -1)  # [C, C, C, 4]
    best = q.argmax(-1)

    def policy(obs: Tensor) -> Tensor:
        ag, gh, di = _positions(obs)
        act = best.to(obs.device)[ag, gh, di]
        return torch.nn.functional.one_hot(act, 4).float() * _BIG

    return policy


def diamond_seeker(size: int = 5):
    """Walks a shortest path to the diamond, ignoring the ghost (uniform among the moves that
    reduce the distance); returns ``obs -> logits``."""
    rules = GridRules(1, size=size)
    c = rules.num_cells
    nxt = rules.next_cell.view(c, 4)
    dist = rules.manhattan

    def policy(obs: Tensor) -> Tensor:
        ag, _, di = _positions(obs)
        n, m = nxt.to(obs.device), dist.to(obs.device)
        after = m[n[ag], di.unsqueeze(1)]  # [B, 4] distance after each move
        good = after < m[ag, di].unsqueeze(1)
        return torch.where(good, 0.0, -_BIG)

    return policy
