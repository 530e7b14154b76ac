"""The minibatch step's backward pass written out: the routed loss and its gradient without
autograd's graph.

A PPO update is 64 small steps (1,024 samples, hidden 64), and at that size a large share of a
step is per-operation cost rather than arithmetic; recording the autograd graph and running its
engine is part of that cost. :func:`loss_and_grads` computes the same loss and **the same
gradients, bit for bit**, as ``Trainer.loss(...)`` followed by ``loss.backward()``: each
backward formula is the one autograd applies (PyTorch's derivative definitions: ``addmm``,
``baddbmm``, ``threshold_backward`` for ReLU, ``sigmoid_backward``, ``maximum``'s split of equal
entries, ``clamp``'s inclusive bounds, ``_log_softmax_backward_data`` ...), in the same
operand layouts, and where several gradients meet they are added in the order the engine adds
them (that order is the engine's, so a PyTorch release that changed it would show in the
tests). A group's folded gate layer (:func:`~oversight_gr.agents.networks.fold_gate_layer`, a
product of parameters that does not depend on the batch) still goes through autograd. The tests
(tests/agents/test_backprop.py) compare every parameter's gradient with ``torch.equal`` for every
method, both algorithms, one run and a group, both gate inputs, and the routing options, so a
run gives the same numbers with either path.

:meth:`Trainer.update <oversight_gr.agents.trainer.Trainer.update>` uses it where it applies
(:func:`supported`: fp32 on a CPU; elsewhere autograd). Shapes as in the
trainer: ``R`` runs, ``N`` samples per run, parameters ``[out, in]`` for one run or
``[R, out, in]`` for a group.
"""

from __future__ import annotations

import torch
from torch import Tensor

from oversight_gr.agents.methods import (
    ROUTE_DIAMOND,
    ROUTE_GHOST,
    ppo_diagnostics,
    route_labels,
)
from oversight_gr.agents.networks import fold_gate_layer, linear
from oversight_gr.precision import backward_context

__all__ = ["supported", "loss_and_grads"]

_aten = torch.ops.aten


def supported(trainer) -> bool:
    """Whether the trainer's update uses :func:`loss_and_grads`: fp32 on a CPU, where its
    equality with autograd is tested. bf16 autocast runs its ops in other dtypes, and
    ``bf16_matmul`` was measured to differ in the last bits of the gate's folded layer; both keep
    autograd, as does a GPU (untested here)."""
    return trainer.cfg.precision == "fp32" and trainer.device.type == "cpu"


class _Linear:
    """One layer's forward and its backward as autograd computes them (``linear`` of
    :mod:`~oversight_gr.agents.networks`: ``addmm`` on the flattened input for one network,
    ``baddbmm`` for a stack, ``matmul`` + ``add`` for one network on a strided input)."""

    def __init__(self, x: Tensor, weight: Tensor, bias: Tensor):
        self.x, self.weight = x, weight
        if weight.ndim == 3 or x.ndim != 2:
            self.out = linear(x, weight, bias)
        elif x.is_contiguous():  # what F.linear runs on a contiguous [1, N, in] input
            self.out = torch.addmm(bias, x, weight.t())
        else:  # on a strided one (the gate's column slice): matmul, then add the bias
            self.out = torch.mm(x, weight.t()).add_(bias)

    def backward(self, grad: Tensor, grads: dict[str, Tensor] | None = None,
                 name: str | None = None, input_grad: bool = True):
        """Gradients w.r.t. weight and bias (stored in ``grads[name + '.weight' / '.bias']``
        when a name is given, else returned) and, with ``input_grad``, w.r.t. the input."""
        x, w = self.x, self.weight
        if w.ndim == 3:  # baddbmm(bias[:, None], x, w^T)
            # bmm of x^T and the gradient, then TransposeBackward; stored contiguous, as
            # AccumulateGrad stores a gradient that does not match its parameter's layout
            gw = x.transpose(1, 2).bmm(grad).transpose(1, 2).contiguous()
            gb = grad.sum(1, keepdim=True).squeeze(1)
            gx = grad.bmm(w) if input_grad else None
        else:  # one network, [N, in] activations
            gw = grad.t().mm(x)  # mm_mat2_backward with a column-major w^T, then t()
            gb = grad.sum(0)  # the bias broadcast over rows (sum_to)
            gx = grad.mm(w) if input_grad else None
        if name is None:
            return gw, gb, gx
        grads[name + ".weight"], grads[name + ".bias"] = gw, gb
        return gx


