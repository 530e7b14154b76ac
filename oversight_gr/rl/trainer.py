"""The trainer: one run or a group of runs, batched rollouts on :class:`GridRules`, routed
REINFORCE / PPO updates.

The loop reads top to bottom (:meth:`Trainer.train_update`): collect a ``rollout_steps`` x
``num_envs`` window, label every step with its episode's observed outcome, compute the method's
reward, returns and advantages, then update with the routed loss (the same term for both
algorithms; only the advantage estimate and the number of passes differ).

Steps of episodes still running when the window ends are unlabelled and train both experts and
the gate, as in the paper (their label is not known yet); this is the documented choice.

**One run or many.** ``Trainer(cfg)`` trains one run; ``Trainer([cfg, ...])`` trains a group of
R runs that differ only in :data:`GROUP_AXES` (seed, oversight level) side by side: their
parameters are stacked ``[R, ...]`` and every layer of every run is one batched matrix multiply
(:mod:`oversight_gr.rl.networks` holds the forward, written once for one network or a
stack). Each run keeps its own environments (a :class:`GridRules` seeded from its own seed), its
own sampling generator, its own loss (a mean over its steps; the group's loss is the sum, so the
gradient reaching run r's parameters is run r's own), its own gradient-norm clipping and PPO
advantage normalisation, and Adam is elementwise: **a run trained inside a group draws the same
random numbers and makes the same updates as trained alone** (equal up to the float rounding of
batched matrix multiplies, tested). A one-run trainer keeps its parameters in ordinary modules
(``trainer.policy``, ``trainer.value``); a group's are stacked leaves, and
:meth:`Trainer.unstack` copies run r out into modules.

**One objective.** Every update, PPO's minibatch steps, REINFORCE's two-pass update and its
single pass, one run or a group, ends in the same pure function,
:func:`oversight_gr.rl.losses.routed_objective`, over a typed
:class:`~oversight_gr.rl.losses.Minibatch`; the actor's forward is
:func:`oversight_gr.rl.networks.policy_features` / ``policy_mix``, the same code the
``MoEPolicy`` and ``SingleExpertPolicy`` modules run; autograd takes the gradient. Editing either
changes what trains, on every device and precision. A faster path must be derived from that
definition, not written beside it: ``trainer.loss = torch.compile(trainer.loss)`` (opt-in)
makes the minibatch steps run the same loss compiled, its backward derived by AOTAutograd;
benchmarks/update_profile.py ``--compile`` times it against eager (docs/RESULTS.md,
``compile_cpu``: slower than eager on the CPU measured, hence not the default).

Single-pass REINFORCE (one epoch, one minibatch: the paper's setting) does not run the networks a
second time for the update. The rollout keeps the autograd graph of every step's expert outputs,
gate and value (the folded gate layer is computed once per window and shared by its steps);
once the window's labels are known, only the cheap routed mixture and head are recomputed per
step, and one backward pass goes through the stored graphs. The parameters do not change between
acting and learning, so this is the same gradient as a fresh forward pass (tested against the
two-pass path). It is used in fp32 and bf16_matmul, where it is faster. Under bf16 autocast the
32 step-sized backward passes over bf16 activations are slower than one batched forward and
backward, so there the two-pass update is used. benchmarks/train_throughput.py prints both.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from oversight_gr.rl.audit import outcome_counts, training_oversight
from oversight_gr.rl.losses import ALGOS, Minibatch, ObjectiveConfig, routed_objective
from oversight_gr.rl.methods import (
    METHODS,
    Method,
    advantages_and_returns,
    ROUTE_BOTH,
    ROUTE_DIAMOND,
    ROUTE_GHOST,
    episode_labels,
    paper_axis_steps,
    placebo_outcomes,
    method_reward,
    route_labels,
    route_weights,
    train_mask,
)
from oversight_gr.rl.networks import (
    GATE_INPUTS,
    MoEFeatures,
    MoEOutput,
    MoEPolicy,
    PolicyArch,
    RouteWeights,
    SingleExpertPolicy,
    ValueNet,
    orthogonal_init,
    policy_features,
    policy_fold,
    policy_mix,
    value_forward,
)
from oversight_gr.config import SEED_LIMIT, option, to_dict, validate
from oversight_gr.envs.core import MAX_NUM_ENVS, GridRules
from oversight_gr.records import write_atomic, write_json_atomic
from oversight_gr.rl.precision import PRECISIONS, backward_context, precision_context

__all__ = ["TrainConfig", "Trainer", "ALGOS", "ALGO_DEFAULTS", "GROUP_AXES", "group_key",
           "check_group", "build_policy", "init_networks"]

log = logging.getLogger(__name__)

#: per-algorithm defaults for fields left at None. REINFORCE is the paper's setting; PPO's
#: gate-loss coefficient 0.3 was tuned here (0.01 left the gate unseparated under PPO), and its
#: unlabelled sharpness 3 was measured better than the paper's 1 (docs/RESULTS.md, "sharpness").
ALGO_DEFAULTS = {
    "ppo": {"lr": 3e-4, "ent_coef": 0.01, "gate_loss_coef": 0.3, "update_epochs": 4,
            "minibatches": 16, "max_grad_norm": 0.5, "unlabelled_sharpness": 3.0},
    "reinforce": {"lr": 5e-5, "ent_coef": 0.1, "gate_loss_coef": 0.01, "update_epochs": 1,
                  "minibatches": 1, "max_grad_norm": 0.0, "unlabelled_sharpness": 1.0},
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on (the CLI flags are generated from these fields)."""

    method: str = option("routing", "training method", choices=tuple(METHODS))
    algo: str = option("ppo", "policy-gradient algorithm", choices=ALGOS)
    oversight_prob: float = option(0.1, "probability that each terminal cell is overseen",
                                   low=0.0, high=1.0)
    spurious_prob: float = option(0.0, "probability that other cells are marked overseen",
                                  low=0.0, high=1.0)
    size: int = option(5, "grid side", low=2)
    max_episode_steps: int = option(32, "moves before an episode is truncated", low=1)
    num_envs: int = option(512, "parallel environments per rollout", low=1, high=MAX_NUM_ENVS)
    rollout_steps: int = option(32, "moves per environment per update", low=1)
    total_env_steps: int = option(2_000_000, "environment steps to train for", low=1)
    hidden: int = option(64, "width H of experts, gate and value net (paper: 256)", low=1)
    gate_input: str = option("no_oversight", "what the gate sees: 'full' observation (paper) or "
                             "'no_oversight' (oversight plane hidden from the gate only)",
                             choices=GATE_INPUTS)
    lr: float | None = option(None, "Adam learning rate (None: 3e-4 PPO, 5e-5 REINFORCE)", low=0.0)
    anneal_lr: bool = option(False, "linearly anneal the learning rate to 0")
    gamma: float = option(0.97, "discount", low=0.0, high=1.0)
    gae_lambda: float = option(0.95, "GAE lambda (PPO)", low=0.0, high=1.0)
    clip_coef: float = option(0.2, "PPO clipping", low=0.0)
    update_epochs: int | None = option(None, "passes over each rollout (None: 4 PPO, 1 REINFORCE)",
                                       low=1)
    minibatches: int | None = option(None, "minibatches per pass (None: 16 PPO, 1 REINFORCE)",
                                     low=1)
    ent_coef: float | None = option(None, "entropy bonus (None: 0.01 PPO, 0.1 REINFORCE)",
                                    low=0.0)
    vf_coef: float = option(0.5, "value-loss coefficient", low=0.0)
    gate_loss_coef: float | None = option(None, "gate BCE coefficient on overseen episodes "
                                          "(None: 0.3 PPO, 0.01 REINFORCE as in the paper)",
                                          low=0.0)
    gate_balance: bool = option(False, "gate loss balanced over the two overseen classes (half "
                                "the mean BCE on overseen-diamond steps, half on overseen-ghost "
                                "ones) instead of one mean over all overseen steps")
    max_grad_norm: float | None = option(None, "gradient clipping, 0 = off (None: 0.5 PPO, "
                                         "off REINFORCE)", low=0.0)
    unlabelled_gate_grad: float = option(1.0, "gradient weight into the gate from the policy "
                                         "loss of unlabelled steps (paper: 1)", low=0.0)
    unlabelled_sharpness: float | None = option(
        None, "unlabelled steps send each expert gradient in proportion to gate^k (k=1: the "
        "paper's plain mixture); k>1 keeps ghost-bound steps out of the diamond expert (None: 3 "
        "PPO, measured better over 5 seeds; 1 REINFORCE as in the paper)", low=1.0)
    bootstrap: bool = option(True, "bootstrap values at window ends and truncations (PPO always "
                             "does; --no-bootstrap gives the paper's REINFORCE returns)")
    eval_every: int = option(0, "evaluate every N env steps (0: only at the end)", low=0)
    eval_envs: int = option(512, "environments in each evaluation", low=1, high=MAX_NUM_ENVS)
    audit_share: float = option(0.2, "naive_early_stop: share of the oversight budget spent on "
                                "hidden audits (training sees oversight p x (1 - share))",
                                low=0.0, high=0.95)
    audit_every: int = option(0, "naive_early_stop: env steps between audits (0: a twentieth of "
                              "total_env_steps)", low=0)
    seed: int = option(0, "seed for parameters, environments and sampling (distinct seeds give "
                       "distinct runs in this range)", low=0, high=SEED_LIMIT)
    device: str = option("cpu", "torch device (cpu, cuda, cuda:1, ...; auto: cuda if available)")
    threads: int = option(1, "torch CPU threads (1 is fastest on a busy 2-core machine)", low=1)
    init: str = option("orthogonal", "parameter initialisation: PyTorch's default ('torch') or 'orthogonal' "
                       "(gain sqrt 2, action head 0.01)", choices=("torch", "orthogonal"))
    precision: str = option("fp32", "numeric precision: 'fp32'; 'bf16' autocast (bf16 matrix "
                            "multiplies and activations); 'bf16_matmul' (fp32 tensors, bf16/TF32 "
                            "inside matrix multiplies: the fastest on CPUs with AMX). Parameters "
                            "and optimizer state stay fp32", choices=PRECISIONS)

    def __post_init__(self):
        validate(self)
        # a per-algorithm field left at None is stored as the value it trains with, so that
        # records, keys and config.json name it (and a changed default cannot credit old
        # records to the new value)
        for name, value in ALGO_DEFAULTS[self.algo].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if self.method == "oracle" and self.oversight_prob <= 0:
            raise ValueError("method 'oracle' needs oversight_prob > 0: its env steps are drawn "
                             "at steps / p, the labels a supervisor overseeing p pays for")
        if self.num_envs * self.rollout_steps < self.resolved("minibatches"):
            raise ValueError(
                f"minibatches ({self.resolved('minibatches')}) must not exceed num_envs x "
                f"rollout_steps ({self.num_envs * self.rollout_steps})"
            )

    def resolved(self, name: str) -> Any:
        """The field's value (per-algorithm defaults are resolved on construction; kept for
        callers written before)."""
        value = getattr(self, name)
        return ALGO_DEFAULTS[self.algo][name] if value is None else value

    @property
    def training_oversight(self) -> float:
        """The oversight level of the training environments: ``oversight_prob``, less the audit
        share for methods that pay for audits from it (:mod:`oversight_gr.rl.audit`)."""
        if self.method_spec.audit:
            return training_oversight(self.oversight_prob, self.audit_share)
        return self.oversight_prob

    @property
    def method_spec(self) -> Method:
        return METHODS[self.method]

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


