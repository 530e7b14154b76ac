"""The trainer's fast paths compute what the plain formulation computes.

- the gate's 1x1 convolution folded into its first layer (and the no-grad cache of the fold);
- the mixture taken after the (linear) head, with routing applied before the head;
- single-pass REINFORCE (learning from the rollout's own graph) against the two-pass update;
- the precision modes.
"""

import math

import pytest
import torch

from oversight_gr.agents.methods import ROUTE_BOTH, ROUTE_DIAMOND, ROUTE_GHOST, route_weights
from oversight_gr.agents.networks import MoEPolicy
from oversight_gr.agents.trainer import TrainConfig, Trainer
from oversight_gr.precision import PRECISIONS, backward_context, precision_context
from oversight_gr.routing import two_expert_mixture

TINY = dict(num_envs=16, rollout_steps=8, hidden=16, total_env_steps=16 * 8 * 4, eval_envs=32)


def _obs(n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 4, 5, 5, generator=g) < 0.2).to(torch.uint8)


def _reference_logits(pol, obs, route=None):
    """The paper's formulation: conv -> gate MLP; mixture in hidden space; then the head."""
    x = obs.float()
    gx = x.clone()
    if pol.gate_input == "no_oversight":
        gx[:, 3] = 0
    gate = torch.sigmoid(pol.gate_mlp(pol.gate_conv(gx).flatten(1))).squeeze(-1)
    xf = x.flatten(1)
    e_d, e_g = pol.expert_diamond(xf), pol.expert_ghost(xf)
    if route is None:
        h = two_expert_mixture(e_d, e_g, gate)
    else:
        h = two_expert_mixture(e_d, e_g, gate, route.diamond, route.ghost, route.gate)
    return pol.head(h), gate


def _grads(module):
    return {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("gate_input", ["full", "no_oversight"])
def test_folded_gate_and_head_first_mixture_match_the_reference_values_and_gradients(gate_input):
    torch.manual_seed(0)
    pol = MoEPolicy(5, 16, gate_input)
    obs = _obs()
    lbl = torch.tensor([ROUTE_DIAMOND, ROUTE_GHOST, ROUTE_BOTH]).repeat(16)
    route = route_weights(lbl)
    w = torch.randn(48, 4)
    ref_logits, ref_gate = _reference_logits(pol, obs, route)
    (ref_logits * w).sum().backward()
    ref = _grads(pol)
    pol.zero_grad()
    out = pol(obs, route=route)
    torch.testing.assert_close(out.logits, ref_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.gate, ref_gate, atol=1e-6, rtol=1e-5)
    (out.logits * w).sum().backward()
    got = _grads(pol)
    assert got.keys() == ref.keys()
    for name in ref:
        torch.testing.assert_close(got[name], ref[name], atol=1e-5, rtol=1e-4, msg=name)
    if gate_input == "no_oversight":  # the oversight plane reaches the gate through nothing
        assert torch.all(got["gate_conv.weight"][:, 3] == 0)


def test_gate_fold_cache_follows_parameter_changes():
    torch.manual_seed(0)
    pol = MoEPolicy(5, 16, "full")
    obs = _obs()
    with torch.no_grad():
        before = pol.gate_value(obs)
        assert torch.equal(pol.gate_value(obs), before)  # served from the cache
        pol.gate_conv.weight.mul_(-1.5)  # an in-place change, like an optimizer step
        after = pol.gate_value(obs)
    assert not torch.allclose(after, before)
    torch.testing.assert_close(after, _reference_logits(pol, obs)[1].detach())


@pytest.mark.parametrize("method,extra", [
    ("routing", {}),
    ("routing", {"unlabelled_sharpness": 2.0, "gate_input": "full"}),
    ("naive", {}),
    ("filtering", {}),
])
def test_single_pass_reinforce_equals_the_two_pass_update(method, extra):
    cfg = TrainConfig(method=method, algo="reinforce", bootstrap=False, oversight_prob=0.5,
                      lr=1e-2, **TINY, **extra)
    one, two = Trainer(cfg), Trainer(cfg)
    assert one.single_pass
    two.single_pass = False
    ro1 = one.collect(graph=True)
    ro2 = two.collect(graph=False)
    assert ro1.graph is not None and ro2.graph is None
    for field in ("actions", "logp", "values", "next_values", "rewards", "labels"):
        torch.testing.assert_close(getattr(ro1, field), getattr(ro2, field), msg=field)
    s1, s2 = one.update(ro1), two.update(ro2)
    for k in s1:
        assert s1[k] == pytest.approx(s2[k], rel=1e-4, abs=1e-6), k
    for (n, p1), p2 in zip(one.policy.named_parameters(), two.policy.parameters()):
        torch.testing.assert_close(p1, p2, atol=1e-6, rtol=1e-5, msg=n)
        assert not torch.equal(p1, Trainer(cfg).policy.get_parameter(n)), f"{n} did not train"
    for p1, p2 in zip(one.value.parameters(), two.value.parameters()):
        torch.testing.assert_close(p1, p2, atol=1e-6, rtol=1e-5)


def test_a_rollout_graph_is_refused_by_a_multi_pass_update():
    ppo = Trainer(TrainConfig(method="routing", algo="ppo", minibatches=2, **TINY))
    assert not ppo.single_pass
    with pytest.raises(ValueError, match="single-pass"):
        ppo.update(ppo.collect(graph=True))


def test_precision_contexts_restore_global_state_and_reject_unknown_modes():
    before = torch.get_float32_matmul_precision()
    with precision_context("bf16_matmul", "cpu"):
        assert torch.get_float32_matmul_precision() == "medium"
    with backward_context("bf16_matmul"):
        assert torch.get_float32_matmul_precision() == "medium"
    assert torch.get_float32_matmul_precision() == before
    with precision_context("bf16", "cpu"):
        assert torch.is_autocast_enabled("cpu")
    with pytest.raises(ValueError, match="precision must be one of"):
        with precision_context("fp16", "cpu"):
            pass


@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_trains_single_and_two_pass(precision):
    for algo in ("reinforce", "ppo"):
        cfg = TrainConfig(method="routing", algo=algo, precision=precision, minibatches=2
                          if algo == "ppo" else None, **TINY)
        trainer = Trainer(cfg)
        before = [p.clone() for p in trainer.policy.parameters()]
        stats = trainer.train_update()
        # (the mean gate per route label is NaN when a window has no step of that label)
        assert all(math.isfinite(v) for k, v in stats.items() if not k.startswith("charts/gate_"))
        assert any(not torch.equal(a, b) for a, b in zip(before, trainer.policy.parameters()))
