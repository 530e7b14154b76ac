"""One trainer for one run or a group: a run trained inside a group equals the same run trained
alone (same random numbers, same updates), and the update equals a reference routed loss written
out here."""

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F

from oversight_gr.rl.methods import (
    ROUTE_BOTH,
    ROUTE_DIAMOND,
    ROUTE_GHOST,
    advantages_and_returns,
    gate_bce,
    gate_bce_rows,
    route_labels,
    route_weights,
)
from oversight_gr.rl.networks import MoEPolicy, SingleExpertPolicy, ValueNet
from oversight_gr.rl.losses import Minibatch
from oversight_gr.rl.run import run_training
from oversight_gr.rl.trainer import TrainConfig, Trainer, check_group
from oversight_gr.envs import GridRules
from oversight_gr.rl.precision import backward_context
from oversight_gr.routing import two_expert_mixture

TINY = dict(num_envs=8, rollout_steps=8, hidden=8, total_env_steps=8 * 8 * 2, eval_envs=16)
RUNS = [(0, 0.3), (1, 0.6), (2, 0.1)]  # (seed, oversight_prob) of a group's runs


def _cfgs(**kw):
    return [TrainConfig(seed=s, oversight_prob=p, **{**TINY, **kw}) for s, p in RUNS]


def _flat(*modules):
    return torch.cat([p.detach().flatten() for m in modules for p in m.parameters()])


@pytest.mark.parametrize("algo", ["ppo", "reinforce"])
@pytest.mark.parametrize("method", ["routing", "naive", "filtering", "oracle", "routing_placebo"])
def test_a_run_inside_a_group_trains_exactly_as_alone(method, algo):
    # fp32: the group's batched and the single run's matrix multiplies compute the same sums
    # (only their fp32 accumulation order may differ), so the runs agree to fp32 rounding
    kw = dict(method=method, algo=algo, minibatches=2 if algo == "ppo" else None)
    cfgs = _cfgs(**kw)
    group, alone = Trainer(cfgs), Trainer(cfgs[1])
    for _ in range(2):
        got, want = group.train_update()[1], alone.train_update()
        # same rollouts (per-run environments and generators) ...
        assert torch.equal(group.obs.view(3, -1, *alone.obs.shape[1:])[1], alone.obs)
        # ... and the same update, to the rounding of batched matrix multiplies
        for k in ("losses/policy", "losses/value", "losses/entropy", "losses/gate"):
            assert got[k] == pytest.approx(want[k], rel=1e-4, abs=1e-6), k
        torch.testing.assert_close(_flat(*group.unstack(1)), _flat(alone.policy, alone.value),
                                   rtol=1e-5, atol=1e-6)
    # a different group around the run changes nothing for it either
    other = Trainer([cfgs[1], dataclasses.replace(cfgs[0], seed=7)])
    other.train_update(), other.train_update()
    torch.testing.assert_close(_flat(*other.unstack(0)), _flat(alone.policy, alone.value),
                               rtol=1e-5, atol=1e-6)


#: bfloat16's machine epsilon (8 significant bits)
BF16_EPS = 2.0 ** -7
#: Under bf16_matmul a kernel may round a float32 matrix product's inputs to bf16 (relative error
#: up to eps / 2 each) or not: oneDNN decides by shape, so on a CPU with bf16 units (AMX,
#: AVX-512-bf16) the group's batched products and the single run's products round at different
#: places, and on a CPU without them nothing rounds. A gradient goes through at most 4 products
#: forward and 4 backward (two layers, head, and their transposes), each of whose 2 inputs may be
#: rounded: at most 16 roundings of eps / 2, which bounds the relative difference of two such
#: gradients by 8 * eps to first order.
BF16_GRAD_RTOL = 8 * BF16_EPS


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


