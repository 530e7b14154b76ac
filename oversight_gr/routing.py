"""The gradient-routing core: every experiment in the package routes through this module.

Gradient routing gives each data point a weight on chosen edges of the computation graph and
multiplies the gradient crossing that edge by the weight during backprop. The forward pass is
unchanged. Two forms are offered:

* activation routing (:func:`scale_gradient`, :class:`RouteTable`, :func:`routed_mixture`): a
  weight tensor, broadcastable to an activation, scales the gradient flowing back through it,
  per sample and per dimension. 0 blocks, 1 passes, -0.75 reverses and shrinks.
* parameter routing (:class:`ParameterRouter`): per-route masks on chosen parameters'
  gradients, applied by tensor hooks while that route's loss is backpropagated.
* parameter-gradient masking after backward (:func:`masked_backward`, :func:`sgtm_masks`,
  :func:`mask_gradients`): each route's loss is differentiated on its own and its parameter
  gradients are multiplied by the route's masks before they accumulate into ``.grad``;
  parameters a route masks by 0 are not differentiated at all. SGTM-style training (selective
  gradient masking): a forget route updates only its forget units (rows/columns of chosen
  parameters), optionally the embeddings, LayerNorms and unembedding too, while the other
  routes update everything.

For a first-layer mixture of experts the two forms give the same gradients (tested).

Shapes use ``B`` for the batch, ``D`` for a feature dimension, ``E`` for experts, ``R`` for
routes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

__all__ = [
    "scale_gradient",
    "RouteTable",
    "routed_mixture",
    "two_expert_mixture",
    "ParameterRouter",
    "ablate",
    "ablate_output",
    "unit_mask",
    "sgtm_masks",
    "mask_gradients",
    "masked_backward",
]


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the incoming gradient by ``weight``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:  # noqa: D401
        ctx.save_for_backward(weight)
        # view_as keeps the forward bit-identical without a copy while giving autograd a new node.
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (weight,) = ctx.saved_tensors
        return grad * weight, None


def scale_gradient(x: Tensor, weight: Tensor | float) -> Tensor:
    """Return ``x`` unchanged; on backward, scale its gradient by ``weight``.

    Args:
        x: any activation, e.g. ``[B, D]``.
        weight: a tensor broadcastable to ``x`` (``[B, 1]`` per sample, ``[B, D]`` per sample
            and dimension, ``[D]`` per dimension) or a Python number. Any real value: 0 blocks
            the gradient, 1 passes it, negative values reverse it (gradient ascent through x).

    Returns:
        A tensor equal to ``x`` bit for bit. Gradients w.r.t. ``weight`` are not computed.

    Raises:
        ValueError: if ``weight`` does not broadcast to ``x``'s shape without enlarging it.
    """
    if not isinstance(weight, Tensor):
        weight = torch.tensor(float(weight), dtype=x.dtype, device=x.device)
    try:
        shape = torch.broadcast_shapes(x.shape, weight.shape)
    except RuntimeError as exc:
        raise ValueError(
            f"routing weight of shape {tuple(weight.shape)} does not broadcast to the activation "
            f"shape {tuple(x.shape)}"
        ) from exc
    if shape != x.shape:
        raise ValueError(
            f"routing weight of shape {tuple(weight.shape)} would enlarge the activation shape "
            f"{tuple(x.shape)} to {tuple(shape)}; allowed: shapes broadcastable to the activation"
        )
    if not x.requires_grad:
        return x
    return _ScaleGradient.apply(x, weight.detach().to(dtype=x.dtype, device=x.device))


class RouteTable:
    """Map integer route labels to per-dimension gradient-weight rows.

    Example: two routes over a 32-d latent, label 0 (digits 0-4) passes the first half, label 1
    (digits 5-9) the second::

        table = RouteTable.from_slices(32, {0: slice(0, 16), 1: slice(16, 32)})
        z = scale_gradient(z, table(labels))        # labels: [B] int -> weights [B, 32]

    Rows may hold any real values (ERA: ``new neurons 1, old -0.75``).

    Args:
        rows: ``[R, D]`` weight rows, one per route label ``0..R-1``.
    """

    def __init__(self, rows: Tensor | Sequence[Sequence[float]]):
        rows = torch.as_tensor(rows, dtype=torch.float32)
        if rows.ndim != 2 or rows.shape[0] == 0:
            raise ValueError(
                f"route rows must have shape [num_routes >= 1, dim], got {tuple(rows.shape)}"
            )
        self.rows = rows

    @classmethod
    def from_mapping(
        cls, dim: int, routes: Mapping[int, Sequence[float] | Tensor], default: float = 1.0
    ) -> RouteTable:
        """Build a table from ``{label: row}``; labels must be ``0..R-1``, missing ones get
        a row filled with ``default``."""
        if dim <= 0:
            raise ValueError(f"dim must be a positive int, got {dim!r}")
        if not routes:
            raise ValueError("routes must name at least one label")
        bad = [k for k in routes if not isinstance(k, int) or k < 0]
        if bad:
            raise ValueError(f"route labels must be non-negative ints, got {bad!r}")
        rows = torch.full((max(routes) + 1, dim), float(default))
        for label, row in routes.items():
            row = torch.as_tensor(row, dtype=torch.float32)
            if row.shape != (dim,):
                raise ValueError(
                    f"row for label {label} has shape {tuple(row.shape)}, expected ({dim},)"
                )
            rows[label] = row
        return cls(rows)

    @classmethod
    def from_slices(
        cls,
        dim: int,
        routes: Mapping[int, slice | Sequence[int]],
        inside: float = 1.0,
        outside: float = 0.0,
    ) -> RouteTable:
        """Build a table where label ``k`` gets ``inside`` on the units ``routes[k]`` selects
        and ``outside`` elsewhere."""
        mapping = {}
        for label, units in routes.items():
            row = torch.full((dim,), float(outside))
            row[units] = float(inside)
            mapping[label] = row
        return cls.from_mapping(dim, mapping)

    @property
    def num_routes(self) -> int:
        return self.rows.shape[0]

    @property
    def dim(self) -> int:
        return self.rows.shape[1]

    def _lookup(self, labels: Tensor, check: bool = True) -> Tensor:
        labels = torch.as_tensor(labels)
        if labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise ValueError(f"route labels must be an integer tensor, got dtype {labels.dtype}")
        # the range check reads min/max back to the host: a device sync per call on a GPU
        if check and labels.numel() and (
            int(labels.min()) < 0 or int(labels.max()) >= self.num_routes
        ):
            raise ValueError(
                f"route labels must lie in [0, {self.num_routes - 1}], got values in "
                f"[{int(labels.min())}, {int(labels.max())}]"
            )
        if self.rows.device != labels.device:
            self.rows = self.rows.to(labels.device)  # keep one copy where the labels live
        return self.rows[labels.long()]

    def __call__(self, labels: Tensor, check: bool = True) -> Tensor:
        """``labels [*B]`` (ints) -> weights ``[*B, D]``.

        ``check=False`` skips the label range check (and its host sync) for hot loops whose
        labels are valid by construction."""
        return self._lookup(labels, check)

    def interpolate(self, labels_a: Tensor, labels_b: Tensor, t: Tensor | float) -> Tensor:
        """Per-sample soft mix of two routes: ``t * row[a] + (1 - t) * row[b]``.

        Args:
            labels_a, labels_b: ``[*B]`` int labels.
            t: ``[*B]`` (or scalar) interpolation weights, usually in [0, 1].

        Returns:
            ``[*B, D]`` weights. ERA uses this to soften a token's forget route by how
            topic-specific the token is.
        """
        a = self._lookup(labels_a)
        b = self._lookup(labels_b)
        t = torch.as_tensor(t, dtype=a.dtype, device=a.device)
        if t.ndim:
            t = t.unsqueeze(-1)
        return t * a + (1.0 - t) * b


def routed_mixture(
    expert_outputs: Tensor,
    gate_probs: Tensor,
    expert_grad: Tensor | None = None,
    gate_grad: Tensor | None = None,
) -> Tensor:
    """Mix expert outputs with a gate; each sample's route says who receives gradient.

    ``out[b] = sum_e gate_probs[b, e] * expert_outputs[b, e]``. The forward value never depends
    on ``expert_grad`` / ``gate_grad``.

    Args:
        expert_outputs: ``[B, E, D]``.
        gate_probs: ``[B, E]`` mixing weights (rows usually sum to 1).
        expert_grad: ``[B, E]`` gradient weight per sample and expert (0 = that expert learns
            nothing from the sample). ``None`` = all ones.
        gate_grad: ``[B]`` or ``[B, E]`` gradient weight into the gate. ``None`` = all ones.
            With 0 no gradient of the sample reaches the gate's parameters.

    Returns:
        ``[B, D]``.
    """
    if expert_outputs.ndim != 3 or gate_probs.shape != expert_outputs.shape[:2]:
        raise ValueError(
            f"expected expert_outputs [B, E, D] and gate_probs [B, E], got "
            f"{tuple(expert_outputs.shape)} and {tuple(gate_probs.shape)}"
        )
    if expert_grad is not None:
        expert_outputs = scale_gradient(expert_outputs, expert_grad.unsqueeze(-1))
    if gate_grad is not None:
        if gate_grad.ndim == 1:
            gate_grad = gate_grad.unsqueeze(-1)
        gate_probs = scale_gradient(gate_probs, gate_grad)
    return torch.einsum("be,bed->bd", gate_probs, expert_outputs)


def two_expert_mixture(
    expert_a: Tensor,
    expert_b: Tensor,
    gate: Tensor,
    grad_a: Tensor | None = None,
    grad_b: Tensor | None = None,
    gate_grad: Tensor | None = None,
) -> Tensor:
    """``g * a + (1 - g) * b`` with per-sample routing; the RL policy's mixture.

    Args:
        expert_a, expert_b: ``[B, D]``.
        gate: ``[B]`` or ``[B, 1]`` gate value in [0, 1] (weight of ``expert_a``).
        grad_a, grad_b, gate_grad: ``[B]`` gradient weights (``None`` = ones).

    Returns:
        ``[B, D]``; same value as the unrouted mixture, bit for bit.
    """
    if gate.ndim == 1:
        gate = gate.unsqueeze(-1)
    if grad_a is not None:
        expert_a = scale_gradient(expert_a, grad_a.unsqueeze(-1))
    if grad_b is not None:
        expert_b = scale_gradient(expert_b, grad_b.unsqueeze(-1))
    if gate_grad is not None:
        gate = scale_gradient(gate, gate_grad.unsqueeze(-1))
    return gate * expert_a + (1.0 - gate) * expert_b


class ParameterRouter:
    """Parameter-gradient routing: per-route masks on chosen parameters' gradients.

    ``masks[route][param_name]`` is a number or a tensor broadcastable to the parameter;
    parameters not named for a route pass their gradient unchanged. Backpropagate each route's
    loss with :meth:`backward` (or inside :meth:`active`), and the hooks multiply the gradient
    of the named parameters before it accumulates into ``.grad``::

        router = ParameterRouter(model, {0: {"ghost.0.weight": 0.0, ...}, 1: {...}})
        router.backward({0: loss_on_diamond_samples, 1: loss_on_ghost_samples, 2: loss_rest})

    Args:
        module: the model whose named parameters the masks refer to.
        masks: ``{route: {parameter name: mask}}``.
    """

    def __init__(self, module: nn.Module, masks: Mapping[int, Mapping[str, Tensor | float]]):
        params = dict(module.named_parameters())
        self._params = params
        self._masks: dict[int, dict[str, Tensor | float]] = {}
        for route, per_param in masks.items():
            unknown = sorted(set(per_param) - set(params))
            if unknown:
                raise ValueError(
                    f"route {route} names unknown parameters {unknown}; allowed: {sorted(params)}"
                )
            self._masks[route] = dict(per_param)

    @contextlib.contextmanager
    def active(self, route: int) -> Iterator[None]:
        """Within the block, gradients reaching the route's masked parameters are scaled."""
        handles = []
        try:
            for name, mask in self._masks.get(route, {}).items():
                param = self._params[name]
                m = mask if not isinstance(mask, Tensor) else mask.to(param.device, param.dtype)
                handles.append(param.register_hook(lambda g, m=m: g * m))
            yield
        finally:
            for h in handles:
                h.remove()

    def backward(self, losses: Mapping[int, Tensor]) -> None:
        """Backpropagate each route's scalar loss with that route's masks, accumulating."""
        items = list(losses.items())
        for i, (route, loss) in enumerate(items):
            with self.active(route):
                loss.backward(retain_graph=i < len(items) - 1)