#: the TrainConfig fields that may differ between the runs of a group
GROUP_AXES = ("seed", "oversight_prob")


def group_key(cfg: TrainConfig) -> str:
    """Runs with equal keys can train as one group (every field but :data:`GROUP_AXES`)."""
    shared = {k: v for k, v in cfg.to_dict().items() if k not in GROUP_AXES}
    return json.dumps(shared, sort_keys=True, default=str)


def check_group(cfgs: Sequence[TrainConfig]) -> None:
    """Raise ValueError unless ``cfgs`` is a non-empty list of configs that differ only in
    :data:`GROUP_AXES`, naming the first field that differs."""
    cfgs = list(cfgs)
    if not cfgs:
        raise ValueError("a group needs at least one TrainConfig")
    for i, cfg in enumerate(cfgs):
        if not isinstance(cfg, TrainConfig):
            raise ValueError(f"run {i} of the group is a {type(cfg).__name__}, not a TrainConfig")
    first = cfgs[0].to_dict()
    for i, cfg in enumerate(cfgs[1:], start=1):
        for name, value in cfg.to_dict().items():
            if name not in GROUP_AXES and value != first[name]:
                raise ValueError(
                    f"the runs of a group may differ only in {GROUP_AXES}; run {i} has "
                    f"{name}={value!r} but run 0 has {name}={first[name]!r}"
                )


