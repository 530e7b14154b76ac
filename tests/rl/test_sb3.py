"""stable-baselines3 integration: the VecEnv adapter, route labels in SB3's buffer, gradient
isolation inside SB3's train step, save/load with steering, SB3 features, a small learning run."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import oversight_gr  # noqa: F401  (registers the ids)

sb3 = pytest.importorskip("stable_baselines3")

from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.evaluation import evaluate_policy  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv, VecMonitor  # noqa: E402

from oversight_gr.rl.evaluation import evaluate  # noqa: E402
from oversight_gr.rl.losses import (  # noqa: E402
    Minibatch,
    ObjectiveConfig,
    routed_objective,
)
from oversight_gr.rl.methods import (  # noqa: E402
    ROUTE_BOTH,
    ROUTE_DIAMOND,
    ROUTE_GHOST,
    route_labels,
)
from oversight_gr.rl.sb3 import (  # noqa: E402
    RoutedMoEPolicy,
    RoutedPPO,
    VecEnvAdapter,
    add_to_loss,
    make_sb3_vec_env,
    policy_fn,
)
from oversight_gr.envs import OversightGridVectorEnv  # noqa: E402


def _tiny(**kw):
    args = dict(n_envs=16, n_steps=8, batch_size=128, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"hidden": 16}, env_kwargs={"oversight_prob": 0.5})
    return RoutedPPO("MoEPolicy", "OversightGrid-v0", **(args | kw))


# -- the adapter ---------------------------------------------------------------------------------
def test_adapter_matches_native_vector_env_with_sb3_semantics():
    kw = dict(max_episode_steps=3, oversight_prob=0.5, reward_mode="terminal")
    adapter = make_sb3_vec_env("OversightGrid-v0", 8, monitor=False, **kw)
    assert isinstance(adapter, VecEnvAdapter)
    native = OversightGridVectorEnv(8, **kw)
    adapter.seed(7)
    obs = adapter.reset()
    ref_obs, _ = native.reset(seed=7)
    np.testing.assert_array_equal(obs, ref_obs)
    rng = np.random.default_rng(0)
    seen_trunc = seen_term = 0
    for _ in range(30):
        actions = rng.integers(0, 4, size=8)
        obs, rew, dones, infos = adapter.step(actions)
        ref_obs, ref_rew, term, trunc, info = native.step(actions)
        np.testing.assert_array_equal(obs, ref_obs)  # the new episode's first frame where done
        np.testing.assert_array_equal(rew, ref_rew)
        np.testing.assert_array_equal(dones, term | trunc)
        for i in range(8):
            if not dones[i]:
                assert infos[i] == {}
                continue
            np.testing.assert_array_equal(infos[i]["terminal_observation"], info["final_obs"][i])
            assert infos[i]["TimeLimit.truncated"] == bool(trunc[i] and not term[i])
            assert infos[i]["outcome"] == int(info["outcome"][i])
            assert infos[i]["length"] == int(info["length"][i])
            seen_trunc += bool(trunc[i])
            seen_term += bool(term[i])
    assert seen_trunc and seen_term
    assert adapter.get_attr("render_mode") == [None] * 8
    assert adapter.env_is_wrapped(gym.Wrapper) == [False] * 8


def test_fast_monitor_records_what_vec_monitor_records():
    fast = make_sb3_vec_env("OversightGrid-v0", 32)
    assert isinstance(fast, VecMonitor)  # evaluate_policy and the ep_* logs recognise it
    slow = VecMonitor(make_sb3_vec_env("OversightGrid-v0", 32, monitor=False))
    fast.seed(3), slow.seed(3)
    fast.reset(), slow.reset()
    rng = np.random.default_rng(1)
    episodes = 0
    for _ in range(60):
        actions = rng.integers(0, 4, size=32)
        for a, b in zip(fast.step(actions)[3], slow.step(actions)[3]):
            assert a.keys() == b.keys()
            if "episode" in a:
                assert (a["episode"]["r"], a["episode"]["l"]) == (b["episode"]["r"],
                                                                  b["episode"]["l"])
                episodes += 1
    assert episodes > 0 and fast.episode_count == slow.episode_count == episodes


def test_adapter_rejects_next_step_autoreset():
    venv = gym.vector.SyncVectorEnv([lambda: gym.make("OversightGrid-v0")] * 2)
    with pytest.raises(ValueError, match="SAME_STEP"):
        VecEnvAdapter(venv)


# -- route labels --------------------------------------------------------------------------------
class _ScriptedEnv(gym.Env):
    """Episodes of lengths cycling through ``lengths``; the end info carries a verdict."""

    observation_space = gym.spaces.Box(0, 1, (4, 3, 3), np.uint8)
    action_space = gym.spaces.Discrete(4)
    lengths = (3, 2, 4)
    verdicts = ("good", "bad", "meh", None)

    def __init__(self, offset: int):
        self.offset, self.episode, self.t = offset, 0, 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros((4, 3, 3), np.uint8), {}

    def step(self, action):
        self.t += 1
        k = self.offset + self.episode
        done = self.t == self.lengths[k % 3]
        info = {}
        if done:
            verdict = self.verdicts[k % 4]
            if verdict is not None:
                info["verdict"] = verdict
            self.episode += 1
        return np.zeros((4, 3, 3), np.uint8), 1.0, done, False, info


def _expected_routes(offset: int, steps: int) -> list[int]:
    route = {"good": ROUTE_DIAMOND, "bad": ROUTE_GHOST}
    out, k = [], offset
    while len(out) < steps:
        n = _ScriptedEnv.lengths[k % 3]
        out += [route.get(_ScriptedEnv.verdicts[k % 4], ROUTE_BOTH)] * n
        k += 1
    # the episode cut by the end of the rollout has no label yet
    total, k = 0, offset
    while total + _ScriptedEnv.lengths[k % 3] <= steps:
        total += _ScriptedEnv.lengths[k % 3]
        k += 1
    out = out[:steps]
    out[total:] = [ROUTE_BOTH] * (steps - total)
    return out


class _Grab(BaseCallback):
    def _on_step(self):
        return True

    def _on_rollout_end(self):
        self.labels = self.model.rollout_buffer.route_labels.copy()


def test_custom_info_key_and_label_map_label_every_step_of_the_episode():
    env = DummyVecEnv([lambda i=i: _ScriptedEnv(i) for i in range(3)])
    model = RoutedPPO("MoEPolicy", env, n_steps=11, batch_size=33, n_epochs=1, seed=0,
                      device="cpu", policy_kwargs={"hidden": 8}, route_info_key="verdict",
                      route_map={"good": "diamond", "bad": "ghost", "meh": "both"})
    grab = _Grab()
    model.learn(33, callback=grab)
    for i in range(3):
        assert grab.labels[:, i].tolist() == _expected_routes(i, 11)


def test_default_labels_follow_the_native_rule_on_the_native_env():
    model = _tiny(n_steps=32, batch_size=512)
    grab = _Grab()

    class Record(BaseCallback):
        outcomes, dones = [], []

        def _on_step(self):
            infos = self.locals["infos"]
            self.outcomes.append([d.get("outcome", 0) for d in infos])
            self.dones.append(self.locals["dones"].copy())
            return True

    rec = Record()
    model.learn(16 * 32, callback=[rec, grab])
    from oversight_gr.rl.methods import episode_labels

    expected = route_labels(episode_labels(torch.tensor(np.array(rec.outcomes)),
                                              torch.tensor(np.array(rec.dones))))
    np.testing.assert_array_equal(grab.labels, expected.numpy())
    assert {ROUTE_DIAMOND, ROUTE_GHOST, ROUTE_BOTH} <= set(grab.labels.ravel().tolist())


# -- gradient isolation inside SB3's train step --------------------------------------------------
class _ForceLabels(BaseCallback):
    """Overwrite the rollout's route labels (after SB3 computed them) and capture the gradients
    PPO.train hands to the optimizer."""

    def __init__(self, label: int):
        super().__init__()
        self.label, self.grads, self.obs = label, [], None

    def _on_training_start(self):
        policy, opt = self.model.policy, self.model.policy.optimizer
        step = opt.step

        def recording_step(*a, **k):
            self.grads.append({n: (None if p.grad is None else p.grad.clone())
                               for n, p in policy.named_parameters()})
            self.obs = self.model.rollout_buffer._last_batch.observations
            return step(*a, **k)

        opt.step = recording_step

    def _on_rollout_end(self):
        self.model.rollout_buffer.route_labels[:] = self.label

    def _on_step(self):
        return True


def _grads(label: int, gate_loss_coef: float):
    # one minibatch, one epoch, lr 0, no effective clipping: the captured gradient is the loss's
    model = _tiny(gate_loss_coef=gate_loss_coef, learning_rate=0.0, max_grad_norm=1e9)
    cb = _ForceLabels(label)
    model.learn(128, callback=cb)
    assert len(cb.grads) == 1
    return model, cb.grads[0], cb.obs


def _norm(grads, prefix):
    gs = [g for n, g in grads.items() if n.startswith(prefix)]
    assert gs, prefix
    return sum(0.0 if g is None else float(g.abs().sum()) for g in gs)


GATE = ("actor.gate_conv", "actor.gate_mlp")


@pytest.mark.parametrize("label,trained,blocked", [
    (ROUTE_DIAMOND, "actor.expert_diamond", ("actor.expert_ghost", *GATE)),
    (ROUTE_GHOST, "actor.expert_ghost", ("actor.expert_diamond", *GATE)),
])
def test_overseen_samples_train_only_their_expert(label, trained, blocked):
    _, g, _ = _grads(label, gate_loss_coef=0.0)
    assert _norm(g, trained) > 0
    for prefix in blocked:
        assert _norm(g, prefix) == 0.0, prefix
    assert _norm(g, "actor.head") > 0 and _norm(g, "critic") > 0


def test_unlabelled_samples_train_both_experts_and_the_gate():
    _, g, _ = _grads(ROUTE_BOTH, gate_loss_coef=0.3)
    for prefix in ("actor.expert_diamond", "actor.expert_ghost", *GATE, "actor.head", "critic"):
        assert _norm(g, prefix) > 0, prefix


@pytest.mark.parametrize("label,target", [(ROUTE_DIAMOND, 1.0), (ROUTE_GHOST, 0.0)])
def test_gate_gets_exactly_the_bce_gradient_on_overseen_samples(label, target):
    coef = 0.3
    model, g, obs = _grads(label, gate_loss_coef=coef)
    actor = model.policy.actor
    actor.zero_grad()
    gate = actor.gate_value(obs).clamp(1e-6, 1 - 1e-6)
    (coef * F.binary_cross_entropy(gate, torch.full_like(gate, target))).backward()
    for name, p in actor.named_parameters():
        if name.startswith(("gate_conv", "gate_mlp")):
            torch.testing.assert_close(g["actor." + name], p.grad, rtol=1e-5, atol=1e-7)
    other = "actor.expert_ghost" if label == ROUTE_DIAMOND else "actor.expert_diamond"
    assert _norm(g, other) == 0.0


def _sb3_step_and_trainer(routing_kw, **ppo_kw):
    """One ``RoutedPPO.train`` step (lr 0, one minibatch, every route present, ratios away from
    1 so clipping acts) from a native trainer's weights and rollout: (the gradient PPO.train
    hands to the optimizer, the trainer, its rollout as a one-run Minibatch, old values)."""
    from stable_baselines3.common.logger import Logger

    from oversight_gr.rl.trainer import TrainConfig, Trainer

    T, B = 8, 16
    trainer = Trainer(TrainConfig(num_envs=B, rollout_steps=T, hidden=16, oversight_prob=0.5,
                                  total_env_steps=T * B, **routing_kw))
    ro = trainer.collect()
    while not {ROUTE_DIAMOND, ROUTE_GHOST} <= set(route_labels(ro.labels).ravel().tolist()):
        ro = trainer.collect()
    gen = torch.Generator().manual_seed(0)
    adv, returns = torch.randn(T, B, generator=gen), torch.randn(T, B, generator=gen)
    old_logp = ro.logp + 0.3 * torch.randn(T, B, generator=gen)
    old_values = ro.values + 0.3 * torch.randn(T, B, generator=gen)

    model = _tiny(learning_rate=0.0, max_grad_norm=1e9, gate_loss_coef=0.3, ent_coef=0.01,
                  vf_coef=0.5, clip_range=0.2, **routing_kw, **ppo_kw)
    if not routing_kw:
        assert model.unlabelled_sharpness == trainer.cfg.resolved("unlabelled_sharpness") == 3.0
    model.policy.actor.load_state_dict(trainer.policy.state_dict())
    model.policy.critic.load_state_dict(trainer.value.state_dict())
    model.set_logger(Logger(folder=None, output_formats=[]))
    buf = model.rollout_buffer
    buf.reset()
    buf.observations[:] = ro.obs.numpy()
    buf.actions[:] = ro.actions.numpy()[..., None]
    buf.log_probs[:] = old_logp.numpy()
    buf.values[:] = old_values.numpy()
    buf.advantages[:] = adv.numpy()
    buf.returns[:] = returns.numpy()
    buf.route_labels[:] = route_labels(ro.labels).numpy()
    buf.pos, buf.full = T, True
    grads = []
    step = model.policy.optimizer.step

    def recording_step(*a, **k):
        grads.append({n: p.grad.clone() for n, p in model.policy.named_parameters()
                      if p.grad is not None})
        return step(*a, **k)

    model.policy.optimizer.step = recording_step
    model.train()
    assert len(grads) == 1
    flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    batch = Minibatch(flat(ro.obs), flat(ro.actions), flat(old_logp), flat(adv), flat(returns),
                      flat(route_labels(ro.labels)), torch.ones(T * B))
    return grads[0], trainer, batch, flat(old_values)


def _assert_native_grads(trainer, sb3_grads):
    native = {f"actor.{n}": p.grad for n, p in trainer.policy.named_parameters()}
    native |= {f"critic.{n}": p.grad for n, p in trainer.value.named_parameters()}
    assert set(native) == set(sb3_grads)
    for name, g in native.items():
        torch.testing.assert_close(sb3_grads[name], g, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("routing_kw", [
    {},  # both defaults: the native PPO default (sharpness 3, full gate gradient)
    {"unlabelled_sharpness": 1.0, "unlabelled_gate_grad": 0.25},  # the paper's mixture, damped
    {"unlabelled_sharpness": 2.0, "unlabelled_gate_grad": 0.0},
])
def test_sb3_train_step_gives_the_native_routed_gradient(routing_kw):
    """Same weights, same rollout: the gradient PPO.train hands to the optimizer equals the
    native Trainer.loss gradient, for the defaults and for other unlabelled-step rules."""
    grads, trainer, batch, _ = _sb3_step_and_trainer(routing_kw, normalize_advantage=False)
    loss, _ = trainer.loss(batch)
    trainer.optimizer.zero_grad()
    loss.backward()
    _assert_native_grads(trainer, grads)


def test_sb3_minibatch_normalisation_and_value_clipping_reach_the_objective():
    """PPO's per-minibatch advantage normalisation and value clipping act on the inputs of the
    routed objective: its gradient with normalised advantages and clipped values is SB3's."""
    grads, trainer, batch, old_values = _sb3_step_and_trainer(
        {}, normalize_advantage=True, clip_range_vf=0.05)
    adv = batch.advantages
    batch = batch._replace(advantages=(adv - adv.mean()) / (adv.std() + 1e-8)).unsqueeze()
    x = trainer._x(batch.obs)
    feats = trainer.features(x)
    out = trainer.mix(feats, trainer._route(batch.route, feats.gate))
    values = trainer.values(x)
    clipped = old_values + (values - old_values).clamp(-0.05, 0.05)
    assert not torch.equal(clipped, values)  # the clipping acts on some steps
    loss, _ = routed_objective(out, clipped, batch, trainer.objective_config)
    trainer.optimizer.zero_grad()
    loss.backward()
    _assert_native_grads(trainer, grads)


