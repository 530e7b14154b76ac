"""Policies and value network for OversightGrid.

Shapes: ``obs`` is ``[B, 4, n, n]`` (any dtype; converted to float), ``C = 4 * n * n``.

The mixture-of-experts policy is the paper's: two experts (diamond, ghost), each
``Linear(C, H)-ReLU-Linear(H, H)-ReLU`` on the flattened observation; a gate
(1x1 conv 4->4, then ``C-H-H-1`` MLP, sigmoid) mixes them in the hidden space,
``h = g * E_diamond + (1 - g) * E_ghost``; a shared ``Linear(H, 4)`` gives action logits.
All gradient masks go through :mod:`oversight_gr.routing`.

Two exact rewrites make it cheaper without changing the function or any parameter's gradient
(tested against the literal formulation in tests/agents/test_fast_paths.py): the 1x1 convolution
is folded into the first gate layer's weights, and since the head is linear the mixture is taken
on the head's 4 outputs, ``g * head(E_d) + (1 - g) * head(E_g)``, with the routing weights applied
to the experts' outputs before the head.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from oversight_gr.routing import scale_gradient, two_expert_mixture

__all__ = [
    "orthogonal_init",
    "GATE_INPUTS",
    "STEER",
    "MoEFeatures",
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


class MoEFeatures(NamedTuple):
    """What the MoE computes before the mixture: expert outputs ``[B, H]`` and gate ``[B]``."""

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
        return self._gate(obs.float().flatten(1))

    def _gate(self, x: Tensor) -> Tensor:
        """Gate from the flattened observation ``x`` ``[B, C]``.

        The 1x1 convolution is linear, so it is folded into the first gate layer's weights
        (``W1 . conv``, a ``H x C`` product) instead of being run on every sample: the same
        function and the same parameter gradients, one matrix multiply fewer per forward.
        Hiding the oversight plane (``gate_input='no_oversight'``) drops its columns.
        """
        if self.constant_gate is not None:
            return torch.full(x.shape[:1], float(self.constant_gate), device=x.device)
        weight, bias = self._folded_gate_layer()
        if self.gate_input == "no_oversight":
            x = x[:, : 3 * self.size * self.size]
        z = torch.relu(F.linear(x, weight, bias))
        z = self.gate_mlp[0][3](self.gate_mlp[0][2](z))
        return torch.sigmoid(self.gate_mlp[1](z)).squeeze(-1)

    def _folded_gate_layer(self) -> tuple[Tensor, Tensor]:
        """The first gate layer with the 1x1 convolution folded in: ``(weight, bias)``.

        Without autograd (rollouts, evaluation) the result is cached until a parameter changes
        (tracked by the parameters' in-place version counters and storage).
        """
        scope = getattr(self, "_fold_scope", None)
        if scope:
            return scope["fold"]
        first, conv = self.gate_mlp[0][0], self.gate_conv
        tensors = (first.weight, first.bias, conv.weight, conv.bias)
        key = None
        if scope is None and not torch.is_grad_enabled():
            key = tuple((t.data_ptr(), t._version) for t in tensors)
            cached = getattr(self, "_gate_fold_cache", None)
            if cached is not None and cached[0] == key:
                return cached[1]
        hid = first.weight.shape[0]
        w1 = first.weight.view(hid, 4, -1)  # [H, conv out channel, cell]
        with torch.autocast(first.weight.device.type, enabled=False):  # fold in full precision
            weight = torch.einsum("hop,oc->hcp", w1, conv.weight.view(4, 4))  # conv: [out, in]
            bias = first.bias + torch.einsum("hop,o->h", w1, conv.bias)
        if self.gate_input == "no_oversight":
            weight = weight[:, :3]
        folded = (weight.reshape(hid, -1), bias)
        if key is not None:
            self._gate_fold_cache = (key, folded)
        if scope is not None:
            scope["fold"] = folded
        return folded

    @contextlib.contextmanager
    def shared_gate_fold(self) -> Iterator[None]:
        """Within the block the folded gate layer is computed once and reused, with its autograd
        graph when gradients are on: for a rollout, whose parameters do not change between
        steps. Do not step an optimizer inside the block."""
        self._fold_scope = {}
        try:
            yield
        finally:
            self._fold_scope = None

    def features(self, obs: Tensor, steer: str = "none") -> MoEFeatures:
        """The two experts' hidden outputs and the gate (everything before the mixture)."""
        x = obs.float().flatten(1)
        if steer == "diamond":
            gate = torch.ones(x.shape[0], device=x.device)
        elif steer == "ghost":
            gate = torch.zeros(x.shape[0], device=x.device)
        elif steer == "none":
            gate = self._gate(x)
        else:
            raise ValueError(f"steer must be one of {STEER}, got {steer!r}")
        return MoEFeatures(self.expert_diamond(x), self.expert_ghost(x), gate)

    def mix(self, feats: MoEFeatures, route: RouteWeights | None = None) -> MoEOutput:
        """Routed mixture and shared head on precomputed :meth:`features`.

        The head is linear, so ``head(g * E_d + (1 - g) * E_g)`` is computed as
        ``g * head(E_d) + (1 - g) * head(E_g)``: the same logits and the same gradients for every
        parameter (the routing weights scale the experts' ``[B, H]`` outputs before the head, so
        the head itself always trains on the full mixture), with the mixing done on 4 logits
        instead of ``H`` hidden units.
        """
        e_d, e_g, gate = feats
        if route is not None:
            e_d = scale_gradient(e_d, route.diamond.unsqueeze(-1))
            e_g = scale_gradient(e_g, route.ghost.unsqueeze(-1))
            gate = scale_gradient(gate, route.gate)
        logits = two_expert_mixture(self.head(e_d), self.head(e_g), gate)
        return MoEOutput(logits, feats.gate)

    def forward(
        self, obs: Tensor, route: RouteWeights | None = None, steer: str = "none"
    ) -> MoEOutput:
        """Action logits; ``route`` scales the gradients per sample, ``steer`` fixes the gate."""
        return self.mix(self.features(obs, steer), route)


class SingleExpertPolicy(nn.Module):
    """The baselines' actor: ``Linear(C, H)-ReLU-Linear(H, H)-ReLU-Linear(H, 4)``."""

    def __init__(self, size: int = 5, hidden: int = 256):
        super().__init__()
        self.size, self.hidden = size, hidden
        self.body = _mlp(4 * size * size, hidden)
        self.head = nn.Linear(hidden, 4)

    def features(self, obs: Tensor, steer: str = "none") -> Tensor:
        """The body's hidden output ``[B, H]``."""
        if steer not in STEER:
            raise ValueError(f"steer must be one of {STEER}, got {steer!r}")
        return self.body(obs.float().flatten(1))

    def mix(self, feats: Tensor, route: RouteWeights | None = None) -> MoEOutput:
        """The head on precomputed :meth:`features` (``route`` has nothing to route here)."""
        logits = self.head(feats)
        return MoEOutput(logits, torch.full(logits.shape[:1], float("nan"), device=logits.device))

    def forward(self, obs: Tensor, route: RouteWeights | None = None, steer: str = "none"):
        return self.mix(self.features(obs, steer), route)


class ValueNet(nn.Module):
    """State value ``V(obs)``: ``C-H-H-1`` with ReLUs (the paper's code used a linear one)."""

    def __init__(self, size: int = 5, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(_mlp(4 * size * size, hidden), nn.Linear(hidden, 1))

    def forward(self, obs: Tensor) -> Tensor:
        return self.net(obs.float().flatten(1)).squeeze(-1)
