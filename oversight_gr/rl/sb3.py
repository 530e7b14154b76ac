"""stable-baselines3 integration: gradient routing by changing one import.

``RoutedPPO`` is SB3's ``PPO`` with the package's routed loss; ``RoutedMoEPolicy`` (alias
``"MoEPolicy"`` on OversightGrid's spaces) is an SB3 actor-critic policy around
:class:`~oversight_gr.rl.networks.MoEPolicy` and
:class:`~oversight_gr.rl.networks.ValueNet`; :class:`RoutedMlpPolicy` (what ``"MoEPolicy"``
means on any other env) routes through a first-layer mixture of experts on any ``Box`` /
``Discrete`` observations and ``Discrete`` / ``Box`` actions, with route labels from an info key
and mapping or a function of (obs, info); :class:`VecEnvAdapter` lets SB3 drive the native
batched env (``gym.make_vec``) at full speed::

    from stable_baselines3.common.evaluation import evaluate_policy
    from oversight_gr.rl.sb3 import RoutedPPO, make_sb3_vec_env

    model = RoutedPPO("MoEPolicy", "OversightGrid-v0", n_envs=512, n_steps=32,
                      batch_size=1024, n_epochs=4, gamma=0.97, ent_coef=0.01,
                      env_kwargs={"oversight_prob": 0.1})   # trains on +1 for any terminal
    model.learn(2_000_000)
    true_env = make_sb3_vec_env(n_envs=64, oversight_prob=0.1, reward_mode="true")
    with model.steered("diamond"):                         # ghost expert ablated
        mean, std = evaluate_policy(model, true_env, n_eval_episodes=1000)

How routing enters SB3, through its extension points:

* the rollout buffer (``rollout_buffer_class=RoutedRolloutBuffer``) also stores, per step, a
  route label: by default the label of the step's episode, computed at the end of the rollout
  from the label found in ``info[route_info_key]`` at episode end
  (:func:`~oversight_gr.rl.methods.episode_labels`, the native trainer's rule: steps of an
  episode still running at the update train both experts and the gate), or each step's own
  (``route_scope="step"``);
* a callback that RoutedPPO adds in front of the user's callbacks reads ``infos`` / ``dones``
  after every env step and hands them to the buffer;
* ``PPO.train`` is not copied. ``RoutedPPO.train`` only wraps it in a context in which the
  policy's ``evaluate_actions`` looks up the minibatch it is given in the buffer (the buffer
  remembers the observation tensor of the minibatch it yielded last and the lookup checks
  identity, so a minibatch is never paired with another's labels), runs the routed forward
  (route labels as :class:`~oversight_gr.rl.networks.RouteWeights`, rows of
  :data:`~oversight_gr.rl.methods.ROUTES`) and computes the native trainer's objective,
  :func:`~oversight_gr.rl.losses.routed_objective`, with PPO's coefficients (clip range,
  entropy and value coefficients, per-minibatch advantage normalisation, value clipping) and the
  gate's BCE. The values, log-probabilities and entropy it returns are detached, and the
  objective reaches PPO's loss by :func:`add_to_loss` on the log-probabilities: PPO's own loss
  keeps its value (and its logged statistics and ``target_kl`` stop), while its backward
  pass is exactly the objective's gradient.

Gate steering (``policy.steer = "diamond" | "ghost" | "none"``, alias ``"learned"`` for
``"none"``, or ``with policy.steered(...)``) applies to ``predict`` and so to
``evaluate_policy`` and ``EvalCallback``. It is a buffer of the policy's state dict, so
``save`` / ``load`` restore it. While ``RoutedPPO.learn`` runs, the rollout and the update always
use the learned gate (the paper steers only at evaluation).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Hashable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from torch import Tensor, nn

from oversight_gr.routing import RouteTable, routed_mixture
from oversight_gr.rl.losses import Minibatch, ObjectiveConfig, routed_objective
from oversight_gr.rl.methods import (
    ROUTE_BOTH,
    episode_labels,
    gate_bce,
    route_labels,
    route_weights,
)
from oversight_gr.rl.networks import (
    GATE_INPUTS,
    STEER,
    MoEOutput,
    MoEPolicy,
    ValueNet,
    orthogonal_init,
)
from oversight_gr.rl.trainer import ALGO_DEFAULTS
from oversight_gr.envs.core import Outcome
from oversight_gr.envs.registration import ENV_IDS

__all__ = [
    "RoutedPPO",
    "RoutedMoEPolicy",
    "RoutedMlpPolicy",
    "MoEExtractor",
    "expert_routes",
    "expert_route_weights",
    "is_grid_spaces",
    "check_experts",
    "GRID_EXPERTS",
    "UNLABELLED",
    "ROUTE_SCOPES",
    "NO_LABEL",
    "RoutedRolloutBuffer",
    "RoutedRolloutBufferSamples",
    "RouteRecorder",
    "VecEnvAdapter",
    "FastVecMonitor",
    "make_sb3_vec_env",
    "add_to_loss",
    "gate_bce",
    "policy_fn",
    "ROUTE_TARGETS",
    "DEFAULT_ROUTE_MAP",
]

log = logging.getLogger(__name__)

#: the grid's experts, in route-label order (ROUTE_DIAMOND = 0, ROUTE_GHOST = 1)
GRID_EXPERTS = ("diamond", "ghost")
#: route targets meaning "no label": every expert and the gate train on the step
UNLABELLED = ("unlabelled", "both")
#: where an episode's label sends its steps' gradient, for the grid's experts
ROUTE_TARGETS = (*GRID_EXPERTS, "both")
#: the default label -> route mapping for ``info["outcome"]``; labels not named route to "both"
DEFAULT_ROUTE_MAP: dict[Hashable, str] = {Outcome.DIAMOND: "diamond", Outcome.GHOST: "ghost"}
#: route scopes: a label names the whole episode (read at its end) or one step
ROUTE_SCOPES = ("episode", "step")
#: a step without a label of its own (an episode still running, in episode scope)
NO_LABEL = -1
_STEER_ALIASES = {"learned": "none"}
_PPO_DEFAULTS = ALGO_DEFAULTS["ppo"]


# -- the routed loss pieces ----------------------------------------------------------------------
class _AddToLoss(torch.autograd.Function):
    """Identity on ``x``; backward also sends gradient 1 into ``extra`` (a scalar)."""

    @staticmethod
    def forward(ctx, x: Tensor, extra: Tensor) -> Tensor:  # noqa: D401
        ctx.extra_shape = extra.shape
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, grad.new_ones(ctx.extra_shape)


def add_to_loss(x: Tensor, extra: Tensor) -> Tensor:
    """Return ``x`` unchanged; any scalar loss backpropagated through it gains ``+ extra``.

    This is how RoutedPPO adds the gate BCE to the loss that ``PPO.train`` builds without
    copying ``PPO.train``: autograd runs a node's backward once per ``backward()`` however many
    times its output is used, so ``extra`` is added exactly once, with coefficient 1.

    Args:
        x: a tensor the loss depends on (here the log-probabilities, which enter PPO's
            surrogate on every minibatch).
        extra: a scalar tensor.
    """
    if not extra.requires_grad:
        return x
    return _AddToLoss.apply(x, extra)


# -- rollout buffer ------------------------------------------------------------------------------
class RoutedRolloutBufferSamples(NamedTuple):
    """SB3's ``RolloutBufferSamples`` plus the route label ``[B]`` of every sample."""

    observations: Tensor
    actions: Tensor
    old_values: Tensor
    old_log_prob: Tensor
    advantages: Tensor
    returns: Tensor
    route_labels: Tensor


