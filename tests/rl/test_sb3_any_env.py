"""The general routed SB3 policy (RoutedMlpPolicy): any Box/Discrete observations and
Discrete/Box actions, route labels from an info key and mapping or a function of (obs, info),
gradients through the labelled expert only, steering, the grid's policy kept for the grid, and
the example on Gymnasium's own envs."""

from __future__ import annotations

import runpy
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

pytest.importorskip("stable_baselines3")

from stable_baselines3 import PPO  # noqa: E402
from stable_baselines3.common.callbacks import BaseCallback  # noqa: E402
from stable_baselines3.common.env_util import make_vec_env  # noqa: E402
from stable_baselines3.common.vec_env import DummyVecEnv  # noqa: E402

from oversight_gr.rl.methods import ROUTES, gate_bce_rows, route_weights  # noqa: E402
from oversight_gr.rl.sb3 import (  # noqa: E402
    RoutedMlpPolicy,
    RoutedMoEPolicy,
    RoutedPPO,
    expert_route_weights,
    expert_routes,
    make_sb3_vec_env,
)

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
THREE = ("a", "b", "c")


class Chain(gym.Env):
    """Discrete observations (the position on a chain) and Box actions; the episode ends after
    ``length`` steps with ``info["verdict"]`` = its index modulo 4 (0, 1, 2: an expert's index or
    name; 3: a value the map does not name)."""

    def __init__(self, length: int = 3, action_space: spaces.Space | None = None):
        self.length = length
        self.observation_space = spaces.Discrete(length + 1)
        self.action_space = action_space or spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.episode = -1

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t, self.episode = 0, self.episode + 1
        return 0, {}

    def step(self, action):
        assert self.action_space.contains(np.asarray(action, dtype=self.action_space.dtype))
        self.t += 1
        done = self.t == self.length
        info = {"verdict": self.episode % 4} if done else {}
        return self.t, float(np.sum(action)), done, False, info


class _Grab(BaseCallback):
    def _on_step(self):
        return True

    def _on_rollout_end(self):
        buf = self.model.rollout_buffer
        self.labels = buf.route_labels.copy()
        self.obs = buf.observations.copy()


def _model(env, **kw):
    args = dict(n_steps=16, batch_size=32, n_epochs=1, seed=0, device="cpu",
                policy_kwargs={"net_arch": [8, 8]})
    return RoutedPPO("MoEPolicy", env, **(args | kw))


# -- spaces, policy choice, steering, save/load --------------------------------------------------
@pytest.mark.parametrize("env_id,action", [("CartPole-v1", "discrete"), ("Pendulum-v1", "box"),
                                           ("FrozenLake-v1", "discrete")])
def test_any_box_or_discrete_spaces_train_predict_and_steer(env_id, action, tmp_path):
    env = make_vec_env(env_id, n_envs=2, seed=0)
    def route_fn(obs, info):  # some steps to each expert, some unlabelled
        k = int(abs(float(np.sum(obs))) * 10) % 4
        return None if k == 3 else k

    model = _model(env, experts=THREE, route_fn=route_fn, route_scope="step")
    assert type(model.policy) is RoutedMlpPolicy and model.policy.experts == THREE
    model.learn(64)
    obs = np.stack([env.observation_space.sample() for _ in range(16)])
    actions, _ = model.predict(obs, deterministic=True)
    assert actions.shape == (16, *env.action_space.shape)
    gate = model.policy.gate(torch.as_tensor(obs))
    assert gate.shape == (16, 3)
    torch.testing.assert_close(gate.sum(-1), torch.ones(16))
    steered = {}
    for expert in THREE:
        with model.steered(expert):
            assert model.policy.steer == expert
            steered[expert] = model.predict(obs, deterministic=True)[0]
    assert model.policy.steer == "none"
    # steering runs one expert alone: the action head reads that expert's output
    policy = model.policy
    with torch.no_grad():
        outs, _ = policy.mlp_extractor.features(policy.extract_features(torch.as_tensor(obs)))
        for e, expert in enumerate(THREE):
            want = policy._get_action_dist_from_latent(outs[:, e]).get_actions(True).numpy()
            if action == "box":
                want = np.clip(want, env.action_space.low, env.action_space.high)
            np.testing.assert_allclose(steered[expert], want.reshape(actions.shape),
                                       rtol=1e-5, atol=1e-6)
    model.policy.steer = "c"
    model.save(tmp_path / "m.zip")
    loaded = RoutedPPO.load(tmp_path / "m.zip", env=env, device="cpu")
    assert loaded.policy.steer == "c" and loaded.experts == THREE
    assert loaded.route_scope == "step" and loaded.route_fn is not None
    np.testing.assert_array_equal(loaded.predict(obs, deterministic=True)[0], steered["c"])
    loaded.learn(32, reset_num_timesteps=False)