def test_rollout_advantage_normalisation_matches_the_native_one():
    model = _tiny(normalize_advantage=False, rollout_buffer_kwargs={"normalize_advantage": True})
    raw = []

    class Raw(BaseCallback):
        def _on_step(self):
            return True

        def _on_rollout_end(self):
            buf = self.model.rollout_buffer
            raw.append(torch.from_numpy(buf.returns - buf.values))

    model.learn(128, callback=Raw())
    adv = raw[0]  # returns - values = the raw GAE advantages
    expected = (adv - adv.mean()) / (adv.std() + 1e-8)  # Trainer.update's normalisation
    # the buffer was flattened by get(); put it back to [T, B]
    got = model.rollout_buffer.advantages.reshape(16, 8).T
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="pick one"):
        _tiny(rollout_buffer_kwargs={"normalize_advantage": True})


def test_add_to_loss_adds_the_extra_term_once():
    w = torch.randn(5, requires_grad=True)
    v = torch.randn(5, requires_grad=True)
    x = w * 2
    extra = (v ** 2).sum()
    y = add_to_loss(x, extra)
    assert torch.equal(y, x)
    (y.sum() + (y ** 2).mean()).backward()
    torch.testing.assert_close(v.grad, 2 * v.detach())
    torch.testing.assert_close(w.grad, 2 * (1 + 2 * x.detach() / 5))


