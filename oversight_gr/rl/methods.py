"""The training methods, each a named configuration, and what a learner may derive from data.

Everything here reads only supervisor-visible outcome codes (``Outcome`` as observed), except
the ``oracle`` method, which by definition reads the ground truth. Rewards are computed from
those codes, not taken from the environment, so the honesty guard is structural: scrambling the
ground-truth outcome cannot change what routing, naive or filtering learn.

Route labels (per step, from the outcome of the step's episode):

* ``ROUTE_DIAMOND`` (0): the episode ended on an overseen diamond: train only the diamond
  expert, gate detached;
* ``ROUTE_GHOST`` (1): ended on an overseen ghost: train only the ghost expert, gate detached;
* ``ROUTE_BOTH`` (2): everything else (unseen terminal, timeout, or an episode still running
  when the update happens, as in the paper): both experts and the gate train.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from oversight_gr.rl.networks import RouteWeights
from oversight_gr.envs.core import Outcome
from oversight_gr.routing import RouteTable

__all__ = [
    "Method",
    "METHODS",
    "ROUTE_DIAMOND",
    "ROUTE_GHOST",
    "ROUTE_BOTH",
    "ROUTES",
    "episode_labels",
    "gate_bce",
    "gate_bce_rows",
    "advantages_and_returns",
    "policy_terms",
    "surrogate",
    "masked_mean",
    "ppo_diagnostics",
    "route_weights",
    "method_reward",
    "route_labels",
    "placebo_outcomes",
    "train_mask",
]

ROUTE_DIAMOND, ROUTE_GHOST, ROUTE_BOTH = 0, 1, 2
#: routing.RouteTable over [diamond expert, ghost expert, gate]
ROUTES = RouteTable(
    [
        [1.0, 0.0, 0.0],  # overseen diamond
        [0.0, 1.0, 0.0],  # overseen ghost
        [1.0, 1.0, 1.0],  # unlabelled
    ]
)


@dataclass(frozen=True)
class Method:
    """A training method.

    Attributes:
        name: registry key.
        policy: ``"moe"`` or ``"single"``.
        reward: ``"terminal"`` (+1 any terminal), ``"proxy"`` (+1 any terminal, -1 overseen
            ghost), ``"observed_true"`` (+1 / -1 on overseen diamond / ghost, used with
            filtering), ``"true"`` (ground truth: oracle only).
        route: route policy gradients by the episode's observed outcome.
        gate_loss: train the gate with BCE toward 1 / 0 on overseen diamond / ghost episodes.
        filter_unseen: drop steps of episodes that ended on an unseen terminal.
        constant_gate: fix the gate to this value during training (ablation).
        oracle_scale: report env steps divided by the oversight probability
            (:func:`paper_axis_steps`: the oracle learns from the truth on every episode; the
            paper's oracle buys that by learning from only a fraction p of its updates).
        audit: pay part of the oversight budget for hidden ground-truth audits and report the
            parameters the audits score best (early stopping; :mod:`oversight_gr.rl.audit`).
        placebo_labels: a placebo for routing's labels: the same episodes count as overseen,
            but which outcome each one is said to have is shuffled among them
            (:func:`placebo_outcomes`), so the labels say nothing about the episode.
        doc: one line for --help.
    """

    name: str
    policy: str
    reward: str
    route: bool = False
    gate_loss: bool = False
    filter_unseen: bool = False
    constant_gate: float | None = None
    oracle_scale: bool = False
    audit: bool = False
    placebo_labels: bool = False
    doc: str = ""


def paper_axis_steps(method: Method, oversight_prob: float, env_steps: float) -> float:
    """``env_steps`` of learning on the paper's axis of env steps. The paper's oracle reads the
    ground truth of every episode but learns from only a fraction p of its updates, so it pays
    the same number of labels per env step as a supervisor overseeing a fraction p: our oracle,
    which learns from every update, has after A steps learnt what the paper's has after A / p.
    Every other method is drawn at its own env steps."""
    if not method.oracle_scale:
        return float(env_steps)
    if oversight_prob <= 0:
        raise ValueError(f"the oracle's axis needs oversight_prob > 0, got {oversight_prob}")
    return env_steps / oversight_prob


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("routing", "moe", "terminal", route=True, gate_loss=True,
               doc="gradient-routed MoE, +1 any terminal, steered at evaluation"),
        Method("naive", "single", "proxy",
               doc="single expert on the supervisor's proxy reward (-1 only for an overseen ghost)"),
        Method("filtering", "single", "observed_true", filter_unseen=True,
               doc="single expert, true reward, trained only on overseen episodes and timeouts"),
        Method("oracle", "single", "true", oracle_scale=True,
               doc="single expert on the true reward everywhere (infeasible reference; drawn at "
               "steps / p)"),
        Method("naive_early_stop", "single", "proxy", audit=True,
               doc="naive reward with early stopping by hidden audits paid from the same "
               "oversight budget (trains at p x (1 - audit_share))"),
        Method("routing_placebo", "moe", "terminal", route=True, gate_loss=True,
               placebo_labels=True,
               doc="control: routing whose overseen episodes' outcomes are shuffled among them "
               "(same episodes labelled, same class frequencies, labels say nothing)"),
        Method("moe_no_routing", "moe", "terminal", route=False, gate_loss=True,
               doc="ablation: the same MoE and gate loss, no routing"),
        Method("constant_gate", "moe", "terminal", route=True, gate_loss=False, constant_gate=0.5,
               doc="ablation: routing with the gate fixed at 0.5 during training"),
    ]
}


def episode_labels(outcome: Tensor, done: Tensor) -> Tensor:
    """Give every step the outcome of the episode it belongs to.

    Args:
        outcome: ``[T, B]`` observed outcome codes (set on steps where ``done``).
        done: ``[T, B]`` bool, the episode ended at this step.

    Returns:
        ``[T, B]`` codes; steps of an episode still running at the window's end get
        ``Outcome.NONE``.
    """
    T = outcome.shape[0]
    labels = torch.empty_like(outcome)
    running = torch.full_like(outcome[0], int(Outcome.NONE))
    for t in range(T - 1, -1, -1):
        running = torch.where(done[t], outcome[t], running)
        labels[t] = running
    return labels


def placebo_outcomes(outcome: Tensor, done: Tensor, gens: list[torch.Generator]) -> Tensor:
    """The observed outcomes ``[T, R * B]`` with each run's overseen terminal outcomes
    (DIAMOND / GHOST at steps where ``done``) shuffled among that run's overseen terminals of the
    window, by a permutation drawn from the run's own generator (``gens[r]``, run-major columns).

    The same episodes stay overseen and each run keeps its window's exact class frequencies;
    which expert a label names no longer depends on where the episode ended. It reads only what
    a supervisor observes."""
    diamond, ghost = int(Outcome.DIAMOND), int(Outcome.GHOST)
    out = outcome.clone()
    R = len(gens)
    per_run = out.view(out.shape[0], R, -1)
    seen = (done & ((outcome == diamond) | (outcome == ghost))).view(per_run.shape)
    for r, g in enumerate(gens):
        idx = seen[:, r].nonzero(as_tuple=True)
        vals = per_run[:, r][idx]
        if vals.numel() > 1:
            perm = torch.randperm(vals.numel(), generator=g, device=g.device)
            per_run[:, r][idx] = vals[perm]
    return out


def route_labels(labels: Tensor) -> Tensor:
    """Observed episode outcome codes -> route labels (ROUTE_DIAMOND / ROUTE_GHOST / ROUTE_BOTH)."""
    route = torch.full_like(labels, ROUTE_BOTH)
    route = torch.where(labels == int(Outcome.DIAMOND), ROUTE_DIAMOND, route)
    return torch.where(labels == int(Outcome.GHOST), ROUTE_GHOST, route)


def method_reward(method: Method, outcome: Tensor, true_outcome: Tensor) -> Tensor:
    """Per-step reward ``[...]`` for ``method``; nonzero only on steps that reach a terminal.

    ``outcome`` is what a supervisor observes; ``true_outcome`` is read only by ``oracle``."""
    diamond, ghost = int(Outcome.DIAMOND), int(Outcome.GHOST)
    unknown = int(Outcome.UNKNOWN)
    terminal = (outcome == diamond) | (outcome == ghost) | (outcome == unknown)
    if method.reward == "terminal":
        r = terminal.float()
    elif method.reward == "proxy":
        r = terminal.float() - 2.0 * (outcome == ghost).float()
    elif method.reward == "observed_true":
        r = (outcome == diamond).float() - (outcome == ghost).float()
    elif method.reward == "true":
        r = (true_outcome == diamond).float() - (true_outcome == ghost).float()
    else:
        raise ValueError(f"unknown reward kind {method.reward!r}")
    return r


def train_mask(method: Method, labels: Tensor) -> Tensor:
    """``[T, B]`` float 1 for steps the method trains on (filtering drops unseen terminals)."""
    if method.filter_unseen:
        return (labels != int(Outcome.UNKNOWN)).float()
    return torch.ones_like(labels, dtype=torch.float32)


def route_weights(
    route_lbl: Tensor,
    gate: Tensor | None = None,
    unlabelled_gate_grad: float = 1.0,
    sharpness: float = 1.0,
) -> RouteWeights:
    """Route labels ``[B]`` -> per-sample gradient weights (rows of :data:`ROUTES`).

    Args:
        route_lbl: ``[B]`` ROUTE_DIAMOND / ROUTE_GHOST / ROUTE_BOTH.
        gate: ``[B]`` gate values (detached here); needed only when ``sharpness != 1``.
        unlabelled_gate_grad: weight of the policy gradient into the gate on unlabelled steps
            (the paper: 1).
        sharpness: unlabelled steps send the experts gradient in proportion to ``g^k`` and
            ``(1-g)^k`` instead of the mixture's ``g`` and ``1-g`` (the paper: k = 1).
    """
    w = ROUTES(route_lbl, check=False)  # labels come from route_labels: valid by construction
    diamond, ghost, gate_w = w[:, 0], w[:, 1], w[:, 2]
    if unlabelled_gate_grad != 1.0:
        gate_w = gate_w * unlabelled_gate_grad
    if sharpness != 1.0:
        if gate is None:
            raise ValueError("route_weights needs the gate values when sharpness != 1")
        # the mixture already scales expert gradients by g and 1-g; multiplying by
        # g^(k-1) and (1-g)^(k-1) on unlabelled steps makes them g^k and (1-g)^k
        unlabelled = route_lbl == ROUTE_BOTH
        g = gate.detach().float()
        diamond = torch.where(unlabelled, g.pow(sharpness - 1), diamond)
        ghost = torch.where(unlabelled, (1 - g).pow(sharpness - 1), ghost)
    return RouteWeights(diamond, ghost, gate_w)


def gate_bce(gate: Tensor, route_lbl: Tensor, balanced: bool = False) -> Tensor | None:
    """The gate loss: BCE of the gate ``[B]`` toward 1 on overseen-diamond steps and 0 on
    overseen-ghost steps (mean over those steps; ``balanced``: the mean of the two classes'
    means, see :func:`gate_bce_rows`); ``None`` when the batch has none."""
    labelled = (route_lbl == ROUTE_DIAMOND) | (route_lbl == ROUTE_GHOST)
    if not bool(labelled.any()):
        return None
    return gate_bce_rows(gate.unsqueeze(0), route_lbl.unsqueeze(0), balanced)[0]


def gate_bce_rows(gate: Tensor, route_lbl: Tensor, balanced: bool = False) -> Tensor:
    """:func:`gate_bce` for each row of a ``[R, N]`` batch (R training runs side by side):
    ``[R]`` losses, 0 for a row without overseen steps (where :func:`gate_bce` gives None).

    ``balanced``: half the mean BCE over overseen-diamond steps plus half the mean over
    overseen-ghost steps (a class absent from the row adds 0), so the class that happens to be
    overseen more often cannot pull the gate toward its expert on the unlabelled states: early in
    training the more competent expert wins the terminals, its class dominates the labels, and
    the plain mean then starves the other expert (measured: docs/RESULTS.md, "gate_balance").

    A gate of E experts' mixing weights ``[R, N, E]`` (:mod:`oversight_gr.rl.sb3`'s
    ``RoutedMlpPolicy``; route labels ``0 .. E-1`` name an expert, ``E`` is unlabelled) gets the
    cross-entropy toward the labelled expert, ``-log gate[label]``, which for E = 2 and
    ``gate[..., 0] = g`` is the BCE above; ``balanced`` averages the E classes' means."""
    if gate.ndim == route_lbl.ndim + 1:
        E = gate.shape[-1]
        logg = gate.float().clamp_min(1e-6).log()
        onehot = F.one_hot(route_lbl.long().clamp_max(E), E + 1)[..., :E].float()  # [R, N, E]
        nll = -(logg * onehot)  # nonzero only at the labelled expert
        if not balanced:
            labelled = onehot.sum(-1)
            return nll.sum((-2, -1)) / labelled.sum(-1).clamp_min(1.0)
        return (nll.sum(-2) / onehot.sum(-2).clamp_min(1.0)).sum(-1) / E
    g = gate.float().clamp(1e-6, 1 - 1e-6)
    diamond = (route_lbl == ROUTE_DIAMOND).float()
    ghost = (route_lbl == ROUTE_GHOST).float()
    bce = F.binary_cross_entropy(g, diamond, reduction="none")
    if not balanced:
        labelled = diamond + ghost
        return (bce * labelled).sum(-1) / labelled.sum(-1).clamp_min(1.0)
    return 0.5 * ((bce * diamond).sum(-1) / diamond.sum(-1).clamp_min(1.0)
                  + (bce * ghost).sum(-1) / ghost.sum(-1).clamp_min(1.0))


