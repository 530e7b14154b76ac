"""Routed MoE actor-critic: routed loss, labels, rewards, honesty, checkpoints, learning, CLI."""

import dataclasses
import json
import subprocess
import sys

import pytest
import torch

from oversight_gr.rl.evaluation import evaluate
from oversight_gr.rl.losses import Minibatch, routed_objective
from oversight_gr.rl.methods import (
    METHODS,
    ROUTE_BOTH,
    ROUTE_DIAMOND,
    ROUTE_GHOST,
    episode_labels,
    method_reward,
    route_labels,
    train_mask,
)
from oversight_gr.rl.reference import diamond_seeker, optimal_policy
from oversight_gr.rl.trainer import TrainConfig, Trainer
from oversight_gr.envs.core import Outcome

D, G, U, TO, N = (int(Outcome.DIAMOND), int(Outcome.GHOST), int(Outcome.UNKNOWN),
                  int(Outcome.TIMEOUT), int(Outcome.NONE))

TINY = dict(num_envs=16, rollout_steps=8, hidden=16, total_env_steps=16 * 8 * 4, eval_envs=32)


def _grad_norms(trainer, labels_value, gate_loss_coef=0.0):
    cfg = dataclasses.replace(trainer.cfg, gate_loss_coef=gate_loss_coef)
    trainer.cfg = cfg
    ro = trainer.collect()
    n = 64
    obs = ro.obs.reshape(-1, *ro.obs.shape[2:])[:n]
    actions = ro.actions.reshape(-1)[:n]
    labels = torch.full((n,), labels_value)
    trainer.policy.zero_grad()
    loss, _ = trainer.loss(Minibatch(obs, actions, ro.logp.reshape(-1)[:n], torch.randn(n),
                                     torch.randn(n), route_labels(labels), torch.ones(n)))
    loss.backward()
    pol = trainer.policy

    def norm(mod):
        return sum(float(p.grad.abs().sum()) for p in mod.parameters() if p.grad is not None)

    return {
        "diamond": norm(pol.expert_diamond),
        "ghost": norm(pol.expert_ghost),
        "gate": norm(pol.gate_mlp) + norm(pol.gate_conv),
        "head": norm(pol.head),
    }


@pytest.mark.parametrize("algo", ["ppo", "reinforce"])
def test_routed_loss_isolates_experts_and_gate(algo):
    trainer = Trainer(TrainConfig(algo=algo, **TINY))
    g = _grad_norms(trainer, D)
    assert g["ghost"] == 0.0 and g["gate"] == 0.0 and g["diamond"] > 0 and g["head"] > 0
    g = _grad_norms(trainer, G)
    assert g["diamond"] == 0.0 and g["gate"] == 0.0 and g["ghost"] > 0
    for unlabelled in (U, TO, N):
        g = _grad_norms(trainer, unlabelled)
        assert g["diamond"] > 0 and g["ghost"] > 0 and g["gate"] > 0
    # the gate's own BCE loss is the one path into the gate on overseen episodes
    g = _grad_norms(trainer, D, gate_loss_coef=0.3)
    assert g["gate"] > 0 and g["ghost"] == 0.0


def test_moe_no_routing_trains_everything_and_constant_gate_differs_from_it():
    no_route = Trainer(TrainConfig(method="moe_no_routing", **TINY))
    g = _grad_norms(no_route, D)
    assert g["ghost"] > 0 and g["gate"] > 0
    const = Trainer(TrainConfig(method="constant_gate", **TINY))
    assert torch.all(const.policy.gate_value(const.obs) == 0.5)
    g = _grad_norms(const, D)
    assert g["ghost"] == 0.0
    no_route.train_update()
    const.train_update()
    diff = sum(float((a - b).detach().abs().sum()) for a, b in zip(
        no_route.policy.expert_ghost.parameters(), const.policy.expert_ghost.parameters()))
    assert diff > 0


def test_episode_labels_cross_episode_and_window_boundaries():
    # one env, 7 steps: episode A ends at t=2 (diamond), B at t=4 (unknown), C runs past the end
    done = torch.tensor([0, 0, 1, 0, 1, 0, 0], dtype=torch.bool).unsqueeze(1)
    outcome = torch.tensor([N, N, D, N, U, N, N]).unsqueeze(1)
    labels = episode_labels(outcome, done)
    assert labels.squeeze(1).tolist() == [D, D, D, U, U, N, N]
    assert route_labels(labels).squeeze(1).tolist() == [ROUTE_DIAMOND] * 3 + [ROUTE_BOTH] * 4
    assert route_labels(torch.tensor([G, TO])).tolist() == [ROUTE_GHOST, ROUTE_BOTH]