def test_evaluate_actions_refuses_a_batch_without_labels():
    model = _tiny()
    obs = torch.zeros(4, 4, 5, 5)
    objective = ObjectiveConfig("ppo", 0.2, 0.0, 0.5, gate_loss=True, gate_loss_coef=0.3)
    with model.policy.routed_training(lambda o: None, objective):
        with pytest.raises(RuntimeError, match="did not yield"):
            model.policy.evaluate_actions(obs, torch.zeros(4))


# -- save / load, steering, SB3 features ---------------------------------------------------------
def test_save_load_round_trip_keeps_routing_state_and_steering(tmp_path):
    model = _tiny(route_map={1: "diamond", 2: "ghost", 4: "both"}, gate_loss_coef=0.05,
                  unlabelled_sharpness=2.0, unlabelled_gate_grad=0.5)
    model.learn(128)
    model.policy.steer = "diamond"
    model.save(tmp_path / "m.zip")
    loaded = RoutedPPO.load(tmp_path / "m.zip", env=make_sb3_vec_env(
        "OversightGrid-v0", 16, oversight_prob=0.5, reward_mode="terminal"), device="cpu")
    assert loaded.policy.steer == "diamond"
    assert loaded.route_map == {1: "diamond", 2: "ghost", 4: "both"}
    assert all(type(k) is int for k in loaded.route_map)  # not turned into JSON strings
    assert loaded.route_info_key == "outcome" and loaded.gate_loss_coef == 0.05
    assert (loaded.unlabelled_sharpness, loaded.unlabelled_gate_grad) == (2.0, 0.5)
    for k, v in model.policy.state_dict().items():
        assert torch.equal(v, loaded.policy.state_dict()[k]), k
    obs = np.stack([model.observation_space.sample() for _ in range(32)])
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0],
                                  loaded.predict(obs, deterministic=True)[0])
    with loaded.steered("ghost"):
        ghost = loaded.predict(obs, deterministic=True)[0]
        assert loaded.policy.steer == "ghost"
    assert loaded.policy.steer == "diamond"
    with model.policy.steered("ghost"):
        np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], ghost)
    loaded.learn(128, reset_num_timesteps=False)  # training resumes (buffer class, callback)
    assert loaded.policy.steer == "diamond"  # learn uses the learned gate but keeps the setting
    # the policy alone round-trips too
    model.policy.save(tmp_path / "policy.pt")
    policy = RoutedMoEPolicy.load(tmp_path / "policy.pt", device="cpu")
    assert policy.steer == "diamond"