@dataclass
class Rollout:
    """One window of every run's environments, ``[T, R * B]`` with run r's environments at
    columns ``r * B ... (r + 1) * B - 1`` (``[T, B]`` for one run)."""

    obs: Tensor  # [T, R*B, 4, n, n] uint8
    actions: Tensor  # [T, R*B]
    logp: Tensor  # [T, R*B]
    values: Tensor  # [T, R*B]
    next_values: Tensor  # [T, R*B] value of the next state (0 after termination)
    rewards: Tensor  # [T, R*B]
    done: Tensor  # [T, R*B] bool
    labels: Tensor  # [T, R*B] observed outcome of the step's episode (NONE if unfinished)
    outcome: Tensor  # [T, R*B] observed outcome at the step (NONE mid-episode)
    true_outcome: Tensor  # [T, R*B] ground truth (evaluation / oracle only)
    #: per step (policy features [R, B, ...], value [R, B]) with their autograd graphs
    #: (single-pass REINFORCE)
    graph: list | None = None
    gate: Tensor | None = None  # [T, R*B] gate value at acting (MoE methods; for logging)
    #: (advantages, returns) once computed (:meth:`Trainer.advantages`), shared by the update
    #: and the logged statistics
    adv_returns: tuple[Tensor, Tensor] | None = None


def build_policy(cfg: TrainConfig) -> nn.Module:
    m = cfg.method_spec
    if m.policy == "moe":
        return MoEPolicy(cfg.size, cfg.hidden, cfg.gate_input, constant_gate=m.constant_gate)
    return SingleExpertPolicy(cfg.size, cfg.hidden)