class RoutedRolloutBuffer(RolloutBuffer):
    """SB3's rollout buffer that also stores each step's route label.

    Route labels are expert indices ``0 .. E-1`` and ``E`` for unlabelled (every expert and the
    gate train); for the grid's two experts these are ``ROUTE_DIAMOND``, ``ROUTE_GHOST`` and
    ``ROUTE_BOTH``. :meth:`record_routes` must be called once per step before ``add``
    (RoutedPPO's :class:`RouteRecorder` callback does it) with the episode-end mask and each
    env's label (:data:`NO_LABEL` where it has none). With ``scope="episode"`` (set by
    RoutedPPO) the label of an episode's last step goes to all its steps at the end of the
    rollout and steps of episodes still running are unlabelled; with ``scope="step"`` each step
    keeps its own label.
    """

    #: the unlabelled route label (E, the number of experts); set by RoutedPPO
    unlabelled: int = ROUTE_BOTH
    #: "episode" or "step"; set by RoutedPPO
    scope: str = "episode"

    route_labels: np.ndarray  # [n_steps, n_envs] int64 (flattened to [n_steps * n_envs, 1] by get)

    def __init__(self, *args: Any, normalize_advantage: bool = False, **kwargs: Any):
        # The native trainer normalises advantages over the whole rollout; SB3's PPO per
        # minibatch. rollout_buffer_kwargs={"normalize_advantage": True} with PPO's
        # normalize_advantage=False gives the native behaviour.
        self.normalize_advantage = normalize_advantage
        super().__init__(*args, **kwargs)

    def reset(self) -> None:
        super().reset()
        shape = (self.buffer_size, self.n_envs)
        self.step_labels = np.full(shape, NO_LABEL, dtype=np.int64)
        self.ends = np.zeros(shape, dtype=bool)
        self.route_labels = np.full(shape, self.unlabelled, dtype=np.int64)
        self._recorded = 0
        self._last_batch: RoutedRolloutBufferSamples | None = None

    def record_episode_ends(self, dones: np.ndarray, codes: np.ndarray) -> None:
        """:meth:`record_routes` from the grid's outcome codes ``[n_envs]`` of the episodes
        that ended (``Outcome.DIAMOND`` / ``GHOST``; any other code: unlabelled)."""
        labels = route_labels(torch.as_tensor(np.asarray(codes, dtype=np.int64))).numpy()
        self.record_routes(dones, np.where(dones, labels, NO_LABEL))

    def record_routes(self, dones: np.ndarray, labels: np.ndarray) -> None:
        """Record the step about to be added: ``dones [n_envs]`` bool, ``labels [n_envs]``
        route labels (:data:`NO_LABEL` where there is none)."""
        if self._recorded != self.pos or self.pos >= self.buffer_size:
            raise RuntimeError(
                f"route labels out of step with the buffer (recorded {self._recorded} steps, "
                f"buffer at {self.pos} of {self.buffer_size}); record each step exactly once "
                "before add()"
            )
        self.ends[self.pos] = dones
        self.step_labels[self.pos] = labels
        self._recorded += 1

    def compute_returns_and_advantage(self, last_values: Tensor, dones: np.ndarray) -> None:
        super().compute_returns_and_advantage(last_values, dones)
        if self.normalize_advantage:  # after the returns were taken from the raw advantages
            adv = self.advantages
            self.advantages = (adv - adv.mean()) / (adv.std(ddof=1) + 1e-8)
        if self._recorded != self.buffer_size:
            raise RuntimeError(
                f"route labels were recorded for {self._recorded} of {self.buffer_size} steps; "
                "RoutedRolloutBuffer is filled by RoutedPPO (its RouteRecorder callback)"
            )
        labels = self.step_labels
        if self.scope == "episode":
            # episode_labels spreads an episode's last code over its steps, 0 (Outcome.NONE)
            # marking episodes still running: shift the labels past it
            ends = torch.from_numpy(self.ends)
            spread = episode_labels(torch.from_numpy(np.where(self.ends, labels, NO_LABEL) + 1),
                                    ends) - 1
            labels = spread.numpy()
        self.route_labels = np.where(labels < 0, self.unlabelled, labels)

    def get(self, batch_size: int | None = None):
        if not self.generator_ready:
            self.route_labels = self.swap_and_flatten(self.route_labels)
        yield from super().get(batch_size)

    def _get_samples(self, batch_inds: np.ndarray, env=None) -> RoutedRolloutBufferSamples:
        base = super()._get_samples(batch_inds, env)
        labels = self.to_torch(self.route_labels[batch_inds].reshape(-1))
        self._last_batch = RoutedRolloutBufferSamples(*base, route_labels=labels)
        return self._last_batch

    def batch_for(self, obs: Tensor) -> RoutedRolloutBufferSamples | None:
        """The minibatch whose observation tensor is ``obs`` (by identity), else None."""
        batch = self._last_batch
        if batch is not None and obs is batch.observations:
            return batch
        return None

    def labels_for(self, obs: Tensor) -> Tensor | None:
        """Route labels of the minibatch whose observation tensor is ``obs`` (by identity)."""
        batch = self.batch_for(obs)
        return None if batch is None else batch.route_labels


class RouteRecorder(BaseCallback):
    """Hands each step's episode ends and labels to the :class:`RoutedRolloutBuffer`.

    RoutedPPO puts it first in the callback list; SB3 calls ``on_step`` after ``env.step`` and
    before the buffer's ``add``, with ``infos``, ``dones`` and ``rollout_buffer`` in ``locals``.
    """

    model: RoutedPPO

    def _on_step(self) -> bool:
        buffer = self.locals.get("rollout_buffer")
        if isinstance(buffer, RoutedRolloutBuffer):
            dones = np.asarray(self.locals["dones"], dtype=bool)
            # _last_obs: what the step's actions were chosen from (SB3 moves it on after add)
            buffer.record_routes(dones, self.model.step_routes(
                self.locals["infos"], dones, self.model._last_obs))
        return True