def test_trainer_labels_match_each_episodes_observed_outcome():
    trainer = Trainer(TrainConfig(oversight_prob=0.5, num_envs=8, rollout_steps=40, hidden=8,
                                  total_env_steps=640))
    ro = trainer.collect()
    for b in range(8):
        pending = []
        for t in range(40):
            pending.append(t)
            if ro.done[t, b]:
                assert all(int(ro.labels[s, b]) == int(ro.outcome[t, b]) for s in pending)
                pending = []
        assert all(int(ro.labels[s, b]) == N for s in pending)  # unfinished at the window's end


def test_reward_per_method():
    outcome = torch.tensor([D, G, U, TO, N, U])
    truth = torch.tensor([D, G, G, TO, N, D])
    r = {m: method_reward(METHODS[m], outcome, truth).tolist() for m in METHODS}
    assert r["routing"] == [1, 1, 1, 0, 0, 1]
    assert r["naive"] == [1, -1, 1, 0, 0, 1]
    assert r["filtering"] == [1, -1, 0, 0, 0, 0]
    assert r["oracle"] == [1, -1, -1, 0, 0, 1]
    assert train_mask(METHODS["filtering"], outcome).tolist() == [1, 1, 0, 1, 1, 0]
    assert train_mask(METHODS["naive"], outcome).tolist() == [1] * 6


def _params(trainer):
    return torch.cat([p.detach().flatten() for p in trainer.policy.parameters()]
                     + [p.detach().flatten() for p in trainer.value.parameters()])


def _scramble(gen):
    def step_filter(r):
        r.true_outcome = torch.randint(0, 5, r.true_outcome.shape, generator=gen)
        return r
    return step_filter


@pytest.mark.parametrize("method", ["routing", "naive", "filtering", "oracle",
                                    "naive_early_stop", "routing_placebo"])
def test_honesty_guard_ground_truth_cannot_change_what_is_learned(method):
    cfg = TrainConfig(method=method, oversight_prob=0.3, **TINY)
    plain = Trainer(cfg)
    scrambled = Trainer(cfg)
    scrambled.step_filter = _scramble(torch.Generator().manual_seed(7))
    for _ in range(3):
        plain.train_update()
        scrambled.train_update()
    same = torch.equal(_params(plain), _params(scrambled))
    # the oracle reads the truth by definition: the guard must be able to fail
    assert same == (method != "oracle")


def test_resume_from_checkpoint_continues_identically(tmp_path):
    cfg = TrainConfig(method="routing", **TINY)
    straight = Trainer(cfg)
    for _ in range(4):
        straight.train_update()
    first = Trainer(cfg)
    for _ in range(2):
        first.train_update()
    first.save(tmp_path)
    resumed = Trainer.load(tmp_path)
    for _ in range(2):
        resumed.train_update()
    assert torch.equal(_params(straight), _params(resumed))
    assert resumed.env_steps == straight.env_steps
    assert json.loads((tmp_path / "config.json").read_text())["method"] == "routing"


class _Killed(Exception):
    pass


@pytest.mark.slow
def test_resumed_run_has_no_duplicated_curve_points_and_accumulates_wall_time(tmp_path):
    """A kill between an evaluation and the next checkpoint: the resumed run drops the curve
    points past its checkpoint and evaluates them again; the wall time carries over."""
    from oversight_gr.rl.run import run_training

    cfg = TrainConfig(method="routing", eval_every=TINY["num_envs"] * TINY["rollout_steps"],
                      **{**TINY, "total_env_steps": 4 * 16 * 8})
    straight = run_training(cfg, None)

    def kill(trainer, _scalars):
        if trainer.updates == 3:  # evaluated at updates 1, 2, 3; checkpointed at 2
            raise _Killed

    with pytest.raises(_Killed):
        run_training(cfg, tmp_path, tensorboard=False, checkpoint_every=2, progress=kill)
    assert len(json.loads((tmp_path / "curve.json").read_text())) == 3
    saved_wall = float(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["wall_seconds"])
    assert saved_wall > 0
    resumed = run_training(cfg, tmp_path, tensorboard=False, checkpoint_every=2)
    steps = [p["env_steps"] for p in resumed["curve"]]
    assert steps == [p["env_steps"] for p in straight["curve"]] and len(set(steps)) == 4
    assert [p["return_diamond"] for p in resumed["curve"]] == [
        p["return_diamond"] for p in straight["curve"]]
    assert resumed["metrics"] == straight["metrics"]
    assert resumed["wall_seconds"] > saved_wall