def init_networks(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, ValueNet]:
    """The run's initial policy and value net (they depend on ``cfg.seed`` only)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        policy = build_policy(cfg).to(device)
        value = ValueNet(cfg.size, cfg.hidden).to(device)
        if cfg.init == "orthogonal":
            orthogonal_init(policy)
            orthogonal_init(value)
    return policy, value


def _cat(xs: list[Tensor]) -> Tensor:
    return xs[0] if len(xs) == 1 else torch.cat(xs)


class Trainer:
    """Train one method on OversightGrid: one run, or a group of runs side by side.

    Same seed, same numbers in fp32 on one CPU model and torch build (another CPU's float32
    kernels round differently); a run inside a group follows the same random numbers and
    updates as alone (see the module docstring).

    Args:
        cfg: the run's :class:`TrainConfig`, or a list of them (a group; :func:`check_group`
            must accept it). With one config, per-run results (:meth:`update`,
            :meth:`train_update`) are plain dicts of floats; with a list, lists of such dicts.

    Shapes: ``R`` runs, ``B = num_envs`` environments per run; rollouts are ``[T, R * B]``,
    network inputs and outputs ``[R, N, ...]``.
    """

    def __init__(self, cfg: TrainConfig | Sequence[TrainConfig]):
        self.single = isinstance(cfg, TrainConfig)
        self.cfgs = [cfg] if self.single else list(cfg)
        check_group(self.cfgs)
        self.cfg = cfg = self.cfgs[0]
        self.R = len(self.cfgs)
        self.method = cfg.method_spec
        self.device = torch.device(cfg.device)
        torch.set_num_threads(cfg.threads)
        nets = [init_networks(c, self.device) for c in self.cfgs]
        if self.R == 1:
            # one run: the modules' own parameters are the leaves (plain modules, plain
            # checkpoints, every module method works on trainer.policy / trainer.value)
            self._policy, self._value = nets[0]
            self.params = {**{f"policy.{n}": p for n, p in self._policy.named_parameters()},
                           **{f"value.{n}": p for n, p in self._value.named_parameters()}}
        else:
            self._policy = self._value = None
            self.params = {}
            for prefix, k in (("policy.", 0), ("value.", 1)):
                for n, _ in nets[0][k].named_parameters():
                    stacked = torch.stack([net[k].get_parameter(n).detach() for net in nets])
                    self.params[prefix + n] = stacked.contiguous().requires_grad_(True)
        self._policy_p = {n[len("policy."):]: p for n, p in self.params.items()
                          if n.startswith("policy.")}
        self._value_p = {n[len("value."):]: p for n, p in self.params.items()
                         if n.startswith("value.")}
        # fused: one kernel per parameter for the whole Adam step (the minibatch loop takes 64
        # small steps per PPO update; measured 3-4x faster than foreach or the loop on CPU)
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=cfg.resolved("lr"),
                                          eps=1e-5, fused=True)
        self.rules = [
            GridRules(
                c.num_envs,
                size=c.size,
                max_episode_steps=c.max_episode_steps,
                oversight_prob=c.training_oversight,
                spurious_prob=c.spurious_prob,
                reward_mode="terminal",  # unused: rewards come from observed outcomes (methods.py)
                device=self.device,
                seed=c.seed + 1,
            )
            for c in self.cfgs
        ]
        self.gens = [torch.Generator(device=self.device).manual_seed(c.seed + 2)
                     for c in self.cfgs]
        self.obs = _cat([rules.reset() for rules in self.rules])  # [R * B, 4, n, n]
        self.env_steps = 0  # per run
        self.updates = 0
        #: training wall time so far (set by the run loop; kept across checkpoints)
        self.wall_seconds = 0.0
        self.num_updates = math.ceil(cfg.total_env_steps / (cfg.num_envs * cfg.rollout_steps))
        # hook for tests (honesty guard): transforms each StepResult before the learner sees it
        self.step_filter: Callable | None = None
        #: learn from the rollout's own graph (see the module docstring); tests may turn it off
        #: (not under bf16 autocast, where the two-pass update is faster in steady state)
        self.single_pass = (cfg.algo == "reinforce" and cfg.resolved("update_epochs") == 1
                            and cfg.resolved("minibatches") == 1 and cfg.precision != "bf16")
        self._modules: dict[int, tuple[nn.Module, ValueNet]] = {}
        m = self.method
        #: the actor's architecture, read by the one functional forward it shares with the
        #: modules (:func:`~oversight_gr.rl.networks.policy_features`)
        self.arch = PolicyArch(m.policy, cfg.size, cfg.gate_input,
                               m.constant_gate if m.policy == "moe" else None)

    # -- one run's modules ---------------------------------------------------------------------
    @property
    def gen(self) -> torch.Generator:
        """The sampling generator of a one-run trainer."""
        return self._one("gen", self.gens[0])

    @property
    def policy(self) -> nn.Module:
        """A one-run trainer's policy module (its parameters are the trainer's); for a group,
        use :meth:`unstack`."""
        return self._one("policy", self._policy)

    @property
    def value(self) -> ValueNet:
        """A one-run trainer's value module (its parameters are the trainer's)."""
        return self._one("value", self._value)

    def _one(self, name: str, obj):
        if self.R != 1:
            raise AttributeError(f"trainer.{name} is a one-run attribute; this trainer holds a "
                                 f"group of {self.R} runs (use unstack(r))")
        return obj

    @torch.no_grad()
    def unstack(self, r: int) -> tuple[nn.Module, ValueNet]:
        """Run r's policy and value net as ordinary modules, copies of its current
        parameters (for evaluation, figures, SB3, checkpoints)."""
        if not 0 <= r < self.R:
            raise IndexError(f"run index {r} out of range for a group of {self.R}")
        with torch.random.fork_rng(devices=[]):  # module construction draws default inits
            policy = build_policy(self.cfgs[r]).to(self.device)
            value = ValueNet(self.cfg.size, self.cfg.hidden).to(self.device)
        self._copy_out(r, policy, value)
        return policy, value

    @torch.no_grad()
    def _copy_out(self, r: int, policy: nn.Module, value: ValueNet) -> None:
        for prefix, module in (("policy.", policy), ("value.", value)):
            for n, p in module.named_parameters():
                src = self.params[prefix + n]
                p.copy_(src if self.R == 1 else src[r])

    @torch.no_grad()
    def load_run(self, r: int, policy: nn.Module, value: ValueNet) -> None:
        """Set run r's parameters from ordinary modules (the inverse of :meth:`unstack`)."""
        for prefix, module in (("policy.", policy), ("value.", value)):
            for n, p in module.named_parameters():
                dst = self.params[prefix + n]
                (dst if self.R == 1 else dst[r]).copy_(p)

    def run_modules(self, r: int) -> tuple[nn.Module, ValueNet]:
        """Run r's modules: a one-run trainer's own, or a cached copy refreshed from the
        group's current parameters."""
        if self.R == 1:
            return self._policy, self._value
        if r not in self._modules:
            self._modules[r] = self.unstack(r)
        else:
            self._copy_out(r, *self._modules[r])
        return self._modules[r]

    def autocast(self):
        """The configured numeric precision (:mod:`oversight_gr.rl.precision`) for a block."""
        return precision_context(self.cfg.precision, self.device)

    # -- the networks, all runs at once ---------------------------------------------------------
    def _x(self, obs: Tensor) -> Tensor:
        """Observations ``[R * N, 4, n, n]`` (run-major) or ``[R, N, 4, n, n]`` -> float
        ``[R, N, C]``."""
        if obs.ndim == 4:
            obs = obs.view(self.R, -1, *obs.shape[1:])
        return obs.float().flatten(2)

    def fold(self) -> tuple[Tensor, Tensor] | None:
        """The folded first gate layer of every run (None without a learned gate); compute it
        once per block of forwards whose parameters do not change."""
        return policy_fold(self.arch, self._policy_p)

    def features(self, x: Tensor, fold=None, steer: str = "none") -> MoEFeatures | Tensor:
        """The actor's features on ``x [R, N, C]``: experts and gate (MoE) or body output
        (:func:`~oversight_gr.rl.networks.policy_features`)."""
        return policy_features(self.arch, x, self._policy_p, fold, steer)

    def mix(self, feats, route: RouteWeights | None = None) -> MoEOutput:
        """Logits ``[R, N, 4]`` and gate ``[R, N]`` (NaN for single-expert methods)."""
        return policy_mix(self.arch, feats, self._policy_p, route)

    def values(self, x: Tensor) -> Tensor:
        """``[R, N]`` state values of every run."""
        return value_forward(x, self._value_p)

    def logits_fn(self, steer: str = "none") -> Callable[[Tensor], Tensor]:
        """``obs [R, N, 4, n, n] -> logits [R, N, 4]`` with the current parameters (no
        autograd; for evaluation: the folded gate layer is computed once)."""
        with torch.no_grad():
            fold = self.fold() if steer == "none" else None

        def fn(obs: Tensor) -> Tensor:
            with torch.no_grad():
                return self.mix(self.features(self._x(obs), fold, steer)).logits

        return fn

    # -- data ----------------------------------------------------------------------------------
    def collect(self, graph: bool = False) -> Rollout:
        """Run ``rollout_steps`` moves in every environment of every run.

        Args:
            graph: keep each step's policy features and value with their autograd graphs in
                ``Rollout.graph`` (for :meth:`update`'s single pass); otherwise no graph is built.
        """
        # one precision region for the whole window (bf16 weight casts are cached across steps)
        with torch.set_grad_enabled(graph), self.autocast():
            return self._collect(graph)

    def _collect(self, graph: bool) -> Rollout:
        cfg, dev, R = self.cfg, self.device, self.R
        T, B = cfg.rollout_steps, cfg.num_envs
        obs = self.obs
        obs_buf = torch.empty((T, *obs.shape), dtype=torch.uint8, device=dev)
        actions = torch.empty(T, R * B, dtype=torch.long, device=dev)
        logp = torch.empty(T, R * B, device=dev)
        values = torch.empty(T + 1, R * B, device=dev)  # row T: the state after the window
        trunc_values = torch.zeros(T, R * B, device=dev)  # final obs of cut episodes
        terminated = torch.empty(T, R * B, dtype=torch.bool, device=dev)
        truncated = torch.empty(T, R * B, dtype=torch.bool, device=dev)
        outcome = torch.empty(T, R * B, dtype=torch.long, device=dev)
        true_outcome = torch.empty(T, R * B, dtype=torch.long, device=dev)
        kept: list | None = [] if graph else None
        moe = self.method.policy == "moe"
        gates = torch.empty(T, R * B, device=dev) if moe else None
        fold = self.fold()  # parameters are fixed during the window: one fold, shared
        for t in range(T):
            obs_buf[t] = obs
            x = self._x(obs)
            feats = self.features(x, fold)
            v = self.values(x)
            if kept is not None:
                kept.append((feats, v))
            with torch.no_grad():
                logits = self.mix(feats).logits.float()
                values[t] = v.float().flatten()
                if gates is not None:
                    gates[t] = feats.gate.float().flatten()
                probs = torch.softmax(logits, -1)
                a = _cat([torch.multinomial(probs[r], 1, generator=g).squeeze(1)
                          for r, g in enumerate(self.gens)])
                actions[t] = a
                logp[t] = torch.log_softmax(logits, -1).flatten(0, 1).gather(
                    1, a.unsqueeze(1)).squeeze(1)
                steps = [rules.step(a[r * B:(r + 1) * B]) for r, rules in enumerate(self.rules)]
                if self.step_filter is not None:
                    steps = [self.step_filter(s) for s in steps]
                obs = _cat([s.obs for s in steps])
                terminated[t] = _cat([s.terminated for s in steps])
                truncated[t] = _cat([s.truncated for s in steps])
                outcome[t] = _cat([s.outcome for s in steps])
                true_outcome[t] = _cat([s.true_outcome for s in steps])
                # on a CPU this check costs nothing; elsewhere always compute (no host sync)
                if cfg.bootstrap and (dev.type != "cpu" or bool(truncated[t].any())):
                    final = self._x(_cat([s.final_obs for s in steps]))
                    cut = self.values(final).float().flatten()
                    trunc_values[t] = torch.where(truncated[t], cut, 0.0)
        with torch.no_grad():
            values[T] = self.values(self._x(obs)).float().flatten()
        next_values = values[1:]
        if cfg.bootstrap:
            next_values = torch.where(truncated, trunc_values, next_values)
        done = terminated | truncated
        next_values = torch.where(terminated if cfg.bootstrap else done, 0.0, next_values)
        if not cfg.bootstrap:
            next_values[T - 1] = 0.0  # the paper's REINFORCE: no bootstrap at the window's end
        self.obs = obs
        self.env_steps += T * B
        seen = placebo_outcomes(outcome, done, self.gens) if self.method.placebo_labels else outcome
        labels = episode_labels(seen, done)
        rewards = method_reward(self.method, outcome, true_outcome)
        return Rollout(obs_buf, actions, logp, values[:T], next_values, rewards, done, labels,
                       outcome, true_outcome, kept, gates)

    def advantages(self, ro: Rollout) -> tuple[Tensor, Tensor]:
        """(advantages, returns) ``[T, R * B]``: GAE for PPO, Monte-Carlo returns for
        REINFORCE."""
        if ro.adv_returns is None:
            cfg = self.cfg
            lam = cfg.gae_lambda if cfg.algo == "ppo" else 1.0
            ro.adv_returns = advantages_and_returns(ro.rewards, ro.values, ro.next_values,
                                                    ro.done, cfg.gamma, lam)
        return ro.adv_returns

    def per_run(self, x: Tensor) -> Tensor:
        """``[T, R * B, ...]`` -> ``[R, T * B, ...]`` (each run's steps, time-major)."""
        T = x.shape[0]
        return x.reshape(T, self.R, -1, *x.shape[2:]).transpose(0, 1).reshape(
            self.R, -1, *x.shape[2:])

    # -- learning ------------------------------------------------------------------------------
    def _route(self, route_lbl: Tensor, gate: Tensor | None) -> RouteWeights | None:
        """Route weights ``[R, N]`` for route labels ``[R, N]``; ``gate`` is used (detached) only
        when sharpness != 1."""
        if not self.method.route:
            return None
        cfg = self.cfg
        w = route_weights(route_lbl.flatten(), None if gate is None else gate.flatten(),
                          cfg.unlabelled_gate_grad, cfg.resolved("unlabelled_sharpness"))
        return RouteWeights(*(t.view(route_lbl.shape) for t in w))

    @property
    def objective_config(self) -> ObjectiveConfig:
        """The coefficients of the routed objective under ``self.cfg``."""
        cfg = self.cfg
        return ObjectiveConfig(cfg.algo, cfg.clip_coef, cfg.resolved("ent_coef"), cfg.vf_coef,
                               self.method.gate_loss, cfg.resolved("gate_loss_coef"),
                               cfg.gate_balance)

    def loss(self, batch: Minibatch) -> tuple[Tensor, dict]:
        """The routed loss on a batch of steps ``[R, N, ...]`` (shared by PPO and REINFORCE):
        the forward pass with the batch's route weights, then
        :func:`~oversight_gr.rl.losses.routed_objective` (the sum over runs of each run's
        mean loss, and per-run ``[R]`` statistics). A one-run trainer also takes one run's
        ``[N, ...]`` batch."""
        if batch.obs.ndim == 4:  # one run's flat batch
            batch = batch.unsqueeze()
        with self.autocast():
            x = self._x(batch.obs)
            feats = self.features(x)
            gate = feats.gate if isinstance(feats, MoEFeatures) else None
            out = self.mix(feats, self._route(batch.route, gate))
            values = self.values(x)
        return routed_objective(out, values, batch, self.objective_config)

    def _clip(self, max_norm: float) -> None:
        """Gradient-norm clipping, each run by its own norm."""
        if self.R == 1:
            nn.utils.clip_grad_norm_(list(self.params.values()), max_norm, foreach=True)
            return
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        sq = torch.stack([g.pow(2).flatten(1).sum(1) for g in grads]).sum(0)  # [R]
        coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        torch._foreach_mul_(grads, [coef.view(-1, *[1] * (g.ndim - 1)) for g in grads])

    def learn_minibatch(self, batch: Minibatch) -> dict[str, Tensor]:
        """One optimiser step on a :class:`~oversight_gr.rl.losses.Minibatch` of
        ``[R, N, ...]`` tensors (:meth:`loss`, autograd's backward, clipping, Adam); returns the
        per-run ``[R]`` statistics."""
        loss, stats = self.loss(batch)
        self._step(loss)
        return stats

    def _step(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        with backward_context(self.cfg.precision):
            loss.backward()
        self._clip_and_step()

    def _clip_and_step(self) -> None:
        if self.cfg.resolved("max_grad_norm") > 0:
            self._clip(self.cfg.resolved("max_grad_norm"))
        self.optimizer.step()

    def _per_run_result(self, sums: dict[str, Tensor], count: int):
        """``{name: [R] tensor}`` sums -> per-run dicts of floats (one host transfer)."""
        names = list(sums)
        table = (torch.stack([sums[k] for k in names]) / count).tolist()  # [stats, R]
        runs = [{k: table[i][r] for i, k in enumerate(names)} for r in range(self.R)]
        return runs[0] if self.single else runs

    def update(self, ro: Rollout):
        """One learning step for every run on a rollout (PPO: epochs x minibatches;
        REINFORCE: one batch); returns the mean losses (a dict, or one per run for a group).

        A rollout collected with ``graph=True`` is learned from in a single pass through its
        stored graphs (REINFORCE with one epoch and one minibatch only).
        """
        cfg = self.cfg
        if cfg.anneal_lr:
            frac = 1.0 - self.updates / max(self.num_updates, 1)
            for group in self.optimizer.param_groups:
                group["lr"] = frac * cfg.resolved("lr")
        batch = self.rollout_batch(ro)
        if ro.graph is not None:
            if not self.single_pass:
                raise ValueError("a rollout with a graph needs single-pass REINFORCE (algo "
                                 "'reinforce', update_epochs 1, minibatches 1)")
            loss, stats = self._single_pass_loss(ro, batch)
            ro.graph = None  # the graph is consumed by this backward pass
            self._step(loss)
            self.updates += 1
            return self._per_run_result(stats, 1)
        n = batch.obs.shape[1]
        minibatches = cfg.resolved("minibatches")
        mb = n // minibatches
        offsets = torch.arange(self.R, device=self.device).unsqueeze(1) * n
        sums: dict[str, Tensor] = {}
        count = 0
        for _ in range(cfg.resolved("update_epochs")):
            if minibatches > 1:
                # each run's own order from its own generator; one gather per epoch, then every
                # minibatch is a slice
                perm = torch.stack([torch.randperm(n, generator=g, device=self.device)
                                    for g in self.gens])
                flat = (perm + offsets).flatten()
                shuffled = Minibatch(*(x.flatten(0, 1).index_select(0, flat).view(x.shape)
                                       for x in batch))
            else:  # one minibatch is the whole rollout: no shuffle (its order does not matter)
                shuffled = batch
            for start in range(0, mb * minibatches, mb):
                stats = self.learn_minibatch(shuffled.rows(start, start + mb))
                for k, v in stats.items():
                    sums[k] = sums[k] + v if k in sums else v
                count += 1
        self.updates += 1
        return self._per_run_result(sums, count)

    def rollout_batch(self, ro: Rollout) -> Minibatch:
        """The rollout as one :class:`~oversight_gr.rl.losses.Minibatch` ``[R, T * B, ...]``
        (each run's steps, time-major): route labels, the method's training mask, and for PPO
        each run's advantages normalised over its trained steps."""
        adv, returns = self.advantages(ro)
        mask = train_mask(self.method, ro.labels)
        per_run = self.per_run
        if self.cfg.algo == "ppo":  # normalise each run's advantages over its trained steps
            a, m = per_run(adv), per_run(mask)
            count = m.sum(-1, keepdim=True)
            mean = (a * m).sum(-1, keepdim=True) / count.clamp_min(1.0)
            var = ((a - mean) ** 2 * m).sum(-1, keepdim=True) / (count - 1)
            adv = torch.where(count > 0, (a - mean) / (var.sqrt() + 1e-8), a)
        else:
            adv = per_run(adv)
        return Minibatch(per_run(ro.obs), per_run(ro.actions), per_run(ro.logp), adv,
                         per_run(returns), per_run(route_labels(ro.labels)), per_run(mask))

    def _single_pass_loss(self, ro: Rollout, batch: Minibatch):
        """The routed loss from the rollout's stored per-step graphs (no second forward): the
        routed mixture and head per step, then the same objective as :meth:`loss`."""
        R = self.R
        route_lbl = route_labels(ro.labels)
        logits, gates, values = [], [], []
        with self.autocast():
            for t, (feats, v) in enumerate(ro.graph):
                gate = feats.gate if isinstance(feats, MoEFeatures) else None
                out = self.mix(feats, self._route(route_lbl[t].view(R, -1), gate))
                logits.append(out.logits)
                gates.append(out.gate)
                values.append(v)
        out = MoEOutput(torch.cat(logits, 1), torch.cat(gates, 1))  # [R, T * B, ...]
        return routed_objective(out, torch.cat(values, 1), batch, self.objective_config)

    #: update statistics logged under charts/ (the rest of update's result under losses/)
    CHART_STATS = ("approx_kl", "clipfrac")

    def rollout_stats(self, ro: Rollout) -> dict[str, Tensor]:
        """Per-run ``[R]`` diagnostics of a rollout: episodes, reward per episode, the value
        net's explained variance of the returns, and (MoE methods) the mean gate on steps of
        overseen-diamond, overseen-ghost and unlabelled episodes (NaN where there are none);
        the counts of terminal episodes and of outcomes the supervisor observed."""
        T, R = ro.rewards.shape[0], self.R
        done = ro.done.view(T, R, -1)
        n_ep = done.sum((0, 2)).float()
        out = {"episodes": n_ep,
               "episode_reward": ro.rewards.view(done.shape).sum((0, 2)) / n_ep.clamp_min(1)}
        # what the supervisor saw: terminal episodes, and those whose outcome it observed
        seen, ended = outcome_counts(ro.outcome.view(T, R, -1))
        out["terminal_episodes"], out["overseen_outcomes"] = ended, seen
        _, returns = self.advantages(ro)
        ret, val = self.per_run(returns), self.per_run(ro.values)
        out["explained_variance"] = 1 - (ret - val).var(-1) / ret.var(-1)
        if ro.gate is not None:
            gate, lbl = self.per_run(ro.gate), self.per_run(route_labels(ro.labels))
            for name, code in (("diamond", ROUTE_DIAMOND), ("ghost", ROUTE_GHOST),
                               ("unlabelled", ROUTE_BOTH)):
                m = (lbl == code).float()
                out[f"gate_{name}"] = (gate * m).sum(-1) / m.sum(-1)
        return out

    def train_update(self):
        """Collect one window and learn from it; returns logged scalars (a dict, or one per run
        for a group): ``losses/*`` and ``charts/*`` (env steps, sps, episodes, reward, PPO's
        approx_kl and clipfrac, explained variance, learning rate, gate per route label)."""
        t0 = time.perf_counter()
        ro = self.collect(graph=self.single_pass)
        losses = self.update(ro)
        lr = self.optimizer.param_groups[0]["lr"]  # the rate this update stepped with
        dt = time.perf_counter() - t0
        diag = self.rollout_stats(ro)
        names = list(diag)
        table = torch.stack([diag[k].float() for k in names]).tolist()  # one host transfer
        runs = []
        for r in range(self.R):
            metrics = {f"{'charts' if k in self.CHART_STATS else 'losses'}/{k}": v
                       for k, v in (losses if self.single else losses[r]).items()}
            metrics.update({f"charts/{k}": table[i][r] for i, k in enumerate(names)})
            for k in ("episodes", "terminal_episodes", "overseen_outcomes"):
                metrics[f"charts/{k}"] = int(metrics[f"charts/{k}"])
            metrics["charts/sps"] = ro.rewards.numel() / dt
            metrics["charts/learning_rate"] = lr
            metrics["charts/env_steps"] = self.env_steps
            metrics["charts/reported_env_steps"] = self.reported_steps(r)
            runs.append(metrics)
        return runs[0] if self.single else runs

    def reported_steps(self, r: int = 0) -> float:
        """Run r's env steps on the paper's axis (:func:`~oversight_gr.rl.methods.
        paper_axis_steps`: the oracle's are divided by p)."""
        return paper_axis_steps(self.method, self.cfgs[r].oversight_prob, self.env_steps)

    @property
    def reported_env_steps(self) -> float:
        """A one-run trainer's env steps on the paper's axis (:meth:`reported_steps`)."""
        return self._one("reported_env_steps", self.reported_steps(0))

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Plain state dicts; a one-run trainer's ``policy`` / ``value`` entries are its
        modules' state dicts, a group's are the stacked ``[R, ...]`` tensors."""
        def part(prefix: str) -> dict[str, Tensor]:
            return {n[len(prefix):]: p.detach() for n, p in self.params.items()
                    if n.startswith(prefix)}

        single = self.R == 1
        return {
            "policy": self._policy.state_dict() if single else part("policy."),
            "value": self._value.state_dict() if single else part("value."),
            "optimizer": self.optimizer.state_dict(),
            "rules": self.rules[0].get_state() if single else [r.get_state() for r in self.rules],
            "gen": self.gens[0].get_state() if single else [g.get_state() for g in self.gens],
            "obs": self.obs,
            "env_steps": torch.tensor(self.env_steps),
            "updates": torch.tensor(self.updates),
            "wall_seconds": torch.tensor(self.wall_seconds, dtype=torch.float64),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.R == 1:
            self._policy.load_state_dict(state["policy"])
            self._value.load_state_dict(state["value"])
            rules, gens = [state["rules"]], [state["gen"]]
        else:
            with torch.no_grad():
                for prefix in ("policy", "value"):
                    for n, t in state[prefix].items():
                        self.params[f"{prefix}.{n}"].copy_(t)
            rules, gens = state["rules"], state["gen"]
        self.optimizer.load_state_dict(state["optimizer"])
        for r, s in zip(self.rules, rules):
            r.set_state(s)
        for g, s in zip(self.gens, gens):
            g.set_state(s)
        self.obs = state["obs"].to(self.device)
        self.env_steps = int(state["env_steps"])
        self.updates = int(state["updates"])
        self.wall_seconds = float(state.get("wall_seconds", 0.0))

    def config_json(self) -> Any:
        """What ``config.json`` holds: the config (one run) or the list of configs (a group)."""
        return self.cfg.to_dict() if self.single else [c.to_dict() for c in self.cfgs]

    def save(self, directory: str | Path, extra: dict[str, Any] | None = None) -> Path:
        """Write ``checkpoint.pt`` (plain state dicts) and ``config.json`` atomically (temporary
        names unique per writer; a failed write, such as a full disk, keeps the previous files
        and raises :class:`~oversight_gr.records.WriteError`). ``extra``: plain data (numbers,
        strings, lists, dicts) kept with the checkpoint, back in :attr:`saved_extra` after
        :meth:`load`."""
        d = Path(directory)
        state = self.state_dict()
        if extra is not None:
            state["extra"] = extra
        write_atomic(d / "checkpoint.pt", lambda f: torch.save(state, f))
        write_json_atomic(d / "config.json", self.config_json())
        return d / "checkpoint.pt"

    @classmethod
    def load(cls, directory: str | Path, **overrides: Any) -> Trainer:
        """Rebuild a trainer (one run or a group) from ``save``'s files
        (``weights_only=True``); ``overrides`` apply to every run's config."""
        d = Path(directory)
        how = f"; move {d} aside or train again with --overwrite"
        try:
            saved = json.loads((d / "config.json").read_text())
            if isinstance(saved, list):
                trainer = cls([config_from_dict({**c, **overrides}) for c in saved])
            else:
                trainer = cls(config_from_dict({**saved, **overrides}))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, TypeError, ValueError) as exc:
            raise ValueError(f"{d / 'config.json'} is not a usable run config "
                             f"({type(exc).__name__}: {exc}){how}") from None
        try:
            state = torch.load(d / "checkpoint.pt", map_location=trainer.device,
                               weights_only=True)
            trainer.load_state_dict(state)
            extra = state.get("extra", {})
            trainer.saved_extra = extra if isinstance(extra, dict) else {}
        except Exception as exc:  # noqa: BLE001 - truncated zip, pickle error, wrong keys/shapes
            raise ValueError(f"{d / 'checkpoint.pt'} is not a readable checkpoint of this run "
                             f"({type(exc).__name__}: {str(exc)[:200]}){how}") from None
        return trainer


