"""The routed objective, written once: a pure function of the networks' outputs and a typed
minibatch.

Every learner calls :func:`routed_objective`: the native trainer's PPO and REINFORCE updates
(one run or a group of R runs side by side, the two-pass minibatch step and single-pass
REINFORCE's update through the rollout's own graphs) and SB3's ``RoutedPPO``
(:mod:`oversight_gr.rl.sb3`). Autograd differentiates it; there is no second copy of its
maths. Routing itself is not in the objective: it acts on the forward pass (per-sample gradient
weights on the experts' outputs and the gate, :func:`~oversight_gr.rl.networks.moe_mix`), so
the objective sees only logits, gate and values.

Shapes: ``R`` runs, ``N`` steps per run; every :class:`Minibatch` field is ``[R, N, ...]`` (one
run is ``R = 1``). Each run's loss is a mean over its trained steps and the objective is the sum
over runs, so the gradient reaching run r's parameters is run r's own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from torch import Tensor

from oversight_gr.rl.methods import (gate_bce_rows, masked_mean, policy_terms, ppo_diagnostics,
                                     surrogate)
from oversight_gr.rl.networks import MoEOutput

__all__ = ["Minibatch", "ObjectiveConfig", "routed_objective", "ALGOS"]

ALGOS = ("ppo", "reinforce")


class Minibatch(NamedTuple):
    """A batch of steps, ``[R, N, ...]`` per field (the order of the fields is fixed: slicing or
    shuffling maps a function over them, ``Minibatch(*(f(x) for x in batch))``)."""

    #: ``[R, N, 4, n, n]`` observations (read by the forward pass, not by the objective)
    obs: Tensor
    #: ``[R, N]`` long, the actions taken
    actions: Tensor
    #: ``[R, N]`` their log-probabilities when acting (PPO's ratio; unused by REINFORCE)
    old_logp: Tensor
    #: ``[R, N]`` advantage estimates (PPO: normalised per run over its trained steps)
    advantages: Tensor
    #: ``[R, N]`` value targets
    returns: Tensor
    #: ``[R, N]`` route labels (:func:`~oversight_gr.rl.methods.route_labels`)
    route: Tensor
    #: ``[R, N]`` float, 1 on the steps the method trains on
    mask: Tensor

    def rows(self, start: int, stop: int) -> Minibatch:
        """Steps ``start:stop`` of every run."""
        return Minibatch(*(x[:, start:stop] for x in self))

    def unsqueeze(self) -> Minibatch:
        """One run's ``[N, ...]`` batch as ``[1, N, ...]``."""
        return Minibatch(*(x.unsqueeze(0) for x in self))


@dataclass(frozen=True)
class ObjectiveConfig:
    """The coefficients of :func:`routed_objective`.

    Attributes:
        algo: ``"ppo"`` (clipped surrogate) or ``"reinforce"`` (``-A log pi(a)``).
        clip_coef: PPO's ratio clipping.
        ent_coef: entropy bonus.
        vf_coef: value-loss coefficient.
        gate_loss: add the gate's BCE on overseen steps (methods with a learned, supervised gate).
        gate_loss_coef: its coefficient.
        gate_balance: the BCE as the mean of the two overseen classes' means
            (:func:`~oversight_gr.rl.methods.gate_bce_rows`).
    """

    algo: str
    clip_coef: float
    ent_coef: float
    vf_coef: float
    gate_loss: bool = False
    gate_loss_coef: float = 0.0
    gate_balance: bool = False

    def __post_init__(self):
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}")


def routed_objective(out: MoEOutput, values: Tensor, batch: Minibatch, cfg: ObjectiveConfig,
                     action_terms: tuple[Tensor, Tensor] | None = None,
                     ) -> tuple[Tensor, dict[str, Tensor]]:
    """The routed loss: policy-gradient, value, entropy and (optionally) gate terms.

    Args:
        out: the routed forward's logits ``[R, N, A]`` and gate ``[R, N]`` (NaN without one;
            ``[R, N, E]`` mixing weights for a mixture of E experts, see
            :func:`~oversight_gr.rl.methods.gate_bce_rows`).
        values: ``[R, N]`` the value net's outputs.
        batch: the steps (:class:`Minibatch`).
        cfg: the coefficients (:class:`ObjectiveConfig`).
        action_terms: ``(logp, entropy)``, ``[R, N]`` each, of ``batch.actions`` under a policy
            that is not a categorical over ``out.logits`` (a Gaussian over Box actions, any
            distribution SB3 makes); they replace the categorical's and ``out.logits`` is not
            read.

    Returns:
        ``(loss, stats)``: the sum over runs of each run's mean loss over its masked steps, and
        per-run ``[R]`` statistics without autograd: ``policy``, ``value``, ``entropy``,
        ``gate`` (0 without the gate term or overseen steps), PPO's ``approx_kl`` and
        ``clipfrac`` (0 for REINFORCE).
    """
    mask = batch.mask
    if action_terms is None:
        pg, entropy, logp = policy_terms(out.logits, batch.actions, batch.old_logp,
                                         batch.advantages, cfg.algo, cfg.clip_coef, with_logp=True)
    else:
        logp, entropy = action_terms
        pg = surrogate(logp, batch.old_logp, batch.advantages, cfg.algo, cfg.clip_coef)
    pg_loss = masked_mean(pg, mask, dim=-1)
    v_loss = masked_mean((values.float() - batch.returns) ** 2, mask, dim=-1)
    ent = masked_mean(entropy, mask, dim=-1)
    total = pg_loss + cfg.vf_coef * v_loss - cfg.ent_coef * ent
    gate_loss = total.new_zeros(total.shape)
    if cfg.gate_loss:
        # 0 for a run without overseen steps
        gate_loss = gate_bce_rows(out.gate, batch.route, cfg.gate_balance)
        total = total + cfg.gate_loss_coef * gate_loss
    approx_kl, clipfrac = ppo_diagnostics(logp.detach(), batch.old_logp, mask, cfg.clip_coef)
    stats = {"policy": pg_loss.detach(), "value": v_loss.detach(), "entropy": ent.detach(),
             "gate": gate_loss.detach(), "approx_kl": approx_kl, "clipfrac": clipfrac}
    return total.sum(), stats
