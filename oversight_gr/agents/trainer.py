"""The trainer: batched rollouts on :class:`GridRules`, routed REINFORCE / PPO updates.

The loop reads top to bottom (:meth:`Trainer.train_update`): collect a ``rollout_steps`` x
``num_envs`` window, label every step with its episode's observed outcome, compute the method's
reward, returns and advantages, then update with the routed loss (the same term for both
algorithms; only the advantage estimate and the number of passes differ).

Steps of episodes still running when the window ends are unlabelled and train both experts and
the gate, as in the paper (their label is not known yet); this is the documented choice.

Single-pass REINFORCE (one epoch, one minibatch: the paper's setting) does not run the networks a
second time for the update. The rollout keeps the autograd graph of every step's expert outputs,
gate and value; once the window's labels are known, only the cheap routed mixture and head are
recomputed per step, and one backward pass goes through the stored graphs. The parameters do
not change between acting and learning, so this is the same gradient as a fresh forward pass
(tested against the two-pass path). It is used in fp32 and bf16_matmul, where it is faster
(fp32, paper size: 0.40-0.41 s against 0.51-0.53 s per routing update). Under bf16 autocast the
32 step-sized backward passes over bf16 activations are slower than one batched forward and
backward (0.22-0.24 s against 0.21 s in steady state), so there the two-pass update is used.
benchmarks/train_throughput.py prints both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from oversight_gr.agents.methods import (
    METHODS,
    Method,
    advantages_and_returns,
    episode_labels,
    gate_bce,
    masked_mean,
    method_reward,
    policy_terms,
    route_labels,
    route_weights,
    train_mask,
)
from oversight_gr.agents.networks import (
    GATE_INPUTS,
    MoEOutput,
    MoEPolicy,
    RouteWeights,
    SingleExpertPolicy,
    ValueNet,
    orthogonal_init,
)
from oversight_gr.config import option, to_dict, validate
from oversight_gr.envs.core import GridRules
from oversight_gr.precision import PRECISIONS, backward_context, precision_context

__all__ = ["TrainConfig", "Trainer", "ALGOS", "ALGO_DEFAULTS"]

log = logging.getLogger(__name__)

ALGOS = ("ppo", "reinforce")
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
    num_envs: int = option(512, "parallel environments per rollout", low=1)
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
    eval_envs: int = option(512, "environments in each evaluation", low=1)
    seed: int = option(0, "seed for parameters, environments and sampling", low=0)
    device: str = option("cpu", "torch device (cpu, cuda, cuda:1, ...)")
    threads: int = option(1, "torch CPU threads (1 is fastest on a busy 2-core machine)", low=1)
    init: str = option("orthogonal", "parameter initialisation: PyTorch's default ('torch') or 'orthogonal' "
                       "(gain sqrt 2, action head 0.01)", choices=("torch", "orthogonal"))
    precision: str = option("fp32", "numeric precision: 'fp32'; 'bf16' autocast (bf16 matrix "
                            "multiplies and activations); 'bf16_matmul' (fp32 tensors, bf16/TF32 "
                            "inside matrix multiplies: the fastest on CPUs with AMX). Parameters "
                            "and optimizer state stay fp32", choices=PRECISIONS)

    def __post_init__(self):
        validate(self)
        if self.num_envs * self.rollout_steps < self.resolved("minibatches"):
            raise ValueError(
                f"minibatches ({self.resolved('minibatches')}) must not exceed num_envs x "
                f"rollout_steps ({self.num_envs * self.rollout_steps})"
            )

    def resolved(self, name: str) -> Any:
        """The field's value, or its per-algorithm default when left at None."""
        value = getattr(self, name)
        return ALGO_DEFAULTS[self.algo][name] if value is None else value

    @property
    def method_spec(self) -> Method:
        return METHODS[self.method]

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


@dataclass
class Rollout:
    obs: Tensor  # [T, B, 4, n, n] uint8
    actions: Tensor  # [T, B]
    logp: Tensor  # [T, B]
    values: Tensor  # [T, B]
    next_values: Tensor  # [T, B] value of the next state (0 after termination)
    rewards: Tensor  # [T, B]
    done: Tensor  # [T, B] bool
    labels: Tensor  # [T, B] observed outcome of the step's episode (NONE if unfinished)
    outcome: Tensor  # [T, B] observed outcome at the step (NONE mid-episode)
    true_outcome: Tensor  # [T, B] ground truth (evaluation / oracle only)
    #: per step (policy features, value) with their autograd graphs (single-pass REINFORCE)
    graph: list | None = None