@pytest.mark.parametrize("group", [False, True])
def test_run_training_writes_the_tensorboard_charts(tmp_path, group):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from oversight_gr.rl.run import run_training

    cfg = TrainConfig(method="routing", oversight_prob=0.5, **TINY)
    run_training([cfg, dataclasses.replace(cfg, seed=1)] if group else cfg, tmp_path)
    tb = tmp_path / ("run1" if group else "") / "tb"
    events = EventAccumulator(str(tb))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    wanted = {"losses/approx_kl", "losses/clipfrac", "losses/explained_variance",
              "charts/learning_rate", "charts/gate_diamond", "charts/gate_ghost",
              "charts/gate_unlabelled", "losses/policy_loss", "losses/gate",
              "eval/return_diamond"}  # CleanRL's names where CleanRL logs it (test_tracking.py)
    assert wanted <= tags, wanted - tags
    lr = [e.value for e in events.Scalars("charts/learning_rate")]
    assert lr == pytest.approx([3e-4] * len(lr))
    kl = [e.value for e in events.Scalars("losses/approx_kl")]
    assert all(k >= 0 for k in kl) and any(k > 0 for k in kl)  # PPO moves the policy
    unl = [e.value for e in events.Scalars("charts/gate_unlabelled")]
    assert all(0 < g < 1 for g in unl)


def test_same_seed_same_numbers_and_seed_matters():
    a, b, c = (Trainer(TrainConfig(seed=s, **TINY)) for s in (3, 3, 4))
    for t in (a, b, c):
        t.train_update()
    assert torch.equal(_params(a), _params(b))
    assert not torch.equal(_params(a), _params(c))


def test_config_rejects_bad_values_naming_the_field():
    with pytest.raises(ValueError, match="oversight_prob"):
        TrainConfig(oversight_prob=1.5)
    with pytest.raises(ValueError, match="method"):
        TrainConfig(method="magic")
    with pytest.raises(ValueError, match="num_envs"):
        TrainConfig(num_envs=0)


def test_reference_policies_calibrate_the_evaluator():
    opt = evaluate(optimal_policy(), 0.1)
    seek = evaluate(diamond_seeker(), 0.1)
    rand = evaluate(lambda obs: torch.zeros(obs.shape[0], 4), 0.1)
    assert abs(opt.stepwise_return - 0.91) < 0.02
    assert opt.p_ghost == 0.0 and opt.p_diamond > 0.99
    assert 0.7 < seek.stepwise_return < opt.stepwise_return - 0.05
    assert seek.p_ghost_closer_unseen < 0.5
    assert abs(rand.stepwise_return) < 0.05
    assert opt.n_episodes > 1000


def test_steering_fixes_the_gate_to_one_expert():
    """Steered, the policy is one expert and the shared head; unsteered, the gate's mixture of
    the two; the trainer's logits_fn steers the same way; a single expert has nothing to steer."""
    trainer = Trainer(TrainConfig(**TINY))
    pol, obs = trainer.policy, trainer.obs
    x = obs.float().flatten(1)
    with torch.no_grad():
        d, g = pol.head(pol.expert_diamond(x)), pol.head(pol.expert_ghost(x))
        gate = pol.gate_value(obs).unsqueeze(-1)
        assert torch.all((gate > 0) & (gate < 1))
        torch.testing.assert_close(pol(obs, steer="diamond").logits, d)
        torch.testing.assert_close(pol(obs, steer="ghost").logits, g)
        torch.testing.assert_close(pol(obs).logits, gate * d + (1 - gate) * g)
        batched = obs.unsqueeze(0)
        torch.testing.assert_close(trainer.logits_fn("diamond")(batched)[0], d)
        torch.testing.assert_close(trainer.logits_fn("ghost")(batched)[0], g)
        torch.testing.assert_close(trainer.logits_fn()(batched)[0], pol(obs).logits)
    with pytest.raises(ValueError, match="steer"):
        pol(obs, steer="left")
    single = Trainer(TrainConfig(method="naive", **TINY)).policy
    with torch.no_grad():
        torch.testing.assert_close(single(obs, steer="diamond").logits, single(obs).logits)
    with pytest.raises(ValueError, match="steer"):
        single(obs, steer="left")


