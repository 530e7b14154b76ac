"""The batched rules (GridRules) against the paper's rules, written independently in gridref."""

from __future__ import annotations

import copy
import math
import pickle

import numpy as np
import pytest
import torch
from gridref import DIAMOND, GHOST, NONE, TIMEOUT, UNKNOWN, decode_obs, ref_step
from hypothesis import given, settings
from hypothesis import strategies as st

from oversight_gr.envs import MAX_SIZE, GridRules, Outcome

FAST = settings(max_examples=15, deadline=None)


def test_outcome_codes_are_stable():
    # Checkpoints, logs and the trainer store these integers.
    assert [int(o) for o in Outcome] == [NONE, DIAMOND, GHOST, UNKNOWN, TIMEOUT]


def binomial_ok(successes: int, trials: int, p: float, z: float = 5.0) -> bool:
    """``successes`` is within ``z`` standard deviations of ``trials * p`` (exact when p is 0/1)."""
    sd = math.sqrt(trials * p * (1 - p))
    return abs(successes - trials * p) <= z * sd + 1e-9


def place(rules: GridRules, agent, ghost, diamond, over=(False, False)) -> None:
    """Put every env of ``rules`` in one state (cells as (row, col))."""
    n = rules.size
    cell = lambda rc: rc[0] * n + rc[1]  # noqa: E731
    B = rules.num_envs
    rules.objs = torch.tensor([[cell(agent)], [cell(ghost)], [cell(diamond)]]).expand(3, B).clone()
    rules.over = torch.tensor([[over[0]], [over[1]]]).expand(2, B).clone()
    rules.t = torch.zeros(B, dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# the rules step for step like the reference model
# ---------------------------------------------------------------------------------------------
@FAST
@given(
    size=st.integers(2, 6),
    max_steps=st.integers(1, 40),
    p=st.sampled_from([0.0, 0.3, 0.5, 1.0]),
    q=st.sampled_from([0.0, 0.25]),
    mode=st.sampled_from(["proxy", "terminal", "true"]),
    num_envs=st.integers(1, 12),
    seed=st.integers(0, 2**31 - 1),
)
def test_rules_follow_reference(size, max_steps, p, q, mode, num_envs, seed):
    check_against_reference(size, max_steps, p, q, mode, num_envs, seed)


# whole-state tables (<= 5), layout tables (6-10), arithmetic (> 10)
@pytest.mark.parametrize("size", [5, 6, 8, 11, 23])
def test_rules_follow_reference_by_grid_size(size):
    check_against_reference(size, 2 * size, 0.5, 0.2, "proxy", 16, size, steps=40)


@pytest.mark.parametrize("size", [5, 8, 10, 11, 20, MAX_SIZE])
def test_grid_tables_are_bounded_and_grow_as_cells_beyond_size_10(size):
    """Tables indexed by state or layout (size**6 entries) exist only while they fit 80 MiB;
    beyond, the shared tables hold O(C) entries (size 20 once built ~24 GB of tables). The
    rules at the largest allowed size still step."""
    rules = GridRules(2, size=size, spurious_prob=0.5, seed=0)
    cells = size * size
    grid = vars(rules._grid)
    table_bytes = sum(t.numel() * t.element_size() for t in grid.values()
                      if isinstance(t, torch.Tensor))
    assert table_bytes <= 80 << 20, table_bytes
    if size > 10:
        assert table_bytes <= 100 * cells, table_bytes
    rules.reset()
    obs = rules.step(torch.tensor([0, 1])).obs
    assert obs.shape == (2, 4, size, size)
    assert (obs[:, :3].flatten(1).sum(1) == 3).all()  # one agent, one ghost, one diamond


def test_triples_are_every_ordered_triple_of_distinct_cells_in_order():
    c = 9
    i, j, k = torch.meshgrid(torch.arange(c), torch.arange(c), torch.arange(c), indexing="ij")
    distinct = (i != j) & (j != k) & (i != k)
    expected = torch.stack([i[distinct], j[distinct], k[distinct]])
    assert torch.equal(GridRules(1, size=3).triples, expected)


def check_against_reference(size, max_steps, p, q, mode, num_envs, seed, steps=48):
    rules = GridRules(num_envs, size=size, max_episode_steps=max_steps, oversight_prob=p,
                      spurious_prob=q, reward_mode=mode, seed=seed)
    obs = rules.reset().numpy()
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        before = [decode_obs(o) for o in obs]
        t_before = rules.t.clone()
        assert (t_before < max_steps).all()
        action = rng.integers(0, 4, num_envs)
        r = rules.step(torch.from_numpy(action))
        assert r.obs.dtype == torch.uint8 and r.obs.shape == (num_envs, 4, size, size)
        assert r.reward.dtype == torch.float32
        assert r.terminated.dtype == r.truncated.dtype == r.done.dtype == torch.bool
        assert r.overseen.dtype == torch.bool
        assert r.outcome.dtype == r.true_outcome.dtype == r.length.dtype == torch.int64
        final = r.final_obs.numpy()
        obs = r.obs.numpy()
        for i, s in enumerate(before):
            want = ref_step(s, int(action[i]), int(t_before[i]), max_steps, mode)
            got = (float(r.reward[i]), bool(r.terminated[i]), bool(r.truncated[i]),
                   int(r.outcome[i]), int(r.true_outcome[i]), bool(r.overseen[i]))
            assert got == (want.reward, want.terminated, want.truncated, want.outcome,
                           want.true_outcome, want.overseen), (s, int(action[i]))
            assert bool(r.done[i]) == (want.terminated or want.truncated)
            assert int(r.length[i]) == int(t_before[i]) + 1
            # agent in bounds and moved as the rules say; the rest of the frame is unchanged
            shown = obs[i] if not want.terminated and not want.truncated else final[i]
            assert shown[0].sum() == 1 and shown[0][want.agent] == 1
            np.testing.assert_array_equal(shown[1:], obs_before_planes(s))
            if r.done[i]:
                assert int(rules.t[i]) == 0
                fresh = decode_obs(obs[i])  # a valid first frame: three distinct cells
                assert len({fresh.agent, fresh.ghost, fresh.diamond}) == 3
            else:
                assert int(rules.t[i]) == int(t_before[i]) + 1


def obs_before_planes(s) -> np.ndarray:
    """Ghost, diamond and oversight planes of a reference state."""
    planes = np.zeros((3, s.size, s.size), dtype=np.uint8)
    planes[0][s.ghost] = 1
    planes[1][s.diamond] = 1
    planes[2][s.ghost] = s.over_ghost
    planes[2][s.diamond] = s.over_diamond
    for cell in s.spurious:
        planes[2][cell] = 1
    return planes


@pytest.mark.parametrize("max_steps", [1, 2, 5, 32, 64])
def test_truncation_after_exactly_max_episode_steps(max_steps):
    rules = GridRules(3, size=5, max_episode_steps=max_steps, seed=0)
    rules.reset()
    place(rules, agent=(0, 0), ghost=(4, 4), diamond=(4, 3))
    north = torch.zeros(3, dtype=torch.long)  # into the wall: the agent never moves
    for k in range(1, max_steps):
        r = rules.step(north)
        assert not r.done.any() and (r.length == k).all() and (r.outcome == NONE).all()
    r = rules.step(north)
    assert r.truncated.all() and not r.terminated.any()
    assert (r.length == max_steps).all()
    assert (r.outcome == TIMEOUT).all() and (r.true_outcome == TIMEOUT).all()
    assert (r.reward == 0).all() and not r.overseen.any()
    assert (rules.t == 0).all()


def test_reaching_a_terminal_on_the_last_move_is_termination_not_truncation():
    rules = GridRules(1, size=5, max_episode_steps=1, oversight_prob=1.0, seed=0)
    rules.reset()
    place(rules, agent=(2, 2), ghost=(1, 2), diamond=(4, 4), over=(True, True))
    r = rules.step(torch.tensor([0]))
    assert bool(r.terminated[0]) and not bool(r.truncated[0]) and int(r.outcome[0]) == GHOST


@pytest.mark.parametrize("mode", ["proxy", "terminal", "true"])
@pytest.mark.parametrize("target", ["ghost", "diamond"])
@pytest.mark.parametrize("seen", [False, True])
def test_reward_and_outcome_table(mode, target, seen):
    want_reward = {
        ("proxy", "ghost", True): -1.0, ("proxy", "ghost", False): 1.0,
        ("proxy", "diamond", True): 1.0, ("proxy", "diamond", False): 1.0,
        ("terminal", "ghost", True): 1.0, ("terminal", "ghost", False): 1.0,
        ("terminal", "diamond", True): 1.0, ("terminal", "diamond", False): 1.0,
        ("true", "ghost", True): -1.0, ("true", "ghost", False): -1.0,
        ("true", "diamond", True): 1.0, ("true", "diamond", False): 1.0,
    }[mode, target, seen]
    rules = GridRules(1, size=5, reward_mode=mode, seed=0)
    rules.reset()
    # agent at (2, 2); the target north of it, the other terminal far away
    near, far = (1, 2), (4, 4)
    ghost, diamond = (near, far) if target == "ghost" else (far, near)
    over = (seen, False) if target == "ghost" else (False, seen)
    place(rules, agent=(2, 2), ghost=ghost, diamond=diamond, over=over)
    r = rules.step(torch.tensor([0]))
    true = GHOST if target == "ghost" else DIAMOND
    assert float(r.reward[0]) == want_reward
    assert bool(r.terminated[0]) and bool(r.done[0]) and not bool(r.truncated[0])
    assert int(r.true_outcome[0]) == true
    assert int(r.outcome[0]) == (true if seen else UNKNOWN)
    assert bool(r.overseen[0]) == seen
    # a mid-episode move pays nothing
    place(rules, agent=(2, 2), ghost=ghost, diamond=diamond, over=over)
    r = rules.step(torch.tensor([2]))
    assert float(r.reward[0]) == 0.0 and not bool(r.done[0]) and int(r.outcome[0]) == NONE


# ---------------------------------------------------------------------------------------------
# starting states
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.0, 0.03, 0.3, 1.0])
def test_oversight_rate_at_reset_and_autoreset(p):
    B = 2048
    rules = GridRules(B, size=5, oversight_prob=p, seed=1)
    rules.reset()
    over = [rules.over.clone()]
    gen = torch.Generator().manual_seed(2)
    for _ in range(24):  # episodes that start through the autoreset draw too
        r = rules.step(torch.randint(4, (B,), generator=gen))
        over.append(rules.over[:, r.done])
    over = torch.cat(over, dim=1)
    n = over.shape[1]
    assert n > 1.5 * B
    for k in range(2):
        assert binomial_ok(int(over[k].sum()), n, p), (k, float(over[k].float().mean()))
    # the two cells are overseen independently
    assert binomial_ok(int((over[0] & over[1]).sum()), n, p * p)


