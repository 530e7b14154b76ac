"""BatchedTrainer: many runs in one process must train each run exactly as its own Trainer."""

import dataclasses
import math

import pytest
import torch

from oversight_gr.agents.batched import (
    BatchedTrainer,
    check_group,
    collect_rollout,
    run_batched_training,
)
from oversight_gr.agents.evaluation import evaluate
from oversight_gr.agents.methods import (
    ROUTE_BOTH,
    ROUTE_DIAMOND,
    ROUTE_GHOST,
    gate_bce,
    gate_bce_rows,
)
from oversight_gr.agents.networks import MoEPolicy, SingleExpertPolicy, ValueNet
from oversight_gr.agents.trainer import Rollout, TrainConfig, Trainer
from oversight_gr.envs import GridRules

TINY = dict(num_envs=16, rollout_steps=8, hidden=16, total_env_steps=16 * 8 * 4, eval_envs=32)
RUNS = [(0, 0.3), (1, 0.6), (2, 0.1)]  # (seed, oversight_prob) of a group's runs


def _cfgs(**kw):
    return [TrainConfig(seed=s, oversight_prob=p, **{**TINY, **kw}) for s, p in RUNS]


def _flat(*modules):
    return torch.cat([p.detach().flatten() for m in modules for p in m.parameters()])


def _cat(rollouts):
    """Rollouts of R runs ([T, B] each) -> one batched rollout [T, R * B], run-major."""
    return Rollout(**{f.name: torch.cat([getattr(ro, f.name) for ro in rollouts], dim=1)
                      for f in dataclasses.fields(Rollout)
                      if isinstance(getattr(rollouts[0], f.name), torch.Tensor)})


# (a) ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method,gate_input", [("routing", "full"), ("routing", "no_oversight"),
                                               ("naive", "full"), ("constant_gate", "full")])
def test_batched_init_and_forward_equal_each_runs_own_modules(method, gate_input):
    cfgs = _cfgs(method=method, gate_input=gate_input)
    bt = BatchedTrainer(cfgs)
    obs = bt.obs.view(bt.R, -1, *bt.obs.shape[1:])  # [R, B, 4, n, n], each run's own envs
    for r, cfg in enumerate(cfgs):
        policy, value = bt.unstack(r)
        kind = MoEPolicy if cfg.method_spec.policy == "moe" else SingleExpertPolicy
        assert type(policy) is kind and type(value) is ValueNet
        trainer = Trainer(cfg)  # same seed: same initial parameters as a run trained alone
        assert torch.equal(_flat(policy, value), _flat(trainer.policy, trainer.value))
        for steer in ("none", "diamond", "ghost"):
            mine = bt.policy(obs, steer=steer)
            ref = policy(obs[r], steer=steer)
            torch.testing.assert_close(mine.logits[r], ref.logits, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(mine.gate[r], ref.gate, rtol=1e-5, atol=1e-6,
                                       equal_nan=True)
        torch.testing.assert_close(bt.value(obs)[r], value(obs[r]), rtol=1e-5, atol=1e-6)
    # runs really hold different parameters, and load_run writes one run only
    p0, v0 = bt.unstack(0)
    p1, v1 = bt.unstack(1)
    assert not torch.equal(_flat(p0), _flat(p1))
    bt.load_run(1, p0, v0)
    assert torch.equal(_flat(*bt.unstack(1)), _flat(p0, v0))
    assert torch.equal(_flat(*bt.unstack(2)), _flat(*bt.unstack(2)))
    with pytest.raises(IndexError):
        bt.unstack(3)



def test_bf16_precision_runs_the_batched_networks_like_a_single_runs():
    cfgs = _cfgs(precision="bf16", minibatches=1, update_epochs=1)
    bt = BatchedTrainer(cfgs)
    trainer = Trainer(cfgs[1])
    obs = bt.obs.view(bt.R, -1, *bt.obs.shape[1:])
    with bt.autocast():
        mine = bt.policy(obs).logits
    with trainer.autocast():
        ref = trainer.policy(obs[1]).logits
    assert mine.dtype == torch.bfloat16  # the matrix multiplies really ran in bf16
    torch.testing.assert_close(mine[1].float(), ref.float(), rtol=0.05, atol=0.02)
    before = _flat(*bt.unstack(1))
    bt.train_update()
    after = _flat(*bt.unstack(1))
    assert torch.isfinite(after).all() and not torch.equal(before, after)
    assert all(p.dtype == torch.float32 for p in bt.params.values())

# (b) ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("optim", ["adam", "sgd"])
@pytest.mark.parametrize("method,algo,extra", [
    ("routing", "ppo", dict(minibatches=4, update_epochs=2, max_grad_norm=0.05)),
    ("routing", "reinforce", dict(unlabelled_sharpness=2.0, precision="fp32")),
    ("naive", "ppo", dict(minibatches=2, max_grad_norm=0.05, anneal_lr=True)),
    ("naive", "reinforce", dict(bootstrap=False)),
    ("filtering", "ppo", dict(minibatches=2)),
])
def test_batched_update_equals_each_runs_trainer_update_on_the_same_data(
        monkeypatch, method, algo, extra, optim):
    """Same rollouts in, same parameters out, run by run (two updates, so Adam's state is
    checked too). SGD makes the comparison sensitive to the gradient's scale, which Adam's
    normalisation would hide (a loss averaged instead of summed over runs, a clipping norm
    shared between runs)."""
    cfgs = _cfgs(method=method, algo=algo, **extra)
    trainers = [Trainer(c) for c in cfgs]
    bt = BatchedTrainer(cfgs)
    if optim == "sgd":
        for t in trainers:
            t.optimizer = torch.optim.SGD([*t.policy.parameters(), *t.value.parameters()],
                                          lr=0.1)
        bt.optimizer = torch.optim.SGD(list(bt.params.values()), lr=0.1)
    # the same minibatches on both sides: each run's samples in their stored order
    monkeypatch.setattr(torch, "randperm",
                        lambda n, generator=None, device=None: torch.arange(n, device=device))
    monkeypatch.setattr(bt, "_permutations", lambda n: torch.arange(n).expand(bt.R, n))
    moved = 0.0
    for _ in range(2):
        rollouts = [t.collect() for t in trainers]
        before = _flat(trainers[0].policy, trainers[0].value)
        for t, ro in zip(trainers, rollouts):
            t.update(ro)
        moved += float((_flat(trainers[0].policy, trainers[0].value) - before).abs().max())
        bt.update(_cat(rollouts))
    assert moved > 1e-4  # the updates did something
    for r, t in enumerate(trainers):
        policy, value = bt.unstack(r)
        torch.testing.assert_close(_flat(policy, value), _flat(t.policy, t.value),
                                   rtol=1e-5, atol=1e-5)



@pytest.mark.parametrize("bootstrap", [True, False])
def test_collect_rollout_with_a_trainers_networks_envs_and_generator_is_its_rollout(bootstrap):
    cfg = TrainConfig(method="routing", oversight_prob=0.5, bootstrap=bootstrap, seed=4,
                      **{**TINY, "rollout_steps": 40})  # longer than an episode: truncations
    trainer = Trainer(cfg)
    rules = GridRules(cfg.num_envs, oversight_prob=cfg.oversight_prob, reward_mode="terminal",
                      seed=cfg.seed + 1)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    with torch.no_grad():
        mine, _ = collect_rollout(
            rules, rules.reset(), lambda o: (trainer.policy(o).logits, trainer.value(o)),
            trainer.value, gen, cfg.rollout_steps, bootstrap=bootstrap, method=cfg.method_spec)
    ref = trainer.collect()
    assert bool(ref.done.any()) and not bool(ref.done.all())
    for f in dataclasses.fields(Rollout):
        a, b = getattr(mine, f.name), getattr(ref, f.name)
        if isinstance(b, torch.Tensor):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6, msg=f.name)


