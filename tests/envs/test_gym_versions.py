"""Drop-in use under the Gymnasium CleanRL pins (0.29.1) and under 1.x.

This file runs in the main venv (Gymnasium 1.x) and in ``make test-gym029`` (0.29.1). CleanRL's
``ppo.py`` cannot be fetched here, so :func:`test_cleanrl_ppo_reads_episodic_returns` plays the
exact contract it reads: ``gym.make(env_id)`` wrapped in ``RecordEpisodeStatistics``, a
``SyncVectorEnv`` of those, and under 0.29 ``infos["final_info"][i]["episode"]["r"/"l"]`` (what
its ``charts/episodic_return`` / ``charts/episodic_length`` log); under 1.x the same statistics
sit under ``infos["episode"]`` with the ``infos["_episode"]`` mask.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import oversight_gr  # noqa: F401  (registers the ids)
from oversight_gr.envs import FlatObservationVector, OversightGridVectorEnv
from oversight_gr.envs._compat import GYMNASIUM_1, GymnasiumVersionError


def cleanrl_make_env(env_id: str):
    """CleanRL's ``make_env`` thunk (no video): ``gym.make`` then ``RecordEpisodeStatistics``."""

    def thunk():
        env = gym.make(env_id)
        return gym.wrappers.RecordEpisodeStatistics(env)

    return thunk


def episodes_logged(infos: dict) -> list[tuple[float, int]]:
    """(return, length) of each episode the step's ``infos`` report, read as CleanRL does."""
    if not GYMNASIUM_1:  # ppo.py at CleanRL's pin: the final infos of the envs that ended
        if "final_info" not in infos:
            return []
        # 0.29 keeps each statistic as a 1-element array (CleanRL's add_scalar takes either)
        return [(np.asarray(i["episode"]["r"]).item(), np.asarray(i["episode"]["l"]).item())
                for i in infos["final_info"] if i and "episode" in i]
    if "episode" not in infos:  # 1.x: arrays over envs, with a mask
        return []
    ended = np.flatnonzero(infos["_episode"])
    return [(float(infos["episode"]["r"][i]), int(infos["episode"]["l"][i])) for i in ended]


@pytest.mark.parametrize("env_id", ["oversight_gr:OversightGrid-Flat-v0", "OversightGrid-v0"])
def test_cleanrl_ppo_reads_episodic_returns(env_id):
    num_envs = 4
    envs = gym.vector.SyncVectorEnv([cleanrl_make_env(env_id) for _ in range(num_envs)])
    assert isinstance(envs.single_action_space, gym.spaces.Discrete)
    obs_dim = int(np.array(envs.single_observation_space.shape).prod())  # ppo.py's MLP input
    assert obs_dim == 4 * 5 * 5
    envs.action_space.seed(0)
    obs, _ = envs.reset(seed=1)
    assert obs.shape == (num_envs, *envs.single_observation_space.shape)
    running = np.zeros(num_envs)
    steps = np.zeros(num_envs, dtype=int)
    logged, expected = [], []
    fresh = np.zeros(num_envs, dtype=bool)  # 1.x next-step autoreset: this step only resets
    for _ in range(300):
        obs, reward, terminations, truncations, infos = envs.step(envs.action_space.sample())
        done = np.logical_or(terminations, truncations)
        running += np.where(fresh, 0, reward)
        steps += ~fresh
        logged += episodes_logged(infos)
        for i in np.flatnonzero(done):
            expected.append((float(running[i]), int(steps[i])))
            running[i], steps[i] = 0, 0
        if GYMNASIUM_1:
            fresh = done
    assert len(expected) >= 10  # random walks on 5x5 end within 32 moves
    assert sorted(logged) == sorted(expected)  # rewards are 0 and +-1: sums are exact
    assert {r for r, _ in logged} <= {-1.0, 0.0, 1.0}  # proxy reward: one payment per episode
    envs.close()


def test_single_env_ids_work_on_this_gymnasium():
    for env_id in ["OversightGrid-v0", "OversightGrid-8x8-Flat-v0"]:
        env = gym.make(env_id)
        obs, info = env.reset(seed=0)
        assert env.observation_space.contains(obs) and info == {}
        for _ in range(env.spec.max_episode_steps):
            obs, _, terminated, truncated, info = env.step(env.action_space.sample())
            if terminated or truncated:
                assert set(info) == {"outcome", "overseen", "length", "eval_true_outcome"}
                break
        else:
            pytest.fail("the env's own step limit did not end the episode")


@pytest.mark.skipif(GYMNASIUM_1, reason="checks the error Gymnasium 0.29 users get")
@pytest.mark.parametrize("mode", ["sync", "async", "custom"])
def test_make_vec_under_0_29_says_it_needs_1x(mode):
    with pytest.raises(GymnasiumVersionError, match=r"gymnasium>=1\.0.*installed gymnasium 0\."):
        gym.make_vec("OversightGrid-v0", num_envs=2, vectorization_mode=mode)


@pytest.mark.skipif(GYMNASIUM_1, reason="checks the error Gymnasium 0.29 users get")
def test_vector_classes_under_0_29_say_they_need_1x():
    with pytest.raises(GymnasiumVersionError, match="OversightGridVectorEnv needs gymnasium>=1.0"):
        OversightGridVectorEnv(2)
    with pytest.raises(GymnasiumVersionError, match="FlatObservationVector needs gymnasium>=1.0"):
        FlatObservationVector(None)


@pytest.mark.skipif(not GYMNASIUM_1, reason="the native vector env is Gymnasium 1.x's")
def test_vector_classes_under_1x_are_real_vector_envs():
    venv = OversightGridVectorEnv(2)
    assert isinstance(venv, gym.vector.VectorEnv)
    assert isinstance(FlatObservationVector(venv), gym.vector.VectorWrapper)
