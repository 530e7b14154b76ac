"""Policy pictures: action arrows in every cell of a fixed layout, one panel per expert, the
gate value as background (the paper's Fig. 6b)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from oversight_gr.envs.core import ACTION_DELTAS

__all__ = ["policy_arrows_figure", "draw_policy_arrows"]


def _layout_obs(size: int, ghost: tuple[int, int], diamond: tuple[int, int],
                overseen: tuple[bool, bool]) -> torch.Tensor:
    """Observations ``[C, 4, n, n]`` with the agent on every cell (terminal cells included,
    they are shown but never acted from)."""
    c = size * size
    obs = torch.zeros(c, 4, size, size, dtype=torch.uint8)
    for cell in range(c):
        obs[cell, 0, cell // size, cell % size] = 1
    obs[:, 1, ghost[0], ghost[1]] = 1
    obs[:, 2, diamond[0], diamond[1]] = 1
    if overseen[0]:
        obs[:, 3, ghost[0], ghost[1]] = 1
    if overseen[1]:
        obs[:, 3, diamond[0], diamond[1]] = 1
    return obs


#: inches per grid cell: a panel of a 5x5 grid is 2.75 in wide, of an 8x8 grid 4.4 in
CELL_IN = 0.55
MIN_PROB = 0.1  # actions below this probability get no arrow (they would be specks)


@torch.no_grad()
def policy_arrows_figure(
    policy,
    path: str | Path,
    size: int = 5,
    ghost: tuple[int, int] = (1, 3),
    diamond: tuple[int, int] = (4, 0),
    overseen: tuple[bool, bool] = (False, False),
    title: str = "",
) -> Path:
    """Save a PNG: panels for the diamond expert (gate 1), the ghost expert (gate 0) and the
    learned mixture (a single panel for a policy without a gate). In each cell an arrow per
    action of probability >= 0.1, its length and width growing with the probability; the
    background is the learned gate value. Terminal cells are framed: solid orange where the
    supervisor sees the cell (``overseen``), dashed grey where it does not; the legend under the
    panels says so."""
    fig = draw_policy_arrows(policy, size, ghost, diamond, overseen, title)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    return path


@torch.no_grad()
def draw_policy_arrows(policy, size: int = 5, ghost: tuple[int, int] = (1, 3),
                       diamond: tuple[int, int] = (4, 0),
                       overseen: tuple[bool, bool] = (False, False), title: str = ""):
    """The :class:`matplotlib.figure.Figure` :func:`policy_arrows_figure` saves."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import FancyArrow, Rectangle

    obs = _layout_obs(size, ghost, diamond, overseen).to(next(policy.parameters()).device)
    moe = hasattr(policy, "gate_value")
    panels = [("diamond", "diamond expert (gate = 1)"), ("ghost", "ghost expert (gate = 0)"),
              ("none", "learned mixture")] if moe else [("none", "policy")]
    gate = policy.gate_value(obs).cpu().numpy().reshape(size, size) if moe else None
    panel_in = CELL_IN * size
    fig = Figure(figsize=(panel_in * len(panels) + (1.1 if moe else 0.3), panel_in + 1.3),
                 layout="constrained")
    FigureCanvasAgg(fig)  # no pyplot: nothing global, the caller may draw or save it
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    cell_pt = 72 * CELL_IN  # a cell's side in points, whatever the grid size
    im = None
    for ax, (steer, name) in zip(axes, panels):
        probs = torch.softmax(policy(obs, steer=steer).logits, -1).cpu().numpy()
        if gate is not None:
            im = ax.imshow(gate, cmap="coolwarm_r", vmin=0, vmax=1)
        else:
            ax.imshow(np.full((size, size), 0.93), cmap="Greys", vmin=0, vmax=1)
        for cell in range(size * size):
            r, c = divmod(cell, size)
            if (r, c) in (ghost, diamond):
                continue
            for a, (dr, dc) in enumerate(ACTION_DELTAS):
                prob = float(probs[cell, a])
                if prob >= MIN_PROB:
                    length = 0.46 * prob ** 0.5  # area-like: small probabilities stay visible
                    ax.add_patch(FancyArrow(c, r, length * dc, length * dr,
                                            width=0.03 + 0.07 * prob,
                                            head_width=0.12 + 0.14 * prob,
                                            head_length=0.1 + 0.08 * prob,
                                            length_includes_head=True, color="black", lw=0))
        for (rr, cc), seen, letter, colour in ((ghost, overseen[0], "G", "darkred"),
                                              (diamond, overseen[1], "D", "darkgreen")):
            ax.text(cc, rr, letter, ha="center", va="center", color=colour,
                    fontsize=0.55 * cell_pt, weight="bold")
            ax.add_patch(Rectangle((cc - 0.45, rr - 0.45), 0.9, 0.9, fill=False,
                                   ec="darkorange" if seen else "dimgrey",
                                   lw=3 if seen else 1.5, ls="-" if seen else "--"))
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_xlim(-0.5, size - 0.5)
        ax.set_ylim(size - 0.5, -0.5)
    if im is not None:
        fig.colorbar(im, ax=list(axes), shrink=0.85, label="gate (1 = diamond expert)")
    marks = [Line2D([], [], color="darkorange", lw=3, label="overseen terminal cell"),
             Line2D([], [], color="dimgrey", lw=1.5, ls="--", label="unseen terminal cell"),
             Line2D([], [], color="black", lw=0, marker=r"$\rightarrow$", ms=10,
                    label=f"action, length ~ sqrt(probability) (>= {MIN_PROB:g})")]
    fig.legend(handles=marks, loc="outside lower center", ncol=3 if len(panels) > 1 else 1,
               fontsize=7, frameon=False)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
