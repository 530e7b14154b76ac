"""Many training runs in one process, batched over runs: one GPU (or CPU) trains a whole group.

A group is R runs of the same method and algorithm that differ only in ``seed`` and
``oversight_prob``. Their parameters are stacked with a leading run dimension (a linear layer
is a ``[R, in, out]`` weight and a ``[R, out]`` bias, applied with one batched matrix multiply),
their ``R x num_envs`` environments step together in one :class:`GridRules` whose oversight
probability is per environment, and one optimizer step updates every run:

* the loss is the sum of the runs' own losses, each a mean over that run's steps only, so the
  gradient reaching run r's parameters is exactly run r's gradient;
* Adam is elementwise, so one Adam over the stacked parameters is R independent Adams;
* gradient-norm clipping and PPO's advantage normalisation are computed per run.

Each run therefore follows the same update rule as a :class:`Trainer` run of its config (tested
to 1e-5 on identical rollouts). Its random numbers are not the same: the environments and action
sampling of a group share one generator, seeded from the group's (seed, oversight) list, so a
batched run is reproducible given its group but is not bit-identical to the same config trained
alone. Evaluation is per run, on ordinary modules from :meth:`BatchedTrainer.unstack`, with the
same code and seeds as a single run.

All gradient masks go through :mod:`oversight_gr.agents.methods` (labels, rewards, train mask,
route weights, gate loss) and :func:`oversight_gr.routing.two_expert_mixture`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from oversight_gr.agents.methods import (
    advantages_and_returns,
    episode_labels,
    gate_bce_rows,
    masked_mean,
    method_reward,
    policy_terms,
    route_labels,
    route_weights,
    train_mask,
)
from oversight_gr.agents.networks import (
    STEER,
    MoEOutput,
    RouteWeights,
    ValueNet,
    orthogonal_init,
)
from oversight_gr.agents.trainer import Rollout, TrainConfig, Trainer, build_policy
from oversight_gr.envs.core import GridRules, StepResult
from oversight_gr.routing import two_expert_mixture

__all__ = ["GROUP_AXES", "BatchedTrainer", "check_group", "group_key", "collect_rollout",
           "init_networks", "run_batched_training"]

#: the TrainConfig fields that may differ between the runs of a group
GROUP_AXES = ("seed", "oversight_prob")


def group_key(cfg: TrainConfig) -> str:
    """Runs with equal keys can share a :class:`BatchedTrainer` (all fields but GROUP_AXES)."""
    shared = {k: v for k, v in cfg.to_dict().items() if k not in GROUP_AXES}
    return json.dumps(shared, sort_keys=True, default=str)


def check_group(cfgs: Sequence[TrainConfig]) -> None:
    """Raise ValueError unless ``cfgs`` is a non-empty list of configs that differ only in
    :data:`GROUP_AXES`, naming the first field that differs."""
    cfgs = list(cfgs)
    if not cfgs:
        raise ValueError("a batched group needs at least one TrainConfig")
    for i, cfg in enumerate(cfgs):
        if not isinstance(cfg, TrainConfig):
            raise ValueError(f"run {i} of the group is a {type(cfg).__name__}, not a TrainConfig")
    first = cfgs[0].to_dict()
    for i, cfg in enumerate(cfgs[1:], start=1):
        for name, value in cfg.to_dict().items():
            if name not in GROUP_AXES and value != first[name]:
                raise ValueError(
                    f"the runs of a batched group may differ only in {GROUP_AXES}; run {i} has "
                    f"{name}={value!r} but run 0 has {name}={first[name]!r}"
                )


def init_networks(cfg: TrainConfig, device: torch.device) -> tuple[nn.Module, ValueNet]:
    """The run's initial policy and value net, exactly as :class:`Trainer` builds them (same
    seed, same parameters; tested)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        policy = build_policy(cfg).to(device)
        value = ValueNet(cfg.size, cfg.hidden).to(device)
        if cfg.init == "orthogonal":
            orthogonal_init(policy)
            orthogonal_init(value)
    return policy, value


def _group_seed(cfgs: Sequence[TrainConfig]) -> int:
    text = json.dumps([[c.seed, c.oversight_prob] for c in cfgs])
    return int(hashlib.sha256(text.encode()).hexdigest()[:15], 16)