def test_start_cells_are_distinct_and_uniform():
    B, n = 20000, 3
    rules = GridRules(B, size=n, seed=3)  # 9 cells: 504 ordered triples
    rules.reset()
    objs = rules.objs
    assert ((objs[0] != objs[1]) & (objs[1] != objs[2]) & (objs[0] != objs[2])).all()
    assert objs.min() >= 0 and objs.max() < n * n
    for k in range(3):
        counts = torch.bincount(objs[k], minlength=n * n)
        for c in counts.tolist():
            assert binomial_ok(c, B, 1 / (n * n))
    triple = (objs[0] * 81 + objs[1] * 9 + objs[2])
    assert len(torch.unique(triple)) == 9 * 8 * 7  # every ordered triple occurs


@pytest.mark.parametrize("q", [0.0, 0.2, 1.0])
def test_spurious_marks_only_on_non_terminal_cells_at_rate_q(q):
    B = 1000
    rules = GridRules(B, size=5, oversight_prob=0.0, spurious_prob=q, seed=4)
    obs = rules.reset()
    gen = torch.Generator().manual_seed(5)
    marks = trials = 0
    for _ in range(4):
        terminal = (obs[:, 1] | obs[:, 2]).bool()
        oversight = obs[:, 3].bool()
        assert not (oversight & terminal).any()  # p = 0: terminal cells are never marked
        marks += int((oversight & ~terminal).sum())
        trials += int((~terminal).sum())
        obs = rules.step(torch.randint(4, (B,), generator=gen)).obs
    # marks persist within an episode, so count only whole fresh draws
    fresh = GridRules(B, size=5, oversight_prob=0.0, spurious_prob=q, seed=6).reset()
    terminal = (fresh[:, 1] | fresh[:, 2]).bool()
    m = int((fresh[:, 3].bool() & ~terminal).sum())
    assert binomial_ok(m, int((~terminal).sum()), q)
    assert (marks == 0) == (q == 0)


