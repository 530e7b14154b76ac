"""Policies and value network for OversightGrid.

Shapes: ``obs`` is ``[B, 4, n, n]`` (any dtype; converted to float), ``C = 4 * n * n``.

The mixture-of-experts policy is the paper's: two experts (diamond, ghost), each
``Linear(C, H)-ReLU-Linear(H, H)-ReLU`` on the flattened observation; a gate
(1x1 conv 4->4, then ``C-H-H-1`` MLP, sigmoid) mixes them in the hidden space,
``h = g * E_diamond + (1 - g) * E_ghost``; a shared ``Linear(H, 4)`` gives action logits.
All gradient masks go through :mod:`oversight_gr.routing`.

Two exact rewrites make it cheaper without changing the function or any parameter's gradient
(tested against the literal formulation in tests/rl/test_fast_paths.py): the 1x1 convolution
is folded into the first gate layer's weights, and since the head is linear the mixture is taken
on the head's 4 outputs, ``g * head(E_d) + (1 - g) * head(E_g)``, with the routing weights applied
to the experts' outputs before the head.
"""

from __future__ import annotations

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
    "PolicyArch",
    "policy_fold",
    "policy_features",
    "policy_gate",
    "policy_mix",
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


# -- the forward, written once ---------------------------------------------------------------------
# Every network here is a function of a parameter mapping ``{state-dict name: tensor}``. A tensor
# is either a module's own parameter (``[out, in]``: one network, activations ``[..., N, in]``)
# or a stack of R networks' parameters (``[R, out, in]``, activations ``[R, N, in]``, one batched
# matrix multiply per layer): the modules below and the trainer (R runs side by side) run the
# same code.
Params = dict  # {state-dict name: Tensor}