@pytest.mark.parametrize("algo", ["ppo", "reinforce"])
@pytest.mark.parametrize("method", ["routing", "naive", "filtering", "oracle"])
def test_a_run_inside_a_group_gets_its_own_gradient_under_bf16_matmul(method, algo):
    # Adam's first steps move each weight by ~lr whatever a gradient's size, so bf16-level
    # differences in near-zero gradients make parameters after an update differ by ~lr on any
    # CPU with bf16 units: the property is stated on the loss and the gradient of one batch
    cfgs = _cfgs(method=method, algo=algo, precision="bf16_matmul")
    group, alone = Trainer(cfgs), Trainer(cfgs[1])
    assert torch.equal(_flat(*group.unstack(1)), _flat(alone.policy, alone.value))
    batch = group.rollout_batch(group.collect())

    def loss_and_grads(trainer, b):
        trainer.optimizer.zero_grad(set_to_none=True)
        loss, stats = trainer.loss(b)
        with backward_context("bf16_matmul"):
            loss.backward()
        return stats, {n: p.grad.clone() for n, p in trainer.params.items() if p.grad is not None}

    g_stats, g_grads = loss_and_grads(group, batch)
    a_stats, a_grads = loss_and_grads(alone, Minibatch(*(x[1] for x in batch)))
    assert g_grads.keys() == a_grads.keys()
    # each loss is a mean of O(1) terms (normalised advantages, log-probabilities), so it is
    # accurate to the tolerance in absolute terms too (PPO's first policy loss is a mean of
    # terms that sum to ~0)
    for k in ("policy", "value", "entropy", "gate"):
        assert float(g_stats[k][1]) == pytest.approx(float(a_stats[k][0]), rel=BF16_GRAD_RTOL,
                                                     abs=BF16_GRAD_RTOL), k
    for name, want in a_grads.items():
        if want.norm() == 0:  # e.g. the gate of a single-expert policy
            assert g_grads[name][1].norm() == 0, name
            continue
        assert _rel(g_grads[name][1], want) <= BF16_GRAD_RTOL, name
    # the tolerance tells runs apart: the neighbouring run's gradient is far outside it
    head = "policy.head.weight" if "policy.head.weight" in a_grads else next(iter(a_grads))
    assert _rel(g_grads[head][0], a_grads[head]) > 4 * BF16_GRAD_RTOL


@pytest.mark.parametrize("method,gate_input", [("routing", "full"), ("routing", "no_oversight"),
                                               ("naive", "full"), ("constant_gate", "full")])