def test_spurious_marks_stay_for_the_episode_and_are_redrawn_at_reset():
    B = 256
    rules = GridRules(B, size=5, oversight_prob=0.5, spurious_prob=0.5, seed=7)
    obs = rules.reset()
    gen = torch.Generator().manual_seed(8)
    changed = 0
    for _ in range(20):
        r = rules.step(torch.randint(4, (B,), generator=gen))
        same = ~r.done
        assert torch.equal(r.obs[same, 1:], obs[same, 1:])
        assert torch.equal(r.final_obs[r.done, 1:], obs[r.done, 1:])
        changed += int((r.obs[r.done, 3] != obs[r.done, 3]).any(dim=(1, 2)).sum())
        obs = r.obs
    assert changed > 0


# ---------------------------------------------------------------------------------------------
# batch = independent copies
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("q", [0.0, 0.3])
def test_batch_step_equals_single_row_replays(q):
    """Each row of a batched step equals a batch of 1 started from that row's recorded state.

    The start of a new episode comes from the batch's generator, so it is checked for
    validity only; everything else a step returns must match exactly."""
    B = 16
    rules = GridRules(B, size=4, max_episode_steps=6, oversight_prob=0.5, spurious_prob=q,
                      reward_mode="proxy", seed=9)
    rules.reset()
    single = GridRules(1, size=4, max_episode_steps=6, oversight_prob=0.5, spurious_prob=q,
                       reward_mode="proxy", seed=10)
    gen = torch.Generator().manual_seed(11)
    ends = 0
    for _ in range(30):
        state = rules.get_state()
        action = torch.randint(4, (B,), generator=gen)
        r = rules.step(action)
        ends += int(r.done.sum())
        for i in range(B):
            single.set_state({
                "objs": state["objs"][:, i : i + 1], "over": state["over"][:, i : i + 1],
                "spurious": state["spurious"][i : i + 1], "t": state["t"][i : i + 1],
                "generator": single.generator.get_state(),
            })
            s = single.step(action[i : i + 1])
            for name in ("reward", "terminated", "truncated", "outcome", "true_outcome",
                         "overseen", "length", "done"):
                assert torch.equal(getattr(s, name)[0], getattr(r, name)[i]), name
            assert torch.equal(s.final_obs[0], r.final_obs[i]) if r.done[i] else True
            if not r.done[i]:
                assert torch.equal(s.obs[0], r.obs[i])
    assert ends > B  # the comparison went through many episode ends