def linear(x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``x @ weight^T + bias`` for one network (``weight [out, in]``) or R stacked ones
    (``weight [R, out, in]``, ``x [R, N, in]``)."""
    if weight.ndim == 2:
        return F.linear(x, weight, bias)
    return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))


def _layer(x: Tensor, p: Params, name: str) -> Tensor:
    return linear(x, p[name + ".weight"], p[name + ".bias"])


def mlp_forward(x: Tensor, p: Params, prefix: str) -> Tensor:
    """The two ReLU layers of :func:`_mlp` named ``prefix.0`` and ``prefix.2``."""
    return torch.relu(_layer(torch.relu(_layer(x, p, prefix + ".0")), p, prefix + ".2"))


def fold_gate_layer(p: Params, gate_input: str) -> tuple[Tensor, Tensor]:
    """The first gate layer with the 1x1 convolution folded in: ``(weight [..., H, C'],
    bias [..., H])``; ``C' = 3 n^2`` when the gate does not see the oversight plane.

    The convolution is linear, so ``W1 . conv`` (an ``H x C`` product) replaces running it on
    every sample: the same function and the same parameter gradients, one matrix multiply fewer.
    """
    w, b = p["gate_mlp.0.0.weight"], p["gate_mlp.0.0.bias"]
    conv_w, conv_b = p["gate_conv.weight"], p["gate_conv.bias"]
    lead, hid = w.shape[:-2], w.shape[-2]
    w1 = w.view(*lead, hid, 4, -1)  # [..., H, conv out channel, cell]
    with torch.autocast(w.device.type, enabled=False):  # fold in full precision
        weight = torch.einsum("...hop,...oc->...hcp", w1, conv_w.view(*lead, 4, 4))
        bias = b + torch.einsum("...hop,...o->...h", w1, conv_b)
    if gate_input == "no_oversight":
        weight = weight[..., :3, :]
    return weight.reshape(*lead, hid, -1), bias


def gate_forward(x: Tensor, p: Params, fold: tuple[Tensor, Tensor], size: int,
                 gate_input: str) -> Tensor:
    """``[..., N]`` gate from the flattened observation ``x [..., N, C]`` and the folded first
    layer (:func:`fold_gate_layer`); hiding the oversight plane drops its columns."""
    if gate_input == "no_oversight":
        x = x[..., : 3 * size * size]
    z = torch.relu(linear(x, *fold))
    z = torch.relu(_layer(z, p, "gate_mlp.0.2"))
    return torch.sigmoid(_layer(z, p, "gate_mlp.1")).squeeze(-1)


def moe_features(x: Tensor, p: Params, gate: Tensor) -> MoEFeatures:
    """The two experts' outputs on ``x [..., N, C]`` and the given gate ``[..., N]``."""
    return MoEFeatures(mlp_forward(x, p, "expert_diamond"), mlp_forward(x, p, "expert_ghost"),
                       gate)


def steer_gate(steer: str, shape: tuple, device: torch.device, learned) -> Tensor:
    """The gate under ``steer``: ones (diamond), zeros (ghost), or ``learned()`` (none)."""
    if steer == "diamond":
        return torch.ones(shape, device=device)
    if steer == "ghost":
        return torch.zeros(shape, device=device)
    if steer == "none":
        return learned()
    raise ValueError(f"steer must be one of {STEER}, got {steer!r}")


def moe_mix(feats: MoEFeatures, p: Params, route: RouteWeights | None = None) -> MoEOutput:
    """Routed mixture and shared head: ``g * head(E_d) + (1 - g) * head(E_g)`` (the head is
    linear, so this equals ``head(g * E_d + (1 - g) * E_g)`` for the value and every parameter's
    gradient; the routing weights ``[..., N]`` scale the experts' outputs before the head, so the
    head itself always trains on the full mixture), mixing 4 logits instead of H hidden units."""
    e_d, e_g, gate = feats
    if route is not None:
        e_d = scale_gradient(e_d, route.diamond.unsqueeze(-1))
        e_g = scale_gradient(e_g, route.ghost.unsqueeze(-1))
        gate = scale_gradient(gate, route.gate)
    logits = two_expert_mixture(_layer(e_d, p, "head"), _layer(e_g, p, "head"),
                                gate.unsqueeze(-1))
    return MoEOutput(logits, feats.gate)


def single_mix(feats: Tensor, p: Params) -> MoEOutput:
    """The single expert's head on its body output; the gate is NaN (there is none)."""
    logits = _layer(feats, p, "head")
    return MoEOutput(logits, torch.full(logits.shape[:-1], float("nan"), device=logits.device))


def value_forward(x: Tensor, p: Params) -> Tensor:
    """``[..., N]`` state values (:class:`ValueNet`) from ``x [..., N, C]``."""
    return _layer(mlp_forward(x, p, "net.0"), p, "net.1").squeeze(-1)


# -- the actor's forward: one dispatch for the modules and the trainer ------------------------------
class PolicyArch(NamedTuple):
    """What the actor's functional forward needs besides its parameters.

    ``kind`` is ``"moe"`` (:class:`MoEPolicy`) or ``"single"`` (:class:`SingleExpertPolicy`);
    ``size``, ``gate_input`` and ``constant_gate`` as for :class:`MoEPolicy`."""

    kind: str
    size: int
    gate_input: str = "full"
    constant_gate: float | None = None

    @property
    def learned_gate(self) -> bool:
        """Whether the gate is a function of the parameters (an MoE without a constant gate)."""
        return self.kind == "moe" and self.constant_gate is None


def policy_fold(arch: PolicyArch, p: Params) -> tuple[Tensor, Tensor] | None:
    """The folded first gate layer (:func:`fold_gate_layer`), None without a learned gate;
    compute it once per block of forwards whose parameters do not change."""
    return fold_gate_layer(p, arch.gate_input) if arch.learned_gate else None


def policy_features(arch: PolicyArch, x: Tensor, p: Params, fold=None,
                    steer: str = "none") -> MoEFeatures | Tensor:
    """The actor's features on the flattened observation ``x [..., N, C]``: the experts' outputs
    and the gate (MoE; ``steer`` fixes the gate, ``fold`` is :func:`policy_fold`'s result,
    computed here when not given) or the single expert's body output."""
    if arch.kind != "moe":
        if steer not in STEER:
            raise ValueError(f"steer must be one of {STEER}, got {steer!r}")
        return mlp_forward(x, p, "body")
    return moe_features(x, p, steer_gate(steer, x.shape[:-1], x.device,
                                         lambda: policy_gate(arch, x, p, fold)))


def policy_gate(arch: PolicyArch, x: Tensor, p: Params, fold=None) -> Tensor:
    """An MoE's unsteered gate ``[..., N]`` on ``x [..., N, C]``: the constant, or
    :func:`gate_forward` with ``fold`` (:func:`policy_fold`'s result, computed when not given)."""
    if arch.constant_gate is not None:
        return torch.full(x.shape[:-1], float(arch.constant_gate), device=x.device)
    return gate_forward(x, p, policy_fold(arch, p) if fold is None else fold, arch.size,
                        arch.gate_input)


def policy_mix(arch: PolicyArch, feats: MoEFeatures | Tensor, p: Params,
               route: RouteWeights | None = None) -> MoEOutput:
    """Logits ``[..., N, 4]`` and gate ``[..., N]`` from :func:`policy_features`' result:
    the routed mixture (:func:`moe_mix`) or the single expert's head (gate NaN; ``route`` has
    nothing to route there)."""
    if arch.kind != "moe":
        return single_mix(feats, p)
    return moe_mix(feats, p, route)


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
        self.arch = PolicyArch("moe", size, gate_input, constant_gate)
        self.expert_diamond = _mlp(c, hidden)
        self.expert_ghost = _mlp(c, hidden)
        self.gate_conv = nn.Conv2d(4, 4, kernel_size=1)
        self.gate_mlp = nn.Sequential(_mlp(c, hidden), nn.Linear(hidden, 1))
        self.head = nn.Linear(hidden, 4)

    def params(self) -> Params:
        """``{state-dict name: parameter}``, what the functional forward reads."""
        return dict(self.named_parameters())

    def gate_value(self, obs: Tensor) -> Tensor:
        """``[B]`` gate in [0, 1]."""
        p = self.params()
        return policy_gate(self.arch, obs.float().flatten(1), p, self._folded_gate_layer(p))

    def _folded_gate_layer(self, p: Params) -> tuple[Tensor, Tensor] | None:
        """:func:`policy_fold` of this module. Without autograd (evaluation, figures) the
        result is cached until a parameter changes (tracked by the parameters' in-place version
        counters and storage)."""
        if not self.arch.learned_gate:
            return None
        tensors = tuple(p[n] for n in ("gate_mlp.0.0.weight", "gate_mlp.0.0.bias",
                                       "gate_conv.weight", "gate_conv.bias"))
        key = None
        if not torch.is_grad_enabled():
            key = tuple((t.data_ptr(), t._version) for t in tensors)
            cached = getattr(self, "_gate_fold_cache", None)
            if cached is not None and cached[0] == key:
                return cached[1]
        folded = policy_fold(self.arch, p)
        if key is not None:
            self._gate_fold_cache = (key, folded)
        return folded

    def features(self, obs: Tensor, steer: str = "none") -> MoEFeatures:
        """The two experts' hidden outputs and the gate (everything before the mixture;
        :func:`policy_features`)."""
        p = self.params()
        fold = self._folded_gate_layer(p) if steer == "none" else None
        return policy_features(self.arch, obs.float().flatten(1), p, fold, steer)

    def mix(self, feats: MoEFeatures, route: RouteWeights | None = None) -> MoEOutput:
        """Routed mixture and shared head on precomputed :meth:`features` (:func:`policy_mix`)."""
        return policy_mix(self.arch, feats, self.params(), route)

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
        self.arch = PolicyArch("single", size)
        self.body = _mlp(4 * size * size, hidden)
        self.head = nn.Linear(hidden, 4)

    def features(self, obs: Tensor, steer: str = "none") -> Tensor:
        """The body's hidden output ``[B, H]`` (:func:`policy_features`)."""
        return policy_features(self.arch, obs.float().flatten(1), dict(self.named_parameters()),
                               steer=steer)

    def mix(self, feats: Tensor, route: RouteWeights | None = None) -> MoEOutput:
        """The head on precomputed :meth:`features` (``route`` has nothing to route here)."""
        return policy_mix(self.arch, feats, dict(self.named_parameters()), route)

    def forward(self, obs: Tensor, route: RouteWeights | None = None, steer: str = "none"):
        return self.mix(self.features(obs, steer), route)


class ValueNet(nn.Module):
    """State value ``V(obs)``: ``C-H-H-1`` with ReLUs (the paper's code used a linear one)."""

    def __init__(self, size: int = 5, hidden: int = 256):
        super().__init__()
        self.net = nn.Sequential(_mlp(4 * size * size, hidden), nn.Linear(hidden, 1))

    def forward(self, obs: Tensor) -> Tensor:
        return value_forward(obs.float().flatten(1), dict(self.named_parameters()))