@pytest.mark.parametrize("method,extra", [
    ("routing", dict(bootstrap=False, gate_input="full")),  # the paper preset's setting
    ("routing", dict(unlabelled_sharpness=2.0, max_grad_norm=0.05)),
    ("naive", dict(bootstrap=False)),
])
def test_single_pass_reinforce_equals_the_two_pass_update(method, extra):
    """Learning from the rollout's own graph gives the gradient of a fresh forward pass."""
    cfgs = _cfgs(method=method, algo="reinforce", **extra)
    one, two = BatchedTrainer(cfgs), BatchedTrainer(cfgs)
    assert one.single_pass
    for bt in (one, two):  # SGD: sensitive to the gradient's scale (see above)
        bt.optimizer = torch.optim.SGD(list(bt.params.values()), lr=0.1)
    ro, graph = one.collect_with_graph()
    assert len(graph) == cfgs[0].rollout_steps
    one.update(ro, graph)
    two.update(ro)
    for r in range(one.R):
        torch.testing.assert_close(_flat(*one.unstack(r)), _flat(*two.unstack(r)),
                                   rtol=1e-5, atol=1e-6)
    assert not torch.equal(_flat(*one.unstack(0)), _flat(*BatchedTrainer(cfgs).unstack(0)))
    with pytest.raises(ValueError, match="single-pass"):
        BatchedTrainer(_cfgs(method=method, algo="ppo")).update(*one.collect_with_graph())

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


# (c) ------------------------------------------------------------------------------------------
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


# (d) ------------------------------------------------------------------------------------------
def test_mismatched_group_configs_raise_naming_the_field():
    base = _cfgs()
    check_group(base)  # seeds and oversight levels may differ
    for field, value in [("method", "naive"), ("algo", "reinforce"), ("hidden", 32),
                         ("lr", 1e-3), ("precision", "bf16")]:
        bad = [*base[:2], dataclasses.replace(base[2], **{field: value})]
        with pytest.raises(ValueError, match=rf"run 2 has {field}="):
            BatchedTrainer(bad)
    with pytest.raises(ValueError, match="at least one"):
        BatchedTrainer([])


# (e) ------------------------------------------------------------------------------------------
def test_tiny_batched_routing_group_learns_and_records_like_single_runs():
    updates, envs = 25, 128  # PPO with 2 minibatches x 4 epochs: cheap updates, fast learning
    cfgs = [TrainConfig(method="routing", oversight_prob=p, seed=s, num_envs=envs,
                        rollout_steps=32, hidden=32, minibatches=2, lr=2e-3,
                        total_env_steps=envs * 32 * updates, eval_every=envs * 32 * 12,
                        eval_envs=128) for s, p in [(0, 0.5), (1, 0.8)]]
    records = run_batched_training(cfgs)
    rand = evaluate(lambda obs: torch.zeros(obs.shape[0], 4), 0.5, num_envs=128)
    for cfg, rec in zip(cfgs, records):
        assert rec["config"] == cfg.to_dict() and rec["env_steps"] == cfg.total_env_steps
        assert [p["env_steps"] for p in rec["curve"]] == [envs * 32 * 12, envs * 32 * 24]
        assert set(rec["metrics"]) == {"diamond", "none", "ghost"}
        steered = rec["metrics"]["diamond"]
        assert steered["stepwise_return"] > rand.stepwise_return + 0.3, steered
        assert steered["p_diamond"] > 0.65
    assert records[0]["batched"]["runs"] == 2 and records[1]["batched"]["position"] == 1
    assert records[1]["batched"]["axes"] == [[0, 0.5], [1, 0.8]]