def test_moe_policy_is_the_grids_on_the_grid_and_routed_mlp_can_be_asked_for():
    grid = make_sb3_vec_env(n_envs=2)
    assert type(_model(grid, policy_kwargs={"hidden": 8}).policy) is RoutedMoEPolicy
    mlp = RoutedPPO("RoutedMlpPolicy", grid, n_steps=16, batch_size=32, device="cpu",
                    policy_kwargs={"net_arch": [8]})
    assert type(mlp.policy) is RoutedMlpPolicy and mlp.policy.experts == ("diamond", "ghost")
    mlp.learn(32)
    with mlp.steered("diamond"):
        mlp.predict(grid.observation_space.sample()[None])


# -- route labels --------------------------------------------------------------------------------
def test_info_key_and_map_label_whole_episodes_by_index_name_or_unlabelled():
    env = DummyVecEnv([lambda: Chain(3)] * 2)
    grab = _Grab()
    model = _model(env, n_steps=8, batch_size=16, experts=THREE, route_info_key="verdict",
                   route_map={0: "a", 1: 1, 2: "unlabelled"})
    model.learn(16, callback=grab)
    # episodes 0, 1, 2, then the rollout ends inside episode 3 (steps 9..): labels a, b,
    # unlabelled (3), and unlabelled for the running episode
    expected = [0, 0, 0, 1, 1, 1, 3, 3]
    for i in range(2):
        assert grab.labels[:, i].tolist() == expected


def test_route_fn_labels_each_step_by_the_observation_it_acted_on():
    env = make_vec_env("CartPole-v1", n_envs=3, seed=1)
    grab = _Grab()
    model = _model(env, batch_size=48, experts=("left", "right"), route_scope="step",
                   route_fn=lambda obs, info: "left" if obs[0] < 0 else "right")
    model.learn(48, callback=grab)
    assert grab.labels.tolist() == (grab.obs[..., 0] >= 0).astype(int).tolist()
    assert {0, 1} == set(grab.labels.ravel().tolist())


def test_route_fn_in_episode_scope_labels_the_episode_by_its_last_step():
    env = DummyVecEnv([lambda: Chain(2)])
    grab = _Grab()
    model = _model(env, n_steps=8, batch_size=8, experts=THREE,
                   route_fn=lambda obs, info: info["verdict"] if info.get("verdict", 3) < 3
                   else None)
    model.learn(8, callback=grab)
    assert grab.labels[:, 0].tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


# -- gradients -----------------------------------------------------------------------------------
class _ForceLabels(BaseCallback):
    """Set every route label of the rollout to ``label``; capture the gradients PPO.train hands
    to the optimizer."""

    def __init__(self, label):
        super().__init__()
        self.label, self.grads = label, []

    def _on_training_start(self):
        policy, opt = self.model.policy, self.model.policy.optimizer
        step = opt.step

        def recording_step(*a, **k):
            self.grads.append({n: None if p.grad is None else p.grad.clone()
                               for n, p in policy.named_parameters()})
            return step(*a, **k)

        opt.step = recording_step

    def _on_rollout_end(self):
        if self.label is not None:
            self.model.rollout_buffer.route_labels[:] = self.label

    def _on_step(self):
        return True


