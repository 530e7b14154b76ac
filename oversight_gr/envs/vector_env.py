"""The native vector env: all copies stepped by one batched :class:`GridRules`."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from gymnasium.envs.registration import EnvSpec
from gymnasium.vector.utils import batch_space

from oversight_gr.envs._compat import GYMNASIUM_1, needs_gymnasium_1
from oversight_gr.envs.core import NUM_ACTIONS, GridRules, check_seed, validate_env_args
from oversight_gr.envs.grid_env import observation_space, with_episode_limit
from oversight_gr.envs.render import render_ansi, render_rgb

if GYMNASIUM_1:
    from gymnasium.vector import AutoresetMode, VectorEnv

    _SAME_STEP: Any = AutoresetMode.SAME_STEP
else:  # Gymnasium 0.29: making the vector env raises, saying it needs 1.x
    VectorEnv = needs_gymnasium_1("OversightGridVectorEnv")
    _SAME_STEP = "same-step"

__all__ = ["OversightGridVectorEnv"]


class OversightGridVectorEnv(VectorEnv):
    """``num_envs`` OversightGrid copies in one batch (``gym.make_vec`` returns this).

    Same arguments and rules as :class:`~oversight_gr.envs.grid_env.OversightGridEnv`.
    Autoreset is ``AutoresetMode.SAME_STEP``: where an episode ends, ``step`` returns the new
    episode's first observation (the next action is chosen from it, never from a stale frame),
    and ``info["final_obs"]`` holds the last observation of the episode that ended. The info
    keys are arrays over envs, each with a boolean ``_key`` mask saying where it is set (set
    where an episode ended): ``final_obs``, ``outcome``, ``overseen``, ``length`` (learner
    keys) and ``eval_true_outcome`` (evaluation only).

    Needs Gymnasium >= 1.0 (under 0.29 making one raises
    :class:`~oversight_gr.envs._compat.GymnasiumVersionError`).
    """

    metadata = {
        "render_modes": ["ansi", "rgb_array"],
        "render_fps": 4,
        "autoreset_mode": _SAME_STEP,
    }
    _spec: EnvSpec | None = None

    def __init__(
        self,
        num_envs: int = 1,
        size: int = 5,
        max_episode_steps: int = 32,
        oversight_prob: float = 0.1,
        spurious_prob: float = 0.0,
        reward_mode: str = "proxy",
        render_mode: str | None = None,
        device: str = "cpu",
    ):
        validate_env_args(size, max_episode_steps, oversight_prob, spurious_prob, reward_mode)
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be None or one of {self.metadata['render_modes']}, "
                f"got {render_mode!r}"
            )
        self.rules = GridRules(
            num_envs,
            size=size,
            max_episode_steps=max_episode_steps,
            oversight_prob=oversight_prob,
            spurious_prob=spurious_prob,
            reward_mode=reward_mode,
            device=device,
        )
        self.num_envs = num_envs
        self.render_mode = render_mode
        self.single_observation_space = observation_space(size)
        self.single_action_space = spaces.Discrete(NUM_ACTIONS)
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._obs: np.ndarray | None = None
        self._on_cpu = self.rules.device.type == "cpu"

    @property
    def spec(self) -> EnvSpec | None:  # type: ignore[override]
        """The registration this env was made from, with ``max_episode_steps`` its own limit."""
        return self._spec

    @spec.setter
    def spec(self, spec: EnvSpec | None) -> None:
        self._spec = with_episode_limit(spec, self.rules.max_episode_steps)

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None and not isinstance(seed, (int, np.integer)):
            raise ValueError(
                f"seed must be an int or None for the native vector env (one generator drives "
                f"all copies), got {seed!r}"
            )
        seed = None if seed is None else check_seed(seed)  # 2**32 + 5 is not seed 5
        super().reset(seed=seed)
        self._obs = self.rules.reset(None if seed is None else int(seed)).cpu().numpy()
        return self._obs, {}

    def _check_actions(self, actions: Any) -> torch.Tensor:
        arr = np.asarray(actions)
        if arr.shape != (self.num_envs,):
            raise ValueError(
                f"actions must have shape ({self.num_envs},) (one per env), got {arr.shape}"
            )
        if arr.dtype.kind not in "iu":
            raise ValueError(f"actions must be integers in {{0, 1, 2, 3}}, got dtype {arr.dtype}")
        arr = arr.astype(np.int64, copy=False)
        if (arr >> 2).any():  # one pass: nonzero for negatives and for values >= 4
            lo, hi = int(arr.min()), int(arr.max())
            raise ValueError(f"actions must be in {{0, 1, 2, 3}}, got values in [{lo}, {hi}]")
        return torch.from_numpy(arr).to(self.rules.device)

    def step(self, actions: Any):
        if self._obs is None:
            raise RuntimeError("call reset() before step()")
        r = self.rules.step(self._check_actions(actions))
        np_ = self._to_numpy
        obs = np_(r.obs)
        done = np_(r.done)
        info: dict[str, Any] = {}
        if done.any():
            info = {
                "final_obs": np_(r.final_obs),
                "_final_obs": done,
                "outcome": np_(r.outcome),
                "_outcome": done,
                "overseen": np_(r.overseen),
                "_overseen": done,
                "length": np_(r.length),
                "_length": done,
                "eval_true_outcome": np_(r.true_outcome),
                "_eval_true_outcome": done,
            }
        self._obs = obs
        return obs, np_(r.reward), np_(r.terminated), np_(r.truncated), info

    def _to_numpy(self, x: torch.Tensor) -> np.ndarray:
        # the rules return fresh tensors every step, so on the CPU numpy can share their memory
        return x.numpy() if self._on_cpu else x.cpu().numpy()

    def render(self):
        if self._obs is None:
            raise RuntimeError("call reset() before render()")
        if self.render_mode == "ansi":
            return tuple(render_ansi(o) for o in self._obs)
        if self.render_mode == "rgb_array":
            return tuple(render_rgb(o) for o in self._obs)
        return None