def ablate(x: Tensor, units: Tensor | Sequence[int] | slice, dim: int = -1) -> Tensor:
    """Return ``x`` with the chosen units along ``dim`` set to zero (inference-time ablation)."""
    keep = torch.ones(x.shape[dim], dtype=x.dtype, device=x.device)
    keep[units] = 0
    shape = [1] * x.ndim
    shape[dim] = -1
    return x * keep.view(shape)


@contextlib.contextmanager
def ablate_output(
    module: nn.Module, units: Tensor | Sequence[int] | slice, dim: int = -1
) -> Iterator[None]:
    """Zero the chosen output units of ``module`` while the block runs (forward hook)."""
    handle = module.register_forward_hook(lambda _m, _i, out: ablate(out, units, dim))
    try:
        yield
    finally:
        handle.remove()


#: ``{parameter name: (dim, units)}``: the forget units of a parameter, ``units`` (a slice, an
#: index list or a bool tensor) along ``dim``
UnitSpec = Mapping[str, tuple[int, "slice | Sequence[int] | Tensor"]]


def unit_mask(param: Tensor, dim: int, units: slice | Sequence[int] | Tensor,
              inside: float = 1.0, outside: float = 0.0) -> Tensor:
    """A mask shaped like ``param``: ``inside`` on the ``units`` along ``dim``, ``outside``
    elsewhere (e.g. the rows of an MLP's up-projection that feed chosen hidden units)."""
    if not -param.ndim <= dim < param.ndim:
        raise ValueError(f"dim {dim} is out of range for a parameter of shape "
                         f"{tuple(param.shape)}")
    line = torch.full((param.shape[dim],), float(outside), dtype=param.dtype,
                      device=param.device)
    line[units] = float(inside)
    shape = [1] * param.ndim
    shape[dim] = -1
    return line.view(shape).expand_as(param).clone()