def _grads(env_id, label, **kw):
    # one minibatch, one epoch, learning rate 0, no clipping: the captured gradient is the loss's
    env = make_vec_env(env_id, n_envs=2, seed=0)
    model = _model(env, experts=THREE, route_fn=lambda obs, info: None, route_scope="step",
                   learning_rate=0.0, max_grad_norm=1e9, **kw)
    cb = _ForceLabels(label)
    model.learn(32, callback=cb)
    assert len(cb.grads) == 1
    return model, cb.grads[0]


def _norm(grads, prefix):
    gs = [g for n, g in grads.items() if n.startswith(prefix)]
    assert gs, prefix
    return sum(0.0 if g is None else float(g.abs().sum()) for g in gs)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
@pytest.mark.parametrize("label", [0, 1, 2])
def test_a_labelled_batch_trains_its_expert_only(env_id, label):
    _, g = _grads(env_id, label, gate_loss_coef=0.0)
    for e in range(3):
        norm = _norm(g, f"mlp_extractor.experts.{e}.")
        assert (norm > 0) if e == label else (norm == 0.0), (e, norm)
    assert _norm(g, "mlp_extractor.gate_net") == 0.0
    assert _norm(g, "action_net") > 0 and _norm(g, "value_net") > 0
    assert _norm(g, "mlp_extractor.critic") > 0


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_unlabelled_batch_trains_every_expert_and_the_gate(env_id):
    _, g = _grads(env_id, 3, gate_loss_coef=0.3)
    for prefix in ("mlp_extractor.experts.0", "mlp_extractor.experts.1",
                   "mlp_extractor.experts.2", "mlp_extractor.gate_net"):
        assert _norm(g, prefix) > 0, prefix


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_the_gate_gets_only_its_cross_entropy_on_labelled_steps(env_id):
    model, g = _grads(env_id, 1, gate_loss_coef=0.5)
    buf = model.rollout_buffer
    obs = buf.to_torch(buf.observations.reshape(-1, *buf.obs_shape))
    gate_net = model.policy.mlp_extractor.gate_net
    for p in gate_net.parameters():
        p.grad = None
    gate = model.policy.mlp_extractor.features(model.policy.extract_features(obs))[1]
    (0.5 * -gate[:, 1].log().mean()).backward()
    for name, p in gate_net.named_parameters():
        torch.testing.assert_close(g[f"mlp_extractor.gate_net.{name}"], p.grad, rtol=1e-4,
                                   atol=1e-6)


@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_unrouted_step_gives_ppos_own_gradient(env_id):
    """With every step unlabelled, plain mixture weights and no gate loss, the routed objective
    that reaches SB3's backward pass is PPO's own loss: the same gradient as PPO.train without
    routing, on the same rollout (value clipping included)."""
    model, routed = _grads(env_id, None, gate_loss_coef=0.0, unlabelled_sharpness=1.0,
                           clip_range_vf=0.2)
    captured = []
    opt = model.policy.optimizer
    opt.step = lambda *a, **k: captured.append(
        {n: p.grad.clone() for n, p in model.policy.named_parameters() if p.grad is not None})
    PPO.train(model)  # SB3's own train step, evaluate_actions unrouted
    assert len(captured) == 1
    for name, grad in captured[0].items():
        torch.testing.assert_close(routed[name], grad, rtol=1e-4, atol=1e-6, msg=name)


# -- the routing rule for E experts is the grid's for two ----------------------------------------
def test_expert_routes_for_two_experts_are_the_grids_routes():
    torch.testing.assert_close(expert_routes(2).rows, ROUTES.rows)
    labels = torch.tensor([0, 1, 2, 2, 0, 2])
    g = torch.tensor([0.9, 0.2, 0.7, 0.1, 0.5, 0.5])
    for sharpness, gate_grad in ((1.0, 1.0), (3.0, 0.5)):
        want = route_weights(labels, g, gate_grad, sharpness)
        expert_w, gate_w = expert_route_weights(labels, torch.stack([g, 1 - g], -1), gate_grad,
                                                sharpness)
        torch.testing.assert_close(expert_w[:, 0], want.diamond)
        torch.testing.assert_close(expert_w[:, 1], want.ghost)
        torch.testing.assert_close(gate_w, want.gate)


