"""stable-baselines3 integration: gradient routing by changing one import.

``RoutedPPO`` is SB3's ``PPO`` with the package's routed loss; ``RoutedMoEPolicy`` (alias
``"MoEPolicy"``) is an SB3 actor-critic policy around
:class:`~oversight_gr.rl.networks.MoEPolicy` and
:class:`~oversight_gr.rl.networks.ValueNet`; :class:`VecEnvAdapter` lets SB3 drive the
native batched env (``gym.make_vec``) at full speed::

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

* the rollout buffer (``rollout_buffer_class=RoutedRolloutBuffer``) also stores, per step, the
  route label of the step's episode, computed at the end of the rollout from the label found in
  ``info[route_info_key]`` at episode end (:func:`~oversight_gr.rl.methods.episode_labels`
  then :func:`~oversight_gr.rl.methods.route_labels`, the native trainer's rule: steps of an
  episode still running at the update train both experts and the gate);
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
from collections.abc import Callable, Hashable, Iterator, Mapping
from typing import Any, ClassVar, NamedTuple

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from gymnasium.vector import AutoresetMode
from stable_baselines3 import PPO
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback, CallbackList, ConvertCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.policies import ActorCriticPolicy, BasePolicy
from stable_baselines3.common.vec_env import VecEnv, VecMonitor
from torch import Tensor

from oversight_gr.rl.losses import Minibatch, ObjectiveConfig, routed_objective
from oversight_gr.rl.methods import (
    ROUTE_BOTH,
    ROUTE_DIAMOND,
    ROUTE_GHOST,
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

#: where an episode's label sends its steps' gradient
ROUTE_TARGETS = ("diamond", "ghost", "both")
#: the default label -> route mapping for ``info["outcome"]``; labels not named route to "both"
DEFAULT_ROUTE_MAP: dict[Hashable, str] = {Outcome.DIAMOND: "diamond", Outcome.GHOST: "ghost"}
# A route target as the outcome code that methods.route_labels turns into that route.
_TARGET_CODE = {"diamond": int(Outcome.DIAMOND), "ghost": int(Outcome.GHOST),
                "both": int(Outcome.UNKNOWN)}
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

    :meth:`record_episode_ends` must be called once per step before ``add`` (RoutedPPO's
    :class:`RouteRecorder` callback does it), with the episode-end mask and the outcome code
    (``Outcome.DIAMOND`` / ``GHOST`` / ``UNKNOWN`` for "both") of the episodes that ended.
    At the end of the rollout every step gets its episode's label; steps of episodes still
    running get ``ROUTE_BOTH``.
    """

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
        self.end_codes = np.full(shape, int(Outcome.NONE), dtype=np.int64)
        self.ends = np.zeros(shape, dtype=bool)
        self.route_labels = np.full(shape, ROUTE_BOTH, dtype=np.int64)
        self._recorded = 0
        self._last_batch: RoutedRolloutBufferSamples | None = None

    def record_episode_ends(self, dones: np.ndarray, codes: np.ndarray) -> None:
        """Record the step about to be added: ``dones [n_envs]`` bool, ``codes [n_envs]``."""
        if self._recorded != self.pos or self.pos >= self.buffer_size:
            raise RuntimeError(
                f"route labels out of step with the buffer (recorded {self._recorded} steps, "
                f"buffer at {self.pos} of {self.buffer_size}); record each step exactly once "
                "before add()"
            )
        self.ends[self.pos] = dones
        self.end_codes[self.pos] = np.where(dones, codes, int(Outcome.NONE))
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
        labels = episode_labels(torch.from_numpy(self.end_codes), torch.from_numpy(self.ends))
        self.route_labels = route_labels(labels).numpy()

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
            buffer.record_episode_ends(dones, self.model.route_codes(self.locals["infos"], dones))
        return True