# -- rollouts (shared by any learner that acts with logits and values) --------------------------
def collect_rollout(
    rules: GridRules,
    obs: Tensor,
    act: Callable[[Tensor], tuple[Tensor, Tensor]],
    value: Callable[[Tensor], Tensor],
    gen: torch.Generator,
    steps: int,
    *,
    bootstrap: bool,
    method,
    step_filter: Callable[[StepResult], StepResult] | None = None,
) -> tuple[Rollout, Tensor]:
    """Run ``steps`` moves in every environment of ``rules``; returns the rollout and the
    observation to act on next.

    Args:
        obs: ``[B, 4, n, n]`` current observations.
        act: ``obs [B, ...] -> (logits [B, 4], value [B])``; actions are sampled from the logits
            with ``gen``.
        value: ``obs [B, ...] -> [B]`` state values of the final observations of truncated
            episodes (when bootstrapping) and of the state after the window.
        bootstrap: bootstrap from the value at truncations and at the window's end (else the
            paper's REINFORCE returns: nothing after an episode's end or the window's end).
        method: the :class:`~oversight_gr.agents.methods.Method` whose reward is computed.
    """
    dev = obs.device
    T, B = steps, obs.shape[0]
    obs_buf = torch.empty((T, *obs.shape), dtype=torch.uint8, device=dev)
    actions = torch.empty(T, B, dtype=torch.long, device=dev)
    logp = torch.empty(T, B, device=dev)
    values = torch.empty(T + 1, B, device=dev)  # row T: the state after the window
    trunc_values = torch.zeros(T, B, device=dev)  # final obs of episodes cut by truncation
    terminated = torch.empty(T, B, dtype=torch.bool, device=dev)
    truncated = torch.empty(T, B, dtype=torch.bool, device=dev)
    outcome = torch.empty(T, B, dtype=torch.long, device=dev)
    true_outcome = torch.empty(T, B, dtype=torch.long, device=dev)
    for t in range(T):
        obs_buf[t] = obs
        logits, v = act(obs)
        logits = logits.float()
        values[t] = v.float()
        a = torch.multinomial(torch.softmax(logits, -1), 1, generator=gen).squeeze(1)
        actions[t] = a
        logp[t] = torch.log_softmax(logits, -1).gather(1, a.unsqueeze(1)).squeeze(1)
        r = rules.step(a)
        if step_filter is not None:
            r = step_filter(r)
        obs = r.obs
        if bootstrap and bool(r.truncated.any()):
            trunc_values[t] = torch.where(r.truncated, value(r.final_obs).float(), 0.0)
        terminated[t], truncated[t] = r.terminated, r.truncated
        outcome[t] = r.outcome
        true_outcome[t] = r.true_outcome
    values[T] = value(obs).float()
    done = terminated | truncated
    next_values = values[1:]
    if bootstrap:
        next_values = torch.where(truncated, trunc_values, next_values)
    next_values = torch.where(terminated if bootstrap else done, 0.0, next_values)
    if not bootstrap:
        next_values[T - 1] = 0.0  # the paper's REINFORCE: no bootstrap at the window's end
    labels = episode_labels(outcome, done)
    rewards = method_reward(method, outcome, true_outcome)
    ro = Rollout(obs_buf, actions, logp, values[:T], next_values, rewards, done, labels, outcome,
                 true_outcome)
    return ro, obs


# -- stacked parameters ---------------------------------------------------------------------------
def _layers(module: nn.Module) -> list[tuple[str, nn.Module]]:
    """The module's Linear / Conv2d layers in order, by name."""
    return [(n, m) for n, m in module.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]


def _stack(modules: Sequence[nn.Module], prefix: str) -> dict[str, Tensor]:
    """``{prefix + layer name + ".weight"/".bias": [R, in, out] / [R, out]}`` (weights are
    stored transposed so that ``x @ W`` is a plain batched matmul; a 1x1 conv is a linear map
    over channels)."""
    out = {}
    per_layer = [_layers(m) for m in modules]
    for i, (name, _) in enumerate(per_layer[0]):
        layers = [pl[i][1] for pl in per_layer]
        w = torch.stack([m.weight.detach().flatten(1).t() for m in layers])
        b = torch.stack([m.bias.detach() for m in layers])
        out[f"{prefix}{name}.weight"] = w.contiguous().requires_grad_(True)
        out[f"{prefix}{name}.bias"] = b.contiguous().requires_grad_(True)
    return out


