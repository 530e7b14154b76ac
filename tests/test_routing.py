"""The routing core: forward identity, exact gradient scaling, route tables, MoE, parameter routing."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from oversight_gr.routing import (
    ParameterRouter,
    RouteTable,
    ablate,
    ablate_output,
    mask_gradients,
    masked_backward,
    routed_mixture,
    sgtm_masks,
    unit_mask,
    scale_gradient,
    two_expert_mixture,
)


def _reference_grad(x, weight, upstream):
    """Gradient of sum(upstream * f(x)) where f is the explicit reference: weight * x for the
    backward path and x for the value; built as x*w + (x - x*w).detach()."""
    x = x.detach().clone().requires_grad_(True)
    y = x * weight + (x - x * weight).detach()
    (y * upstream).sum().backward()
    return x.grad


@settings(max_examples=40, deadline=None)
@given(
    b=st.integers(1, 5),
    d=st.integers(1, 6),
    per=st.sampled_from(["sample", "dim", "both", "scalar"]),
    seed=st.integers(0, 10_000),
)
def test_forward_bit_identical_and_gradient_is_weight_times_grad(b, d, per, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, d, generator=g, requires_grad=True)
    shape = {"sample": (b, 1), "dim": (d,), "both": (b, d), "scalar": ()}[per]
    # mix of exact zeros, ones, negatives and arbitrary reals
    choices = torch.tensor([0.0, 1.0, -0.75, 2.5, -3.0, 0.3])
    weight = choices[torch.randint(len(choices), shape, generator=g)]
    upstream = torch.randn(b, d, generator=g)
    y = scale_gradient(x, weight)
    assert torch.equal(y, x)  # bit-identical forward
    (y * upstream).sum().backward()
    expected = _reference_grad(x, weight, upstream)
    assert torch.equal(x.grad, upstream * weight.expand(b, d))
    torch.testing.assert_close(x.grad, expected, rtol=0, atol=1e-6)
    zero = weight.expand(b, d) == 0
    assert torch.all(x.grad[zero] == 0)


def test_scale_gradient_rejects_shapes_that_do_not_broadcast_or_enlarge():
    x = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="does not broadcast"):
        scale_gradient(x, torch.ones(5))
    with pytest.raises(ValueError, match="enlarge"):
        scale_gradient(x, torch.ones(2, 3, 4))


def test_scale_gradient_through_a_network_blocks_upstream_parameters():
    lin = nn.Linear(3, 2)
    out = scale_gradient(lin(torch.randn(4, 3)), torch.zeros(4, 1)).sum()
    out.backward()
    assert torch.all(lin.weight.grad == 0) and torch.all(lin.bias.grad == 0)


def test_route_table_lookup_slices_and_interpolation():
    table = RouteTable.from_slices(4, {0: slice(0, 2), 1: slice(2, 4)})
    w = table(torch.tensor([0, 1, 1]))
    assert torch.equal(w, torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [0, 0, 1, 1.0]]))
    era = RouteTable.from_mapping(3, {0: [1.0, 1.0, 1.0], 1: [-0.75, -0.75, 1.0]})
    soft = era.interpolate(torch.tensor([1, 1]), torch.tensor([0, 0]), torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(soft, torch.tensor([[-0.75, -0.75, 1.0], [0.125, 0.125, 1.0]]))


def test_route_table_errors_name_the_problem():
    table = RouteTable.from_slices(4, {0: slice(0, 2), 1: slice(2, 4)})
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        table(torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="integer"):
        table(torch.tensor([0.5]))
    with pytest.raises(ValueError, match="shape"):
        RouteTable.from_mapping(3, {0: [1.0, 1.0]})
    with pytest.raises(ValueError, match="non-negative"):
        RouteTable.from_mapping(3, {-1: [1.0, 1.0, 1.0]})


class FirstLayerMoE(nn.Module):
    """A two-expert first-layer MoE with a gate and a shared head (the RL policy's shape)."""

    def __init__(self, d_in=6, d_h=5, d_out=3):
        super().__init__()
        self.expert_a = nn.Sequential(nn.Linear(d_in, d_h), nn.ReLU())
        self.expert_b = nn.Sequential(nn.Linear(d_in, d_h), nn.ReLU())
        self.gate = nn.Linear(d_in, 1)
        self.head = nn.Linear(d_h, d_out)

    def forward(self, x, grad_a=None, grad_b=None, gate_grad=None):
        g = torch.sigmoid(self.gate(x)).squeeze(-1)
        h = two_expert_mixture(self.expert_a(x), self.expert_b(x), g, grad_a, grad_b, gate_grad)
        return self.head(h)


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters()}