def test_reset_seed_is_deterministic():
    a = GridRules(64, seed=None)
    b = GridRules(64, seed=None)
    oa, ob = a.reset(seed=123), b.reset(seed=123)
    assert torch.equal(oa, ob)
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        act = torch.randint(4, (64,), generator=gen)
        ra, rb = a.step(act), b.step(act)
        assert torch.equal(ra.obs, rb.obs) and torch.equal(ra.reward, rb.reward)
    assert torch.equal(a.reset(seed=123), oa)
    assert not torch.equal(GridRules(64).reset(seed=124), oa)


@pytest.mark.parametrize("clone", [pickle, copy])
def test_rules_pickle_and_deepcopy_continue_identically(clone):
    rules = GridRules(32, oversight_prob=0.5, spurious_prob=0.1, seed=12)
    rules.reset()
    gen = torch.Generator().manual_seed(13)
    for _ in range(5):
        rules.step(torch.randint(4, (32,), generator=gen))
    twin = pickle.loads(pickle.dumps(rules)) if clone is pickle else copy.deepcopy(rules)
    for _ in range(30):
        act = torch.randint(4, (32,), generator=gen)
        r, s = rules.step(act), twin.step(act)
        for name in ("obs", "reward", "outcome", "length", "final_obs"):
            assert torch.equal(getattr(r, name), getattr(s, name)), name


def test_get_state_set_state_round_trip():
    rules = GridRules(16, oversight_prob=0.5, spurious_prob=0.2, seed=14)
    rules.reset()
    state = rules.get_state()
    assert {"objs", "over", "spurious", "t", "generator"} <= set(state)
    assert state["objs"].shape == (3, 16) and state["over"].shape == (2, 16)
    acts = torch.randint(4, (40, 16), generator=torch.Generator().manual_seed(0))
    first = [rules.step(a) for a in acts]
    rules.set_state(state)
    again = [rules.step(a) for a in acts]
    for x, y in zip(first, again):
        assert torch.equal(x.obs, y.obs) and torch.equal(x.final_obs, y.final_obs)
        assert torch.equal(x.reward, y.reward)