# -- policies ------------------------------------------------------------------------------------
class _RoutedPolicy:
    """What both routed policies share: gate steering (a ``steer_code`` buffer indexing
    :attr:`steer_names`, so save/load carry it) and the routed training step (the minibatch's
    labels looked up in the rollout buffer, :func:`~oversight_gr.rl.losses.routed_objective`
    reaching PPO's backward pass through :func:`add_to_loss`)."""

    #: the steering values: one per expert, then "none" (the learned gate)
    steer_names: tuple[str, ...]
    steer_code: Tensor

    def _init_routing(self, steer: str) -> None:
        self.steer = steer
        # set by RoutedPPO: during learn the rollout uses the learned gate; during train the
        # minibatch's route labels come from this source
        self._learning = False
        self._route_source: Callable[[Tensor], RoutedRolloutBufferSamples | None] | None = None
        self._objective: ObjectiveConfig | None = None
        self._unlabelled_sharpness = 1.0
        self._unlabelled_gate_grad = 1.0
        self._normalize_advantage = False
        self._clip_range_vf: float | None = None
        self._gate_losses: list[Tensor] = []

    @property
    def experts(self) -> tuple[str, ...]:
        """The experts' names, in route-label order."""
        return self.steer_names[:-1]

    # -- steering ------------------------------------------------------------------------------
    @property
    def steer(self) -> str:
        """Gate steering used by ``predict``: ``"none"`` (learned) or an expert's name."""
        return self.steer_names[int(self.steer_code)]

    @steer.setter
    def steer(self, value: str) -> None:
        value = _STEER_ALIASES.get(value, value)
        if value not in self.steer_names:
            raise ValueError(
                f"steer must be one of {self.steer_names} (or 'learned' for 'none'), got "
                f"{value!r}"
            )
        self.steer_code.fill_(self.steer_names.index(value))

    @contextlib.contextmanager
    def steered(self, steer: str) -> Iterator[Any]:
        """Within the block, ``predict`` uses ``steer``; the previous setting comes back after."""
        previous = self.steer
        self.steer = steer
        try:
            yield self
        finally:
            self.steer = previous

    def _rollout_steer(self) -> str:
        return "none" if self._learning else self.steer

    # -- the routed training step --------------------------------------------------------------
    def _batch(self, obs: Tensor) -> RoutedRolloutBufferSamples:
        batch = self._route_source(obs)
        if batch is None:
            raise RuntimeError(
                "evaluate_actions got a batch the rollout buffer did not yield; RoutedPPO "
                "needs the minibatch's observation tensor to look up its route labels"
            )
        return batch

    def _routed_loss(self, batch: RoutedRolloutBufferSamples, obs: Tensor, actions: Tensor,
                     out: MoEOutput, values: Tensor,
                     action_terms: tuple[Tensor, Tensor] | None = None) -> Tensor:
        """The native objective on one minibatch, with PPO's value clipping and per-minibatch
        advantage normalisation as configured; collects the gate loss."""
        pred = values
        if self._clip_range_vf is not None:  # PPO's value clipping, on the prediction
            pred = batch.old_values + torch.clamp(values - batch.old_values,
                                                  -self._clip_range_vf, self._clip_range_vf)
        adv = batch.advantages
        if self._normalize_advantage and len(adv) > 1:  # PPO's per-minibatch normalisation
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        mb = Minibatch(obs, actions, batch.old_log_prob, adv, batch.returns, batch.route_labels,
                       torch.ones_like(adv)).unsqueeze()
        objective = self._objective
        logits = None if out.logits is None else out.logits[None]
        terms = None if action_terms is None else tuple(t[None] for t in action_terms)
        loss, stats = routed_objective(MoEOutput(logits, out.gate[None]), pred[None], mb,
                                       objective, terms)
        if objective.gate_loss and bool((batch.route_labels < len(self.experts)).any()):
            self._gate_losses.append(stats["gate"][0])
        return loss

    @contextlib.contextmanager
    def routed_training(
        self,
        source: Callable[[Tensor], RoutedRolloutBufferSamples | None],
        objective: ObjectiveConfig,
        unlabelled_sharpness: float = 1.0,
        unlabelled_gate_grad: float = 1.0,
        normalize_advantage: bool = False,
        clip_range_vf: float | None = None,
    ) -> Iterator[list[Tensor]]:
        """Within the block, ``evaluate_actions`` looks its minibatch up by ``source(obs)``,
        routes it (``unlabelled_sharpness``, ``unlabelled_gate_grad`` as in
        :func:`~oversight_gr.rl.methods.route_weights`) and trains on
        :func:`~oversight_gr.rl.losses.routed_objective` under ``objective`` (advantages
        normalised per minibatch with ``normalize_advantage``; values clipped to
        ``clip_range_vf`` around the rollout's as PPO does); yields the list that collects each
        minibatch's gate loss."""
        self._route_source, self._objective, self._gate_losses = source, objective, []
        self._unlabelled_sharpness = float(unlabelled_sharpness)
        self._unlabelled_gate_grad = float(unlabelled_gate_grad)
        self._normalize_advantage = bool(normalize_advantage)
        self._clip_range_vf = clip_range_vf
        try:
            yield self._gate_losses
        finally:
            self._route_source = self._objective = None