def sgtm_masks(module: nn.Module, forget_units: UnitSpec, shared: Sequence[str] = (),
               mask_shared: bool = True) -> dict[str, Tensor | float]:
    """The gradient masks of an SGTM forget route over every parameter of ``module``.

    Args:
        forget_units: ``{name: (dim, units)}``; those parameters keep the gradient of their
            forget units only (e.g. ``{"blocks.0.mlp.fc.weight": (0, slice(256, 288)),
            "blocks.0.mlp.proj.weight": (1, slice(256, 288))}``).
        shared: names of parameters that no unit owns (embeddings, LayerNorms, unembedding).
        mask_shared: True: forget data leaves ``shared`` untouched too (mask 0); False: they
            learn from it (mask 1).

    Returns:
        ``{name: mask}`` for every parameter: a tensor for the named forget parameters, 0 for
        the others (1 for ``shared`` with ``mask_shared=False``). Use with
        :func:`masked_backward` or :func:`mask_gradients`.
    """
    params = dict(module.named_parameters())
    unknown = sorted((set(forget_units) | set(shared)) - set(params))
    if unknown:
        raise ValueError(f"sgtm_masks names unknown parameters {unknown}; allowed: "
                         f"{sorted(params)}")
    both = sorted(set(forget_units) & set(shared))
    if both:
        raise ValueError(f"parameters {both} are named both as forget units and as shared")
    masks: dict[str, Tensor | float] = {}
    for name, p in params.items():
        if name in forget_units:
            dim, units = forget_units[name]
            masks[name] = unit_mask(p, dim, units)
        elif name in shared and not mask_shared:
            masks[name] = 1.0
        else:
            masks[name] = 0.0
    return masks