def _linear(x: Tensor, w: Tensor, b: Tensor) -> Tensor:
    """``x [R, N, in] @ w [R, in, out] + b [R, out]`` -> ``[R, N, out]``."""
    return torch.baddbmm(b.unsqueeze(1), x, w)


class BatchedTrainer:
    """Train a group of runs (same method and algorithm; seeds and oversight levels free) at once.

    Args:
        cfgs: the runs' configs (:func:`check_group` must accept them). Run r keeps its own
            parameters (initialised exactly as :class:`Trainer` would), optimizer state,
            ``num_envs`` environments at its own oversight level, and losses.

    Shapes: ``R`` runs, ``B = num_envs`` environments per run; rollouts are ``[T, R * B]`` with
    run r's environments at columns ``r * B ... (r + 1) * B - 1``.
    """

    def __init__(self, cfgs: Sequence[TrainConfig]):
        check_group(cfgs)
        self.cfgs = list(cfgs)
        self.cfg = cfg = self.cfgs[0]
        self.R = len(self.cfgs)
        self.method = cfg.method_spec
        self.device = torch.device(cfg.device)
        torch.set_num_threads(cfg.threads)
        nets = [init_networks(c, self.device) for c in self.cfgs]
        self.params: dict[str, Tensor] = {
            **_stack([p for p, _ in nets], "policy."),
            **_stack([v for _, v in nets], "value."),
        }
        self._policy_layers = [n for n, _ in _layers(nets[0][0])]
        self._value_layers = [n for n, _ in _layers(nets[0][1])]
        self.optimizer = torch.optim.Adam(list(self.params.values()), lr=cfg.resolved("lr"),
                                          eps=1e-5)
        B = cfg.num_envs
        probs = torch.tensor([c.oversight_prob for c in self.cfgs], dtype=torch.float64)
        seed = _group_seed(self.cfgs)
        self.rules = GridRules(
            self.R * B,
            size=cfg.size,
            max_episode_steps=cfg.max_episode_steps,
            oversight_prob=probs.repeat_interleave(B),
            spurious_prob=cfg.spurious_prob,
            reward_mode="terminal",  # unused: rewards come from observed outcomes (methods.py)
            device=self.device,
            seed=seed,
        )
        self.gen = torch.Generator(device=self.device).manual_seed(seed + 1)
        self.obs = self.rules.reset()
        self.env_steps = 0  # per run
        self.updates = 0
        self.num_updates = math.ceil(cfg.total_env_steps / (cfg.num_envs * cfg.rollout_steps))
        self._modules: dict[int, tuple[nn.Module, ValueNet]] = {}
        #: learn from the rollout's own graph (see :meth:`update`); tests may turn it off
        self.single_pass = (cfg.algo == "reinforce" and cfg.resolved("update_epochs") == 1
                            and cfg.resolved("minibatches") == 1)

    #: the configured numeric precision for a block, exactly as a single run's (it reads only
    #: ``cfg.precision`` and ``device``)
    autocast = Trainer.autocast

    # -- networks ---------------------------------------------------------------------------------
    def _mlp(self, x: Tensor, names: Sequence[str], relu_last: bool = True) -> Tensor:
        P = self.params
        for i, name in enumerate(names):
            x = _linear(x, P[name + ".weight"], P[name + ".bias"])
            if relu_last or i < len(names) - 1:
                x = torch.relu(x)
        return x

    def _group(self, prefix: str) -> list[str]:
        return [f"policy.{n}" for n in self._policy_layers if n.startswith(prefix)]

    def gate_value(self, obs: Tensor) -> Tensor:
        """``[R, N]`` gate of each run (MoE methods), like ``MoEPolicy.gate_value``."""
        x = obs.float()
        R, N = x.shape[:2]
        const = self.method.constant_gate
        if const is not None:
            return torch.full((R, N), float(const), device=x.device)
        if self.cfg.gate_input == "no_oversight":
            x = torch.cat([x[:, :, :3], torch.zeros_like(x[:, :, 3:])], dim=2)
        P = self.params
        # the 1x1 conv: a [R, 4, 4] linear map over channels at every cell, output channel-major
        y = torch.einsum("rncp,rcd->rndp", x.flatten(3), P["policy.gate_conv.weight"])
        y = (y + P["policy.gate_conv.bias"][:, None, :, None]).flatten(2)
        return torch.sigmoid(self._mlp(y, self._group("gate_mlp."), relu_last=False)).squeeze(-1)

    def features(self, obs: Tensor, steer: str = "none") -> tuple[Tensor, ...]:
        """Everything the actor computes before the mixture, ``obs [R, N, 4, n, n]`` ->
        ``(diamond expert [R, N, H], ghost expert [R, N, H], gate [R, N])`` for MoE methods,
        ``(body [R, N, H],)`` for single-expert ones."""
        if steer not in STEER:
            raise ValueError(f"steer must be one of {STEER}, got {steer!r}")
        x = obs.float().flatten(2)
        R, N = x.shape[:2]
        if self.method.policy != "moe":
            return (self._mlp(x, self._group("body.")),)
        if steer == "diamond":
            gate = torch.ones(R, N, device=x.device)
        elif steer == "ghost":
            gate = torch.zeros(R, N, device=x.device)
        else:
            gate = self.gate_value(obs)
        e_d = self._mlp(x, self._group("expert_diamond."))
        e_g = self._mlp(x, self._group("expert_ghost."))
        return e_d, e_g, gate

    def mix(self, feats: tuple[Tensor, ...], route: RouteWeights | None = None) -> MoEOutput:
        """:meth:`features` -> logits ``[R, N, 4]`` and gate ``[R, N]`` (NaN for single-expert
        methods); ``route`` holds ``[R * N]`` gradient weights (run-major)."""
        P = self.params
        if len(feats) == 1:
            h = feats[0]
            logits = _linear(h, P["policy.head.weight"], P["policy.head.bias"])
            return MoEOutput(logits, torch.full(h.shape[:2], float("nan"), device=h.device))
        e_d, e_g, gate = feats
        R, N = gate.shape
        weights = () if route is None else (route.diamond, route.ghost, route.gate)
        h = two_expert_mixture(e_d.flatten(0, 1), e_g.flatten(0, 1), gate.flatten(), *weights)
        logits = _linear(h.view(R, N, -1), P["policy.head.weight"], P["policy.head.bias"])
        return MoEOutput(logits, gate)

    def policy(self, obs: Tensor, route: RouteWeights | None = None,
               steer: str = "none") -> MoEOutput:
        """Every run's actor on its own observations: ``obs [R, N, 4, n, n]`` -> logits
        ``[R, N, 4]`` and gate ``[R, N]`` (NaN for single-expert methods). ``route`` holds
        ``[R * N]`` weights (run-major), ``steer`` fixes the gate as in ``MoEPolicy``."""
        return self.mix(self.features(obs, steer), route)

    def value(self, obs: Tensor) -> Tensor:
        """``[R, N]`` state values of every run."""
        names = [f"value.{n}" for n in self._value_layers]
        return self._mlp(obs.float().flatten(2), names, relu_last=False).squeeze(-1)

    @torch.no_grad()
    def unstack(self, r: int) -> tuple[nn.Module, ValueNet]:
        """Run r's policy and value net as ordinary modules (``MoEPolicy`` /
        ``SingleExpertPolicy``, ``ValueNet``), copies of its current parameters."""
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
            for name, layer in _layers(module):
                w = self.params[f"{prefix}{name}.weight"][r]
                layer.weight.copy_(w.t().reshape(layer.weight.shape))
                layer.bias.copy_(self.params[f"{prefix}{name}.bias"][r])

    @torch.no_grad()
    def load_run(self, r: int, policy: nn.Module, value: ValueNet) -> None:
        """Set run r's parameters from ordinary modules (the inverse of :meth:`unstack`)."""
        for prefix, module in (("policy.", policy), ("value.", value)):
            for name, layer in _layers(module):
                self.params[f"{prefix}{name}.weight"][r].copy_(layer.weight.flatten(1).t())
                self.params[f"{prefix}{name}.bias"][r].copy_(layer.bias)

    def run_modules(self, r: int) -> tuple[nn.Module, ValueNet]:
        """Like :meth:`unstack`, but refreshes and returns one cached pair per run (for
        repeated evaluation without rebuilding modules)."""
        if r not in self._modules:
            self._modules[r] = self.unstack(r)
        else:
            self._copy_out(r, *self._modules[r])
        return self._modules[r]

    # -- data -------------------------------------------------------------------------------------
    def collect(self) -> Rollout:
        """``rollout_steps`` moves in all ``R * num_envs`` environments."""
        return self._collect(None)

    def collect_with_graph(self) -> tuple[Rollout, list]:
        """:meth:`collect`, also keeping every step's actor features and value with their
        autograd graphs, for :meth:`update`'s single pass (single-pass REINFORCE)."""
        graph: list = []
        return self._collect(graph), graph

    def _collect(self, graph: list | None) -> Rollout:
        cfg, R = self.cfg, self.R

        def runs(obs: Tensor) -> Tensor:  # [R * B, ...] -> [R, B, ...]
            return obs.view(R, -1, *obs.shape[1:])

        def act(obs: Tensor) -> tuple[Tensor, Tensor]:
            with torch.set_grad_enabled(graph is not None):
                feats, v = self.features(runs(obs)), self.value(runs(obs))
            if graph is not None:
                graph.append((feats, v))
            with torch.no_grad():
                return self.mix(feats).logits.flatten(0, 1), v.detach().flatten(0, 1)

        def value(obs: Tensor) -> Tensor:
            return self.value(runs(obs)).flatten(0, 1)

        # one precision region for the whole window (bf16 weight casts are cached across steps)
        with torch.no_grad(), self.autocast():
            ro, self.obs = collect_rollout(
                self.rules, self.obs, act, value, self.gen, cfg.rollout_steps,
                bootstrap=cfg.bootstrap, method=self.method)
        self.env_steps += cfg.rollout_steps * cfg.num_envs
        return ro

    # -- learning ---------------------------------------------------------------------------------
    def _route(self, route_lbl: Tensor, feats: tuple[Tensor, ...]) -> RouteWeights | None:
        """Route weights ``[R * N]`` from route labels ``[R, N]`` (the gate, detached, is
        needed only for ``unlabelled_sharpness != 1``)."""
        if not self.method.route:
            return None
        cfg = self.cfg
        return route_weights(route_lbl.flatten(), feats[2].flatten(), cfg.unlabelled_gate_grad,
                             cfg.resolved("unlabelled_sharpness"))

    def loss(self, obs, actions, old_logp, adv, returns, labels, mask) -> tuple[Tensor, dict]:
        """The routed loss of every run on ``[R, N]`` batches: the sum over runs of each run's
        own loss (so each run's gradient is its own), and per-run ``[R]`` statistics."""
        route_lbl = route_labels(labels)
        with self.autocast():
            feats = self.features(obs)
            out = self.mix(feats, self._route(route_lbl, feats))
            values = self.value(obs)
        return self.objective(out, values, actions, old_logp, adv, returns, route_lbl, mask)

    def objective(self, out: MoEOutput, values, actions, old_logp, adv, returns, route_lbl,
                  mask) -> tuple[Tensor, dict]:
        """Policy-gradient, value, entropy and gate terms from the networks' outputs (all
        ``[R, N]``): the sum over runs of each run's mean loss, and per-run statistics."""
        cfg = self.cfg
        pg, entropy = policy_terms(out.logits, actions, old_logp, adv, cfg.algo, cfg.clip_coef)
        pg_loss = masked_mean(pg, mask, dim=1)
        v_loss = masked_mean((values.float() - returns) ** 2, mask, dim=1)
        ent = masked_mean(entropy, mask, dim=1)
        total = pg_loss + cfg.vf_coef * v_loss - cfg.resolved("ent_coef") * ent
        gate_loss = torch.zeros_like(total)
        if self.method.gate_loss:
            gate_loss = gate_bce_rows(out.gate, route_lbl)  # 0 for a run without overseen steps
            total = total + cfg.resolved("gate_loss_coef") * gate_loss
        stats = {"policy": pg_loss.detach(), "value": v_loss.detach(), "entropy": ent.detach(),
                 "gate": gate_loss.detach()}
        return total.sum(), stats

    def _permutations(self, n: int) -> Tensor:
        """``[R, n]``: an independent random order of each run's samples."""
        keys = torch.rand(self.R, n, generator=self.gen, device=self.device)
        return keys.argsort(dim=1)

    def _clip_per_run(self, max_norm: float) -> None:
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        sq = torch.stack([g.pow(2).flatten(1).sum(1) for g in grads]).sum(0)  # [R]
        coef = (max_norm / (sq.sqrt() + 1e-6)).clamp(max=1.0)
        for g in grads:
            g.mul_(coef.view(-1, *[1] * (g.ndim - 1)))

    def _step(self, loss: Tensor) -> None:
        max_norm = self.cfg.resolved("max_grad_norm")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_norm > 0:
            self._clip_per_run(max_norm)
        self.optimizer.step()

    def update(self, ro: Rollout, graph: list | None = None) -> dict[str, float]:
        """One learning step for every run (PPO: epochs x minibatches; REINFORCE: one batch).

        With ``graph`` (from :meth:`collect_with_graph`; single-pass REINFORCE only: one epoch,
        one minibatch) the loss is built on the rollout's own forward pass instead of running
        the networks again: the parameters have not changed since acting, so it is the same
        gradient (tested), for about three quarters of the compute, and the backward pass runs
        step by step on small tensors (cache-friendly on a CPU).
        """
        cfg, R = self.cfg, self.R
        lam = cfg.gae_lambda if cfg.algo == "ppo" else 1.0
        adv, returns = advantages_and_returns(ro.rewards, ro.values, ro.next_values, ro.done,
                                              cfg.gamma, lam)
        mask = train_mask(self.method, ro.labels)
        T = ro.rewards.shape[0]

        def per_run(x: Tensor) -> Tensor:  # [T, R*B, ...] -> [R, T*B, ...], t-major per run
            return x.reshape(T, R, -1, *x.shape[2:]).transpose(0, 1).reshape(
                R, -1, *x.shape[2:])

        if cfg.anneal_lr:
            frac = 1.0 - self.updates / max(self.num_updates, 1)
            for group in self.optimizer.param_groups:
                group["lr"] = frac * cfg.resolved("lr")
        if graph is not None:
            if not self.single_pass:
                raise ValueError("a rollout with a graph needs single-pass REINFORCE (algo "
                                 "'reinforce', update_epochs 1, minibatches 1)")
            route_lbl = route_labels(ro.labels)
            logits, gates, values = [], [], []
            with self.autocast():
                for t, (feats, v) in enumerate(graph):
                    out = self.mix(feats, self._route(route_lbl[t].view(R, -1), feats))
                    logits.append(out.logits.flatten(0, 1))
                    gates.append(out.gate.flatten())
                    values.append(v.flatten())
            out = MoEOutput(per_run(torch.stack(logits)), per_run(torch.stack(gates)))
            loss, stats = self.objective(out, per_run(torch.stack(values)), per_run(ro.actions),
                                         per_run(ro.logp), per_run(adv), per_run(returns),
                                         per_run(route_lbl), per_run(mask))
            graph.clear()  # consumed by this backward pass
            self._step(loss)
            self.updates += 1
            return {k: v.tolist() for k, v in stats.items()}
        obs, actions, old_logp = per_run(ro.obs), per_run(ro.actions), per_run(ro.logp)
        adv, returns, labels, mask = per_run(adv), per_run(returns), per_run(ro.labels), per_run(
            mask)
        if cfg.algo == "ppo":  # normalise each run's advantages over its trained steps
            count = mask.sum(1, keepdim=True)
            mean = (adv * mask).sum(1, keepdim=True) / count.clamp_min(1.0)
            var = ((adv - mean) ** 2 * mask).sum(1, keepdim=True) / (count - 1)
            normed = (adv - mean) / (var.sqrt() + 1e-8)
            adv = torch.where(count > 0, normed, adv)
        n = obs.shape[1]
        minibatches = cfg.resolved("minibatches")
        mb = n // minibatches
        rows = torch.arange(R, device=self.device).unsqueeze(1)
        sums: dict[str, Tensor] = {}
        count_mb = 0
        batch = (obs, actions, old_logp, adv, returns, labels, mask)
        for _ in range(cfg.resolved("update_epochs")):
            # one minibatch (the paper's REINFORCE) is the whole rollout: no shuffle or copy
            perm = self._permutations(n) if minibatches > 1 else None
            for start in range(0, mb * minibatches, mb):
                if perm is None:
                    loss, stats = self.loss(*batch)
                else:
                    idx = perm[:, start : start + mb]
                    loss, stats = self.loss(*(x[rows, idx] for x in batch))
                self._step(loss)
                for k, v in stats.items():
                    sums[k] = sums.get(k, 0.0) + v
                count_mb += 1
        self.updates += 1
        return {k: (v / count_mb).tolist() for k, v in sums.items()}

    def train_update(self) -> dict[str, Any]:
        """Collect one window in every run and learn from it; returns per-run scalars (lists of
        length R) and the group's steps per second."""
        t0 = time.perf_counter()
        if self.single_pass:
            ro, graph = self.collect_with_graph()
            losses = self.update(ro, graph)
        else:
            ro = self.collect()
            losses = self.update(ro)
        dt = time.perf_counter() - t0
        R = self.R
        done = ro.done.view(ro.done.shape[0], R, -1)
        n_ep = done.sum((0, 2))
        rew = ro.rewards.view(done.shape).sum((0, 2))
        metrics: dict[str, Any] = {f"losses/{k}": v for k, v in losses.items()}
        metrics["charts/sps"] = ro.rewards.numel() / dt
        metrics["charts/episodes"] = n_ep.tolist()
        metrics["charts/episode_reward"] = (rew / n_ep.clamp_min(1)).tolist()
        metrics["charts/env_steps"] = self.env_steps
        return metrics

    def reported_env_steps(self, r: int) -> float:
        """Run r's env steps on the paper's axis (the oracle is charged only the fraction p)."""
        scale = self.cfgs[r].oversight_prob if self.method.oracle_scale else 1.0
        return self.env_steps * scale