class RoutedMoEPolicy(_RoutedPolicy, ActorCriticPolicy):
    """SB3 actor-critic around the package's MoE actor and value net for OversightGrid
    (``Box(4, n, n)`` observations, ``Discrete(4)`` actions; alias ``"MoEPolicy"``). For any
    other env use :class:`RoutedMlpPolicy`.

    ``self.actor`` is a :class:`~oversight_gr.rl.networks.MoEPolicy` (so
    ``oversight_gr.rl.evaluation.evaluate(model.policy.actor, p, "diamond")`` works as for
    the native trainer), ``self.critic`` a :class:`~oversight_gr.rl.networks.ValueNet`.
    ``ortho_init=True`` (SB3's default) initialises both with
    :func:`~oversight_gr.rl.networks.orthogonal_init` (gain sqrt 2, action head 0.01), the
    native trainer's ``init="orthogonal"``; ``ortho_init=False`` keeps PyTorch's default
    (``init="torch"``). SB3's ``net_arch`` and ``activation_fn`` do not apply and are ignored.

    Args:
        hidden: width of experts, gate and value net (the native default 64; paper 256).
        gate_input: ``"no_oversight"`` (the native default) or ``"full"`` (the paper).
        constant_gate: fix the gate to this value (the constant-gate ablation).
        steer: initial steering, ``"none"`` (learned gate), ``"diamond"`` or ``"ghost"``.
    """

    steer_names = STEER

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule,
        hidden: int = 64,
        gate_input: str = "no_oversight",
        constant_gate: float | None = None,
        steer: str = "none",
        **kwargs: Any,
    ):
        if not is_grid_spaces(observation_space, action_space):
            raise ValueError(
                f"RoutedMoEPolicy needs OversightGrid spaces, Box of shape (4, n, n) "
                f"observations and Discrete(4) actions; got {observation_space} and "
                f"{action_space} (RoutedMlpPolicy, 'RoutedMlpPolicy', takes any Box/Discrete "
                "observations and Discrete/Box actions)"
            )
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        if gate_input not in GATE_INPUTS:
            raise ValueError(f"gate_input must be one of {GATE_INPUTS}, got {gate_input!r}")
        # read by _build, which ActorCriticPolicy.__init__ calls
        self._arch = {"hidden": hidden, "gate_input": gate_input, "constant_gate": constant_gate}
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)
        self._init_routing(steer)

    def _build(self, lr_schedule) -> None:
        size = int(self.observation_space.shape[-1])
        a = self._arch
        self.actor = MoEPolicy(size, a["hidden"], a["gate_input"], constant_gate=a["constant_gate"])
        self.critic = ValueNet(size, a["hidden"])
        if self.ortho_init:
            orthogonal_init(self.actor)
            orthogonal_init(self.critic)
        # index into networks.STEER; a buffer so save/load and state_dict carry it
        self.register_buffer("steer_code", torch.tensor(STEER.index("none")))
        self.optimizer = self.optimizer_class(
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(self._arch)
        data["steer"] = self.steer
        return data

    @property
    def learned_gate(self) -> bool:
        """Whether the gate is learned (not the constant-gate ablation)."""
        return self.actor.arch.learned_gate

    def logits(self, obs: Tensor, steer: str | None = None) -> Tensor:
        """Action logits ``[B, 4]`` of ``obs [B, 4, n, n]``; ``steer=None`` uses ``self.steer``."""
        steer = self.steer if steer is None else _STEER_ALIASES.get(steer, steer)
        return self.actor(obs.to(self.device), steer=steer).logits

    # -- SB3 policy interface ------------------------------------------------------------------
    def forward(self, obs: Tensor, deterministic: bool = False):
        out = self.actor(obs, steer=self._rollout_steer())
        dist = self.action_dist.proba_distribution(action_logits=out.logits)
        actions = dist.get_actions(deterministic=deterministic)
        log_prob = dist.log_prob(actions)
        values = self.critic(obs).unsqueeze(-1)
        return actions.reshape((-1, *self.action_space.shape)), values, log_prob

    def evaluate_actions(self, obs: Tensor, actions: Tensor):
        """Values, log-probabilities and entropy; routed when RoutedPPO is training.

        Inside ``RoutedPPO.train`` the minibatch's route labels scale the gradients into the
        two experts and the gate, and PPO's loss backpropagates the native objective
        (:func:`~oversight_gr.rl.losses.routed_objective`, gate BCE included) instead of its
        own terms (see the module docstring)."""
        if self._route_source is None:
            out = self.actor(obs, steer=self._rollout_steer())
            dist = self.action_dist.proba_distribution(action_logits=out.logits)
            return self.critic(obs).unsqueeze(-1), dist.log_prob(actions), dist.entropy()
        batch = self._batch(obs)
        # the native trainer's rule: the gate (detached inside route_weights) shapes how
        # unlabelled steps reach the experts when the sharpness is not 1
        feats = self.actor.features(obs)
        out = self.actor.mix(feats, route_weights(
            batch.route_labels, feats.gate, self._unlabelled_gate_grad,
            self._unlabelled_sharpness))
        values = self.critic(obs)
        loss = self._routed_loss(batch, obs, actions, out, values)
        dist = self.action_dist.proba_distribution(action_logits=out.logits.detach())
        log_prob = add_to_loss(dist.log_prob(actions), loss)
        return values.detach().unsqueeze(-1), log_prob, dist.entropy()

    def get_distribution(self, obs: Tensor):
        return self.action_dist.proba_distribution(action_logits=self.logits(obs))

    def predict_values(self, obs: Tensor) -> Tensor:
        return self.critic(obs).unsqueeze(-1)


def is_grid_spaces(observation_space: spaces.Space, action_space: spaces.Space) -> bool:
    """Whether the spaces are OversightGrid's (``Box(4, n, n)``, ``Discrete(4)``)."""
    return (isinstance(observation_space, spaces.Box) and len(observation_space.shape) == 3
            and observation_space.shape[0] == 4
            and observation_space.shape[1] == observation_space.shape[2]
            and isinstance(action_space, spaces.Discrete) and action_space.n == 4)


def expert_routes(n_experts: int, unlabelled_gate_grad: float = 1.0) -> RouteTable:
    """The route table of a mixture of ``n_experts``: label ``e < E`` passes gradient to expert
    e only (the gate gets none), label ``E`` (unlabelled) to every expert and, with weight
    ``unlabelled_gate_grad``, the gate; columns ``[expert 0 .. expert E-1, gate]``. For two
    experts it is :data:`~oversight_gr.rl.methods.ROUTES`."""
    rows = torch.zeros(n_experts + 1, n_experts + 1)
    rows[:n_experts, :n_experts] = torch.eye(n_experts)
    rows[n_experts] = 1.0
    rows[n_experts, n_experts] = float(unlabelled_gate_grad)
    return RouteTable(rows)


def expert_route_weights(labels: Tensor, gate: Tensor, unlabelled_gate_grad: float = 1.0,
                         sharpness: float = 1.0) -> tuple[Tensor, Tensor]:
    """Route labels ``[B]`` -> gradient weights ``([B, E] into the experts, [B] into the gate)``
    for a gate of E experts' mixing weights ``[B, E]``: :func:`expert_routes`' rows; with
    ``sharpness`` k, unlabelled steps send expert e gradient in proportion to ``gate_e^k``
    instead of the mixture's ``gate_e`` (:func:`~oversight_gr.rl.methods.route_weights`'s rule
    for E experts)."""
    E = gate.shape[-1]
    w = expert_routes(E, unlabelled_gate_grad)(labels.to(gate.device))
    expert_w, gate_w = w[:, :E], w[:, E]
    if sharpness != 1.0:
        unlabelled = (labels == E).unsqueeze(-1)
        expert_w = torch.where(unlabelled, gate.detach().float().pow(sharpness - 1), expert_w)
    return expert_w, gate_w


def _mlp(d_in: int, widths: Sequence[int], activation_fn: type[nn.Module]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(d_in, width), activation_fn()]
        d_in = width
    return nn.Sequential(*layers)


class MoEExtractor(nn.Module):
    """SB3's ``mlp_extractor`` as a first-layer mixture of E experts: each expert an MLP
    (``pi`` widths) on the features, a gate (MLP of ``gate`` widths, then E softmax weights)
    mixing their outputs, :func:`oversight_gr.routing.routed_mixture`; the critic an MLP of
    ``vf`` widths. The policy's action head (SB3's ``action_net``) reads the mixture.

    ``steer_index`` (set by :class:`RoutedMlpPolicy` before each forward) fixes the gate to one
    expert; None uses the learned gate."""

    def __init__(self, feature_dim: int, n_experts: int, pi: Sequence[int], vf: Sequence[int],
                 gate: Sequence[int], activation_fn: type[nn.Module]):
        super().__init__()
        self.n_experts = n_experts
        self.experts = nn.ModuleList(_mlp(feature_dim, pi, activation_fn)
                                     for _ in range(n_experts))
        self.gate_net = nn.Sequential(_mlp(feature_dim, gate, activation_fn),
                                      nn.Linear(gate[-1] if gate else feature_dim, n_experts))
        self.critic = _mlp(feature_dim, vf, activation_fn)
        self.latent_dim_pi = pi[-1]
        self.latent_dim_vf = vf[-1] if vf else feature_dim
        self.steer_index: int | None = None

    def features(self, x: Tensor, steer_index: int | None = None) -> tuple[Tensor, Tensor]:
        """``(expert outputs [B, E, D], gate [B, E])``; ``steer_index`` fixes the gate."""
        outs = torch.stack([expert(x) for expert in self.experts], 1)
        if steer_index is None:
            gate = torch.softmax(self.gate_net(x), -1)
        else:
            gate = F.one_hot(torch.full(x.shape[:1], steer_index, device=x.device),
                             self.n_experts).to(outs.dtype)
        return outs, gate

    def mix(self, outs: Tensor, gate: Tensor, route: tuple[Tensor, Tensor] | None = None
            ) -> Tensor:
        """The mixture ``[B, D]``; ``route``: :func:`expert_route_weights`' weights."""
        expert_w, gate_w = (None, None) if route is None else route
        return routed_mixture(outs, gate, expert_w, gate_w)

    def forward_actor(self, features: Tensor) -> Tensor:
        return self.mix(*self.features(features, self.steer_index))

    def forward_critic(self, features: Tensor) -> Tensor:
        return self.critic(features)

    def forward(self, features: Tensor) -> tuple[Tensor, Tensor]:
        return self.forward_actor(features), self.forward_critic(features)


class RoutedMlpPolicy(_RoutedPolicy, ActorCriticPolicy):
    """A routed SB3 actor-critic for any env with ``Box`` / ``Discrete`` observations and
    ``Discrete`` / ``Box`` actions (alias ``"RoutedMlpPolicy"``; ``"MoEPolicy"`` picks it for
    every env whose spaces are not OversightGrid's).

    SB3's ``ActorCriticPolicy`` with its features extractor (flattening; one-hot for Discrete
    observations), action distribution (categorical for Discrete actions, diagonal Gaussian for
    Box) and action and value heads; the ``mlp_extractor`` is a :class:`MoEExtractor`: one
    expert per route label, mixed in the hidden space by a gate. RoutedPPO routes each labelled
    step's gradient through its expert only (the gate gets none, but its gate loss), unlabelled
    steps through every expert and the gate.

    Args:
        experts: the experts' names (route-label order; at least 2). RoutedPPO passes its own.
        net_arch: SB3's: a list of widths (experts and critic) or ``dict(pi=[...], vf=[...])``
            (default ``[64, 64]`` each); every expert gets the ``pi`` widths.
        gate_arch: the gate's hidden widths (default: the ``pi`` widths).
        steer: initial steering, ``"none"`` (learned gate) or an expert's name.
        (the rest: SB3's ``ActorCriticPolicy``; ``activation_fn`` applies to experts, gate and
        critic)
    """

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule,
        experts: Sequence[str] = ("expert0", "expert1"),
        gate_arch: Sequence[int] | None = None,
        steer: str = "none",
        **kwargs: Any,
    ):
        if not isinstance(observation_space, (spaces.Box, spaces.Discrete)):
            raise ValueError(f"RoutedMlpPolicy needs Box or Discrete observations, got "
                             f"{observation_space}")
        if not isinstance(action_space, (spaces.Box, spaces.Discrete)):
            raise ValueError(f"RoutedMlpPolicy needs Discrete or Box actions, got {action_space}")
        self.steer_names = (*check_experts(experts), "none")
        if gate_arch is not None and (
                isinstance(gate_arch, (str, bytes)) or not all(
                    isinstance(w, int) and not isinstance(w, bool) and w >= 1
                    for w in gate_arch)):
            raise ValueError(f"gate_arch must be a list of positive ints, got {gate_arch!r}")
        self._gate_arch = None if gate_arch is None else list(gate_arch)
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)
        self._init_routing(steer)

    def _build_mlp_extractor(self) -> None:
        arch = self.net_arch
        pi, vf = (arch.get("pi", []), arch.get("vf", [])) if isinstance(arch, dict) else \
            (list(arch), list(arch))
        if not pi:
            raise ValueError("RoutedMlpPolicy needs net_arch with at least one 'pi' layer (the "
                             f"experts' widths), got {arch!r}")
        self.mlp_extractor = MoEExtractor(
            self.features_dim, len(self.experts), pi, vf,
            pi if self._gate_arch is None else self._gate_arch, self.activation_fn)

    def _build(self, lr_schedule) -> None:
        super()._build(lr_schedule)
        # an index into steer_names; a buffer so save/load and state_dict carry it
        self.register_buffer("steer_code", torch.tensor(len(self.experts)))

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(experts=self.experts, gate_arch=self._gate_arch, steer=self.steer)
        return data

    @property
    def learned_gate(self) -> bool:
        return True

    def _sync_steer(self) -> None:
        steer = self._rollout_steer()
        self.mlp_extractor.steer_index = None if steer == "none" else self.experts.index(steer)

    def gate(self, obs: Tensor) -> Tensor:
        """The learned gate ``[B, E]`` (mixing weights per expert) on observations ``obs``
        (as the env gives them: SB3's preprocessing applies)."""
        obs = torch.as_tensor(obs, device=self.device)
        with torch.no_grad():
            features = self.extract_features(obs)
            if not self.share_features_extractor:
                features = features[0]
            return self.mlp_extractor.features(features)[1]

    # -- SB3 policy interface ------------------------------------------------------------------
    def forward(self, obs: Tensor, deterministic: bool = False):
        self._sync_steer()
        return super().forward(obs, deterministic)

    def get_distribution(self, obs: Tensor):
        self._sync_steer()
        return super().get_distribution(obs)

    def evaluate_actions(self, obs: Tensor, actions: Tensor):
        """Values, log-probabilities and entropy; routed when RoutedPPO is training (the
        minibatch's labels scale the gradients into the experts and the gate, and PPO's loss
        backpropagates :func:`~oversight_gr.rl.losses.routed_objective` with the action
        distribution's log-probabilities and entropy, gate loss included)."""
        if self._route_source is None:
            self._sync_steer()
            return super().evaluate_actions(obs, actions)
        batch = self._batch(obs)
        features = self.extract_features(obs)
        pi_features, vf_features = (features, features) if self.share_features_extractor \
            else features
        outs, gate = self.mlp_extractor.features(pi_features)
        route = expert_route_weights(batch.route_labels, gate, self._unlabelled_gate_grad,
                                     self._unlabelled_sharpness)
        dist = self._get_action_dist_from_latent(self.mlp_extractor.mix(outs, gate, route))
        log_prob, entropy = dist.log_prob(actions), dist.entropy()
        values = self.value_net(self.mlp_extractor.forward_critic(vf_features)).flatten()
        loss = self._routed_loss(batch, obs, actions, MoEOutput(None, gate), values,
                                 (log_prob, entropy))
        return (values.detach().unsqueeze(-1), add_to_loss(log_prob.detach(), loss),
                entropy.detach())