def mask_gradients(module: nn.Module, masks: Mapping[str, Tensor | float]) -> None:
    """Multiply the ``.grad`` of the named parameters by their masks, in place (after a
    backward of one route only; parameters without a gradient are skipped)."""
    params = dict(module.named_parameters())
    unknown = sorted(set(masks) - set(params))
    if unknown:
        raise ValueError(f"masks name unknown parameters {unknown}; allowed: {sorted(params)}")
    with torch.no_grad():
        for name, m in masks.items():
            g = params[name].grad
            if g is not None:
                g.mul_(m.to(g.device, g.dtype) if isinstance(m, Tensor) else float(m))


def masked_backward(module: nn.Module, losses: Mapping[object, Tensor],
                    masks: Mapping[object, Mapping[str, Tensor | float]]) -> None:
    """Backpropagate each route's scalar loss and mask its parameter gradients after backward,
    accumulating the sum over routes into ``.grad``.

    ``masks[route][name]`` multiplies the gradient that ``losses[route]`` gives parameter
    ``name`` (unnamed parameters: 1; routes absent from ``masks``: no masking). A parameter
    masked by 0 is left out of that route's differentiation (no compute spent on it), so a
    forget route that updates a few units costs little more than the backward through the
    activations. Unlike activation routing, the gradient still flows *through* masked
    parameters to the layers below: an SGTM forget batch trains a layer-0 forget unit through
    a frozen layer 3. For parameters that only the data feeds (a first-layer mixture of
    experts) the two forms give the same gradients.
    """
    params = dict(module.named_parameters())
    for route, per in masks.items():
        unknown = sorted(set(per) - set(params))
        if unknown:
            raise ValueError(f"route {route!r} masks unknown parameters {unknown}; allowed: "
                             f"{sorted(params)}")
    items = [(r, loss) for r, loss in losses.items() if loss.requires_grad]
    for i, (route, loss) in enumerate(items):
        per = masks.get(route, {})
        keep = [(n, p) for n, p in params.items() if p.requires_grad
                and not (not isinstance(per.get(n, 1.0), Tensor) and float(per.get(n, 1.0)) == 0.0)]
        if not keep:
            continue
        grads = torch.autograd.grad(loss, [p for _, p in keep], retain_graph=i < len(items) - 1,
                                    allow_unused=True)
        with torch.no_grad():
            for (name, p), g in zip(keep, grads):
                if g is None:
                    continue
                m = per.get(name, 1.0)
                if isinstance(m, Tensor):
                    g = g * m.to(g.device, g.dtype)
                elif float(m) != 1.0:
                    g = g * float(m)
                if p.grad is None:
                    p.grad = g.detach().clone()
                else:
                    p.grad.add_(g)