class _MLP:
    """:func:`~oversight_gr.agents.networks.mlp_forward` (two ReLU layers) with its backward."""

    def __init__(self, x: Tensor, p: dict[str, Tensor], prefix: str):
        self.prefix = prefix
        self.l0 = _Linear(x, p[prefix + ".0.weight"], p[prefix + ".0.bias"])
        self.a0 = self.l0.out.relu_()  # in place: the pre-activation is not read again
        self.l2 = _Linear(self.a0, p[prefix + ".2.weight"], p[prefix + ".2.bias"])
        self.out = self.l2.out.relu_()

    def backward(self, grad: Tensor, grads: dict[str, Tensor], names: str) -> None:
        g = _aten.threshold_backward(grad, self.out, 0)
        g = self.l2.backward(g, grads, names + ".2")
        g = _aten.threshold_backward(g, self.a0, 0)
        self.l0.backward(g, grads, names + ".0", input_grad=False)


def _div_mean_grad(count: Tensor, like: Tensor, mask: Tensor, scale: Tensor) -> Tensor:
    """The gradient of ``masked_mean(x, mask, -1)`` w.r.t. ``x`` for an incoming ``scale``
    ``[R]``: DivBackward (scale / count), SumBackward (expand), MulBackward (* mask)."""
    return (scale / count).unsqueeze(-1).expand_as(like) * mask