def check_experts(experts: Any) -> tuple[str, ...]:
    """``experts`` as a tuple of at least two distinct names, none of them a steering or
    unlabelled keyword; else a ValueError naming the value."""
    if isinstance(experts, (str, bytes)) or not isinstance(experts, Sequence):
        raise ValueError(f"experts must be a sequence of names, got {experts!r}")
    names = tuple(experts)
    reserved = {"none", "learned", *UNLABELLED}
    if (len(names) < 2 or len(set(names)) != len(names)
            or not all(isinstance(n, str) and n and n not in reserved for n in names)):
        raise ValueError(f"experts must be at least 2 distinct non-empty names other than "
                         f"{sorted(reserved)}, got {experts!r}")
    return names


def policy_fn(model_or_policy: RoutedPPO | RoutedMoEPolicy, steer: str | None = None):
    """``obs uint8 [B, 4, n, n] -> logits [B, 4]``, for
    :func:`oversight_gr.rl.evaluation.evaluate` (``steer=None``: the policy's own)."""
    policy = model_or_policy.policy if isinstance(model_or_policy, PPO) else model_or_policy

    def fn(obs: Tensor) -> Tensor:
        return policy.logits(obs, steer)

    return fn


# -- algorithm -----------------------------------------------------------------------------------
class RoutedPPO(PPO):
    """SB3's PPO with gradient routing; every PPO argument and feature works as in ``PPO``.

    Args (besides PPO's, whose defaults are SB3's):
        policy: ``"MoEPolicy"`` (the grid's :class:`RoutedMoEPolicy` on OversightGrid's spaces,
            :class:`RoutedMlpPolicy` on any other), ``"RoutedMlpPolicy"``, or a subclass of
            either.
        env: as for PPO. A registered OversightGrid id (``"OversightGrid-v0"``) builds the
            native vector env (:func:`make_sb3_vec_env`) with ``n_envs`` copies and
            ``reward_mode="terminal"`` (+1 for any terminal: routing's reward) unless
            ``env_kwargs`` says otherwise; other ids go through SB3's ``make_vec_env``.
        experts: the experts' names, one per route label (default: the grid's ``("diamond",
            "ghost")``); :class:`RoutedMlpPolicy` gets one expert each.
        route_info_key: the ``info`` key holding a step's label.
        route_map: ``{info value: expert}``, an expert given by name or index, or
            ``"unlabelled"`` (alias ``"both"``); values not in it (and infos without the key)
            are unlabelled. Default :data:`DEFAULT_ROUTE_MAP` (``Outcome.DIAMOND`` -> diamond,
            ``GHOST`` -> ghost).
        route_fn: instead of the key and map, a function ``(obs, info) -> expert`` (name,
            index, or None / ``"unlabelled"``) of the observation the step's action was chosen
            from (as the policy sees it: after a ``VecNormalize``, normalised) and the step's
            info; what a supervisor sees, so it must not read what it could not.
        route_scope: ``"episode"`` (default; the grid's rule): the label is read at an
            episode's end and applies to all its steps, steps of an episode that has not ended
            when the rollout does are unlabelled; ``"step"``: every step is labelled by its own
            obs and info.
        gate_loss_coef: coefficient of the gate loss on labelled steps (BCE for the grid's
            gate, cross-entropy toward the labelled expert for E experts; 0 turns it off; the
            native PPO default 0.3).
        unlabelled_sharpness: unlabelled steps send expert e gradient in proportion to
            ``gate_e^k`` (:func:`~oversight_gr.rl.methods.route_weights`); default the native
            PPO default (``ALGO_DEFAULTS["ppo"]``, 3); 1 is the paper's plain mixture.
        unlabelled_gate_grad: weight of the policy gradient into the gate on unlabelled steps
            (the native default and the paper: 1).
        n_envs, env_kwargs: used only when ``env`` is an id string.
        threads: torch CPU threads while :meth:`learn` runs (restored afterwards); default 1.
            Its small per-step batches lose nothing on one thread and collapse on a busy
            machine with torch's default (one thread per core: they spin against each other
            and against the other jobs); ``None`` keeps the process's setting. README section
            "stable-baselines3" quotes the measurement.

    Advantages are normalised per minibatch, as in SB3. For the native trainer's normalisation
    over the whole rollout pass ``normalize_advantage=False,
    rollout_buffer_kwargs={"normalize_advantage": True}``.

    Unlabelled steps train every expert and the gate (as natively), with the native trainer's
    rule (so the same ``unlabelled_sharpness`` and ``unlabelled_gate_grad``).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **PPO.policy_aliases,
        "MoEPolicy": RoutedMoEPolicy,
        "RoutedMlpPolicy": RoutedMlpPolicy,
    }
    policy: RoutedMoEPolicy | RoutedMlpPolicy
    rollout_buffer: RoutedRolloutBuffer

    def __init__(
        self,
        policy: str | type[RoutedMoEPolicy] | type[RoutedMlpPolicy],
        env: Any,
        *args: Any,
        experts: Sequence[str] | None = None,
        route_info_key: str = "outcome",
        route_map: Mapping[Hashable, str | int] | None = None,
        route_fn: Callable[[Any, dict], str | int | None] | None = None,
        route_scope: str = "episode",
        gate_loss_coef: float = _PPO_DEFAULTS["gate_loss_coef"],
        unlabelled_sharpness: float = _PPO_DEFAULTS["unlabelled_sharpness"],
        unlabelled_gate_grad: float = 1.0,
        n_envs: int = 1,
        env_kwargs: dict[str, Any] | None = None,
        threads: int | None = 1,
        **kwargs: Any,
    ):
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ValueError(f"threads must be an int >= 1 or None, got {threads!r}")
        self.threads = threads
        self.experts = GRID_EXPERTS if experts is None else check_experts(experts)
        if route_scope not in ROUTE_SCOPES:
            raise ValueError(f"route_scope must be one of {ROUTE_SCOPES}, got {route_scope!r}")
        self.route_scope = route_scope
        if route_fn is not None and not callable(route_fn):
            raise ValueError(f"route_fn must be a function (obs, info) -> expert, got "
                             f"{route_fn!r}")
        if route_fn is not None and route_map is not None:
            raise ValueError("give route_map (with route_info_key) or route_fn, not both")
        self.route_fn = route_fn
        self.route_info_key = route_info_key
        if route_map is None and route_fn is None and self.experts != GRID_EXPERTS:
            raise ValueError(f"experts {self.experts!r} need route labels: route_map (with "
                             "route_info_key) or route_fn")
        if route_map is None:  # the grid's outcomes, unused when route_fn labels
            route_map = DEFAULT_ROUTE_MAP if self.experts == GRID_EXPERTS else {}
        route_map = dict(route_map)
        targets = self._targets()
        bad = {k: v for k, v in route_map.items() if not _is_target(v, targets)}
        if bad:
            raise ValueError(f"route_map values must be one of {tuple(t for t in targets)} "
                             f"(an expert's name or index, or 'unlabelled'), got {bad!r}")
        # SB3's save writes JSON-serialisable attributes as JSON, which would turn int labels
        # into strings; a frozenset is not JSON-serialisable, so it is pickled with its types
        self._route_pairs = frozenset(route_map.items())
        if not float(gate_loss_coef) >= 0.0:
            raise ValueError(f"gate_loss_coef must be >= 0, got {gate_loss_coef!r}")
        self.gate_loss_coef = float(gate_loss_coef)
        if not float(unlabelled_sharpness) >= 1.0 or not np.isfinite(unlabelled_sharpness):
            raise ValueError(
                f"unlabelled_sharpness must be a finite number >= 1, got {unlabelled_sharpness!r}"
            )
        if not float(unlabelled_gate_grad) >= 0.0 or not np.isfinite(unlabelled_gate_grad):
            raise ValueError(
                f"unlabelled_gate_grad must be a finite number >= 0, got {unlabelled_gate_grad!r}"
            )
        self.unlabelled_sharpness = float(unlabelled_sharpness)
        self.unlabelled_gate_grad = float(unlabelled_gate_grad)
        if isinstance(env, str):
            env = self._make_env(env, n_envs, env_kwargs, kwargs.get("seed"))
        buffer_class = kwargs.get("rollout_buffer_class") or RoutedRolloutBuffer
        if not issubclass(buffer_class, RoutedRolloutBuffer):
            raise ValueError(
                f"rollout_buffer_class must subclass RoutedRolloutBuffer, got {buffer_class!r}"
            )
        kwargs["rollout_buffer_class"] = buffer_class
        if (kwargs.get("rollout_buffer_kwargs") or {}).get("normalize_advantage") and \
                kwargs.get("normalize_advantage", True):
            raise ValueError(
                "rollout_buffer_kwargs normalize_advantage=True (over the rollout, as natively) "
                "needs PPO's normalize_advantage=False (per minibatch); pick one"
            )
        self._policy_alias = policy if isinstance(policy, str) else None
        super().__init__(policy, env, *args, **kwargs)

    def _targets(self) -> dict[Hashable, int]:
        """Route target -> route label: each expert's name and index, the unlabelled names."""
        E = len(self.experts)
        return {**{name: e for e, name in enumerate(self.experts)},
                **{e: e for e in range(E)}, **{name: E for name in UNLABELLED}}

    def _setup_model(self) -> None:
        self.experts = tuple(self.experts)  # SB3's load gives back JSON's list
        if self._policy_alias == "MoEPolicy" and not is_grid_spaces(self.observation_space,
                                                                    self.action_space):
            self.policy_class = RoutedMlpPolicy
        if not issubclass(self.policy_class, (RoutedMoEPolicy, RoutedMlpPolicy)):
            raise ValueError(
                f"RoutedPPO needs a routed policy, RoutedMoEPolicy ('MoEPolicy') or "
                f"RoutedMlpPolicy ('RoutedMlpPolicy'), got {self.policy_class!r}; use "
                "stable_baselines3.PPO for unrouted policies"
            )
        if issubclass(self.policy_class, RoutedMoEPolicy):
            if self.experts != GRID_EXPERTS:
                raise ValueError(f"RoutedMoEPolicy (the grid's) has the experts {GRID_EXPERTS}, "
                                 f"got experts={self.experts!r}; use 'RoutedMlpPolicy'")
        else:
            for what, space, kinds in (("observations", self.observation_space, "Box or Discrete"),
                                       ("actions", self.action_space, "Discrete or Box")):
                if not isinstance(space, (spaces.Box, spaces.Discrete)):
                    raise ValueError(f"RoutedMlpPolicy needs {kinds} {what}, got {space}")
            given = self.policy_kwargs.get("experts")
            if given is not None and tuple(given) != self.experts:
                raise ValueError(f"policy_kwargs experts {given!r} differ from RoutedPPO's "
                                 f"experts {self.experts!r}; give them to RoutedPPO only")
            self.policy_kwargs = {**self.policy_kwargs, "experts": self.experts}
        super()._setup_model()
        self.rollout_buffer.unlabelled = len(self.experts)
        self.rollout_buffer.scope = getattr(self, "route_scope", "episode")

    @staticmethod
    def _make_env(env_id: str, n_envs: int, env_kwargs: dict | None, seed: int | None) -> VecEnv:
        if env_id in ENV_IDS:
            return make_sb3_vec_env(env_id, n_envs, **{"reward_mode": "terminal",
                                                       **(env_kwargs or {})})
        return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)

    @property
    def route_map(self) -> dict[Hashable, str | int]:
        """``{info value: expert name or index, or "unlabelled" / "both"}`` (a copy)."""
        return dict(self._route_pairs)

    def _label(self, value: Any, targets: dict[Hashable, int], source: str) -> int:
        if value is None:
            return len(self.experts)
        if isinstance(value, np.generic):
            value = value.item()
        if not _is_target(value, targets):
            raise ValueError(f"{source} returned {value!r}; allowed: an expert of "
                             f"{self.experts} (name or index), 'unlabelled' or None")
        return targets[value]

    def step_routes(self, infos: list[dict], dones: np.ndarray, obs: Any = None) -> np.ndarray:
        """``[n_envs]`` route labels of one step (:data:`NO_LABEL` where there is none: in
        episode scope, envs whose episode goes on) from ``info[route_info_key]`` through
        ``route_map``, or ``route_fn(obs[i], infos[i])``."""
        scope = getattr(self, "route_scope", "episode")
        route_fn = getattr(self, "route_fn", None)
        labels = np.full(len(infos), NO_LABEL, dtype=np.int64)
        targets = self._targets()
        route_map = dict(self._route_pairs)
        envs = np.flatnonzero(dones) if scope == "episode" else range(len(infos))
        for i in envs:
            if route_fn is not None:
                labels[i] = self._label(route_fn(None if obs is None else obs[i], infos[i]),
                                        targets, "route_fn")
                continue
            value = infos[i].get(self.route_info_key)
            if isinstance(value, np.ndarray) and value.ndim == 0:
                value = value.item()
            try:
                target = route_map.get(value, "unlabelled")
            except TypeError:  # an unhashable info value names no expert
                target = "unlabelled"
            labels[i] = targets[target]
        return labels

    def _init_callback(self, callback, progress_bar: bool = False) -> BaseCallback:
        if callback is None:
            callbacks = []
        elif isinstance(callback, list):
            callbacks = list(callback)
        else:
            callbacks = [callback]
        callbacks = [c if isinstance(c, BaseCallback) else ConvertCallback(c) for c in callbacks]
        return super()._init_callback(CallbackList([RouteRecorder(), *callbacks]), progress_bar)

    def learn(self, *args: Any, **kwargs: Any):
        """``PPO.learn`` on ``threads`` torch threads; the rollout uses the learned gate whatever
        ``policy.steer`` says."""
        before = torch.get_num_threads()
        threads = getattr(self, "threads", 1)  # models saved before the setting existed: 1
        if threads is not None:
            torch.set_num_threads(threads)
        self.policy._learning = True
        try:
            return super().learn(*args, **kwargs)
        finally:
            self.policy._learning = False
            torch.set_num_threads(before)

    def train(self) -> None:
        """``PPO.train`` with the rollout's minibatches reaching ``evaluate_actions``, whose
        routed objective is what ``PPO.train``'s backward pass differentiates."""
        progress = self._current_progress_remaining
        objective = ObjectiveConfig(
            "ppo", float(self.clip_range(progress)), float(self.ent_coef), float(self.vf_coef),
            gate_loss=self.gate_loss_coef > 0 and self.policy.learned_gate,
            gate_loss_coef=self.gate_loss_coef)
        clip_range_vf = (None if self.clip_range_vf is None
                         else float(self.clip_range_vf(progress)))
        with self.policy.routed_training(
            self.rollout_buffer.batch_for, objective, self.unlabelled_sharpness,
            self.unlabelled_gate_grad, self.normalize_advantage, clip_range_vf,
        ) as gate_losses:
            super().train()
        if gate_losses:
            self.logger.record("train/gate_loss", float(torch.stack(gate_losses).mean()))
        routes = np.asarray(self.rollout_buffer.route_labels).reshape(-1)
        grid = isinstance(self.policy, RoutedMoEPolicy)
        for code, name in enumerate((*self.experts, "both" if grid else "unlabelled")):
            self.logger.record(f"routing/frac_{name}", float(np.mean(routes == code)))

    @contextlib.contextmanager
    def steered(self, steer: str) -> Iterator[RoutedPPO]:
        """``with model.steered("diamond"): evaluate_policy(model, env)``."""
        with self.policy.steered(steer):
            yield self


