"""The Gymnasium faces of the rules: OversightGridEnv, OversightGridVectorEnv, registration."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
import torch
from gridref import DIAMOND, GHOST, MOVES, TIMEOUT, UNKNOWN, decode_obs, ref_step
from gymnasium.utils.env_checker import check_env
from hypothesis import given, settings
from hypothesis import strategies as st

import oversight_gr  # noqa: F401  (registers the ids)
from oversight_gr.envs._compat import GYMNASIUM_1
from oversight_gr.envs import (
    ENV_IDS,
    EVAL_INFO_KEYS,
    FLAT_ENV_IDS,
    LEARNER_INFO_KEYS,
    OversightGridEnv,
    OversightGridVectorEnv,
    register_envs,
)
from oversight_gr.envs.render import COLORS

FAST = settings(max_examples=15, deadline=None)
END_KEYS = set(LEARNER_INFO_KEYS) | set(EVAL_INFO_KEYS)


def play(env, actions):
    """Step a single env through ``actions``, resetting after each episode end."""
    out = []
    for a in actions:
        obs, rew, term, trunc, info = env.step(a)
        out.append((obs, rew, term, trunc, info))
        if term or trunc:
            env.reset()
    return out


# ---------------------------------------------------------------------------------------------
# Gymnasium's own checks, registration
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("env_id", [*ENV_IDS, *FLAT_ENV_IDS])
@pytest.mark.parametrize("render_mode", [None, "ansi", "rgb_array"])
def test_check_env_passes_without_warnings(env_id, render_mode):
    env = gym.make(env_id, render_mode=render_mode)
    flat = env_id in FLAT_ENV_IDS
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        if flat:  # a wrapper: check it, less the one warning check_env gives any wrapped env
            warnings.filterwarnings("ignore", message=".*is different from the unwrapped")
            # Gymnasium 0.29's checker asks the wrapper for env.seed, then warns about asking
            warnings.filterwarnings("ignore", message=".*env.seed to get variables from other")
        check_env(env if flat else env.unwrapped, skip_render_check=False)
    if render_mode == "rgb_array":
        env.reset(seed=0)
        assert env.render().ndim == 3  # an image of the grid, also for the flat ids


def test_gym_make_in_a_fresh_interpreter():
    code = (
        "import sys, gymnasium as gym\n"
        "assert 'oversight_gr' not in sys.modules\n"
        "env = gym.make('oversight_gr:OversightGrid-v0')\n"
        "obs, info = env.reset(seed=0)\n"
        "assert obs.shape == (4, 5, 5), obs.shape\n"
        "env.step(0)\n"
        "print(type(env.unwrapped).__name__)\n"
    )
    res = subprocess.run([sys.executable, "-W", "error", "-c", code], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "OversightGridEnv"


def test_register_twice_is_harmless():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        register_envs()
        register_envs()
    for env_id in ENV_IDS:
        assert env_id in gym.registry


def test_registered_kwargs_reach_the_env():
    env = gym.make("OversightGrid-8x8-v0")
    assert env.observation_space.shape == (4, 8, 8)
    assert env.unwrapped.rules.max_episode_steps == 64
    env = gym.make("OversightGrid-v0", oversight_prob=0.5, reward_mode="true")
    assert env.unwrapped.rules.oversight_prob == 0.5
    assert env.unwrapped.rules.reward_mode.value == "true"


@pytest.mark.parametrize("env_id", list(ENV_IDS))
def test_make_vec_returns_the_native_vector_env(env_id):
    venv = gym.make_vec(env_id, num_envs=5)
    assert isinstance(venv, OversightGridVectorEnv)
    assert venv.num_envs == 5
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    n = venv.single_observation_space.shape[-1]
    obs, info = venv.reset(seed=0)
    assert obs.shape == (5, 4, n, n) and obs.dtype == np.uint8
    assert venv.observation_space.contains(obs)
    obs, rew, term, trunc, info = venv.step(venv.action_space.sample())
    assert rew.shape == term.shape == trunc.shape == (5,)
    assert rew.dtype == np.float32 and term.dtype == trunc.dtype == np.bool_


def test_make_vec_sync_mode_works():
    venv = gym.make_vec("OversightGrid-v0", num_envs=3, vectorization_mode="sync")
    assert isinstance(venv, gym.vector.SyncVectorEnv)
    obs, _ = venv.reset(seed=0)
    assert obs.shape == (3, 4, 5, 5)
    for _ in range(40):
        obs, rew, term, trunc, info = venv.step(np.array([0, 1, 2]))
    assert obs.shape == (3, 4, 5, 5)


# ---------------------------------------------------------------------------------------------
# the step limit: registered in the spec, enforced by the env itself
# ---------------------------------------------------------------------------------------------
ALL_IDS = {**ENV_IDS, **FLAT_ENV_IDS}
LIMIT = {i: kw["max_episode_steps"] for i, kw in ALL_IDS.items()}


def safe_action(obs: np.ndarray) -> int:
    """A move that reaches neither terminal (one always exists: at most two of the four
    neighbours are terminals, and at a wall bumping into it stays put)."""
    n = int(round((obs.size / 4) ** 0.5))
    s = decode_obs(obs.reshape(4, n, n))
    for a, (dr, dc) in MOVES.items():
        pos = (min(max(s.agent[0] + dr, 0), n - 1), min(max(s.agent[1] + dc, 0), n - 1))
        if pos not in (s.ghost, s.diamond):
            return a
    raise AssertionError("no safe move")


def check_truncates_at(env, limit: int, episodes: int = 2) -> None:
    """Play ``episodes`` that avoid the terminals: each is truncated after exactly ``limit``
    moves, by the env itself (full end-of-episode info), never before."""
    obs, _ = env.reset(seed=0)
    for _ in range(episodes):
        for t in range(1, limit + 1):
            obs, reward, term, trunc, info = env.step(safe_action(obs))
            assert not term and trunc == (t == limit), (t, limit)
        assert info == {"outcome": TIMEOUT, "overseen": False, "length": limit,
                        "eval_true_outcome": TIMEOUT}
        obs, _ = env.reset()


@pytest.mark.parametrize("env_id", list(ALL_IDS))
def test_spec_reports_the_limit_the_env_enforces(env_id):
    limit = LIMIT[env_id]
    assert limit == (64 if "8x8" in env_id else 32)
    assert gym.spec(env_id).max_episode_steps == limit
    env = gym.make(env_id)
    assert env.spec.max_episode_steps == env.unwrapped.spec.max_episode_steps == limit
    assert env.unwrapped.rules.max_episode_steps == limit
    check_truncates_at(env, limit, episodes=1)
    venv = gym.make_vec(env_id, num_envs=2)
    assert venv.spec.max_episode_steps == venv.unwrapped.rules.max_episode_steps == limit


@pytest.mark.parametrize("env_id", ["OversightGrid-v0", "OversightGrid-8x8-Flat-v0"])
@pytest.mark.parametrize("k", [3, 50, 100])  # below and above the registered 32 / 64
def test_make_max_episode_steps_sets_the_env_own_limit(env_id, k):
    env = gym.make(env_id, max_episode_steps=k)
    assert env.spec.max_episode_steps == env.unwrapped.spec.max_episode_steps == k
    assert env.unwrapped.rules.max_episode_steps == k
    check_truncates_at(env, k)
    again = gym.make(env.spec)  # re-made from its spec, as wrappers and libraries do
    assert again.spec.max_episode_steps == again.unwrapped.rules.max_episode_steps == k


@pytest.mark.skipif(not GYMNASIUM_1, reason="max_episode_steps=-1 is Gymnasium 1.x's")
@pytest.mark.parametrize("env_id", ["OversightGrid-8x8-v0", "OversightGrid-Flat-v0"])
def test_make_max_episode_steps_minus_one_keeps_the_registered_limit_without_time_limit(env_id):
    env = gym.make(env_id, max_episode_steps=-1)
    chain = []
    while isinstance(env, gym.Wrapper):
        chain.append(type(env))
        env = env.env
    assert gym.wrappers.TimeLimit not in chain
    assert env.spec.max_episode_steps == env.rules.max_episode_steps == LIMIT[env_id]


def test_the_last_allowed_move_onto_a_terminal_keeps_its_outcome_under_gym_make():
    """Gymnasium's TimeLimit marks truncated on the limit's step whatever happened; the info is
    still the terminal's (the env's own flags say terminated only)."""
    for seed in range(100):
        env = gym.make("OversightGrid-v0", max_episode_steps=1, oversight_prob=1.0)
        obs, _ = env.reset(seed=seed)
        s = decode_obs(obs)
        toward = [a for a, (dr, dc) in MOVES.items()
                  if (s.agent[0] + dr, s.agent[1] + dc) == s.diamond]
        if toward:
            break
    _, reward, term, trunc, info = env.step(toward[0])
    assert term and trunc and reward == 1.0
    assert info["outcome"] == DIAMOND and info["length"] == 1 and info["overseen"]
    inner = OversightGridEnv(max_episode_steps=1, oversight_prob=1.0)
    inner.reset(seed=seed)
    assert inner.step(toward[0])[2:4] == (True, False)


@pytest.mark.skipif(not GYMNASIUM_1, reason="gym.make_vec needs Gymnasium 1.x")
@pytest.mark.parametrize("env_id", ["OversightGrid-8x8-v0", "OversightGrid-Flat-v0"])
@pytest.mark.parametrize("mode", ["vector_entry_point", "sync"])
def test_make_vec_max_episode_steps_agrees(env_id, mode):
    k, B = 5, 3
    venv = gym.make_vec(env_id, num_envs=B, vectorization_mode=mode, max_episode_steps=k)
    if mode == "vector_entry_point":
        assert venv.spec.max_episode_steps == venv.unwrapped.rules.max_episode_steps == k
    else:  # Gymnasium's SyncVectorEnv keeps the registered spec; its envs have the limit
        assert all(e.spec.max_episode_steps == k for e in venv.envs)
    obs, _ = venv.reset(seed=0)
    for t in range(1, k + 1):
        obs, _, term, trunc, info = venv.step(np.array([safe_action(o) for o in obs]))
        assert not term.any() and (trunc == (t == k)).all(), t
    assert (info["outcome"] == TIMEOUT).all() and (info["length"] == k).all()


# ---------------------------------------------------------------------------------------------
# single env behaviour
# ---------------------------------------------------------------------------------------------
@FAST
@given(
    max_steps=st.integers(1, 40),
    p=st.sampled_from([0.0, 0.5, 1.0]),
    mode=st.sampled_from(["proxy", "terminal", "true"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_single_env_follows_reference_and_reports_info(max_steps, p, mode, seed):
    env = OversightGridEnv(size=4, max_episode_steps=max_steps, oversight_prob=p,
                           reward_mode=mode)
    obs, info = env.reset(seed=seed)
    assert info == {}
    rng = np.random.default_rng(seed)
    moves = 0
    for _ in range(60):
        a = int(rng.integers(4))
        want = ref_step(decode_obs(obs), a, moves, max_steps, mode)
        obs, rew, term, trunc, info = env.step(a)
        assert env.observation_space.contains(obs)
        moves += 1
        assert (rew, term, trunc) == (want.reward, want.terminated, want.truncated)
        assert type(rew) is float and type(term) is bool and type(trunc) is bool
        assert decode_obs(obs).agent == want.agent  # the final frame shows where it ended
        if not (term or trunc):
            assert info == {} and rew == 0.0
            continue
        assert set(info) == END_KEYS
        assert info["outcome"] == want.outcome
        assert info["eval_true_outcome"] == want.true_outcome
        assert info["overseen"] == want.overseen
        assert info["length"] == moves <= max_steps
        assert trunc == (moves == max_steps and not term)
        if info["outcome"] in (DIAMOND, GHOST):
            assert info["overseen"] and info["outcome"] == info["eval_true_outcome"]
        if info["outcome"] == UNKNOWN:
            assert term and not info["overseen"]
        if trunc:
            assert info["outcome"] == TIMEOUT and rew == 0.0
        obs, info = env.reset()
        moves = 0


def test_single_env_reset_seed_is_deterministic():
    a, b = OversightGridEnv(), OversightGridEnv()
    oa, _ = a.reset(seed=7)
    ob, _ = b.reset(seed=7)
    np.testing.assert_array_equal(oa, ob)
    actions = np.random.default_rng(0).integers(0, 4, 200)
    for (o1, r1, *_), (o2, r2, *_) in zip(play(a, actions), play(b, actions)):
        np.testing.assert_array_equal(o1, o2)
        assert r1 == r2
    np.testing.assert_array_equal(a.reset(seed=7)[0], oa)


@pytest.mark.parametrize("clone", ["pickle", "deepcopy"])
def test_single_env_pickle_and_deepcopy_continue_identically(clone):
    env = OversightGridEnv(oversight_prob=0.5, spurious_prob=0.1, render_mode="ansi")
    env.reset(seed=3)
    actions = np.random.default_rng(1).integers(0, 4, 150)
    play(env, actions[:20])
    twin = pickle.loads(pickle.dumps(env)) if clone == "pickle" else copy.deepcopy(env)
    assert twin.render() == env.render()
    for x, y in zip(play(env, actions[20:]), play(twin, actions[20:])):
        np.testing.assert_array_equal(x[0], y[0])
        assert x[1:] == y[1:]


def test_single_env_step_before_reset_raises():
    with pytest.raises(RuntimeError, match="reset"):
        OversightGridEnv().step(0)


def test_returned_observations_are_not_overwritten_later():
    env = OversightGridEnv()
    obs0, _ = env.reset(seed=0)
    kept = obs0.copy()
    obs1 = env.step(1)[0]
    kept1 = obs1.copy()
    env.step(2)
    np.testing.assert_array_equal(obs0, kept)
    np.testing.assert_array_equal(obs1, kept1)


# ---------------------------------------------------------------------------------------------
# vector env behaviour
# ---------------------------------------------------------------------------------------------
def test_vector_of_one_equals_single_env():
    """Same seed, same actions: the same episodes. The single env shows the final frame at an
    episode's end and starts the next episode at reset(); the vector env starts it at once and
    puts the final frame in info["final_obs"]."""
    kw = dict(size=5, max_episode_steps=12, oversight_prob=0.5, spurious_prob=0.2)
    single = OversightGridEnv(**kw)
    venv = OversightGridVectorEnv(num_envs=1, **kw)
    o1, _ = single.reset(seed=21)
    ov, _ = venv.reset(seed=21)
    np.testing.assert_array_equal(ov[0], o1)
    ends = 0
    for a in np.random.default_rng(2).integers(0, 4, 300):
        o1, r1, te1, tr1, i1 = single.step(int(a))
        ov, rv, tev, trv, iv = venv.step(np.array([a]))
        assert (r1, te1, tr1) == (float(rv[0]), bool(tev[0]), bool(trv[0]))
        if te1 or tr1:
            ends += 1
            np.testing.assert_array_equal(iv["final_obs"][0], o1)
            for k in END_KEYS:
                assert iv[k][0] == i1[k] and iv["_" + k][0]
            o1, _ = single.reset()
        else:
            assert iv == {}
        np.testing.assert_array_equal(ov[0], o1)
    assert ends > 10


def test_vector_env_has_no_stale_observations():
    """After an autoreset the returned frame is the one the next action is applied to."""
    B, max_steps = 16, 10
    venv = OversightGridVectorEnv(num_envs=B, size=4, max_episode_steps=max_steps,
                                  oversight_prob=0.5, reward_mode="true")
    assert venv.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, _ = venv.reset(seed=5)
    moves = np.zeros(B, dtype=int)
    rng = np.random.default_rng(3)
    ends = 0
    for _ in range(80):
        actions = rng.integers(0, 4, B)
        want = [ref_step(decode_obs(obs[i]), int(actions[i]), int(moves[i]), max_steps, "true")
                for i in range(B)]
        new_obs, rew, term, trunc, info = venv.step(actions)
        done = term | trunc
        moves += 1
        for i, w in enumerate(want):
            assert (float(rew[i]), bool(term[i]), bool(trunc[i])) == (
                w.reward, w.terminated, w.truncated)
            if done[i]:
                ends += 1
                final = info["final_obs"][i]
                assert decode_obs(final).agent == w.agent
                np.testing.assert_array_equal(final[1:], obs[i][1:])
                assert info["outcome"][i] == w.outcome
                assert info["eval_true_outcome"][i] == w.true_outcome
                assert info["overseen"][i] == w.overseen
                assert info["length"][i] == moves[i]
                # a first frame: the agent is not on a terminal cell and t restarted
                fresh = decode_obs(new_obs[i])
                assert len({fresh.agent, fresh.ghost, fresh.diamond}) == 3
                moves[i] = 0
            else:
                assert decode_obs(new_obs[i]).agent == w.agent
        if done.any():
            for k in ("final_obs", *END_KEYS):
                np.testing.assert_array_equal(info["_" + k], done)
            assert info["final_obs"].shape == (B, 4, 4, 4)
        else:
            assert info == {}
        obs = new_obs
    assert ends > B


def test_vector_env_reset_seed_is_deterministic_and_outputs_are_independent():
    a = OversightGridVectorEnv(num_envs=8)
    b = OversightGridVectorEnv(num_envs=8)
    oa, _ = a.reset(seed=11)
    ob, _ = b.reset(seed=11)
    np.testing.assert_array_equal(oa, ob)
    kept = oa.copy()
    rng = np.random.default_rng(4)
    prev = None
    for _ in range(50):
        act = rng.integers(0, 4, 8)
        ra, rb = a.step(act), b.step(act)
        np.testing.assert_array_equal(ra[0], rb[0])
        np.testing.assert_array_equal(ra[1], rb[1])
        if prev is not None:  # an earlier step's arrays are not overwritten by later steps
            np.testing.assert_array_equal(prev[0], prev[1])
        prev = (ra[0], ra[0].copy())
    np.testing.assert_array_equal(oa, kept)
    np.testing.assert_array_equal(a.reset(seed=11)[0], kept)


@pytest.mark.parametrize("clone", ["pickle", "deepcopy"])
def test_vector_env_pickle_and_deepcopy_continue_identically(clone):
    venv = OversightGridVectorEnv(num_envs=6, oversight_prob=0.5, spurious_prob=0.1)
    venv.reset(seed=9)
    rng = np.random.default_rng(5)
    for _ in range(7):
        venv.step(rng.integers(0, 4, 6))
    twin = pickle.loads(pickle.dumps(venv)) if clone == "pickle" else copy.deepcopy(venv)
    for _ in range(40):
        act = rng.integers(0, 4, 6)
        x, y = venv.step(act), twin.step(act)
        for u, v in zip(x[:4], y[:4]):
            np.testing.assert_array_equal(u, v)
        assert x[4].keys() == y[4].keys()
        for k in x[4]:
            np.testing.assert_array_equal(x[4][k], y[4][k])


# ---------------------------------------------------------------------------------------------
# rendering
# ---------------------------------------------------------------------------------------------
def test_render_ansi():
    env = OversightGridEnv(oversight_prob=1.0, render_mode="ansi")
    obs, _ = env.reset(seed=0)
    text = env.render()
    lines = text.splitlines()
    assert len(lines) == 5 and all(len(line) == 15 for line in lines)
    for ch in "AGD":
        assert text.count(ch) == 1
    assert "[G]" in text and "[D]" in text  # both terminals overseen at p = 1


def test_render_rgb_array_colours():
    env = OversightGridEnv(oversight_prob=1.0, render_mode="rgb_array")
    obs, _ = env.reset(seed=0)
    img = env.render()
    assert img.shape == (80, 80, 3) and img.dtype == np.uint8
    s = decode_obs(obs)
    px = 16

    def centre(rc):
        return tuple(img[rc[0] * px + px // 2, rc[1] * px + px // 2])

    def corner(rc):  # background, inside the border
        return tuple(img[rc[0] * px + 1, rc[1] * px + 1])

    assert centre(s.agent) == COLORS["agent"]
    assert centre(s.ghost) == COLORS["ghost"]
    assert centre(s.diamond) == COLORS["diamond"]
    assert corner(s.ghost) == corner(s.diamond) == COLORS["overseen"]
    assert corner(s.agent) == COLORS["floor"]
    colours = {COLORS[k] for k in ("agent", "ghost", "diamond", "overseen", "floor")}
    assert len(colours) == 5


def test_render_none_and_vector_render():
    env = OversightGridEnv()
    env.reset(seed=0)
    assert env.render() is None
    venv = OversightGridVectorEnv(num_envs=3, render_mode="rgb_array")
    venv.reset(seed=0)
    frames = venv.render()
    assert len(frames) == 3 and all(f.shape == (80, 80, 3) for f in frames)
    venv = OversightGridVectorEnv(num_envs=2, render_mode="ansi")
    venv.reset(seed=0)
    assert all(isinstance(t, str) for t in venv.render())


# ---------------------------------------------------------------------------------------------
# bad input
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "action, words",
    [
        (4, ["4", "{0, 1, 2, 3}"]),
        (-1, ["-1", "{0, 1, 2, 3}"]),
        (1.0, ["1.0", "float", "integer"]),
        (True, ["True", "bool", "integer"]),
        (np.array([1, 2]), ["shape", "(2,)"]),
        ("north", ["north", "integer"]),
    ],
)
def test_single_env_rejects_bad_actions(action, words):
    env = OversightGridEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError) as err:
        env.step(action)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_single_env_accepts_numpy_integers():
    env = OversightGridEnv()
    env.reset(seed=0)
    for a in (np.int64(1), np.int32(2), np.uint8(3), np.array(0)):
        env.step(a)


@pytest.mark.parametrize(
    "actions, words",
    [
        (np.array([0, 1]), ["shape", "(3,)", "(2,)"]),
        (np.array([[0, 1, 2]]), ["shape", "(3,)", "(1, 3)"]),
        (np.array([0, 1, 4]), ["{0, 1, 2, 3}", "4"]),
        (np.array([0, -2, 1]), ["{0, 1, 2, 3}", "-2"]),
        (np.array([0.0, 1.0, 2.0]), ["float", "integer"]),
        (np.array([True, False, True]), ["bool", "integer"]),
    ],
)
def test_vector_env_rejects_bad_action_batches(actions, words):
    venv = OversightGridVectorEnv(num_envs=3)
    venv.reset(seed=0)
    with pytest.raises(ValueError) as err:
        venv.step(actions)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


@pytest.mark.parametrize("cls", [OversightGridEnv, OversightGridVectorEnv])
@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"size": 1}, ["size", "1", "[2, 128]"]),
        ({"size": 129}, ["size", "129", "[2, 128]"]),
        ({"size": 10**6}, ["size", "1000000", "[2, 128]"]),
        ({"oversight_prob": 1.2}, ["oversight_prob", "1.2", "[0, 1]"]),
        ({"spurious_prob": -0.5}, ["spurious_prob", "-0.5", "[0, 1]"]),
        ({"reward_mode": "oracle"}, ["reward_mode", "oracle", "proxy", "terminal", "true"]),
        ({"render_mode": "human"}, ["render_mode", "human", "ansi", "rgb_array"]),
        ({"max_episode_steps": 0}, ["max_episode_steps", "0"]),
    ],
)
def test_envs_reject_bad_arguments(cls, kwargs, words):
    with pytest.raises(ValueError) as err:
        cls(**kwargs)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


def test_gym_make_rejects_bad_arguments():
    with pytest.raises(ValueError, match="oversight_prob"):
        gym.make("OversightGrid-v0", oversight_prob=3)
    if not GYMNASIUM_1:
        pytest.skip("gym.make_vec needs Gymnasium 1.x")
    with pytest.raises(ValueError, match="num_envs"):
        gym.make_vec("OversightGrid-v0", num_envs=0)


def test_torch_threads_untouched():
    # Building and stepping envs must not change the process-wide thread setting.
    n = torch.get_num_threads()
    venv = OversightGridVectorEnv(num_envs=4)
    venv.reset(seed=0)
    venv.step(np.zeros(4, dtype=np.int64))
    assert torch.get_num_threads() == n
