"""All environment registrations, run once on ``import oversight_gr``."""

from __future__ import annotations

import gymnasium as gym

#: id -> env kwargs. The larger variant keeps the rules and scales grid and step budget.
ENV_IDS = {
    "OversightGrid-v0": {},
    "OversightGrid-8x8-v0": {"size": 8, "max_episode_steps": 64},
}


def register_envs() -> None:
    """Register every OversightGrid id with Gymnasium (a no-op for ids already registered)."""
    for env_id, kwargs in ENV_IDS.items():
        if env_id in gym.registry:
            continue
        gym.register(
            id=env_id,
            entry_point="oversight_gr.envs.grid_env:OversightGridEnv",
            vector_entry_point="oversight_gr.envs.vector_env:OversightGridVectorEnv",
            kwargs=dict(kwargs),
        )