def _is_target(value: Any, targets: dict[Hashable, int]) -> bool:
    """Whether ``value`` names a route target (bools are not indices)."""
    if isinstance(value, bool):
        return False
    try:
        return value in targets
    except TypeError:  # unhashable
        return False


# -- the native vector env as an SB3 VecEnv ----------------------------------------------------
def _split_info(
    info: dict[str, Any], idx: np.ndarray, out: list[dict], extra: dict[str, list] | None = None
) -> None:
    """Copy Gymnasium's vector info (arrays with ``_key`` masks) into the per-env dicts ``out``
    at the ended envs ``idx``; ``extra`` holds more columns, one value per entry of ``idx``."""
    keys, columns = list(extra or ()), list((extra or {}).values())
    for key, value in info.items():
        if key.startswith("_") or key in ("final_obs", "final_info"):
            continue
        mask = info.get("_" + key)
        where = idx if mask is None else idx[np.asarray(mask)[idx]]
        if isinstance(value, dict):
            sub: list[dict] = [{} for _ in out]
            _split_info(value, where, sub)
            for i in where.tolist():
                out[i][key] = sub[i]
            continue
        column = np.asarray(value)[where]
        values = column.tolist() if column.ndim == 1 else list(column)
        if len(where) == len(idx):  # set on every ended env (the native env): one pass below
            keys.append(key)
            columns.append(values)
        else:
            for i, v in zip(where.tolist(), values):
                out[i][key] = v
    for i, row in zip(idx.tolist(), zip(*columns)):
        out[i].update(zip(keys, row))