def run_batched_training(
    cfgs: Sequence[TrainConfig],
    *,
    progress: Callable[[BatchedTrainer, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Train a group with :class:`BatchedTrainer`; one results record per run, with the same
    fields as :func:`oversight_gr.agents.run.run_training`'s (learning curve every
    ``eval_every`` env steps, final evaluations), plus ``"batched"``: the group's size, the
    run's position in it, and the configs' seeds and oversight levels in order (what the
    group's random numbers depend on)."""
    from oversight_gr.agents.run import curve_point, evaluate_all, make_record

    trainer = BatchedTrainer(cfgs)
    cfg = trainer.cfg
    curves: list[list[dict[str, float]]] = [[] for _ in range(trainer.R)]

    def evaluate_runs() -> list[dict[str, dict]]:
        return [evaluate_all(c, trainer.run_modules(r)[0], trainer.device)
                for r, c in enumerate(trainer.cfgs)]

    t0 = time.perf_counter()
    next_eval = cfg.eval_every if cfg.eval_every else None
    while trainer.updates < trainer.num_updates:
        scalars = trainer.train_update()
        if next_eval is not None and trainer.env_steps >= next_eval:
            next_eval += cfg.eval_every
            wall = time.perf_counter() - t0
            for r, evals in enumerate(evaluate_runs()):
                curves[r].append(curve_point(evals, trainer.env_steps,
                                             trainer.reported_env_steps(r), wall))
        if progress is not None:
            progress(trainer, scalars)
    wall = time.perf_counter() - t0
    group = {"runs": trainer.R, "axes": [[c.seed, c.oversight_prob] for c in trainer.cfgs]}
    records = []
    for r, evals in enumerate(evaluate_runs()):
        c = trainer.cfgs[r]
        record = make_record(c, evals, curves[r], trainer.env_steps,
                             trainer.reported_env_steps(r), wall)
        record["batched"] = {**group, "position": r}
        records.append(record)
    return records
