"""Expand-Route-Ablate on any GPT-style ``torch.nn.Module`` (not only :class:`~oversight_gr.lm.model.GPT`).

The protocol: the user names the MLP blocks to expand as ``(up, down)`` pairs of
``torch.nn.Linear`` layers, given as the modules themselves or as their dotted paths in
``model.named_modules()`` (e.g. ``("blocks.0.mlp.fc", "blocks.0.mlp.proj")``), such that the
block computes ``down(act(up(x)))`` with an elementwise activation between them: the hidden
units are ``up``'s outputs and ``down``'s inputs. That covers GPT-2/GPT-Neo/nanoGPT-style MLPs
written with ``nn.Linear``. Not covered: gated MLPs (SwiGLU: a third ``gate`` layer would have to
grow too) and Hugging Face's transposed ``Conv1D``.

Three steps, the same as :mod:`oversight_gr.lm.era` runs on its own model:

1. :func:`expand` replaces each pair by wider ``nn.Linear`` layers with ``k`` extra hidden units
   (new ``down`` columns start at zero by default, so the model's function is unchanged);
2. :func:`routed` is a context manager for one training step: given each target token's forget
   strength ``[B, T]`` in ``[0, 1]`` (1 = a labelled forget token), the gradient of the hidden
   activations is multiplied by ``forget_weight`` on the original units and by 1 on the new ones
   for forget tokens, by 1 everywhere for the others, interpolated linearly in between; it also
   collects the new units' activations for an L1 penalty (not routed: the penalty trains the
   new units on every token);
3. :func:`ablate` deletes the new units (the pairs return to their original widths).

SGTM on the same expansion (selective gradient masking, parameter-gradient routing): instead of
step 2, :func:`forget_masks` gives the gradient masks under which forget tokens train only the
new units' weights, and :func:`oversight_gr.routing.masked_backward` applies them to the loss of
the forget tokens while the other tokens train everything::

    masks = forget_masks(exp)
    masked_backward(model, {"retain": loss_on_retain_tokens, "forget": loss_on_forget_tokens},
                    {"forget": masks})

with retain mode (:func:`dropped`): the rows without a forget token run with the new units
dropped, with some probability (the lm_era grid measured 0.1; 0 let the retain data rely on
the units, so ablation cost it as much as the forget data).

Example (see ``examples/era_own_model.py``)::

    exp = expand(model, [("h.0.mlp.up", "h.0.mlp.down")], k=16)
    with routed(exp, strength) as acts:
        loss = lm_loss(model(x), y) + 1e-4 * sum(a.abs().sum(-1).mean() for a in acts)
        loss.backward()
    ablate(exp)
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn

from oversight_gr.routing import RouteTable, scale_gradient, sgtm_masks

__all__ = ["Expansion", "grow_pair", "shrink_pair", "expand", "era_route_table",
           "era_weights", "routed", "dropped", "ablate", "forget_masks"]

#: one MLP block: (up, down) as ``nn.Linear`` modules or their dotted paths in the model
MLPPair = tuple[nn.Module | str, nn.Module | str]


@torch.no_grad()
def grow_pair(up: nn.Linear, down: nn.Linear, k: int, generator: torch.Generator | None = None,
              in_std: float = 0.02, out_std: float = 0.0) -> tuple[nn.Linear, nn.Linear]:
    """New ``(up, down)`` layers with ``k`` hidden units appended after the existing ones
    (input weights ``N(0, in_std)``, zero input bias, output weights ``N(0, out_std)``)."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    d_in, width, d_out = up.in_features, up.out_features, down.out_features
    dev, dt = up.weight.device, up.weight.dtype
    w_in = torch.randn(k, d_in, generator=generator).to(dev, dt) * in_std
    w_out = torch.randn(d_out, k, generator=generator).to(dev, dt) * out_std
    new_up = nn.Linear(d_in, width + k, bias=up.bias is not None).to(dev, dt)
    new_up.weight.copy_(torch.cat([up.weight, w_in], 0))
    if up.bias is not None:
        new_up.bias.copy_(torch.cat([up.bias, torch.zeros(k, device=dev, dtype=dt)]))
    new_down = nn.Linear(width + k, d_out, bias=down.bias is not None).to(dev, dt)
    new_down.weight.copy_(torch.cat([down.weight, w_out], 1))
    if down.bias is not None:
        new_down.bias.copy_(down.bias)
    return new_up, new_down