class VecEnvAdapter(VecEnv):
    """A Gymnasium ``VectorEnv`` with same-step autoreset, driven as an SB3 ``VecEnv``.

    Made for :class:`~oversight_gr.envs.OversightGridVectorEnv` (``gym.make_vec``), which steps
    every copy in one batched call. Where an episode ended, the returned observation is already
    the next episode's first (same-step autoreset, as SB3 expects) and each ended env's info
    gets ``terminal_observation`` (from ``info["final_obs"]``), ``TimeLimit.truncated``
    (``truncated and not terminated``) and the vector info's keys (``outcome``, ``overseen``,
    ``length``, ...) unpacked from their masked arrays.

    The copies share one generator: ``seed(s)`` seeds it with ``s`` at the next ``reset``;
    ``get_attr`` / ``set_attr`` / ``env_method`` act on the batched env once and report the
    result for every index.
    """

    def __init__(self, venv: gym.vector.VectorEnv):
        mode = venv.metadata.get("autoreset_mode")
        if mode != AutoresetMode.SAME_STEP:
            raise ValueError(
                f"VecEnvAdapter needs a vector env with autoreset_mode SAME_STEP, got {mode!r}"
            )
        self.venv = venv
        self._actions: np.ndarray | None = None
        super().__init__(venv.num_envs, venv.single_observation_space, venv.single_action_space)

    def reset(self):
        seed = self._seeds[0]
        options = self._options[0] or None
        obs, _ = self.venv.reset(seed=seed, options=options)
        self.reset_infos = [{} for _ in range(self.num_envs)]
        self._reset_seeds()
        self._reset_options()
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = np.asarray(actions).reshape(self.num_envs)

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        terminated, truncated = np.asarray(terminated), np.asarray(truncated)
        dones = terminated | truncated
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if dones.any():
            idx = np.flatnonzero(dones)
            extra = {"TimeLimit.truncated": (truncated & ~terminated)[idx].tolist()}
            if "final_obs" in info:
                extra["terminal_observation"] = list(np.asarray(info["final_obs"])[idx])
            _split_info(info, idx, infos, extra)
        return obs, np.asarray(rewards, dtype=np.float32), dones, infos

    def close(self) -> None:
        self.venv.close()

    def _count(self, indices) -> int:
        return len(list(self._get_indices(indices)))

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [getattr(self.venv, attr_name)] * self._count(indices)

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        setattr(self.venv, attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs):
        result = getattr(self.venv, method_name)(*method_args, **method_kwargs)
        return [result] * self._count(indices)

    def env_is_wrapped(self, wrapper_class, indices=None) -> list[bool]:
        return [False] * self._count(indices)

    def get_images(self):
        frames = self.venv.render() if self.render_mode == "rgb_array" else None
        return list(frames) if frames is not None else [None] * self.num_envs


