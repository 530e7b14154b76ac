"""Policies and value network for OversightGrid.

Shapes: ``obs`` is ``[B, 4, n, n]`` (any dtype; converted to float), ``C = 4 * n * n``.

The mixture-of-experts policy is the paper's: two experts (diamond, ghost), each
``Linear(C, H)-ReLU-Linear(H, H)-ReLU`` on the flattened observation; a gate
(1x1 conv 4->4, then ``C-H-H-1`` MLP, sigmoid) mixes them in the hidden space,
``h = g * E_diamond + (1 - g) * E_ghost``; a shared ``Linear(H, 4)`` gives action logits.
All gradient masks go through :mod:`oversight_gr.routing`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor, nn

from oversight_gr.routing import two_expert_mixture

__all__ = [
    "orthogonal_init",
    "GATE_INPUTS",
    "STEER",
    "MoEOutput",
    "MoEPolicy",
    "SingleExpertPolicy",
    "ValueNet",
    "RouteWeights",
]

#: what the gate sees: the paper's full observation, or everything but the oversight plane
GATE_INPUTS = ("full", "no_oversight")
#: gate steering at evaluation: fix the gate to 1 (diamond expert), 0 (ghost expert), or learned
STEER = ("diamond", "ghost", "none")


def orthogonal_init(module: nn.Module, head_gain: float = 0.01, out_gain: float = 1.0) -> None:
    """CleanRL-style initialisation: orthogonal weights with gain sqrt(2) for hidden layers,
    zero biases, and a small gain on the action head (a near-uniform initial policy)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.orthogonal_(m.weight, gain=2**0.5)
            nn.init.zeros_(m.bias)
    head = getattr(module, "head", None)
    if isinstance(head, nn.Linear):
        nn.init.orthogonal_(head.weight, gain=head_gain)
    net = getattr(module, "net", None)
    if isinstance(net, nn.Sequential) and isinstance(net[-1], nn.Linear):
        nn.init.orthogonal_(net[-1].weight, gain=out_gain)


def _mlp(d_in: int, hidden: int, layers: int = 2) -> nn.Sequential:
    mods: list[nn.Module] = []
    for i in range(layers):
        mods += [nn.Linear(d_in if i == 0 else hidden, hidden), nn.ReLU()]
    return nn.Sequential(*mods)


class RouteWeights(NamedTuple):
    """Per-sample gradient weights ``[B]`` into the diamond expert, the ghost expert, the gate."""

    diamond: Tensor
    ghost: Tensor
    gate: Tensor


class MoEOutput(NamedTuple):
    logits: Tensor  # [B, 4]
    gate: Tensor  # [B] gate value in [0, 1] (weight of the diamond expert)


class MoEPolicy(nn.Module):
    """Two-expert first-layer MoE actor.

    Args:
        size: grid side.
        hidden: expert / gate width ``H`` (paper: 256).
        gate_input: ``"full"`` (the paper) or ``"no_oversight"`` (the gate does not see the
            oversight plane; the experts still do).
        constant_gate: if set, the gate is this constant (the ``constant_gate`` ablation); it
            is still overridden by steering.
    """

    def __init__(
        self,
        size: int = 5,
        hidden: int = 256,
        gate_input: str = "full",
        constant_gate: float | None = None,
    ):
        super().__init__()
        if gate_input not in GATE_INPUTS:
            raise ValueError(f"gate_input must be one of {GATE_INPUTS}, got {gate_input!r}")
        c = 4 * size * size
        self.size, self.hidden, self.gate_input = size, hidden, gate_input
        self.constant_gate = constant_gate
        self.expert_diamond = _mlp(c, hidden)
        self.expert_ghost = _mlp(c, hidden)
        self.gate_conv = nn.Conv2d(4, 4, kernel_size=1)
        self.gate_mlp = nn.Sequential(_mlp(c, hidden), nn.Linear(hidden, 1))
        self.head = nn.Linear(hidden, 4)

    def gate_value(self, obs: Tensor) -> Tensor:
        """``[B]`` gate in [0, 1]."""
        x = obs.float()
        if self.constant_gate is not None:
            return torch.full(x.shape[:1], float(self.constant_gate), device=x.device)
        if self.gate_input == "no_oversight":
            x = torch.cat([x[:, :3], torch.zeros_like(x[:, 3:])], dim=1)
        return torch.sigmoid(self.gate_mlp(self.gate_conv(x).flatten(1))).squeeze(-1)

    def forward(
        self, obs: Tensor, route: RouteWeights | None = None, steer: str = "none"
    ) -> MoEOutput:
        """Action logits; ``route`` scales the gradients per sample, ``steer`` fixes the gate."""
        x = obs.float().flatten(1)
        if steer == "diamond":
            gate = torch.ones(x.shape[0], device=x.device)
        elif steer == "ghost":
            gate = torch.zeros(x.shape[0], device=x.device)
        elif steer == "none":
            gate = self.gate_value(obs)
        else:
            raise ValueError(f"steer must be one of {STEER}, got {steer!r}")
        e_d, e_g = self.expert_diamond(x), self.expert_ghost(x)
        if route is None:
            h = two_expert_mixture(e_d, e_g, gate)
        else:
            h = two_expert_mixture(e_d, e_g, gate, route.diamond, route.ghost, route.gate)
        return MoEOutput(self.head(h), gate)


class SingleExpertPolicy(nn.Module):
    """The baselines' actor: ``Linear(C, H)-ReLU-Linear(H, H)-ReLU-Linear(H, 4)``."""

    def __init__(self, size: int = 5, hidden: int = 256):
        super().__init__()
        self.size, self.hidden = size, hidden
        self.body = _mlp(4 * size * size, hidden)
        self.head = nn.Linear(hidden, 4)

    def forward(self, obs: Tensor, route: RouteWeights | None = None, steer: str = "none"):
        if steer not in STEER:
            raise ValueError(f"steer must be one of {STEER}, got {steer!r}")
        logits = self.head(self.body(obs.float().flatten(1)))
        return MoEOutput(logits, torch.full(logits.shape[:1], float("nan"), device=logits.device))


class ValueNet(nn.Module):
    """State value ``V(obs)``: ``C-H-H-1`` with ReLUs (the paper's code used a linear one)."""

    def __init__(self, size: int = 5, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(_mlp(4 * size * size, hidden), nn.Linear(hidden, 1))

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs.float().flatten(1)).squeeze(-1)
