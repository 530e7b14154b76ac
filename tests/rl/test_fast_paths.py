"""The trainer's fast paths compute what the plain formulation computes.

- the gate's 1x1 convolution folded into its first layer (and the no-grad cache of the fold);
- the mixture taken after the (linear) head, with routing applied before the head;
- single-pass REINFORCE (learning from the rollout's own graph) against the two-pass update;
- the precision modes.
"""

import dataclasses

import pytest
import torch

from oversight_gr.rl.methods import ROUTE_BOTH, ROUTE_DIAMOND, ROUTE_GHOST, route_weights
from oversight_gr.rl.networks import MoEPolicy
from oversight_gr.rl.trainer import TrainConfig, Trainer
from oversight_gr.rl.precision import PRECISIONS, backward_context, precision_context
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


def _first_step_gradient(trainer: Trainer, ro) -> torch.Tensor:
    """Every parameter's gradient at the first optimiser step of ``trainer.update(ro)``."""
    grads = []
    step = trainer.optimizer.step

    def recording_step(*a, **k):
        grads.append(torch.cat([p.grad.flatten() for p in trainer.params.values()]).double())
        return step(*a, **k)

    trainer.optimizer.step = recording_step
    trainer.update(ro)
    return grads[0]


#: relative error of an update's gradient against fp32's: fp32 only reorders sums (float32's
#: unit roundoff is 6e-8); bf16 keeps 8 significant bits (unit roundoff 2^-9 = 2e-3), and the
#: error compounds over the forward and backward layers and can flip PPO's clipping indicator
#: on a few steps (measured up to 5e-2 at this size)
GRAD_RTOL = {"fp32": 1e-5, "bf16": 0.15, "bf16_matmul": 0.15}


@pytest.mark.parametrize("algo", ["reinforce", "ppo"])
@pytest.mark.parametrize("precision", PRECISIONS)
def test_every_precision_updates_along_the_fp32_gradient(precision, algo):
    """Each precision's update path (single-pass REINFORCE in fp32 and bf16_matmul, the two-pass
    update otherwise) takes the fp32 two-pass gradient on the same rollout, within what the
    precision rounds."""
    cfg = TrainConfig(method="routing", algo=algo, precision=precision, minibatches=1,
                      update_epochs=1, oversight_prob=0.5, **TINY)
    trainer = Trainer(cfg)
    assert trainer.single_pass == (algo == "reinforce" and precision != "bf16")
    ro = trainer.collect(graph=trainer.single_pass)
    ref = Trainer(dataclasses.replace(cfg, precision="fp32"))
    ref.single_pass = False
    g32 = _first_step_gradient(ref, dataclasses.replace(ro, graph=None))
    g = _first_step_gradient(trainer, ro)
    assert float(g32.norm()) > 0
    assert float((g - g32).norm() / g32.norm()) < GRAD_RTOL[precision]
