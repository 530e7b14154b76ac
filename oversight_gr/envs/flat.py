"""Flat observations for RL code that builds an MLP over ``prod(observation_space.shape)``.

``OversightGrid-Flat-v0`` / ``OversightGrid-8x8-Flat-v0`` are the plane ids with these wrappers
on top: same rules, same info, observations ``uint8 [4 * size * size]`` (the four planes
agent, ghost, diamond, oversight, each row-major, one after the other). The wrappers reshape
without copying, so the flat vector env is the native batched env plus one reshape per step.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector.utils import batch_space

from oversight_gr.envs._compat import GYMNASIUM_1, needs_gymnasium_1

if GYMNASIUM_1:
    from gymnasium.vector import VectorEnv, VectorWrapper
else:  # Gymnasium 0.29: the vector wrapper says it needs 1.x when made
    VectorEnv = gym.vector.VectorEnv
    VectorWrapper = needs_gymnasium_1("FlatObservationVector")

__all__ = ["FlatObservation", "FlatObservationVector", "flat_box"]


def flat_box(space: gym.Space) -> spaces.Box:
    """The 1-D ``Box`` holding ``space``'s observations reshaped to ``[-1]`` (same dtype and
    bounds)."""
    if not isinstance(space, spaces.Box):
        raise ValueError(f"flat observations need a Box observation space, got {space!r}")
    return spaces.Box(low=space.low.reshape(-1), high=space.high.reshape(-1), dtype=space.dtype)


class FlatObservation(gym.ObservationWrapper, gym.utils.RecordConstructorArgs):
    """A single env's ``Box`` observation reshaped to 1-D (``OversightGrid-Flat-v0``'s wrapper).

    Works on any env with a ``Box`` observation space, e.g. your own registration:
    ``FlatObservation(gym.make("OversightGrid-v0", size=6))``. Rendering and ``info`` are the
    wrapped env's.
    """

    def __init__(self, env: gym.Env):
        gym.utils.RecordConstructorArgs.__init__(self)
        gym.ObservationWrapper.__init__(self, env)
        self.observation_space = flat_box(env.observation_space)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.asarray(observation).reshape(-1)


class FlatObservationVector(VectorWrapper):
    """A vector env's observations reshaped to ``[num_envs, -1]``, ``info["final_obs"]`` too
    (``gym.make_vec("OversightGrid-Flat-v0")`` returns this around the native vector env).

    Works on any vector env with a ``Box`` single observation space whose ``final_obs`` (if any)
    is one batched array, as the native :class:`~oversight_gr.envs.OversightGridVectorEnv`'s
    is; e.g. ``FlatObservationVector(gym.make_vec("OversightGrid-v0", num_envs=512, size=6))``.
    Gymnasium's own vector observation wrappers refuse same-step autoreset, whose final
    observations sit in ``info``; this one reshapes them as well. Needs Gymnasium >= 1.0.
    """

    def __init__(self, env: VectorEnv):
        super().__init__(env)
        self.single_observation_space = flat_box(env.single_observation_space)
        self.observation_space = batch_space(self.single_observation_space, env.num_envs)

    def _flat(self, obs: np.ndarray) -> np.ndarray:
        return obs.reshape(obs.shape[0], -1)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        obs, info = self.env.reset(seed=seed, options=options)
        return self._flat(obs), info

    def step(self, actions: Any):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        if "final_obs" in info:
            info = {**info, "final_obs": self._flat(info["final_obs"])}
        return self._flat(obs), reward, terminated, truncated, info