def test_learn_rolls_out_with_the_learned_gate_while_predict_stays_steered():
    model = _tiny()
    model.policy.steer = "diamond"
    seen = []

    class Check(BaseCallback):
        def _on_step(self):
            obs = torch.as_tensor(self.locals["obs_tensor"])
            policy = self.model.policy
            steered = torch.log_softmax(policy.actor(obs, steer="diamond").logits, -1)
            seen.append((policy._rollout_steer(), torch.allclose(
                policy.get_distribution(obs).distribution.logits, steered, atol=1e-6)))
            return True

    model.learn(128, callback=Check())
    assert seen and all(s == ("none", True) for s in seen)
    assert model.policy.steer == "diamond"


def test_steer_values_and_policy_fn():
    model = _tiny()
    with pytest.raises(ValueError, match="steer must be one of"):
        model.policy.steer = "left"
    model.policy.steer = "learned"
    assert model.policy.steer == "none"
    obs = torch.from_numpy(np.stack([model.observation_space.sample() for _ in range(8)]))
    for steer in ("diamond", "ghost", "none"):
        torch.testing.assert_close(policy_fn(model, steer)(obs),
                                   model.policy.actor(obs, steer=steer).logits)
    with model.steered("diamond"):
        torch.testing.assert_close(policy_fn(model)(obs),
                                   model.policy.actor(obs, steer="diamond").logits)


