"""Gradient routing through stable-baselines3 on a Gymnasium env that is not ours.

What it shows: ``RoutedPPO`` with ``RoutedMlpPolicy`` (``oversight_gr.rl.sb3``), a first-layer
mixture of experts for any ``Box`` / ``Discrete`` observations and ``Discrete`` / ``Box``
actions, on Gymnasium's own ``CartPole-v1`` (Discrete actions) or ``Pendulum-v1`` (Box actions).
Two experts, ``left`` and ``right``; a supervisor who watches the system labels a step with the
side it is on (the cart's position for CartPole, the pendulum's angle for Pendulum: what one sees
looking at it), but only a fraction ``--oversight-prob`` of the steps; the other steps are
unlabelled and train both experts and the gate. The labels are a function of the observation
(``route_fn``), applied step by step (``route_scope="step"``); a labelled step's gradient
reaches only its side's expert.

Printed: the mean episode return with the learned gate and steered to each expert
(``model.steered("left")`` fixes the gate), and how often the learned gate puts most weight on
the expert of the side the system is on (on the states the learned-gate episodes visit).

Run::

    python examples/sb3_routed_any_env.py                          # CartPole-v1, 50k env steps
    python examples/sb3_routed_any_env.py --env Pendulum-v1 --env-steps 100000
    python examples/sb3_routed_any_env.py --env-steps 2048 --episodes 3
"""

from __future__ import annotations

import argparse
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.env_util import make_vec_env

from oversight_gr.rl.sb3 import RoutedPPO

EXPERTS = ("left", "right")
#: per env: the observation entry whose sign says the side (cart position; sin of the angle)
SIDE_INDEX = {"CartPole-v1": 0, "Pendulum-v1": 1}


def side(env_id: str, obs: np.ndarray) -> str:
    """Which side the system is on, as a supervisor watching it sees."""
    return "left" if obs[SIDE_INDEX[env_id]] < 0 else "right"


def make_route_fn(env_id: str, oversight_prob: float, seed: int):
    """``route_fn(obs, info)``: the side, for a random fraction ``oversight_prob`` of the steps
    (None, unlabelled, for the rest)."""
    rng = np.random.default_rng(seed)

    def route_fn(obs: np.ndarray, info: dict) -> str | None:
        return side(env_id, obs) if rng.random() < oversight_prob else None

    return route_fn


def evaluate(model: RoutedPPO, env_id: str, episodes: int, seed: int, steer: str
             ) -> tuple[float, float]:
    """Mean return over ``episodes`` (deterministic actions, the gate ``steer``ed) and, for the
    learned gate, the fraction of visited states where the gate's heaviest expert is the side's."""
    env = gym.make(env_id)
    returns, agree, states = [], 0, 0
    with model.steered(steer):
        for k in range(episodes):
            obs, _ = env.reset(seed=seed + k)
            total, done = 0.0, False
            while not done:
                if steer == "none":
                    with torch.no_grad():
                        gate = model.policy.gate(torch.as_tensor(obs[None]))[0]
                    agree += EXPERTS[int(gate.argmax())] == side(env_id, obs)
                    states += 1
                action, _ = model.predict(obs, deterministic=True)
                obs, reward, terminated, truncated, _ = env.step(action)
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    env.close()
    return float(np.mean(returns)), agree / max(states, 1)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", choices=sorted(SIDE_INDEX), default="CartPole-v1")
    parser.add_argument("--env-steps", type=int, default=50_000)
    parser.add_argument("--oversight-prob", type=float, default=0.2)
    parser.add_argument("--episodes", type=int, default=20, help="evaluation episodes per gate")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    env = make_vec_env(args.env, n_envs=8, seed=args.seed)
    model = RoutedPPO(
        "MoEPolicy", env,  # not OversightGrid's spaces: MoEPolicy is RoutedMlpPolicy here
        experts=EXPERTS, route_fn=make_route_fn(args.env, args.oversight_prob, args.seed),
        route_scope="step", n_steps=256, batch_size=256, n_epochs=4, seed=args.seed,
        device="cpu", policy_kwargs={"net_arch": [32, 32]})
    model.learn(args.env_steps)
    results: dict[str, Any] = {}
    learned, agreement = evaluate(model, args.env, args.episodes, 10_000 + args.seed, "none")
    results["learned gate"] = learned
    for expert in EXPERTS:
        results[f"{expert} expert"] = evaluate(model, args.env, args.episodes,
                                               10_000 + args.seed, expert)[0]
    results["gate agreement"] = agreement
    print(f"{args.env}, {args.env_steps:,} env steps, oversight {args.oversight_prob:g}, "
          f"seed {args.seed}: mean return over {args.episodes} episodes")
    for name, value in results.items():
        if name != "gate agreement":
            print(f"{name:>13}: {value:.1f}")
    print(f"the learned gate weights the expert of the system's side most on {agreement:.0%} "
          "of the visited states")
    return results


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