@torch.no_grad()
def shrink_pair(up: nn.Linear, down: nn.Linear,
                units: Sequence[int] | Tensor | slice) -> tuple[nn.Linear, nn.Linear]:
    """New ``(up, down)`` layers without the hidden ``units`` (the others keep their order)."""
    dev, dt = up.weight.device, up.weight.dtype
    keep = torch.ones(up.out_features, dtype=torch.bool)
    keep[units] = False
    keep = keep.to(dev)
    n = int(keep.sum())
    new_up = nn.Linear(up.in_features, n, bias=up.bias is not None).to(dev, dt)
    new_up.weight.copy_(up.weight[keep])
    if up.bias is not None:
        new_up.bias.copy_(up.bias[keep])
    new_down = nn.Linear(n, down.out_features, bias=down.bias is not None).to(dev, dt)
    new_down.weight.copy_(down.weight[:, keep])
    if down.bias is not None:
        new_down.bias.copy_(down.bias)
    return new_up, new_down


@dataclasses.dataclass
class Expansion:
    """What :func:`expand` did: the pairs' paths, their original widths and ``k``."""

    model: nn.Module
    paths: list[tuple[str, str]]
    base_widths: list[int]
    k: int

    @property
    def new_units(self) -> list[slice]:
        """The new hidden units of each pair (after the original ones)."""
        return [slice(w, w + self.k) for w in self.base_widths]

    def layers(self) -> list[tuple[nn.Linear, nn.Linear]]:
        """The current ``(up, down)`` modules of each pair."""
        mods = dict(self.model.named_modules())
        return [(mods[u], mods[d]) for u, d in self.paths]


def _path_of(model: nn.Module, ref: nn.Module | str, names: dict[int, str]) -> str:
    if isinstance(ref, str):
        return ref
    name = names.get(id(ref))
    if name is None:
        raise ValueError(f"module {ref.__class__.__name__} is not a submodule of the model")
    return name


