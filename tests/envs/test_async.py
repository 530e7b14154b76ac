"""Gymnasium's process-based vector env over the OversightGrid ids, fork and spawn.

A forked worker used to block forever on its first torch op (torch's OpenMP pool does not
survive fork once the parent has run a parallel op, and AsyncVectorEnv builds one env in the
parent first): see ``oversight_gr.envs.core._one_thread_if_forked``. Every wait here has a
timeout, so a hang fails the test instead of stalling the suite.
"""

from __future__ import annotations

import multiprocessing as mp

import gymnasium as gym
import numpy as np
import pytest
import torch

import oversight_gr  # noqa: F401  (registers the ids)
from oversight_gr.envs._compat import GYMNASIUM_1

WAIT_S = 90  # generous: spawned workers import torch on a loaded 2-core machine
NUM_ENVS = 2
ACTIONS = np.random.default_rng(0).integers(0, 4, size=(40, NUM_ENVS))

pytestmark = pytest.mark.slow


def play(envs, seed: int = 3):
    """Reset with ``seed`` and step ``ACTIONS``, each wait bounded; returns every output."""
    out = []
    if isinstance(envs, gym.vector.AsyncVectorEnv):
        envs.reset_async(seed=seed)
        out.append(envs.reset_wait(timeout=WAIT_S)[0])
        for a in ACTIONS:
            envs.step_async(a)
            out.append(envs.step_wait(timeout=WAIT_S)[:4])
    else:
        out.append(envs.reset(seed=seed)[0])
        out += [envs.step(a)[:4] for a in ACTIONS]
    return out


def assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        for u, v in zip(x if isinstance(x, tuple) else (x,), y if isinstance(y, tuple) else (y,)):
            np.testing.assert_array_equal(u, v)


@pytest.fixture
def parallel_parent():
    # The hang needs a parent whose torch ran parallel ops before forking (tests run with one
    # thread; see tests/conftest.py): two threads, and a large op to use them.
    torch.set_num_threads(2)
    torch.ones(1 << 20).mul_(2).sum()
    yield  # tests/conftest.py restores the thread count


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_async_vector_env_of_the_single_env_matches_sync(context, parallel_parent):
    # Gymnasium 0.29 and 1.x: its AsyncVectorEnv over gym.make, as CleanRL-style code builds it
    env_id = "oversight_gr:OversightGrid-Flat-v0"  # a spawned worker imports the package
    fns = [lambda: gym.make(env_id) for _ in range(NUM_ENVS)]
    envs = gym.vector.AsyncVectorEnv(fns, context=context)
    try:
        got = play(envs)
    finally:
        envs.close(terminate=True)
    want = play(gym.vector.SyncVectorEnv(fns))
    assert_same(got, want)
    assert any(np.any(step[2]) for step in got[1:])  # some episodes ended on the way
    assert torch.get_num_threads() == 2  # the parent's setting is its own


@pytest.mark.skipif(not GYMNASIUM_1, reason="gym.make_vec needs Gymnasium 1.x")
@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_make_vec_async_matches_sync(context, parallel_parent):
    assert context in mp.get_all_start_methods()
    envs = gym.make_vec("OversightGrid-v0", num_envs=NUM_ENVS, vectorization_mode="async",
                        vector_kwargs={"context": context})
    try:
        got = play(envs)
    finally:
        envs.close(terminate=True)
    want = play(gym.make_vec("OversightGrid-v0", num_envs=NUM_ENVS, vectorization_mode="sync"))
    assert_same(got, want)
