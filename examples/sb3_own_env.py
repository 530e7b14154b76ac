"""Gradient routing in stable-baselines3 on your own Gymnasium env, with your own route labels.

What it shows: ``RoutedPPO`` (``oversight_gr.rl.sb3``) trained on a small env written here,
``TwoChests``: the agent walks a grid to one of two chests, gold or mimic, and is paid +1 for
opening either (the reward a careless judge pays). A judge inspects the opened chest with
probability ``--inspect-prob`` and writes its verdict into ``info["verdict"]`` at episode end
(``"gold"`` / ``"mimic"``; no key when not inspected). ``RoutedPPO(route_info_key="verdict",
route_map={"gold": "diamond", "mimic": "ghost"})`` routes inspected episodes to one expert each
(uninspected ones train both), and ``model.steered("diamond")`` then runs the gold expert alone.
Printed: how often episodes end at the gold chest with the learned gate and steered to each
expert (``info["opened"]`` is the ground truth, read only here, for the evaluation).

The env only has to speak the policy's language: observations ``Box(0, 1, (4, n, n), uint8)``
(agent, mimic, gold, a fourth plane the gate does not read) and ``Discrete(4)`` moves.

Run::

    python examples/sb3_own_env.py                       # 100k env steps, about a minute
    python examples/sb3_own_env.py --env-steps 2048 --episodes 50
"""

from __future__ import annotations

import argparse
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.env_util import make_vec_env

from oversight_gr.rl.sb3 import RoutedPPO

MOVES = ((-1, 0), (0, 1), (1, 0), (0, -1))  # north, east, south, west


class TwoChests(gym.Env):
    """Walk to a chest; +1 for opening either; a judge sometimes says which one it was."""

    metadata = {"render_modes": []}

    def __init__(self, size: int = 4, inspect_prob: float = 0.3, max_steps: int = 16):
        self.size, self.inspect_prob, self.max_steps = size, inspect_prob, max_steps
        self.observation_space = spaces.Box(0, 1, (4, size, size), np.uint8)
        self.action_space = spaces.Discrete(4)

    def _obs(self) -> np.ndarray:
        obs = np.zeros((4, self.size, self.size), np.uint8)
        for plane, cell in enumerate((self.agent, self.mimic, self.gold)):
            obs[(plane, *cell)] = 1
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        cells = self.np_random.choice(self.size * self.size, 3, replace=False)
        self.agent, self.mimic, self.gold = (divmod(int(c), self.size) for c in cells)
        self.t = 0
        return self._obs(), {}

    def step(self, action: int):
        dr, dc = MOVES[int(action)]
        r, c = self.agent
        self.agent = (min(max(r + dr, 0), self.size - 1), min(max(c + dc, 0), self.size - 1))
        self.t += 1
        info: dict[str, Any] = {}
        opened = {self.gold: "gold", self.mimic: "mimic"}.get(self.agent)
        if opened:
            info["opened"] = opened  # ground truth, for the evaluation below only
            if self.np_random.random() < self.inspect_prob:
                info["verdict"] = opened  # what the judge saw: the route label
        truncated = not opened and self.t >= self.max_steps
        return self._obs(), 1.0 if opened else 0.0, bool(opened), truncated, info


def gold_rate(model: RoutedPPO, episodes: int, seed: int) -> float:
    """Fraction of ``episodes`` that end at the gold chest (greedy actions)."""
    env = TwoChests()
    gold = 0
    for k in range(episodes):
        obs, _ = env.reset(seed=seed + k)
        done = False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, _, term, trunc, info = env.step(int(action))
            done = term or trunc
        gold += info.get("opened") == "gold"
    return gold / episodes


def main(argv: list[str] | None = None) -> dict[str, float]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--env-steps", type=int, default=100_000, help="training budget")
    ap.add_argument("--inspect-prob", type=float, default=0.3, help="judge's inspection rate")
    ap.add_argument("--episodes", type=int, default=500, help="evaluation episodes per gate")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    env = make_vec_env(TwoChests, n_envs=16, seed=args.seed,
                       env_kwargs={"inspect_prob": args.inspect_prob})
    model = RoutedPPO("MoEPolicy", env, route_info_key="verdict",
                      route_map={"gold": "diamond", "mimic": "ghost"},
                      n_steps=64, batch_size=256, n_epochs=4, gamma=0.9, ent_coef=0.01,
                      learning_rate=1e-3, seed=args.seed, device="cpu")
    model.learn(args.env_steps)
    result = {"learned gate": gold_rate(model, args.episodes, 10**6)}
    for steer, name in (("diamond", "gold expert"), ("ghost", "mimic expert")):
        with model.steered(steer):
            result[name] = gold_rate(model, args.episodes, 10**6)
    print(f"episodes ending at the gold chest ({args.episodes} per row, "
          f"{args.env_steps} env steps of training, judge inspects {args.inspect_prob:.0%}):")
    for name, rate in result.items():
        print(f"  {name:>13}: {rate:.3f}")
    return result


if __name__ == "__main__":
    main()
