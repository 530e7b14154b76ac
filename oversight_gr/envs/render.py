"""Text and RGB pictures of OversightGrid states (numpy only)."""

from __future__ import annotations

import numpy as np

CELL_PX = 16
COLORS = {
    "floor": (235, 235, 235),
    "overseen": (255, 214, 120),  # amber background: the supervisor watches this cell
    "grid": (170, 170, 170),
    "agent": (40, 90, 220),
    "ghost": (200, 40, 40),
    "diamond": (30, 170, 90),
}


def render_ansi(obs: np.ndarray) -> str:
    """One state's planes ``[4, n, n]`` -> text. ``A`` agent, ``G`` ghost, ``D`` diamond,
    ``.`` floor; brackets mark an overseen cell, e.g. ``[D]``."""
    agent, ghost, diamond, over = (np.asarray(p, dtype=bool) for p in obs)
    lines = []
    for r in range(agent.shape[0]):
        cells = []
        for c in range(agent.shape[1]):
            ch = "A" if agent[r, c] else "G" if ghost[r, c] else "D" if diamond[r, c] else "."
            cells.append(f"[{ch}]" if over[r, c] else f" {ch} ")
        lines.append("".join(cells))
    return "\n".join(lines) + "\n"


def render_rgb(obs: np.ndarray, cell_px: int = CELL_PX) -> np.ndarray:
    """One state's planes ``[4, n, n]`` -> ``[n * cell_px, n * cell_px, 3]`` uint8 picture.

    Overseen cells have an amber background; the ghost is a red square, the diamond a green
    rhombus, the agent a blue disc (drawn last, so it shows where it stands)."""
    agent, ghost, diamond, over = (np.asarray(p, dtype=bool) for p in obs)
    n = agent.shape[0]
    img = np.empty((n * cell_px, n * cell_px, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:cell_px, 0:cell_px]
    mid = (cell_px - 1) / 2
    disc = (yy - mid) ** 2 + (xx - mid) ** 2 <= (cell_px * 0.32) ** 2
    rhombus = np.abs(yy - mid) + np.abs(xx - mid) <= cell_px * 0.38
    square = (np.abs(yy - mid) <= cell_px * 0.3) & (np.abs(xx - mid) <= cell_px * 0.3)
    border = (yy == 0) | (xx == 0)
    for r in range(n):
        for c in range(n):
            tile = img[r * cell_px : (r + 1) * cell_px, c * cell_px : (c + 1) * cell_px]
            tile[:] = COLORS["overseen" if over[r, c] else "floor"]
            tile[border] = COLORS["grid"]
            if ghost[r, c]:
                tile[square] = COLORS["ghost"]
            if diamond[r, c]:
                tile[rhombus] = COLORS["diamond"]
            if agent[r, c]:
                tile[disc] = COLORS["agent"]
    return img