class FastVecMonitor(VecMonitor):
    """SB3's ``VecMonitor`` (same episode records, so ``evaluate_policy`` and the
    ``rollout/ep_*`` logs see it as one), touching only the envs whose episode ended instead of
    looping over all of them in Python on every step."""

    def step_wait(self):
        obs, rewards, dones, infos = self.venv.step_wait()
        self.episode_returns += rewards
        self.episode_lengths += 1
        if not dones.any():
            return obs, rewards, dones, infos
        infos = list(infos)
        idx = np.flatnonzero(dones)
        elapsed = round(time.time() - self.t_start, 6)
        for i, ret, length in zip(idx.tolist(), self.episode_returns[idx].tolist(),
                                  self.episode_lengths[idx].tolist()):
            episode = {"r": ret, "l": length, "t": elapsed}
            for key in self.info_keywords:
                episode[key] = infos[i][key]
            infos[i] = {**infos[i], "episode": episode}
            if self.results_writer:
                self.results_writer.write_row(episode)
        self.episode_count += len(idx)
        self.episode_returns[idx] = 0
        self.episode_lengths[idx] = 0
        return obs, rewards, dones, infos


def make_sb3_vec_env(
    env_id: str = "OversightGrid-v0", n_envs: int = 1, *, monitor: bool = True, **env_kwargs: Any
) -> VecEnv:
    """``gym.make_vec(env_id, n_envs, vectorization_mode="vector_entry_point", **env_kwargs)``
    as an SB3 VecEnv (:class:`VecEnvAdapter`), with episode statistics
    (:class:`FastVecMonitor`: ``rollout/ep_rew_mean``, ``evaluate_policy``) unless
    ``monitor=False``."""
    venv = gym.make_vec(env_id, num_envs=n_envs, vectorization_mode="vector_entry_point",
                        **env_kwargs)
    env: VecEnv = VecEnvAdapter(venv)
    return FastVecMonitor(env) if monitor else env