def _set(model: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def expand(model: nn.Module, mlps: Sequence[MLPPair], k: int,
           generator: torch.Generator | None = None, in_std: float = 0.02,
           out_std: float = 0.0) -> Expansion:
    """Add ``k`` hidden units to each ``(up, down)`` pair of ``model``, in place.

    Raises:
        ValueError: a pair is not two ``nn.Linear`` in the model, or their widths disagree
            (``up.out_features != down.in_features``).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if not mlps:
        raise ValueError("mlps must name at least one (up, down) pair")
    names = {id(m): n for n, m in model.named_modules()}
    mods = dict(model.named_modules())
    paths, widths = [], []
    for pair in mlps:
        if len(pair) != 2:
            raise ValueError(f"each MLP is an (up, down) pair, got {pair!r}")
        up_p, down_p = (_path_of(model, r, names) for r in pair)
        for p in (up_p, down_p):
            if not isinstance(mods.get(p), nn.Linear):
                raise ValueError(f"{p!r} must name an nn.Linear of the model, "
                                 f"got {type(mods.get(p)).__name__}")
        up, down = mods[up_p], mods[down_p]
        if up.out_features != down.in_features:
            raise ValueError(f"{up_p!r} has {up.out_features} outputs but {down_p!r} has "
                             f"{down.in_features} inputs: not an (up, down) pair")
        paths.append((up_p, down_p))
        widths.append(up.out_features)
    exp = Expansion(model, paths, widths, k)
    for (up_p, down_p), (up, down) in zip(paths, exp.layers()):
        new_up, new_down = grow_pair(up, down, k, generator, in_std, out_std)
        _set(model, up_p, new_up)
        _set(model, down_p, new_down)
    return exp


def era_route_table(width: int, new_units: slice, forget_weight: float,
                    retain_new_weight: float = 1.0) -> RouteTable:
    """Label 0 (retain): 1 on the original units, ``retain_new_weight`` on ``new_units`` (the
    paper: 1, retain data trains everything); label 1 (forget): ``forget_weight`` on the
    original units, 1 on ``new_units``."""
    forget_row = torch.full((width,), float(forget_weight))
    forget_row[new_units] = 1.0
    retain_row = torch.ones(width)
    retain_row[new_units] = float(retain_new_weight)
    return RouteTable.from_mapping(width, {0: retain_row, 1: forget_row})


def era_weights(table: RouteTable, strength: Tensor) -> Tensor:
    """Gradient weights ``[*B, H]`` for tokens of forget strength ``strength [*B]`` in [0, 1]:
    the forget row at 1, the retain row at 0, linear in between."""
    ones = torch.ones(strength.shape, dtype=torch.long, device=strength.device)
    return table.interpolate(ones, torch.zeros_like(ones), strength.float())


@contextlib.contextmanager
def routed(exp: Expansion, strength: Tensor, forget_weight: float = -0.75,
           retain_new_weight: float = 1.0) -> Iterator[list[Tensor]]:
    """Route the forward/backward passes run inside the block.

    Args:
        exp: from :func:`expand`.
        strength: ``[B, T]`` forget strength of each position's *target* token (1 = labelled
            forget, 0 = retain; e.g. the label times a topic-specificity score).
        forget_weight: gradient weight of the original units on forget tokens (paper: -0.75).
        retain_new_weight: gradient weight of the new units on retain tokens (paper: 1).

    Yields:
        a list that collects, per pair and forward pass, the new units' activations
        ``[B, T, k]`` (for an L1 penalty).
    """
    acts: list[Tensor] = []
    handles = []
    for (_, down), units in zip(exp.layers(), exp.new_units):
        weights = era_weights(era_route_table(down.in_features, units, forget_weight,
                                              retain_new_weight), strength)

        def hook(_mod, inputs, w=weights, units=units):
            h = inputs[0]
            if h.shape[:-1] != w.shape[:-1]:
                raise ValueError(f"strength has shape {tuple(w.shape[:-1])} but the MLP input "
                                 f"has {tuple(h.shape[:-1])}")
            acts.append(h[..., units])
            return (scale_gradient(h, w.to(h.dtype)),) + tuple(inputs[1:])

        handles.append(down.register_forward_pre_hook(hook))
    try:
        yield acts
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def dropped(exp: Expansion, rows: Tensor) -> Iterator[None]:
    """SGTM's retain mode for the passes run inside the block: the new units' activations are
    zeroed on the batch ``rows`` (bool ``[B]``), as if ablated there, so those rows neither use
    nor train them (the retain data learns not to rely on the units ablation will delete).
    Works whatever the activation between ``up`` and ``down`` (the zeros go into ``down``)."""
    handles = []
    for (_, down), units in zip(exp.layers(), exp.new_units):

        def hook(_mod, inputs, units=units):
            h = inputs[0]
            if rows.shape != h.shape[:1]:
                raise ValueError(f"rows has shape {tuple(rows.shape)} but the batch is "
                                 f"{h.shape[0]}")
            keep = torch.ones(h.shape[0], h.shape[-1], dtype=h.dtype, device=h.device)
            keep[rows.to(h.device), units] = 0
            return (h * keep.view(h.shape[0], *([1] * (h.ndim - 2)), h.shape[-1]),) \
                + tuple(inputs[1:])

        handles.append(down.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def ablate(exp: Expansion) -> None:
    """Delete the new units of every pair, in place (the model returns to its original
    widths)."""
    for (up_p, down_p), (up, down), units in zip(exp.paths, exp.layers(), exp.new_units):
        new_up, new_down = shrink_pair(up, down, units)
        _set(exp.model, up_p, new_up)
        _set(exp.model, down_p, new_down)


def forget_masks(exp: Expansion, also_train: Sequence[str] = ()) -> dict[str, Tensor | float]:
    """SGTM's gradient masks for the forget tokens of an expanded model: the new units' input
    rows, input biases and output columns keep their gradient; every other parameter gets 0,
    except the parameter names in ``also_train`` (e.g. the embeddings, to let forget data train
    them; the issue-25 probes found masking them matters on a small model)."""
    spec = {}
    for up_p, down_p in exp.paths:
        u = exp.new_units[exp.paths.index((up_p, down_p))]
        spec[f"{up_p}.weight"] = (0, u)
        if exp.model.get_submodule(up_p).bias is not None:
            spec[f"{up_p}.bias"] = (0, u)
        spec[f"{down_p}.weight"] = (1, u)
    return sgtm_masks(exp.model, spec, shared=list(also_train), mask_shared=False)