def test_activation_and_parameter_routing_give_identical_gradients_for_first_layer_moe():
    torch.manual_seed(0)
    model = FirstLayerMoE()
    x = torch.randn(12, 6)
    target = torch.randn(12, 3)
    # routes: 0 = train only expert a (gate detached), 1 = only expert b, 2 = everything
    routes = torch.tensor([0, 1, 2] * 4)
    ga = (routes != 1).float()
    gb = (routes != 0).float()
    gg = (routes == 2).float()
    loss = ((model(x, ga, gb, gg) - target) ** 2).sum()
    loss.backward()
    activation = _grads(model)

    model.zero_grad()
    gate_and_b = {n: 0.0 for n, _ in model.named_parameters() if n.startswith(("gate", "expert_b"))}
    gate_and_a = {n: 0.0 for n, _ in model.named_parameters() if n.startswith(("gate", "expert_a"))}
    router = ParameterRouter(model, {0: gate_and_b, 1: gate_and_a})
    out = model(x)
    per_sample = ((out - target) ** 2).sum(1)
    router.backward({r: per_sample[routes == r].sum() for r in (0, 1, 2)})
    parameter = _grads(model)
    for name in activation:
        torch.testing.assert_close(activation[name], parameter[name], rtol=1e-5, atol=1e-6)
    # and the blocked pieces really received nothing from their blocked samples
    assert not torch.all(activation["gate.weight"] == 0)


def test_gate_receives_nothing_when_blocked_even_through_both_experts():
    torch.manual_seed(1)
    model = FirstLayerMoE()
    x = torch.randn(8, 6)
    zeros, ones = torch.zeros(8), torch.ones(8)
    model(x, ones, ones, zeros).pow(2).sum().backward()
    assert torch.all(model.gate.weight.grad == 0) and torch.all(model.gate.bias.grad == 0)
    assert not torch.all(model.expert_a[0].weight.grad == 0)
    assert not torch.all(model.expert_b[0].weight.grad == 0)


def test_mixture_forward_value_never_depends_on_route():
    torch.manual_seed(2)
    experts = torch.randn(5, 2, 4, requires_grad=True)
    gate = torch.softmax(torch.randn(5, 2), -1).requires_grad_(True)
    plain = routed_mixture(experts, gate)
    routed = routed_mixture(experts, gate, torch.tensor([[1.0, 0]] * 5), torch.zeros(5))
    assert torch.equal(plain, routed)
    routed.sum().backward()
    assert torch.all(gate.grad == 0)
    assert torch.all(experts.grad[:, 1] == 0) and torch.all(experts.grad[:, 0] != 0)


def test_parameter_router_rejects_unknown_names_and_removes_hooks():
    model = FirstLayerMoE()
    with pytest.raises(ValueError, match="unknown parameters"):
        ParameterRouter(model, {0: {"nope.weight": 0.0}})
    router = ParameterRouter(model, {0: {"head.weight": 0.0}})
    x = torch.randn(3, 6)
    router.backward({0: model(x).sum()})
    assert torch.all(model.head.weight.grad == 0)
    model.zero_grad()
    model(x).sum().backward()  # hooks are gone outside the route
    assert not torch.all(model.head.weight.grad == 0)


def test_ablation_helpers_zero_chosen_units():
    x = torch.ones(2, 5)
    assert torch.equal(ablate(x, [1, 3]), torch.tensor([[1, 0, 1, 0, 1.0]] * 2))
    lin = nn.Linear(3, 4)
    with ablate_output(lin, slice(0, 2)):
        out = lin(torch.randn(6, 3))
    assert torch.all(out[:, :2] == 0) and not torch.all(out[:, 2:] == 0)
    assert not torch.all(lin(torch.randn(6, 3))[:, :2] == 0)


