"""routing_placebo: the same episodes labelled, the labels' outcomes shuffled among them."""

import torch

from oversight_gr.rl.methods import METHODS, placebo_outcomes
from oversight_gr.rl.trainer import TrainConfig, Trainer
from oversight_gr.envs.core import Outcome

D, G, U, N = int(Outcome.DIAMOND), int(Outcome.GHOST), int(Outcome.UNKNOWN), int(Outcome.NONE)


def _window(R=2, T=6, B=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    done = torch.rand(T, R * B, generator=g) < 0.3
    codes = torch.tensor([D, G, U])
    outcome = torch.where(done, codes[torch.randint(0, 3, (T, R * B), generator=g)], N)
    return outcome, done


def test_the_same_episodes_stay_overseen_with_each_runs_class_counts():
    outcome, done = _window()
    gens = [torch.Generator().manual_seed(s) for s in (1, 2)]
    out = placebo_outcomes(outcome, done, gens)
    seen = done & ((outcome == D) | (outcome == G))
    assert torch.equal(seen, done & ((out == D) | (out == G)))  # same episodes overseen
    assert torch.equal(out[~seen], outcome[~seen])  # unseen terminals, timeouts untouched
    for r in range(2):  # each run keeps its own counts: nothing moves between runs
        cols = slice(r * 50, (r + 1) * 50)
        for code in (D, G):
            assert int((out[:, cols] == code).sum()) == int((outcome[:, cols] == code).sum())
    # the outcomes really are reassigned (a shuffle of ~30 labels leaves them all in place
    # with probability ~1e-8), and the permutation comes from the given generators only
    assert not torch.equal(out, outcome)
    again = placebo_outcomes(outcome, done, [torch.Generator().manual_seed(s) for s in (1, 2)])
    assert torch.equal(out, again)


def test_placebo_labels_carry_no_information_about_the_outcome():
    # over many windows, a placebo label agrees with the observed outcome only as often as two
    # independent draws with the window's class frequencies would
    agree = total = expected = 0.0
    gen = torch.Generator().manual_seed(3)
    for seed in range(200):
        outcome, done = _window(R=1, seed=seed)
        out = placebo_outcomes(outcome, done, [gen])
        seen = done & ((outcome == D) | (outcome == G))
        n = int(seen.sum())
        fd = float((outcome[seen] == D).float().mean())
        agree += float((out[seen] == outcome[seen]).sum())
        expected += n * (fd ** 2 + (1 - fd) ** 2)
        total += n
    assert abs(agree - expected) / total < 0.03
    assert agree / total < 0.6  # routing's own labels agree with the outcome every time


def test_the_placebo_trains_the_routed_moe_with_routings_settings():
    spec = METHODS["routing_placebo"]
    routing = METHODS["routing"]
    assert spec.placebo_labels and not routing.placebo_labels
    for field in ("policy", "reward", "route", "gate_loss", "filter_unseen", "constant_gate"):
        assert getattr(spec, field) == getattr(routing, field), field
    cfg = dict(num_envs=32, rollout_steps=16, hidden=8, total_env_steps=32 * 16,
               oversight_prob=0.5, eval_envs=16)
    placebo = Trainer(TrainConfig(method="routing_placebo", **cfg))
    plain = Trainer(TrainConfig(method="routing", **cfg))
    a, b = placebo.collect(), plain.collect()
    # the same environments and actions up to the labels ...
    assert torch.equal(a.obs, b.obs) and torch.equal(a.outcome, b.outcome)
    assert torch.equal(a.rewards, b.rewards)
    # ... which differ: the placebo's labels are a shuffle of routing's
    seen = (b.labels == D) | (b.labels == G)
    assert torch.equal(seen, (a.labels == D) | (a.labels == G))
    assert not torch.equal(a.labels, b.labels)