@pytest.mark.parametrize("balanced", [False, True])
def test_the_e_expert_gate_loss_for_two_is_the_grids_bce(balanced):
    g = torch.tensor([[0.9, 0.2, 0.7, 0.1, 0.5]])
    labels = torch.tensor([[0, 1, 2, 0, 0]])
    torch.testing.assert_close(gate_bce_rows(torch.stack([g, 1 - g], -1), labels, balanced),
                               gate_bce_rows(g, labels, balanced))


# -- bad input -----------------------------------------------------------------------------------
def test_bad_routing_arguments_are_refused():
    env = make_vec_env("CartPole-v1", n_envs=1)
    with pytest.raises(ValueError, match="need route labels"):
        RoutedPPO("MoEPolicy", env, experts=("l", "r"))
    with pytest.raises(ValueError, match="not both"):
        RoutedPPO("MoEPolicy", env, experts=("l", "r"), route_map={1: "l"},
                  route_fn=lambda o, i: None)
    with pytest.raises(ValueError, match="experts must be"):
        RoutedPPO("MoEPolicy", env, experts=("l",), route_fn=lambda o, i: None)
    with pytest.raises(ValueError, match="experts must be"):
        RoutedPPO("MoEPolicy", env, experts=("l", "none"), route_fn=lambda o, i: None)
    with pytest.raises(ValueError, match="route_scope"):
        RoutedPPO("MoEPolicy", env, experts=("l", "r"), route_fn=lambda o, i: None,
                  route_scope="window")
    with pytest.raises(ValueError, match="route_map values"):
        RoutedPPO("MoEPolicy", env, experts=("l", "r"), route_map={1: "up"})
    with pytest.raises(ValueError, match="RoutedMoEPolicy .the grid's. has the experts"):
        RoutedPPO("MoEPolicy", make_sb3_vec_env(n_envs=1), experts=("l", "r"),
                  route_fn=lambda o, i: None)
    with pytest.raises(ValueError, match="RoutedMoEPolicy needs OversightGrid spaces"):
        RoutedPPO(RoutedMoEPolicy, env)
    bad = RoutedPPO("MoEPolicy", env, experts=("l", "r"), n_steps=8, batch_size=8,
                    route_fn=lambda o, i: "up", route_scope="step", device="cpu")
    with pytest.raises(ValueError, match="route_fn returned 'up'"):
        bad.learn(8)
    with pytest.raises(ValueError, match="Box or Discrete observations"):
        dict_env = DummyVecEnv([lambda: gym.wrappers.TransformObservation(
            Chain(), lambda o: {"x": o}, spaces.Dict({"x": spaces.Discrete(4)}))])
        RoutedPPO("MoEPolicy", dict_env, experts=("l", "r"), route_fn=lambda o, i: None)


# -- the example ---------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("env_id", ["CartPole-v1", "Pendulum-v1"])
def test_example_runs_on_gymnasiums_own_envs(env_id, capsys):
    main = runpy.run_path(str(EXAMPLES / "sb3_routed_any_env.py"), run_name="example")["main"]
    argv = ["--env", env_id, "--env-steps", "2048", "--episodes", "2", "--seed", "1"]
    first = main(argv)
    assert set(first) == {"learned gate", "left expert", "right expert", "gate agreement"}
    assert 0.0 <= first["gate agreement"] <= 1.0
    out = capsys.readouterr().out
    for name in ("learned gate", "left expert", "right expert"):
        assert f"{name:>13}: {first[name]:.1f}" in out
    assert main(argv) == first  # same seed, same numbers