def test_ortho_init_is_the_native_orthogonal_init():
    from oversight_gr.rl.networks import MoEPolicy, ValueNet, orthogonal_init

    model = _tiny(seed=3)
    actor, critic = MoEPolicy(5, 16, "no_oversight"), ValueNet(5, 16)
    torch.manual_seed(0)
    orthogonal_init(actor), orthogonal_init(critic)
    for mine, ref in ((model.policy.actor, actor), (model.policy.critic, critic)):
        for (name, p), q in zip(mine.named_parameters(), ref.parameters()):
            if name.endswith("bias"):
                assert torch.count_nonzero(p) == 0, name
            else:  # same gains: orthogonal matrices of the same shape have the same norm
                torch.testing.assert_close(p.norm(), q.norm(), msg=name)
    plain = _tiny(policy_kwargs={"hidden": 16, "ortho_init": False})
    assert torch.count_nonzero(plain.policy.actor.head.bias) > 0  # PyTorch's default init


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="route_map values"):
        _tiny(route_map={1: "left"})
    for bad in (0.5, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="unlabelled_sharpness"):
            _tiny(unlabelled_sharpness=bad)
    with pytest.raises(ValueError, match="unlabelled_gate_grad"):
        _tiny(unlabelled_gate_grad=-1.0)
    with pytest.raises(ValueError, match="RoutedMoEPolicy"):
        RoutedPPO("MlpPolicy", make_sb3_vec_env(n_envs=2), device="cpu")