def test_objs_over_t_describe_the_observation():
    rules = GridRules(50, size=5, oversight_prob=0.5, seed=15)
    obs = rules.reset()
    gen = torch.Generator().manual_seed(16)
    for _ in range(10):
        flat = obs.view(50, 4, 25)
        for k in range(3):
            assert torch.equal(flat[:, k].argmax(1), rules.objs[k])
        assert torch.equal(flat[torch.arange(50), 3, rules.objs[1]].bool(), rules.over[0])
        assert torch.equal(flat[torch.arange(50), 3, rules.objs[2]].bool(), rules.over[1])
        assert rules.objs.shape == (3, 50) and rules.objs.dtype == torch.int64
        assert rules.over.shape == (2, 50) and rules.over.dtype == torch.bool
        assert rules.t.shape == (50,) and rules.t.dtype == torch.int64
        obs = rules.step(torch.randint(4, (50,), generator=gen)).obs


def test_ghost_closer():
    rules = GridRules(200, size=5, seed=17)
    rules.reset()
    a, g, d = (rules.objs[k] for k in range(3))
    dist = lambda x, y: (x // 5 - y // 5).abs() + (x % 5 - y % 5).abs()  # noqa: E731
    assert torch.equal(rules.ghost_closer(), dist(a, g) < dist(a, d))


# ---------------------------------------------------------------------------------------------
# bad arguments
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"size": 1}, ["size", "1", "[2, 128]"]),
        ({"size": 129}, ["size", "129", "[2, 128]"]),
        ({"size": 10**6}, ["size", "1000000", "[2, 128]"]),
        ({"size": 2.5}, ["size", "2.5"]),
        ({"max_episode_steps": 0}, ["max_episode_steps", "0", ">= 1"]),
        ({"oversight_prob": 1.5}, ["oversight_prob", "1.5", "[0, 1]"]),
        ({"oversight_prob": -0.1}, ["oversight_prob", "-0.1", "[0, 1]"]),
        ({"oversight_prob": float("nan")}, ["oversight_prob", "nan", "[0, 1]"]),
        ({"spurious_prob": 2}, ["spurious_prob", "2", "[0, 1]"]),
        ({"oversight_prob": "lots"}, ["oversight_prob", "lots"]),
        ({"reward_mode": "bogus"}, ["reward_mode", "bogus", "proxy", "terminal", "true"]),
        ({"num_envs": 0}, ["num_envs", "0", "[1, "]),
    ],
)
def test_rules_reject_bad_arguments(kwargs, words):
    args = {"num_envs": 2, **kwargs}
    with pytest.raises(ValueError) as err:
        GridRules(**args)
    for w in words:
        assert w in str(err.value), (w, str(err.value))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("size", [5, 8, 20])  # whole-state, layout and arithmetic tables
def test_rules_on_cuda_match_cpu(size):
    """The same state and action give the same step on the GPU as on the CPU."""
    B = 256
    kw = dict(size=size, max_episode_steps=8, oversight_prob=0.5, spurious_prob=0.2)
    cpu = GridRules(B, seed=0, **kw)
    gpu = GridRules(B, seed=1, device="cuda", **kw)
    cpu.reset()
    gen = torch.Generator().manual_seed(0)
    for _ in range(40):
        state = cpu.get_state()
        state["generator"] = gpu.generator.get_state()
        gpu.set_state(state)
        action = torch.randint(4, (B,), generator=gen)
        r, s = cpu.step(action), gpu.step(action.cuda())
        for name in ("reward", "terminated", "truncated", "outcome", "true_outcome",
                     "overseen", "length", "done", "final_obs"):
            assert torch.equal(getattr(r, name), getattr(s, name).cpu()), name
        keep = ~r.done
        assert torch.equal(r.obs[keep], s.obs.cpu()[keep])
        for o in s.obs.cpu().numpy():  # the GPU's new episodes are valid first frames
            st = decode_obs(o)
            assert len({st.agent, st.ghost, st.diamond}) == 3