def build_policy(cfg: TrainConfig) -> nn.Module:
    m = cfg.method_spec
    if m.policy == "moe":
        return MoEPolicy(cfg.size, cfg.hidden, cfg.gate_input, constant_gate=m.constant_gate)
    return SingleExpertPolicy(cfg.size, cfg.hidden)


class Trainer:
    """Train one method on OversightGrid. Same seed, same numbers on CPU.

    Args:
        cfg: the run's :class:`TrainConfig`.
    """

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.method = cfg.method_spec
        self.device = torch.device(cfg.device)
        torch.set_num_threads(cfg.threads)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            self.policy = build_policy(cfg).to(self.device)
            self.value = ValueNet(cfg.size, cfg.hidden).to(self.device)
            if cfg.init == "orthogonal":
                orthogonal_init(self.policy)
                orthogonal_init(self.value)
        params = list(self.policy.parameters()) + list(self.value.parameters())
        self.optimizer = torch.optim.Adam(params, lr=cfg.resolved("lr"), eps=1e-5)
        self.rules = GridRules(
            cfg.num_envs,
            size=cfg.size,
            max_episode_steps=cfg.max_episode_steps,
            oversight_prob=cfg.oversight_prob,
            spurious_prob=cfg.spurious_prob,
            reward_mode="terminal",  # unused: rewards come from observed outcomes (methods.py)
            device=self.device,
            seed=cfg.seed + 1,
        )
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.seed + 2)
        self.obs = self.rules.reset()
        self.env_steps = 0
        self.updates = 0
        self.num_updates = math.ceil(cfg.total_env_steps / (cfg.num_envs * cfg.rollout_steps))
        # hook for tests (honesty guard): transforms each StepResult before the learner sees it
        self.step_filter: Callable | None = None
        #: learn from the rollout's own graph (see the module docstring); tests may turn it off
        #: (not under bf16 autocast, where the two-pass update is faster in steady state)
        self.single_pass = (cfg.algo == "reinforce" and cfg.resolved("update_epochs") == 1
                            and cfg.resolved("minibatches") == 1 and cfg.precision != "bf16")

    def autocast(self):
        """The configured numeric precision (:mod:`oversight_gr.precision`) for a block."""
        return precision_context(self.cfg.precision, self.device)

    # -- data ----------------------------------------------------------------------------------
    def collect(self, graph: bool = False) -> Rollout:
        """Run ``rollout_steps`` moves in every environment with the current policy.

        Args:
            graph: keep each step's policy features and value with their autograd graphs in
                ``Rollout.graph`` (for :meth:`update`'s single pass); otherwise no graph is built.
        """
        # one precision region for the whole window (bf16 weight casts are cached across steps)
        with torch.set_grad_enabled(graph), self.autocast():
            return self._collect(graph)

    def _collect(self, graph: bool) -> Rollout:
        cfg, dev = self.cfg, self.device
        T, B = cfg.rollout_steps, cfg.num_envs
        obs = self.obs
        obs_buf = torch.empty((T, *obs.shape), dtype=torch.uint8, device=dev)
        actions = torch.empty(T, B, dtype=torch.long, device=dev)
        logp = torch.empty(T, B, device=dev)
        values = torch.empty(T + 1, B, device=dev)  # row T: value of the state after the window
        trunc_values = torch.zeros(T, B, device=dev)  # value of the final obs of cut episodes
        terminated = torch.empty(T, B, dtype=torch.bool, device=dev)
        truncated = torch.empty(T, B, dtype=torch.bool, device=dev)
        outcome = torch.empty(T, B, dtype=torch.long, device=dev)
        true_outcome = torch.empty(T, B, dtype=torch.long, device=dev)
        kept: list | None = [] if graph else None
        shared_fold = getattr(self.policy, "shared_gate_fold", contextlib.nullcontext)
        with shared_fold():  # parameters are fixed during the window
            for t in range(T):
                obs_buf[t] = obs
                feats = self.policy.features(obs)
                v = self.value(obs)
                if kept is not None:
                    kept.append((feats, v))
                with torch.no_grad():
                    logits = self.policy.mix(feats).logits.float()
                    values[t] = v.float()
                    probs = torch.softmax(logits, -1)
                    a = torch.multinomial(probs, 1, generator=self.gen).squeeze(1)
                    actions[t] = a
                    logp[t] = torch.log_softmax(logits, -1).gather(1, a.unsqueeze(1)).squeeze(1)
                    r = self.rules.step(a)
                    if self.step_filter is not None:
                        r = self.step_filter(r)
                    obs = r.obs
                    if cfg.bootstrap and bool(r.truncated.any()):
                        cut = self.value(r.final_obs).float()
                        trunc_values[t] = torch.where(r.truncated, cut, 0.0)
                    terminated[t], truncated[t] = r.terminated, r.truncated
                    outcome[t] = r.outcome
                    true_outcome[t] = r.true_outcome
        with torch.no_grad():
            values[T] = self.value(obs).float()
        next_values = values[1:]
        if cfg.bootstrap:
            next_values = torch.where(truncated, trunc_values, next_values)
        done = terminated | truncated
        next_values = torch.where(terminated if cfg.bootstrap else done, 0.0, next_values)
        if not cfg.bootstrap:
            next_values[T - 1] = 0.0  # the paper's REINFORCE: no bootstrap at the window's end
        self.obs = obs
        self.env_steps += T * B
        labels = episode_labels(outcome, done)
        rewards = method_reward(self.method, outcome, true_outcome)
        return Rollout(obs_buf, actions, logp, values[:T], next_values, rewards, done, labels,
                       outcome, true_outcome, kept)

    def advantages(self, ro: Rollout) -> tuple[Tensor, Tensor]:
        """(advantages, returns) ``[T, B]``: GAE for PPO, Monte-Carlo returns for REINFORCE."""
        cfg = self.cfg
        lam = cfg.gae_lambda if cfg.algo == "ppo" else 1.0
        return advantages_and_returns(ro.rewards, ro.values, ro.next_values, ro.done, cfg.gamma,
                                      lam)

    # -- learning ------------------------------------------------------------------------------
    def _route(self, route_lbl: Tensor, gate: Tensor | None) -> RouteWeights | None:
        """Route weights for the labels; ``gate`` is used (detached) only when sharpness != 1."""
        if not self.method.route:
            return None
        cfg = self.cfg
        return route_weights(route_lbl.to(self.device), gate, cfg.unlabelled_gate_grad,
                             cfg.resolved("unlabelled_sharpness"))

    def loss(self, obs, actions, old_logp, adv, returns, labels, mask) -> tuple[Tensor, dict]:
        """The routed loss on a batch of steps (shared by PPO and REINFORCE)."""
        route_lbl = route_labels(labels)
        with self.autocast():
            feats = self.policy.features(obs)
            out = self.policy.mix(feats, self._route(route_lbl, getattr(feats, "gate", None)))
            values = self.value(obs)
        return self.objective(out, values, actions, old_logp, adv, returns, route_lbl, mask)

    def objective(self, out, values, actions, old_logp, adv, returns, route_lbl, mask):
        """Policy-gradient, value, entropy and gate terms from the networks' outputs."""
        cfg = self.cfg
        pg, entropy = policy_terms(out.logits, actions, old_logp, adv, cfg.algo, cfg.clip_coef)
        pg_loss = masked_mean(pg, mask)
        v_loss = masked_mean((values.float() - returns) ** 2, mask)
        ent = masked_mean(entropy, mask)
        total = pg_loss + cfg.vf_coef * v_loss - cfg.resolved("ent_coef") * ent
        gate_loss = torch.zeros((), device=self.device)
        if self.method.gate_loss:
            bce = gate_bce(out.gate, route_lbl)
            if bce is not None:
                gate_loss = bce
                total = total + cfg.resolved("gate_loss_coef") * gate_loss
        stats = {"policy": pg_loss.detach(), "value": v_loss.detach(), "entropy": ent.detach(),
                 "gate": gate_loss.detach()}
        return total, stats

    def _step(self, loss: Tensor) -> None:
        cfg = self.cfg
        if cfg.anneal_lr:
            frac = 1.0 - self.updates / max(self.num_updates, 1)
            for group in self.optimizer.param_groups:
                group["lr"] = frac * cfg.resolved("lr")
        self.optimizer.zero_grad(set_to_none=True)
        with backward_context(cfg.precision):
            loss.backward()
        if cfg.resolved("max_grad_norm") > 0:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            nn.utils.clip_grad_norm_(params, cfg.resolved("max_grad_norm"))
        self.optimizer.step()

    def update(self, ro: Rollout) -> dict[str, float]:
        """One learning step on a rollout (PPO: epochs x minibatches; REINFORCE: one batch).

        A rollout collected with ``graph=True`` is learned from in a single pass through its
        stored graphs (REINFORCE with one epoch and one minibatch only).
        """
        cfg = self.cfg
        adv, returns = self.advantages(ro)
        mask = train_mask(self.method, ro.labels)
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
        if ro.graph is not None:
            if not self.single_pass:
                raise ValueError("a rollout with a graph needs single-pass REINFORCE (algo "
                                 "'reinforce', update_epochs 1, minibatches 1)")
            loss, stats = self._single_pass_loss(ro, adv, returns, mask)
            ro.graph = None  # the graph is consumed by this backward pass
            self._step(loss)
            self.updates += 1
            return {k: float(v) for k, v in stats.items()}
        obs, actions, old_logp = flat(ro.obs), flat(ro.actions), flat(ro.logp)
        adv, returns, labels, mask = flat(adv), flat(returns), flat(ro.labels), flat(mask)
        if cfg.algo == "ppo":
            m = mask.bool()
            if bool(m.any()):
                a = adv[m]
                adv = (adv - a.mean()) / (a.std() + 1e-8)
        n = obs.shape[0]
        mb = n // cfg.resolved("minibatches")
        sums: dict[str, Tensor] = {}
        count = 0
        for _ in range(cfg.resolved("update_epochs")):
            perm = torch.randperm(n, generator=self.gen, device=self.device)
            for start in range(0, mb * cfg.resolved("minibatches"), mb):
                idx = perm[start : start + mb]
                loss, stats = self.loss(obs[idx], actions[idx], old_logp[idx], adv[idx],
                                        returns[idx], labels[idx], mask[idx])
                self._step(loss)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                count += 1
        self.updates += 1
        return {k: float(v) / count for k, v in sums.items()}

    def _single_pass_loss(self, ro: Rollout, adv: Tensor, returns: Tensor, mask: Tensor):
        """The routed loss from the rollout's stored per-step graphs (no second forward)."""
        route_lbl = route_labels(ro.labels)
        logits, gates, values = [], [], []
        with self.autocast():
            for t, (feats, v) in enumerate(ro.graph):
                gate = getattr(feats, "gate", None)
                out = self.policy.mix(feats, self._route(route_lbl[t], gate))
                logits.append(out.logits)
                gates.append(out.gate)
                values.append(v)
        out = MoEOutput(torch.cat(logits), torch.cat(gates))
        flat = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
        return self.objective(out, torch.cat(values), flat(ro.actions), flat(ro.logp), flat(adv),
                              flat(returns), flat(route_lbl), flat(mask))

    def train_update(self) -> dict[str, float]:
        """Collect one window and learn from it; returns logged scalars."""
        t0 = time.perf_counter()
        ro = self.collect(graph=self.single_pass)
        losses = self.update(ro)
        dt = time.perf_counter() - t0
        ended = ro.done
        n_ep = int(ended.sum())
        metrics = {f"losses/{k}": v for k, v in losses.items()}
        metrics["charts/sps"] = ro.rewards.numel() / dt
        metrics["charts/episodes"] = n_ep
        metrics["charts/episode_reward"] = float(ro.rewards.sum()) / max(n_ep, 1)
        metrics["charts/env_steps"] = self.env_steps
        metrics["charts/reported_env_steps"] = self.reported_env_steps
        return metrics

    @property
    def reported_env_steps(self) -> float:
        """Env steps on the paper's axis (the oracle is charged only the fraction p)."""
        scale = self.cfg.oversight_prob if self.method.oracle_scale else 1.0
        return self.env_steps * scale

    # -- checkpoints ---------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.state_dict(),
            "value": self.value.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rules": self.rules.get_state(),
            "gen": self.gen.get_state(),
            "obs": self.obs,
            "env_steps": torch.tensor(self.env_steps),
            "updates": torch.tensor(self.updates),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.value.load_state_dict(state["value"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rules.set_state(state["rules"])
        self.gen.set_state(state["gen"])
        self.obs = state["obs"].to(self.device)
        self.env_steps = int(state["env_steps"])
        self.updates = int(state["updates"])

    def save(self, directory: str | Path) -> Path:
        """Write ``checkpoint.pt`` (plain state dicts) and ``config.json`` atomically."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "checkpoint.pt.tmp"
        torch.save(self.state_dict(), tmp)
        tmp.replace(d / "checkpoint.pt")
        cfg_tmp = d / "config.json.tmp"
        cfg_tmp.write_text(json.dumps(self.cfg.to_dict(), indent=2))
        cfg_tmp.replace(d / "config.json")
        return d / "checkpoint.pt"

    @classmethod
    def load(cls, directory: str | Path, **overrides: Any) -> Trainer:
        """Rebuild a trainer from ``save``'s files (``weights_only=True``)."""
        d = Path(directory)
        cfg_dict = json.loads((d / "config.json").read_text())
        cfg_dict.update(overrides)
        trainer = cls(TrainConfig(**cfg_dict))
        state = torch.load(d / "checkpoint.pt", map_location=trainer.device, weights_only=True)
        trainer.load_state_dict(state)
        return trainer


def config_replace(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    return dataclasses.replace(cfg, **changes)