def loss_and_grads(trainer, obs, actions, old_logp, adv, returns, labels, mask
                   ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """``Trainer.loss`` and the gradient its ``backward()`` would give, on a batch ``[R, N, ...]``
    (or one run's ``[N, ...]``): ``(loss, stats, {parameter name: gradient})``."""
    if obs.ndim == 4:
        obs, actions, old_logp, adv, returns, labels, mask = (
            t.unsqueeze(0) for t in (obs, actions, old_logp, adv, returns, labels, mask))
    with backward_context(trainer.cfg.precision):
        return _loss_and_grads(trainer, obs, actions, old_logp, adv, returns, labels, mask)


def _loss_and_grads(tr, obs, actions, old_logp, adv, returns, labels, mask):
    cfg, method = tr.cfg, tr.method
    p, pv = tr._policy_p, tr._value_p
    grads: dict[str, Tensor] = {}
    route_lbl = route_labels(labels)
    moe = method.policy == "moe"
    learned_gate = moe and method.constant_gate is None
    # one run: the networks on [N, ...] (the ops autograd runs on the flattened batch); the
    # objective on [1, N, ...] as for a group
    flat = tr.R == 1
    fold = None
    if learned_gate:  # a group's folded gate layer keeps its (parameter-only) autograd graph
        with torch.set_grad_enabled(not flat):
            fold = fold_gate_layer(p, cfg.gate_input)
    with torch.no_grad():
        x = tr._x(obs)
        if flat:
            x = x[0]
        R1 = x.shape[:-1]  # [N] or [R, N]

        def obj(t: Tensor) -> Tensor:  # network layout -> objective layout
            return t.unsqueeze(0) if flat else t
        # -- forward, keeping what the backward reads
        if moe:
            e_d, e_g = _MLP(x, p, "expert_diamond"), _MLP(x, p, "expert_ghost")
            if learned_gate:
                xg = x[..., : 3 * cfg.size * cfg.size] if cfg.gate_input == "no_oversight" else x
                g1 = _Linear(xg, fold[0].detach(), fold[1].detach())
                q1 = g1.out.relu_()
                g2 = _Linear(q1, p["gate_mlp.0.2.weight"], p["gate_mlp.0.2.bias"])
                q2 = g2.out.relu_()
                g3 = _Linear(q2, p["gate_mlp.1.weight"], p["gate_mlp.1.bias"])
                gate = torch.sigmoid(g3.out).squeeze(-1)
            else:
                gate = torch.full(R1, float(method.constant_gate), device=x.device)
            route = None
            if method.route:
                route = [w.view(R1) for w in tr._route(route_lbl, obj(gate))]
            head_d = _Linear(e_d.out, p["head.weight"], p["head.bias"])
            head_g = _Linear(e_g.out, p["head.weight"], p["head.bias"])
            gs = gate.unsqueeze(-1)
            one_minus = 1.0 - gs
            logits = gs * head_d.out + one_minus * head_g.out
        else:
            body = _MLP(x, p, "body")
            head = _Linear(body.out, p["head.weight"], p["head.bias"])
            logits = head.out
            gate = torch.full(R1, float("nan"), device=x.device)
        v_body = _MLP(x, pv, "net.0")
        v_head = _Linear(v_body.out, pv["net.1.weight"], pv["net.1.bias"])
        values = obj(v_head.out.squeeze(-1))
        logits = obj(logits)

        # -- the objective (Trainer.objective), forward
        logp_all = torch.log_softmax(logits, -1)
        logp = logp_all.gather(-1, actions.unsqueeze(-1)).squeeze(-1)
        p_all = logp_all.exp()
        entropy = -(p_all * logp_all).sum(-1)
        neg_adv = -adv
        if cfg.algo == "ppo":
            ratio = (logp - old_logp).exp()
            lo, hi = 1 - cfg.clip_coef, 1 + cfg.clip_coef
            a1 = neg_adv * ratio
            clamped = ratio.clamp(lo, hi)
            a2 = neg_adv * clamped
            pg = torch.max(a1, a2)
        else:
            pg = neg_adv * logp
        count = mask.sum(-1).clamp_min(1.0)  # masked_mean's, computed once for the backward
        pg_loss = (pg * mask).sum(-1) / count
        dv = values - returns
        v_loss = (dv ** 2 * mask).sum(-1) / count
        ent = (entropy * mask).sum(-1) / count
        ent_coef, vf_coef = cfg.resolved("ent_coef"), cfg.vf_coef
        total = pg_loss + vf_coef * v_loss - ent_coef * ent
        gate_loss = torch.zeros_like(total)
        if method.gate_loss:
            gate_coef = cfg.resolved("gate_loss_coef")
            gc = obj(gate).clamp(1e-6, 1 - 1e-6)
            diamond = (route_lbl == ROUTE_DIAMOND).float()
            ghost = (route_lbl == ROUTE_GHOST).float()
            bce = torch.nn.functional.binary_cross_entropy(gc, diamond, reduction="none")
            if cfg.gate_balance:
                nd, ng = diamond.sum(-1).clamp_min(1.0), ghost.sum(-1).clamp_min(1.0)
                gate_loss = 0.5 * ((bce * diamond).sum(-1) / nd + (bce * ghost).sum(-1) / ng)
            else:
                labelled = diamond + ghost
                nl = labelled.sum(-1).clamp_min(1.0)
                gate_loss = (bce * labelled).sum(-1) / nl
            total = total + gate_coef * gate_loss
        approx_kl, clipfrac = ppo_diagnostics(logp, old_logp, mask, cfg.clip_coef,
                                              ratio if cfg.algo == "ppo" else None)
        stats = {"policy": pg_loss, "value": v_loss, "entropy": ent, "gate": gate_loss,
                 "approx_kl": approx_kl, "clipfrac": clipfrac}

        # -- backward: d total.sum() = 1 per run
        ones = torch.ones_like(total)
        g_pg = _div_mean_grad(count, pg, mask, ones)
        g_value = _div_mean_grad(count, dv, mask, ones * vf_coef)
        g_entropy = _div_mean_grad(count, entropy, mask, -ones * ent_coef)
        # values
        g_dv = g_value * (2.0 * dv)
        v_grad_in = v_head.backward(g_dv.unsqueeze(-1).view(R1 + (1,)), grads, "value.net.1")
        v_body.backward(v_grad_in, grads, "value.net.0")
        # policy terms -> d logp
        if cfg.algo == "ppo":
            eq, half = a1 == a2, g_pg / 2
            g_a1 = torch.where(eq, half, g_pg).masked_fill_(a1 < a2, 0)
            g_a2 = torch.where(eq, half, g_pg).masked_fill_(a1 > a2, 0)
            zero = torch.scalar_tensor(0.0, dtype=g_a2.dtype, device=g_a2.device)
            g_clamped = torch.where((ratio >= lo).logical_and_(ratio <= hi), g_a2 * neg_adv,
                                    zero)
            g_ratio = g_a1 * neg_adv + g_clamped
            g_logp = g_ratio * ratio
        else:
            g_logp = g_pg * neg_adv
        # entropy: -(exp(l) * l).sum(-1)
        g_prod = (-g_entropy).unsqueeze(-1).expand_as(logp_all)
        g_l_direct = g_prod * p_all
        g_exp = (g_prod * logp_all) * p_all
        g_gather = torch.zeros_like(logp_all).scatter_add_(-1, actions.unsqueeze(-1),
                                                           g_logp.unsqueeze(-1))
        g_logp_all = g_l_direct + g_exp + g_gather  # the order the engine adds them
        g_logits = _aten._log_softmax_backward_data(g_logp_all, logp_all, -1, logp_all.dtype)
        g_logits = g_logits.view(R1 + g_logits.shape[-1:])
        if not moe:
            g_body = head.backward(g_logits, grads, "policy.head")
            body.backward(g_body, grads, "policy.body")
            return total.sum(), stats, grads
        # the mixture g * head(E_d) + (1 - g) * head(E_g)
        g_hd = g_logits * gs
        g_hg = g_logits * one_minus
        g_gs = (g_logits * head_d.out).sum(-1, keepdim=True) - (
            g_logits * head_g.out).sum(-1, keepdim=True)
        gw_d, gb_d, g_ed = head_d.backward(g_hd)
        gw_g, gb_g, g_eg = head_g.backward(g_hg)
        grads["policy.head.weight"], grads["policy.head.bias"] = gw_d + gw_g, gb_d + gb_g
        if route is not None:
            g_ed = g_ed * route[0].unsqueeze(-1)
            g_eg = g_eg * route[1].unsqueeze(-1)
        e_d.backward(g_ed, grads, "policy.expert_diamond")
        e_g.backward(g_eg, grads, "policy.expert_ghost")
        if not learned_gate:
            return total.sum(), stats, grads
        g_gate = g_gs.squeeze(-1)
        if route is not None:
            g_gate = g_gate * route[2]
        if method.gate_loss:
            g_gl = ones * gate_coef
            if cfg.gate_balance:
                h = g_gl * 0.5
                g_bce = _div_mean_grad(nd, bce, diamond, h) + _div_mean_grad(ng, bce, ghost, h)
            else:
                g_bce = _div_mean_grad(nl, bce, labelled, g_gl)
            g_gc = _aten.binary_cross_entropy_backward(g_bce, gc, diamond, None, 0)
            in_range = (gate >= 1e-6).logical_and_(gate <= 1 - 1e-6)
            g_gate = g_gate + torch.where(in_range, g_gc.view(R1), torch.scalar_tensor(
                0.0, dtype=g_gc.dtype, device=g_gc.device))
        g = _aten.sigmoid_backward(g_gate.unsqueeze(-1), gate.unsqueeze(-1))
        g = g3.backward(g, grads, "policy.gate_mlp.1")
        g = _aten.threshold_backward(g, q2, 0)
        g = g2.backward(g, grads, "policy.gate_mlp.0.2")
        g = _aten.threshold_backward(g, q1, 0)
        g_fw, g_fb, _ = g1.backward(g, input_grad=False)
        if flat:
            fold_grads = _fold_backward(p, g_fw, g_fb, cfg.gate_input)
    if not flat:
        fold_grads = torch.autograd.grad(fold, [p[n] for n in _FOLD_PARAMS], (g_fw, g_fb))
    grads.update(("policy." + n, g) for n, g in zip(_FOLD_PARAMS, fold_grads))
    return total.sum(), stats, grads


def _fold_backward(p, g_fw: Tensor, g_fb: Tensor, gate_input: str) -> tuple[Tensor, ...]:
    """One network's gradients of (first gate layer weight, its bias, conv weight, conv bias)
    from those of the folded layer (:func:`~oversight_gr.agents.networks.fold_gate_layer`), as
    autograd computes them through the two einsums: ``hop,oc->hcp`` runs as one ``bmm`` of
    ``w1`` laid out ``[1, h p, o]`` by the conv weight ``[1, o, c]``, ``hop,o->h`` sums ``p``
    first and runs a ``bmm`` by the conv bias; hiding the oversight plane slices channel 3 off."""
    w, conv_w, conv_b = p["gate_mlp.0.0.weight"], p["gate_conv.weight"], p["gate_conv.bias"]
    hid = w.shape[0]
    w1 = w.view(hid, 4, -1)
    cells = w1.shape[-1]
    if gate_input == "no_oversight":  # SliceBackward: zeros for the hidden channel
        g_w = g_fw.new_zeros(hid, 4, cells)
        g_w[:, :3] = g_fw.view(hid, 3, cells)
    else:
        g_w = g_fw.view(hid, 4, cells)
    g_out = g_w.permute(0, 2, 1).reshape(1, hid * cells, 4)
    a_mat = w1.permute(0, 2, 1).reshape(1, hid * cells, 4)
    d_a = g_out.bmm(conv_w.view(1, 4, 4).transpose(1, 2))
    d_conv = a_mat.transpose(1, 2).bmm(g_out)
    g_b = g_fb.view(1, hid, 1)
    d_sum = g_b.bmm(conv_b.view(1, 4, 1).transpose(1, 2))
    d_conv_b = w1.sum(2, keepdim=True).view(1, hid, 4).transpose(1, 2).bmm(g_b)
    d_w1 = d_a.view(hid, cells, 4).permute(0, 2, 1) + d_sum.view(hid, 4, 1).expand(
        hid, 4, cells)
    return d_w1.reshape(hid, -1), g_fb, d_conv.view(conv_w.shape), d_conv_b.view(4)


_FOLD_PARAMS = ("gate_mlp.0.0.weight", "gate_mlp.0.0.bias", "gate_conv.weight",
                "gate_conv.bias")

