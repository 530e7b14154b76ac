"""The flat-observation ids and wrappers: the plane envs reshaped, nothing else changed."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from torch import nn

import oversight_gr  # noqa: F401  (registers the ids)
from oversight_gr.envs import (
    FLAT_ENV_IDS,
    FlatObservation,
    FlatObservationVector,
    OversightGridVectorEnv,
    flat_box,
    make_flat_env,
    make_flat_vector_env,
)

PLANE_ID = {"OversightGrid-Flat-v0": "OversightGrid-v0",
            "OversightGrid-8x8-Flat-v0": "OversightGrid-8x8-v0"}


@pytest.mark.parametrize("flat_id", list(FLAT_ENV_IDS))
def test_flat_ids_are_the_plane_envs_reshaped(flat_id):
    flat, planes = gym.make(flat_id, oversight_prob=0.5), gym.make(PLANE_ID[flat_id],
                                                                  oversight_prob=0.5)
    n = planes.observation_space.shape[-1]
    assert flat.observation_space == spaces.Box(0, 1, (4 * n * n,), np.uint8)
    assert flat.spec.max_episode_steps == planes.spec.max_episode_steps
    a, _ = flat.reset(seed=3)
    b, _ = planes.reset(seed=3)
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(300):
        action = int(rng.integers(4))
        fa, fb = flat.step(action), planes.step(action)
        assert np.array_equal(fa[0], fb[0].reshape(-1)) and flat.observation_space.contains(fa[0])
        assert fa[1:] == fb[1:]  # reward, terminated, truncated, info
        if fa[2] or fa[3]:
            ends += 1
            assert np.array_equal(flat.reset()[0], planes.reset()[0].reshape(-1))
    assert ends > 5


@pytest.mark.parametrize("flat_id", list(FLAT_ENV_IDS))
def test_flat_vector_env_is_the_native_one_reshaped(flat_id):
    flat = gym.make_vec(flat_id, num_envs=6, oversight_prob=0.5, spurious_prob=0.2)
    planes = gym.make_vec(PLANE_ID[flat_id], num_envs=6, oversight_prob=0.5, spurious_prob=0.2)
    assert isinstance(flat.unwrapped, OversightGridVectorEnv)  # batched, not a loop of envs
    n = planes.single_observation_space.shape[-1]
    assert flat.single_observation_space == spaces.Box(0, 1, (4 * n * n,), np.uint8)
    assert flat.observation_space.shape == (6, 4 * n * n)
    assert flat.spec.max_episode_steps == planes.spec.max_episode_steps
    a, _ = flat.reset(seed=1)
    b, _ = planes.reset(seed=1)
    assert np.array_equal(a, b.reshape(6, -1))
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(80):
        actions = rng.integers(0, 4, 6)
        (oa, ra, ta, ua, ia), (ob, rb, tb, ub, ib) = flat.step(actions), planes.step(actions)
        assert np.array_equal(oa, ob.reshape(6, -1)) and flat.observation_space.contains(oa)
        assert np.array_equal(ra, rb) and np.array_equal(ta, tb) and np.array_equal(ua, ub)
        assert ia.keys() == ib.keys()
        for key in ia:
            expected = ib[key].reshape(6, -1) if key == "final_obs" else ib[key]
            assert np.array_equal(ia[key], expected), key
        ends += int(ia.get("_outcome", np.zeros(6, bool)).sum())
    assert ends > 10


def test_wrappers_serve_your_own_settings():
    env = FlatObservation(gym.make("OversightGrid-v0", size=6, max_episode_steps=9))
    obs, _ = env.reset(seed=0)
    assert obs.shape == (144,) and env.spec.max_episode_steps == 9
    venv = FlatObservationVector(gym.make_vec("OversightGrid-v0", num_envs=3, size=6))
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, 144) and venv.single_observation_space.shape == (144,)
    with pytest.raises(ValueError, match="Box observation space"):
        flat_box(spaces.Discrete(3))


# ---------------------------------------------------------------------------------------------
# other people's RL code: a minimal CleanRL-style PPO whose network is an MLP over
# prod(single_observation_space.shape), fed the raw observation
# ---------------------------------------------------------------------------------------------
def mlp_ppo(env_id: str, updates: int, seed: int, num_envs: int = 32, num_steps: int = 32,
            **env_kwargs) -> list[float]:
    """Train; return the episode returns seen in the last ``updates // 4`` rollouts."""
    torch.manual_seed(seed)
    envs = gym.make_vec(env_id, num_envs=num_envs, **env_kwargs)
    obs_dim = int(np.prod(envs.single_observation_space.shape))
    n_actions = envs.single_action_space.n

    def mlp(out):
        return nn.Sequential(nn.Linear(obs_dim, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                             nn.Linear(64, out))

    actor, critic = mlp(n_actions), mlp(1)
    opt = torch.optim.Adam([*actor.parameters(), *critic.parameters()], lr=2.5e-3, eps=1e-5)
    gamma, lam, clip = 0.97, 0.95, 0.2
    next_obs = torch.Tensor(envs.reset(seed=seed)[0])
    next_done = torch.zeros(num_envs)
    running, returns = np.zeros(num_envs), []
    for update in range(updates):
        obs_b, act_b, logp_b, rew_b, done_b, val_b = [], [], [], [], [], []
        for _ in range(num_steps):
            with torch.no_grad():
                dist = torch.distributions.Categorical(logits=actor(next_obs))
                action = dist.sample()
                val_b.append(critic(next_obs).squeeze(-1))
            obs_b.append(next_obs), act_b.append(action), logp_b.append(dist.log_prob(action))
            done_b.append(next_done)
            obs, reward, term, trunc, _ = envs.step(action.numpy())
            rew_b.append(torch.Tensor(reward))
            next_obs, next_done = torch.Tensor(obs), torch.Tensor(term | trunc)
            running += reward
            if update >= updates - updates // 4:
                returns += running[term | trunc].tolist()
            running[term | trunc] = 0
        with torch.no_grad():
            next_value = critic(next_obs).squeeze(-1)
        adv, last = torch.zeros(num_steps, num_envs), 0.0
        for t in reversed(range(num_steps)):
            nonterminal = 1.0 - (next_done if t == num_steps - 1 else done_b[t + 1])
            value_next = next_value if t == num_steps - 1 else val_b[t + 1]
            delta = rew_b[t] + gamma * value_next * nonterminal - val_b[t]
            adv[t] = last = delta + gamma * lam * nonterminal * last
        b_obs, b_act, b_logp = (torch.cat(obs_b), torch.cat(act_b), torch.cat(logp_b))
        b_adv, b_ret = adv.reshape(-1), (adv + torch.stack(val_b)).reshape(-1)
        for _ in range(4):
            for mb in torch.randperm(len(b_obs)).split(256):
                dist = torch.distributions.Categorical(logits=actor(b_obs[mb]))
                ratio = (dist.log_prob(b_act[mb]) - b_logp[mb]).exp()
                a = (b_adv[mb] - b_adv[mb].mean()) / (b_adv[mb].std() + 1e-8)
                pg = -torch.min(ratio * a, ratio.clamp(1 - clip, 1 + clip) * a).mean()
                v_loss = 0.5 * (critic(b_obs[mb]).squeeze(-1) - b_ret[mb]).pow(2).mean()
                loss = pg + 0.5 * v_loss - 0.01 * dist.entropy().mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
    return returns


def random_returns(env_id: str, steps: int, seed: int, num_envs: int = 32, **env_kwargs):
    envs = gym.make_vec(env_id, num_envs=num_envs, **env_kwargs)
    envs.reset(seed=seed)
    rng, running, returns = np.random.default_rng(seed), np.zeros(num_envs), []
    for _ in range(steps):
        _, reward, term, trunc, _ = envs.step(rng.integers(0, 4, num_envs))
        running += reward
        returns += running[term | trunc].tolist()
        running[term | trunc] = 0
    return returns


def test_a_minimal_mlp_ppo_learns_on_the_flat_id_unmodified():
    """Measured (30 updates = 30,720 env steps, true reward: +1 diamond, -1 ghost): mean return
    over the last quarter of training 0.46 / 0.43 / 0.53 / 0.48 / 0.39 for seeds 0-4; uniform
    random actions -0.02 / 0.01 / -0.02 (seeds 0-2, ~3,600 episodes each)."""
    baseline = float(np.mean(random_returns("OversightGrid-Flat-v0", 1000, 0, reward_mode="true")))
    learned = mlp_ppo("OversightGrid-Flat-v0", 30, seed=0, reward_mode="true")
    assert len(learned) > 100
    assert float(np.mean(learned)) > baseline + 0.25, (np.mean(learned), baseline)


def test_your_own_id_with_the_exported_entry_points():
    gym.register("TestOwnFlatGrid-v0", entry_point=make_flat_env,
                 vector_entry_point=make_flat_vector_env,
                 kwargs={"size": 6, "max_episode_steps": 20, "oversight_prob": 0.5})
    try:
        env = gym.make("TestOwnFlatGrid-v0")  # no registered spec limit: the kwargs' one
        assert env.observation_space.shape == (144,)
        assert env.spec.max_episode_steps == env.unwrapped.rules.max_episode_steps == 20
        env = gym.make("TestOwnFlatGrid-v0", max_episode_steps=7)
        assert env.spec.max_episode_steps == env.unwrapped.rules.max_episode_steps == 7
        venv = gym.make_vec("TestOwnFlatGrid-v0", num_envs=3)
        assert venv.observation_space.shape == (3, 144)
        assert venv.spec.max_episode_steps == venv.unwrapped.rules.max_episode_steps == 20
    finally:
        del gym.registry["TestOwnFlatGrid-v0"]