# -- policy --------------------------------------------------------------------------------------
class RoutedMoEPolicy(ActorCriticPolicy):
    """SB3 actor-critic around the package's MoE actor and value net (alias ``"MoEPolicy"``).

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
        if (
            not isinstance(observation_space, spaces.Box)
            or len(observation_space.shape) != 3
            or observation_space.shape[0] != 4
            or observation_space.shape[1] != observation_space.shape[2]
        ):
            raise ValueError(
                f"RoutedMoEPolicy needs OversightGrid observations, Box of shape (4, n, n); got "
                f"{observation_space}"
            )
        if not isinstance(action_space, spaces.Discrete) or action_space.n != 4:
            raise ValueError(f"RoutedMoEPolicy needs Discrete(4) actions, got {action_space}")
        if not isinstance(hidden, int) or hidden < 1:
            raise ValueError(f"hidden must be a positive int, got {hidden!r}")
        if gate_input not in GATE_INPUTS:
            raise ValueError(f"gate_input must be one of {GATE_INPUTS}, got {gate_input!r}")
        # read by _build, which ActorCriticPolicy.__init__ calls
        self._arch = {"hidden": hidden, "gate_input": gate_input, "constant_gate": constant_gate}
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)
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

    # -- steering ------------------------------------------------------------------------------
    @property
    def steer(self) -> str:
        """Gate steering used by ``predict``: ``"none"`` (learned), ``"diamond"``, ``"ghost"``."""
        return STEER[int(self.steer_code)]

    @steer.setter
    def steer(self, value: str) -> None:
        value = _STEER_ALIASES.get(value, value)
        if value not in STEER:
            raise ValueError(
                f"steer must be one of {STEER} (or 'learned' for 'none'), got {value!r}"
            )
        self.steer_code.fill_(STEER.index(value))

    @contextlib.contextmanager
    def steered(self, steer: str) -> Iterator[RoutedMoEPolicy]:
        """Within the block, ``predict`` uses ``steer``; the previous setting comes back after."""
        previous = self.steer
        self.steer = steer
        try:
            yield self
        finally:
            self.steer = previous

    def logits(self, obs: Tensor, steer: str | None = None) -> Tensor:
        """Action logits ``[B, 4]`` of ``obs [B, 4, n, n]``; ``steer=None`` uses ``self.steer``."""
        steer = self.steer if steer is None else _STEER_ALIASES.get(steer, steer)
        return self.actor(obs.to(self.device), steer=steer).logits

    # -- SB3 policy interface ------------------------------------------------------------------
    def _rollout_steer(self) -> str:
        return "none" if self._learning else self.steer

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
        batch = self._route_source(obs)
        if batch is None:
            raise RuntimeError(
                "evaluate_actions got a batch the rollout buffer did not yield; RoutedPPO "
                "needs the minibatch's observation tensor to look up its route labels"
            )
        # the native trainer's rule: the gate (detached inside route_weights) shapes how
        # unlabelled steps reach the experts when the sharpness is not 1
        feats = self.actor.features(obs)
        out = self.actor.mix(feats, route_weights(
            batch.route_labels, feats.gate, self._unlabelled_gate_grad,
            self._unlabelled_sharpness))
        values = pred = self.critic(obs)
        if self._clip_range_vf is not None:  # PPO's value clipping, on the prediction
            pred = batch.old_values + torch.clamp(values - batch.old_values,
                                                  -self._clip_range_vf, self._clip_range_vf)
        adv = batch.advantages
        if self._normalize_advantage and len(adv) > 1:  # PPO's per-minibatch normalisation
            adv = (adv - adv.mean()) / (adv.std() + 1e-8)
        mb = Minibatch(obs, actions, batch.old_log_prob, adv, batch.returns, batch.route_labels,
                       torch.ones_like(adv)).unsqueeze()
        objective = self._objective
        loss, stats = routed_objective(MoEOutput(out.logits[None], out.gate[None]), pred[None],
                                       mb, objective)
        if objective.gate_loss and bool((batch.route_labels != ROUTE_BOTH).any()):
            self._gate_losses.append(stats["gate"][0])
        dist = self.action_dist.proba_distribution(action_logits=out.logits.detach())
        log_prob = add_to_loss(dist.log_prob(actions), loss)
        return values.detach().unsqueeze(-1), log_prob, dist.entropy()

    def get_distribution(self, obs: Tensor):
        return self.action_dist.proba_distribution(action_logits=self.logits(obs))

    def predict_values(self, obs: Tensor) -> Tensor:
        return self.critic(obs).unsqueeze(-1)

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
        routes it with :func:`~oversight_gr.rl.methods.route_weights`
        (``unlabelled_sharpness``, ``unlabelled_gate_grad`` as there) and trains on
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
        policy: ``"MoEPolicy"`` or a :class:`RoutedMoEPolicy` subclass.
        env: as for PPO. A registered OversightGrid id (``"OversightGrid-v0"``) builds the
            native vector env (:func:`make_sb3_vec_env`) with ``n_envs`` copies and
            ``reward_mode="terminal"`` (+1 for any terminal: routing's reward) unless
            ``env_kwargs`` says otherwise; other ids go through SB3's ``make_vec_env``.
        route_info_key: the ``info`` key holding an episode's label at its end.
        route_map: ``{label: "diamond" | "ghost" | "both"}``; labels not in it (and episodes
            whose end info lacks the key) route to ``"both"``. Default
            :data:`DEFAULT_ROUTE_MAP` (``Outcome.DIAMOND`` -> diamond, ``GHOST`` -> ghost).
        gate_loss_coef: coefficient of the gate BCE on labelled steps (0 turns it off; the
            native PPO default 0.3).
        unlabelled_sharpness: unlabelled steps send each expert gradient in proportion to
            ``gate^k`` and ``(1 - gate)^k`` (:func:`~oversight_gr.rl.methods.route_weights`);
            default the native PPO default (``ALGO_DEFAULTS["ppo"]``, 3); 1 is the paper's
            plain mixture.
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

    The label of an episode applies to all its steps in the rollout; steps of an episode that
    has not ended when the rollout does train both experts and the gate (as natively), with the
    native trainer's ``route_weights`` (so the same ``unlabelled_sharpness`` and
    ``unlabelled_gate_grad``).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {
        **PPO.policy_aliases,
        "MoEPolicy": RoutedMoEPolicy,
    }
    policy: RoutedMoEPolicy
    rollout_buffer: RoutedRolloutBuffer

    def __init__(
        self,
        policy: str | type[RoutedMoEPolicy],
        env: Any,
        *args: Any,
        route_info_key: str = "outcome",
        route_map: Mapping[Hashable, str] | None = None,
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
        self.route_info_key = route_info_key
        route_map = dict(DEFAULT_ROUTE_MAP if route_map is None else route_map)
        bad = {k: v for k, v in route_map.items() if v not in ROUTE_TARGETS}
        if bad:
            raise ValueError(f"route_map values must be one of {ROUTE_TARGETS}, got {bad!r}")
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
        super().__init__(policy, env, *args, **kwargs)
        if not issubclass(self.policy_class, RoutedMoEPolicy):
            raise ValueError(
                f"RoutedPPO needs a RoutedMoEPolicy ('MoEPolicy'), got {self.policy_class!r}; "
                "use stable_baselines3.PPO for unrouted policies"
            )

    @staticmethod
    def _make_env(env_id: str, n_envs: int, env_kwargs: dict | None, seed: int | None) -> VecEnv:
        if env_id in ENV_IDS:
            return make_sb3_vec_env(env_id, n_envs, **{"reward_mode": "terminal",
                                                       **(env_kwargs or {})})
        return make_vec_env(env_id, n_envs=n_envs, seed=seed, env_kwargs=env_kwargs)

    @property
    def route_map(self) -> dict[Hashable, str]:
        """``{label: "diamond" | "ghost" | "both"}`` (a copy)."""
        return dict(self._route_pairs)

    def route_codes(self, infos: list[dict], dones: np.ndarray) -> np.ndarray:
        """``[n_envs]`` outcome code standing for each ended episode's route (see
        :data:`_TARGET_CODE`); ``Outcome.NONE`` where no episode ended."""
        codes = np.full(len(infos), int(Outcome.NONE), dtype=np.int64)
        route_map = dict(self._route_pairs)
        for i in np.flatnonzero(dones):
            label = infos[i].get(self.route_info_key)
            if isinstance(label, np.ndarray) and label.ndim == 0:
                label = label.item()
            codes[i] = _TARGET_CODE[route_map.get(label, "both")]
        return codes

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
            gate_loss=self.gate_loss_coef > 0 and self.policy.actor.arch.learned_gate,
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
        for name, code in (("diamond", ROUTE_DIAMOND), ("ghost", ROUTE_GHOST),
                           ("both", ROUTE_BOTH)):
            self.logger.record(f"routing/frac_{name}", float(np.mean(routes == code)))

    @contextlib.contextmanager
    def steered(self, steer: str) -> Iterator[RoutedPPO]:
        """``with model.steered("diamond"): evaluate_policy(model, env)``."""
        with self.policy.steered(steer):
            yield self


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