def test_group_networks_equal_each_runs_own_modules(method, gate_input):
    cfgs = _cfgs(method=method, gate_input=gate_input)
    group = Trainer(cfgs)
    obs = group.obs.view(group.R, -1, *group.obs.shape[1:])
    for r, cfg in enumerate(cfgs):
        policy, value = group.unstack(r)
        kind = MoEPolicy if cfg.method_spec.policy == "moe" else SingleExpertPolicy
        assert type(policy) is kind and type(value) is ValueNet
        alone = Trainer(cfg)  # the same seed gives the same initial parameters
        assert torch.equal(_flat(policy, value), _flat(alone.policy, alone.value))
        for steer in ("none", "diamond", "ghost"):
            torch.testing.assert_close(group.logits_fn(steer)(obs)[r],
                                       policy(obs[r], steer=steer).logits, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(group.values(group._x(obs))[r], value(obs[r]))
    # load_run is unstack's inverse
    p0, v0 = group.unstack(0)
    group.load_run(2, p0, v0)
    assert torch.equal(_flat(*group.unstack(2)), _flat(p0, v0))
    with pytest.raises(AttributeError, match="unstack"):
        group.policy


def _reference_update(cfg, policy, value, ro):
    """Today's routed PPO / REINFORCE update on one rollout, written out on plain modules: one
    epoch, one minibatch (no shuffling), literal mixture in hidden space, literal conv gate."""
    opt = torch.optim.Adam([*policy.parameters(), *value.parameters()],
                           lr=cfg.resolved("lr"), eps=1e-5)
    lam = cfg.gae_lambda if cfg.algo == "ppo" else 1.0
    adv, returns = advantages_and_returns(ro.rewards, ro.values, ro.next_values, ro.done,
                                          cfg.gamma, lam)
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    obs, actions, old_logp = flat(ro.obs), flat(ro.actions), flat(ro.logp)
    adv, returns, lbl = flat(adv), flat(returns), route_labels(flat(ro.labels))
    if cfg.algo == "ppo":
        adv = (adv - adv.mean()) / (adv.std() + 1e-8)
    x = obs.float()
    gx = x.clone()
    if policy.gate_input == "no_oversight":
        gx[:, 3] = 0
    gate = torch.sigmoid(policy.gate_mlp(policy.gate_conv(gx).flatten(1))).squeeze(-1)
    e_d, e_g = policy.expert_diamond(x.flatten(1)), policy.expert_ghost(x.flatten(1))
    w = route_weights(lbl, gate, cfg.unlabelled_gate_grad, cfg.resolved("unlabelled_sharpness"))
    logits = policy.head(two_expert_mixture(e_d, e_g, gate, w.diamond, w.ghost, w.gate))
    logp_all = torch.log_softmax(logits, -1)
    logp = logp_all.gather(1, actions[:, None]).squeeze(1)
    if cfg.algo == "ppo":
        ratio = (logp - old_logp).exp()
        c = cfg.clip_coef
        pg = torch.max(-adv * ratio, -adv * ratio.clamp(1 - c, 1 + c)).mean()
    else:
        pg = (-adv * logp).mean()
    v_loss = ((value(obs) - returns) ** 2).mean()
    entropy = -(logp_all.exp() * logp_all).sum(-1).mean()
    labelled = lbl != ROUTE_BOTH
    bce = F.binary_cross_entropy(gate[labelled].clamp(1e-6, 1 - 1e-6),
                                 (lbl[labelled] == ROUTE_DIAMOND).float())
    loss = (pg + cfg.vf_coef * v_loss - cfg.resolved("ent_coef") * entropy
            + cfg.resolved("gate_loss_coef") * bce)
    opt.zero_grad()
    loss.backward()
    if cfg.resolved("max_grad_norm") > 0:
        torch.nn.utils.clip_grad_norm_([*policy.parameters(), *value.parameters()],
                                       cfg.resolved("max_grad_norm"))
    opt.step()


@pytest.mark.parametrize("gate_input", ["full", "no_oversight"])
@pytest.mark.parametrize("algo", ["ppo", "reinforce"])
def test_the_update_equals_the_reference_routed_update(algo, gate_input):
    cfg = TrainConfig(algo=algo, gate_input=gate_input, oversight_prob=0.5, update_epochs=1,
                      minibatches=1, **TINY)
    trainer = Trainer(cfg)
    trainer.single_pass = False
    ro = trainer.collect()
    while not {ROUTE_DIAMOND, ROUTE_GHOST} <= set(route_labels(ro.labels).ravel().tolist()):
        ro = trainer.collect()
    policy, value = trainer.unstack(0)
    before = _flat(policy, value)
    _reference_update(cfg, policy, value, ro)
    trainer.update(ro)
    after = _flat(trainer.policy, trainer.value)
    assert not torch.equal(after, before)
    torch.testing.assert_close(after, _flat(policy, value), rtol=1e-5, atol=1e-6)


def test_group_checkpoint_resumes_exactly(tmp_path):
    cfgs = _cfgs(total_env_steps=8 * 8 * 4)
    straight = Trainer(cfgs)
    for _ in range(4):
        straight.train_update()
    first = Trainer(cfgs)
    first.train_update(), first.train_update()
    first.save(tmp_path)
    resumed = Trainer.load(tmp_path)
    assert resumed.R == 3 and resumed.env_steps == first.env_steps
    resumed.train_update(), resumed.train_update()
    assert torch.equal(_flat(*resumed.unstack(2)), _flat(*straight.unstack(2)))


def test_group_records_equal_each_run_trained_alone(tmp_path):
    cfgs = _cfgs(eval_every=8 * 8)
    records = run_training(cfgs, tmp_path / "group", tensorboard=False)
    alone = run_training(cfgs[2], None, tensorboard=False)
    rec = records[2]
    assert rec["batched"] == {"runs": 3, "axes": [list(r) for r in RUNS], "position": 2}
    assert rec["metrics"] == alone["metrics"]  # evaluation depends on the run's own seed only
    assert [p["return_diamond"] for p in rec["curve"]] == [
        p["return_diamond"] for p in alone["curve"]]
    saved = json.loads((tmp_path / "group" / "run2" / "results.json").read_text())
    assert saved["config"] == cfgs[2].to_dict() and len(saved["curve"]) == 2


def test_gate_bce_rows_is_gate_bce_per_run():
    gen = torch.Generator().manual_seed(0)
    gate = torch.rand(3, 10, generator=gen)
    lbl = torch.randint(0, 3, (3, 10), generator=gen)
    lbl[2] = ROUTE_BOTH  # a run without overseen steps: no gate loss
    rows = gate_bce_rows(gate, lbl)
    for r in range(2):
        torch.testing.assert_close(rows[r], gate_bce(gate[r], lbl[r]))
    assert gate_bce(gate[2], lbl[2]) is None and float(rows[2]) == 0.0
    assert {ROUTE_DIAMOND, ROUTE_GHOST} <= set(lbl[:2].flatten().tolist())


def test_per_env_oversight_tensor_gives_each_env_its_own_rate():
    levels = torch.tensor([0.0, 0.05, 0.4, 1.0])
    per = 1024
    B = per * len(levels)
    rules = GridRules(B, oversight_prob=levels.repeat_interleave(per), seed=3)
    rules.reset()
    over, env = [rules.over.clone()], [torch.arange(B)]
    gen = torch.Generator().manual_seed(4)
    for _ in range(24):  # episodes begun by the autoreset draw their oversight too
        r = rules.step(torch.randint(4, (B,), generator=gen))
        over.append(rules.over[:, r.done])
        env.append(torch.arange(B)[r.done])
    over, level = torch.cat(over, 1), torch.cat(env) // per
    for k, p in enumerate(levels.tolist()):
        o = over[:, level == k]
        n = o.shape[1]
        assert n > 1.5 * per
        sd = math.sqrt(n * p * (1 - p))
        for cell in range(2):  # ghost cell and diamond cell, each Bernoulli(p)
            assert abs(int(o[cell].sum()) - n * p) <= 5 * sd + 1e-9, (p, cell)
        assert abs(int((o[0] & o[1]).sum()) - n * p * p) <= 5 * math.sqrt(n * p * p) + 1e-9


def test_per_env_oversight_with_one_level_steps_exactly_like_the_scalar():
    B = 64
    scalar = GridRules(B, oversight_prob=0.3, spurious_prob=0.1, seed=7)
    tensor = GridRules(B, oversight_prob=torch.full((B,), 0.3), spurious_prob=0.1, seed=7)
    assert isinstance(scalar.oversight_prob, float) and not scalar.per_env_oversight
    assert torch.equal(scalar.reset(), tensor.reset())
    gen = torch.Generator().manual_seed(0)
    for t in range(80):
        a = torch.randint(4, (B,), generator=gen)
        rs, rt = scalar.step(a), tensor.step(a)
        assert torch.equal(rs.obs, rt.obs) and torch.equal(rs.outcome, rt.outcome), t
    # a checkpoint (with starting states drawn and not yet used) continues identically
    clone = GridRules(B, oversight_prob=torch.full((B,), 0.3), spurious_prob=0.1)
    clone.set_state(tensor.get_state())
    for _ in range(40):
        a = torch.randint(4, (B,), generator=gen)
        assert torch.equal(tensor.step(a).obs, clone.step(a).obs)


@pytest.mark.parametrize("value,words", [
    (torch.full((3,), 0.1), "shape"),
    (torch.tensor([0.1, 1.5, 0.0, 0.2]), "[0, 1]"),
    (torch.tensor([True, False, True, False]), "real numbers"),
])
def test_per_env_oversight_tensor_is_validated(value, words):
    with pytest.raises(ValueError, match="oversight_prob") as info:
        GridRules(4, oversight_prob=value)
    assert words in str(info.value)


def test_mismatched_group_configs_raise_naming_the_field():
    base = _cfgs()
    check_group(base)  # seeds and oversight levels may differ
    for field, value in [("method", "naive"), ("algo", "reinforce"), ("hidden", 32),
                         ("lr", 1e-3), ("precision", "bf16")]:
        bad = [*base[:2], dataclasses.replace(base[2], **{field: value})]
        with pytest.raises(ValueError, match=rf"run 2 has {field}="):
            Trainer(bad)
    with pytest.raises(ValueError, match="at least one"):
        Trainer([])
