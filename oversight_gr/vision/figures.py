"""Figures for the split autoencoder (matplotlib's object API; no pyplot global state)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from oversight_gr.vision.split import SplitAutoencoder, digit_group, to_pixels

__all__ = ["reconstruction_figure"]


@torch.no_grad()
def reconstruction_figure(
    model: SplitAutoencoder, images: Tensor, labels: Tensor, path: str | Path, title: str = ""
) -> Path:
    """Save a grid: rows original / decoder / certificate on dims 0-15 / on dims 16-31, one
    column per digit 0-9 (the first test image of each digit).

    Args:
        images: ``uint8 [N, 784]``; labels: ``[N]``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    labels = labels.cpu()
    picks = []
    for d in range(10):
        hits = (labels == d).nonzero()
        if len(hits):
            picks.append(int(hits[0]))
    device = next(model.parameters()).device
    x = to_pixels(images[picks].to(device))
    group = digit_group(labels[picks].to(device))
    z = model.encoder(x)
    rows = [x, model.decode(z, group), *model.certify(z)]
    names = ["original", "decoder", "cert. dims 0-15", "cert. dims 16-31"]
    fig = Figure(figsize=(len(picks) * 0.9 + 1.2, len(rows) * 0.95 + 0.4))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), len(picks), squeeze=False)
    for r, (row, name) in enumerate(zip(rows, names)):
        row = row.clamp(-1, 1).cpu().view(-1, 28, 28)
        for c in range(len(picks)):
            ax = axes[r][c]
            ax.imshow(row[c].numpy(), cmap="gray", vmin=-1, vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=7)
            if r == 0:
                ax.set_title(str(int(labels[picks[c]])), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    return path