def config_from_dict(saved: Any) -> TrainConfig:
    """A stored config (``config.json``, a record's ``config``) as a TrainConfig. Every field
    must be present, as for records (:mod:`oversight_gr.records`): filling a field added since
    with today's default would credit the run to a setting it never trained with."""
    if not isinstance(saved, dict):
        raise TypeError(f"a stored config is a JSON object, got {type(saved).__name__}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    missing = sorted(names - set(saved))
    if missing:
        raise ValueError(f"the stored config lacks fields {missing} (written by an older "
                         "version of oversight-gr)")
    unknown = sorted(set(saved) - names)
    if unknown:
        raise ValueError(f"the stored config has fields {unknown} that TrainConfig does not")
    unresolved = [k for k in ALGO_DEFAULTS.get(saved.get("algo"), {}) if saved[k] is None]
    if unresolved:
        raise ValueError(
            f"the stored config leaves {unresolved} at None (written before configs stored "
            "their per-algorithm defaults resolved); which values it trained with cannot be "
            "told: the defaults changed without a version change (unlabelled_sharpness for "
            "PPO went from 1 to 3), so it is not credited to today's; if you know them, write "
            "them into the file")
    return TrainConfig(**saved)


def config_replace(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    return dataclasses.replace(cfg, **changes)