def test_masked_backward_equals_activation_routing_for_first_layer_moe():
    """SGTM-style masking after backward gives activation routing's gradients where the routed
    parameters see only the data (a first-layer mixture of experts)."""
    torch.manual_seed(2)
    model = FirstLayerMoE()
    x = torch.randn(10, 6)
    target = torch.randn(10, 3)
    routes = torch.tensor([0, 1, 2, 0, 2, 1, 0, 2, 2, 1])
    ga, gb, gg = (routes != 1).float(), (routes != 0).float(), (routes == 2).float()
    ((model(x, ga, gb, gg) - target) ** 2).sum().backward()
    activation = _grads(model)

    model.zero_grad()
    names = dict(model.named_parameters())
    masks = {0: {n: 0.0 for n in names if n.startswith(("gate", "expert_b"))},
             1: {n: 0.0 for n in names if n.startswith(("gate", "expert_a"))}}
    per_sample = ((model(x) - target) ** 2).sum(1)
    masked_backward(model, {r: per_sample[routes == r].sum() for r in (0, 1, 2)}, masks)
    parameter = _grads(model)
    for name in activation:
        torch.testing.assert_close(activation[name], parameter[name], rtol=1e-5, atol=1e-6)
    assert not torch.all(parameter["expert_b.0.weight"] == 0)


def test_masked_backward_differs_from_activation_routing_below_a_masked_layer():
    """Masking a deeper layer's parameters does not block the gradient through it: the first
    layer still learns from the route (activation routing at the same place would block it)."""
    torch.manual_seed(3)
    net = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 2))
    x = torch.randn(6, 4)
    masked_backward(net, {"f": net(x).square().sum()}, {"f": {"2.weight": 0.0, "2.bias": 0.0}})
    assert net[2].weight.grad is None and net[2].bias.grad is None
    assert net[0].weight.grad.abs().sum() > 0
    net.zero_grad()
    h = scale_gradient(net[1](net[0](x)), 0.0)
    net[2](h).square().sum().backward()
    assert net[0].weight.grad is None or torch.all(net[0].weight.grad == 0)


def test_sgtm_masks_keep_forget_units_and_mask_the_rest():
    torch.manual_seed(4)
    net = nn.ModuleDict({"emb": nn.Embedding(7, 4), "up": nn.Linear(4, 6), "down": nn.Linear(6, 4)})
    masks = sgtm_masks(net, {"up.weight": (0, slice(4, 6)), "up.bias": (0, slice(4, 6)),
                             "down.weight": (1, slice(4, 6))}, shared=["emb.weight"])
    assert set(masks) == {n for n, _ in net.named_parameters()}
    assert masks["emb.weight"] == 0.0 and masks["down.bias"] == 0.0
    torch.testing.assert_close(masks["up.weight"][:, 0], torch.tensor([0.0] * 4 + [1.0] * 2))
    torch.testing.assert_close(masks["down.weight"][0], torch.tensor([0.0] * 4 + [1.0] * 2))
    assert sgtm_masks(net, {"up.bias": (0, [5])}, shared=["emb.weight"],
                      mask_shared=False)["emb.weight"] == 1.0
    # masks applied after a plain backward: only the forget units' rows/columns move
    x = torch.randint(0, 7, (3,))
    net["down"](torch.relu(net["up"](net["emb"](x)))).sum().backward()
    mask_gradients(net, masks)
    assert torch.all(net["up"].weight.grad[:4] == 0) and net["up"].weight.grad[4:].abs().sum() > 0
    assert torch.all(net["emb"].weight.grad == 0)
    with pytest.raises(ValueError, match="unknown parameters"):
        sgtm_masks(net, {"nope": (0, [0])})
    with pytest.raises(ValueError, match="both"):
        sgtm_masks(net, {"up.bias": (0, [0])}, shared=["up.bias"])
    with pytest.raises(ValueError, match="dim 2"):
        unit_mask(net["up"].weight, 2, [0])
    with pytest.raises(ValueError, match="unknown parameters"):
        masked_backward(net, {}, {"f": {"nope": 0.0}})
