"""Policy pictures: action arrows in every cell of a fixed layout, one panel per expert, the
gate value as background (the paper's Fig. 6b)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from oversight_gr.envs.core import ACTION_DELTAS

__all__ = ["policy_arrows_figure"]


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
    learned mixture; arrow length = action probability; background = learned gate value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    obs = _layout_obs(size, ghost, diamond, overseen).to(next(policy.parameters()).device)
    moe = hasattr(policy, "gate_value")
    panels = [("diamond", "diamond expert (gate=1)"), ("ghost", "ghost expert (gate=0)"),
              ("none", "learned mixture")] if moe else [("none", "policy")]
    gate = policy.gate_value(obs).cpu().numpy().reshape(size, size) if moe else None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for ax, (steer, name) in zip(axes[0], panels):
        probs = torch.softmax(policy(obs, steer=steer).logits, -1).cpu().numpy()
        if gate is not None:
            im = ax.imshow(gate, cmap="coolwarm_r", vmin=0, vmax=1)
        else:
            ax.imshow(np.zeros((size, size)), cmap="Greys", vmin=0, vmax=1)
        for cell in range(size * size):
            r, c = divmod(cell, size)
            if (r, c) in (ghost, diamond):
                continue
            for a, (dr, dc) in enumerate(ACTION_DELTAS):
                p = probs[cell, a]
                if p > 0.05:
                    ax.arrow(c, r, 0.4 * p * dc, 0.4 * p * dr, head_width=0.12 * p + 0.03,
                             color="black", length_includes_head=True)
        ax.text(ghost[1], ghost[0], "G", ha="center", va="center", color="darkred",
                fontsize=16, weight="bold")
        ax.text(diamond[1], diamond[0], "D", ha="center", va="center", color="darkgreen",
                fontsize=16, weight="bold")
        for (rr, cc), seen in zip((ghost, diamond), overseen):
            if seen:
                ax.add_patch(plt.Rectangle((cc - 0.5, rr - 0.5), 1, 1, fill=False, ec="orange", lw=3))
        ax.set_title(name, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    if gate is not None:
        fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="gate (1 = diamond expert)")
    if title:
        fig.suptitle(title, fontsize=10)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