@pytest.mark.filterwarnings("ignore::tqdm.TqdmExperimentalWarning")
def test_sb3_features_work(tmp_path):
    """Single Gymnasium envs in DummyVecEnv, callbacks (object and function), tensorboard,
    progress bar, evaluate_policy with steering."""
    env = DummyVecEnv([lambda: gym.make("OversightGrid-v0", reward_mode="terminal",
                                        oversight_prob=0.5)] * 2)
    calls = []
    model = RoutedPPO("MoEPolicy", env, n_steps=32, batch_size=64, n_epochs=1, seed=1,
                      device="cpu", policy_kwargs={"hidden": 16},
                      tensorboard_log=str(tmp_path / "tb"))
    model.learn(128, callback=[lambda _l, _g: calls.append(1) or True], progress_bar=True)
    assert len(calls) >= 64
    assert list((tmp_path / "tb").rglob("events.out.tfevents*"))
    eval_env = make_sb3_vec_env("OversightGrid-v0", 4, reward_mode="true")
    steers = []
    forward = model.policy.actor.forward

    def recording_forward(obs, route=None, steer="none"):
        steers.append(steer)
        return forward(obs, route=route, steer=steer)

    model.policy.actor.forward = recording_forward
    with model.steered("diamond"):
        returns, lengths = evaluate_policy(model, eval_env, n_eval_episodes=8,
                                           return_episode_rewards=True)
    # evaluate_policy acted through the steered gate, on the true reward, whole episodes
    assert steers and set(steers) == {"diamond"}
    assert len(returns) == len(lengths) == 8
    assert set(returns) <= {-1.0, 0.0, 1.0} and all(1 <= n <= 32 for n in lengths)


# -- learning ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_small_budget_learning_steers_to_the_diamond():
    """Full oversight, 31k env steps: steered to the diamond expert the policy mostly reaches
    the diamond (random: return about -0.01), steered to the ghost expert mostly the ghost."""
    model = RoutedPPO("MoEPolicy", "OversightGrid-v0", n_envs=64, n_steps=16, batch_size=512,
                      n_epochs=4, learning_rate=3e-3, gamma=0.97, ent_coef=0.01, seed=0,
                      device="cpu", policy_kwargs={"hidden": 32},
                      env_kwargs={"oversight_prob": 1.0})
    model.learn(64 * 16 * 30)
    diamond = evaluate(model.policy.actor, 1.0, "diamond", num_envs=256)
    ghost = evaluate(model.policy.actor, 1.0, "ghost", num_envs=256)
    assert diamond.stepwise_return > 0.3, diamond
    assert diamond.p_diamond > 0.65 and ghost.p_ghost > 0.5, (diamond, ghost)