def advantages_and_returns(
    rewards: Tensor, values: Tensor, next_values: Tensor, done: Tensor, gamma: float, lam: float
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimates and returns, ``[T, B]`` each (``lam = 1``: Monte-Carlo
    returns minus the baseline, as REINFORCE uses them).

    Args:
        rewards, values, done: ``[T, B]`` per step.
        next_values: ``[T, B]`` value of the state after the step (0 where the episode
            terminated; the bootstrap value where it was truncated or the window ends).
    """
    T = rewards.shape[0]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[0])
    for t in range(T - 1, -1, -1):
        nonterminal = (~done[t]).float()
        delta = rewards[t] + gamma * next_values[t] - values[t]
        last = delta + gamma * lam * nonterminal * last
        adv[t] = last
    return adv, adv + values


def policy_terms(
    logits: Tensor, actions: Tensor, old_logp: Tensor, adv: Tensor, algo: str, clip_coef: float,
    with_logp: bool = False,
) -> tuple[Tensor, ...]:
    """Per-step policy-gradient loss and entropy (any leading shape ``[...]``), and with
    ``with_logp`` the log-probability of the actions too.

    ``algo="ppo"``: the clipped surrogate ``max(-A r, -A clip(r))`` with ``r`` the probability
    ratio to ``old_logp``; ``"reinforce"``: ``-A log pi(a)``."""
    logp_all = torch.log_softmax(logits.float(), -1)
    logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    pg = surrogate(logp, old_logp, adv, algo, clip_coef)
    return (pg, entropy, logp) if with_logp else (pg, entropy)


def surrogate(logp: Tensor, old_logp: Tensor, adv: Tensor, algo: str, clip_coef: float) -> Tensor:
    """Per-step policy-gradient loss from the actions' log-probabilities (any distribution):
    PPO's clipped surrogate or REINFORCE's ``-A log pi(a)`` (see :func:`policy_terms`)."""
    if algo == "ppo":
        ratio = (logp - old_logp).exp()
        return torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip_coef, 1 + clip_coef))
    if algo == "reinforce":
        return -adv * logp
    raise ValueError(f"algo must be 'ppo' or 'reinforce', got {algo!r}")


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is 1 (over ``dim``, or everything); 0 when
    there are none."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp_min(1.0)
    return (x * mask).sum(dim) / mask.sum(dim).clamp_min(1.0)


def ppo_diagnostics(logp: Tensor, old_logp: Tensor, mask: Tensor, clip_coef: float,
                    ratio: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """PPO's per-row diagnostics over the last dim, without autograd: the approximate KL
    ``mean((r - 1) - log r)`` and the clipped fraction ``mean(|r - 1| > clip)`` of the ratio
    ``r = exp(logp - old_logp)`` (pass ``ratio`` when it is at hand; REINFORCE's is 1: 0 and 0)."""
    with torch.no_grad():
        log_ratio = logp - old_logp
        if ratio is None:
            ratio = log_ratio.exp()
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask, dim=-1)
        clipfrac = masked_mean(((ratio - 1).abs() > clip_coef).float(), mask, dim=-1)
    return approx_kl, clipfrac
