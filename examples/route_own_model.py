"""Gradient routing in your own PyTorch model: two experts, two data subsets, one ablation.

What it shows: a small mixture of two MLP experts with a learned gate, trained on a toy
regression task whose inputs come from two subsets (``x[0] <= -0.25``: target ``sin(3 x[1])``;
``x[0] >= 0.25``: target ``cos(3 x[2])``). Routing sends each subset's gradient to one expert only
(subset 0 -> expert 0, subset 1 -> expert 1), and the gate is trained to pick the subset's
expert (a cross-entropy on the subset label, as the package's routed policy trains its gate), so
what the model knows about subset 0 lives in expert 0. Ablating expert 0 afterwards (its output
zeroed) then loses subset 0 and keeps subset 1. Printed next to it: the same mixture trained
without routing (a plain mixture of experts), where which expert ends up with which subset is
left to the optimisation.

Two equivalent ways to route, from ``oversight_gr.routing``:

* ``--form mixture``: :func:`routed_mixture` with a per-sample ``expert_grad`` row (which
  expert may learn from the sample);
* ``--form parameter``: :class:`ParameterRouter`, masking the other expert's parameter
  gradients while each subset's loss is backpropagated.

Run::

    python examples/route_own_model.py                 # 1500 steps, ~10 s on one core
    python examples/route_own_model.py --steps 300 --form parameter
"""

from __future__ import annotations

import argparse
import math

import torch
from torch import nn

from oversight_gr.routing import ParameterRouter, ablate, routed_mixture


def make_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``n`` samples: inputs ``[n, 4]``, targets ``[n, 1]``, subset labels ``[n]`` (0 or 1)."""
    x = torch.rand(n, 4, generator=generator) * 2 - 1
    subset = (x[:, 0] >= 0).long()
    x[:, 0] = x[:, 0].sign() * (0.25 + 0.75 * x[:, 0].abs())  # a gap between the subsets
    y = torch.where(subset == 0, torch.sin(3 * x[:, 1]), torch.cos(3 * x[:, 2]))
    return x, y.unsqueeze(1), subset


class TwoExperts(nn.Module):
    """Two MLP experts mixed by a gate that sees the input."""

    def __init__(self, hidden: int = 32):
        super().__init__()
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(4, hidden), nn.Tanh(), nn.Linear(hidden, 1)) for _ in range(2)
        )
        self.gate = nn.Linear(4, 2)

    def forward(self, x, expert_grad=None, gate_grad=None, ablated=()):
        outs = torch.stack([e(x) for e in self.experts], 1)  # [B, E=2, D=1]
        if ablated:
            outs = ablate(outs, list(ablated), dim=1)  # zero the chosen experts' outputs
        return routed_mixture(outs, self.gate(x).softmax(-1), expert_grad, gate_grad)


def train(form: str, steps: int, seed: int = 0) -> TwoExperts:
    """Train one model; ``form`` is ``"mixture"``, ``"parameter"`` or ``"none"`` (no routing)."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = TwoExperts()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    # routes 0 and 1 (the subsets' task losses) mask the other expert's parameters and the
    # gate's; route 2 (the gate's loss) masks nothing: {route: {parameter name: mask}}
    def zero(prefix: str) -> dict[str, float]:
        return {name: 0.0 for name, _ in model.named_parameters() if name.startswith(prefix)}

    router = ParameterRouter(model, {k: {**zero(f"experts.{1 - k}."), **zero("gate.")}
                                     for k in (0, 1)})
    for _ in range(steps):
        x, y, subset = make_data(256, gen)
        opt.zero_grad()
        # routed forms: the gate learns only to send subset k to expert k, from the label
        gate_ce = nn.functional.cross_entropy(model.gate(x), subset)
        if form == "mixture":  # row k of the identity: only expert k learns from subset k
            no_gate = torch.zeros(len(x))
            loss = (model(x, torch.eye(2)[subset], no_gate) - y).pow(2).mean()
            (loss + gate_ce).backward()
        elif form == "parameter":  # one loss per route, each backpropagated with its masks
            sq = (model(x) - y).pow(2).squeeze(1)
            router.backward({0: sq[subset == 0].sum() / len(sq),
                             1: sq[subset == 1].sum() / len(sq), 2: gate_ce})
        else:
            (model(x) - y).pow(2).mean().backward()
        opt.step()
    return model


@torch.no_grad()
def subset_losses(model: TwoExperts, ablated=()) -> list[float]:
    """Mean squared error on each subset of a fixed test set."""
    x, y, subset = make_data(4096, torch.Generator().manual_seed(12345))
    sq = (model(x, ablated=ablated) - y).pow(2).squeeze(1)
    return [float(sq[subset == k].mean()) for k in (0, 1)]


def main(argv: list[str] | None = None) -> dict[str, dict[str, list[float]]]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1500, help="training steps (batches of 256)")
    ap.add_argument("--form", choices=["mixture", "parameter"], default="mixture",
                    help="how to route (both give the same gradients)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    results = {}
    print(f"{'model':>16} | {'ablated':>8} | {'loss subset 0':>13} | {'loss subset 1':>13}")
    for name, form in ((f"routed ({args.form})", args.form), ("not routed", "none")):
        model = train(form, args.steps, args.seed)
        results[name] = {"full": subset_losses(model), "ablate expert 0": subset_losses(model, [0])}
        for what, (l0, l1) in results[name].items():
            print(f"{name:>16} | {what.replace('ablate ', ''):>8} | {l0:13.4f} | {l1:13.4f}")
    routed = results[f"routed ({args.form})"]
    rise = [a - f for a, f in zip(routed["ablate expert 0"], routed["full"])]
    print(f"routed, expert 0 ablated: subset 0 loss {rise[0]:+.4f}, subset 1 loss {rise[1]:+.4f} "
          f"(a model that knows nothing, predicting 0: {0.5 - math.sin(6) / 12:.3f} / "
          f"{0.5 + math.sin(6) / 12:.3f})")
    return results


if __name__ == "__main__":
    main()