@pytest.mark.slow
def test_short_learning_run_steered_routing_beats_random():
    cfg = TrainConfig(method="routing", oversight_prob=0.5, num_envs=128, rollout_steps=32,
                      hidden=32, total_env_steps=128 * 32 * 40, seed=0)
    trainer = Trainer(cfg)
    for _ in range(trainer.num_updates):
        trainer.train_update()
    steered = evaluate(trainer.policy, 0.5, "diamond", num_envs=256)
    rand = evaluate(lambda obs: torch.zeros(obs.shape[0], 4), 0.5, num_envs=256)
    assert steered.stepwise_return > rand.stepwise_return + 0.2
    assert steered.p_diamond > 0.6


@pytest.mark.slow
def test_cli_train_eval_steer_roundtrip(tmp_path):
    run = tmp_path / "run"
    base = [sys.executable, "-m", "oversight_gr.cli"]
    out = subprocess.run(base + ["train", "--num-envs", "16", "--rollout-steps", "8",
                                 "--hidden", "8", "--total-env-steps", "256",
                                 "--run-dir", str(run)], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rec = json.loads((run / "results.json").read_text())
    assert rec["config"]["method"] == "routing" and "torch" in rec["versions"]
    assert any(p.name.startswith("events") for p in (run / "tb").iterdir())
    out = subprocess.run(base + ["eval", "--run-dir", str(run), "--num-envs", "32"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "diamond" in out.stdout
    out = subprocess.run(base + ["steer", "--run-dir", str(run)], capture_output=True, text=True)
    assert out.returncode == 0 and (run / "policy_arrows.png").stat().st_size > 1000
    bad = subprocess.run(base + ["train", "--oversight-prob", "-1"], capture_output=True,
                         text=True)
    assert bad.returncode == 2 and "oversight_prob" in bad.stderr
    helptext = subprocess.run(base + ["train", "--help"], capture_output=True, text=True).stdout
    for field in dataclasses.fields(TrainConfig):
        assert "--" + field.name.replace("_", "-") in helptext


def test_unlabelled_sharpness_scales_expert_gradients_by_a_power_of_the_gate():
    grads = {}
    for k in (1.0, 3.0):
        trainer = Trainer(TrainConfig(unlabelled_sharpness=k, gate_loss_coef=0.0, **TINY))
        obs = trainer.obs
        n = obs.shape[0]
        labels = torch.tensor([U, D] * (n // 2)).unsqueeze(0)
        x = trainer._x(obs)
        feats = trainer.features(x)
        feats.diamond.retain_grad()
        out = trainer.mix(feats, trainer._route(route_labels(labels), feats.gate))
        batch = Minibatch(obs.unsqueeze(0), torch.zeros(1, n, dtype=torch.long),
                          torch.zeros(1, n), torch.ones(1, n), torch.zeros(1, n),
                          route_labels(labels), torch.ones(1, n))
        loss, _ = routed_objective(out, trainer.values(x), batch, trainer.objective_config)
        loss.backward()
        grads[k] = feats.diamond.grad[0]
        gate = trainer.policy.gate_value(obs).detach()
    labels = labels[0]
    unl = labels == U
    ratio = grads[3.0][unl].norm(dim=1) / grads[1.0][unl].norm(dim=1)
    torch.testing.assert_close(ratio, gate[unl] ** 2, rtol=1e-4, atol=1e-6)
    # labelled steps are untouched by the option
    torch.testing.assert_close(grads[3.0][~unl], grads[1.0][~unl])


def test_balanced_gate_loss_weighs_the_two_overseen_classes_equally():
    from oversight_gr.rl.methods import ROUTE_BOTH, ROUTE_DIAMOND, ROUTE_GHOST, gate_bce

    gate = torch.tensor([0.9, 0.8, 0.7, 0.4, 0.5])
    lbl = torch.tensor([ROUTE_DIAMOND, ROUTE_DIAMOND, ROUTE_DIAMOND, ROUTE_GHOST, ROUTE_BOTH])
    bce_d = -torch.log(gate[:3])
    bce_g = -torch.log(1 - gate[3:4])
    plain = torch.cat([bce_d, bce_g]).mean()
    assert gate_bce(gate, lbl) == pytest.approx(float(plain))
    assert gate_bce(gate, lbl, balanced=True) == pytest.approx(
        float(0.5 * bce_d.mean() + 0.5 * bce_g.mean()))
    only_d = torch.tensor([ROUTE_DIAMOND, ROUTE_DIAMOND, ROUTE_BOTH, ROUTE_BOTH, ROUTE_BOTH])
    assert gate_bce(gate, only_d, balanced=True) == pytest.approx(
        float(0.5 * -torch.log(gate[:2]).mean()))
    assert gate_bce(gate, torch.full((5,), ROUTE_BOTH), balanced=True) is None
