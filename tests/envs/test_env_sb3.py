"""stable-baselines3 trains on the registered env out of the box, without warnings."""

from __future__ import annotations

import warnings

import gymnasium as gym
import pytest
import torch

import oversight_gr  # noqa: F401  (registers the ids)

sb3 = pytest.importorskip("stable_baselines3")


def test_ppo_mlp_trains_without_warnings():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            env = gym.make("OversightGrid-v0")
            # device="cpu": on a GPU machine SB3 warns that MLP policies run better on the CPU
            model = sb3.PPO("MlpPolicy", env, n_steps=2048, n_epochs=1, seed=0, device="cpu")
            model.learn(total_timesteps=2048)
    finally:
        torch.set_num_threads(threads)
    # one env, n_steps=2048: learn(2048) is exactly one rollout
    assert model.num_timesteps == 2048
    # the episodes SB3's Monitor saw are the env's: at most 32 moves, proxy rewards only
    episodes = list(model.ep_info_buffer)
    assert len(episodes) >= 2048 // 32
    assert all(1 <= e["l"] <= 32 for e in episodes)
    assert {e["r"] for e in episodes} <= {-1.0, 0.0, 1.0}
    assert sum(e["l"] for e in episodes) <= 2048
    # Box(0, 1, uint8) is not an SB3 image space, so observations reach the MLP as 0/1 floats
    # (no /255 scaling)
    obs = model.policy.obs_to_tensor(env.observation_space.sample())[0]
    features = model.policy.extract_features(obs, model.policy.pi_features_extractor)
    assert features.shape == (1, 100) and set(features.unique().tolist()) <= {0.0, 1.0}
