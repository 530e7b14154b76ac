"""Every figure type drawn at two sizes of input, checked for what a paper figure needs: no two
texts (titles, axis labels, tick labels, legends) overlap or leave the canvas, legends sit off
the data, oversight in percent, interval bands inside the metric's range, seed counts in the
legends; the policy pictures mark overseen and unseen terminals and show their arrows.

The PNGs are written to ``FIGURE_DIR`` when that variable is set (to look at them)."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("matplotlib")
pytest.importorskip("scipy")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import FancyArrow, Rectangle  # noqa: E402

from oversight_gr.rl import plots  # noqa: E402
from oversight_gr.rl.figures import draw_policy_arrows, policy_arrows_figure  # noqa: E402

MOE = ("routing", "moe_no_routing", "constant_gate")
FEW = (0.05, 0.3)
MANY = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5)  # 7 levels: a short last row; 20% next to 30%
METHODS = ("routing", "naive", "filtering", "oracle", "naive_early_stop")


def rec(method, p, seed, rng):
    steer = "diamond" if method in MOE else "none"
    steps = 4000
    ret = float(np.clip(rng.normal(0.5, 0.4), -1, 1))  # wide spread: t bands of n=2 pass +-1
    scale = 1 / p if method == "oracle" else 1
    curve = [{"env_steps": s, "reported_env_steps": s * scale, "wall_seconds": 1.0,
              f"return_{steer}": float(np.clip(ret * s / steps + rng.normal(0, 0.3), -1, 1)),
              f"p_ghost_closer_unseen_{steer}": float(rng.uniform())}
             for s in (500, 1000, 2000, 3000, steps)]
    return {"config": {"algo": "ppo", "method": method, "oversight_prob": p},
            "metrics": {steer: {"stepwise_return": ret, "p_ghost_closer_unseen":
                                float(rng.uniform())}},
            "curve": curve, "env_steps": steps, "reported_env_steps": steps * scale,
            "wall_seconds": 1.0, "seed": seed}


def records(levels, n_seeds):
    rng = np.random.default_rng(len(levels) * 10 + n_seeds)
    return [rec(m, p, s, rng) for m in METHODS for p in levels for s in range(n_seeds)]


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """The figures the plot functions save, kept open (and written to FIGURE_DIR if set)."""
    figs = []
    save = plots._save

    def keep(fig, stem):
        figs.append(fig)
        out = os.environ.get("FIGURE_DIR")
        return save(fig, Path(out) / stem.name if out else stem)

    monkeypatch.setattr(plots, "_save", keep)
    return figs


def bands_within(fig, lo, hi):
    for ax in fig.axes:
        for coll in ax.collections:
            if isinstance(coll, PolyCollection):
                for path in coll.get_paths():
                    y = path.vertices[:, 1]
                    assert lo - 1e-9 <= y.min() and y.max() <= hi + 1e-9, (y.min(), y.max())


def legend_texts(fig):
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


@pytest.mark.parametrize(("levels", "n_seeds"), [(FEW, 2), (MANY, 3)])
def test_sweep_figures_are_laid_out_for_a_paper(levels, n_seeds, captured, tmp_path, laid_out):
    recs = records(levels, n_seeds)
    rows = plots.summarize(recs)
    assert any(r["return_hi"] > 1 or r["return_lo"] < -1 for r in rows)  # bands need clipping
    tag = f"{len(levels)}levels"
    paths = [*plots.plot_return_vs_oversight(rows, "ppo", tmp_path / f"ret_{tag}"),
             *plots.plot_learning_curves(recs, "ppo", levels[0], tmp_path / f"curves_{tag}"),
             *plots.plot_learning_curves_all_levels(recs, "ppo", levels, tmp_path / f"all_{tag}"),
             *plots.plot_ghost_closer_unseen(rows, "ppo", tmp_path / f"gcu_{tag}")]
    ret, curves, all_levels, gcu = captured
    for fig in captured:
        FigureCanvasAgg(fig)  # saving closed it (pyplot detaches its canvas); draw it again
        fig.canvas.draw()
        laid_out(fig)
        assert all(f"n={n_seeds}" in t for t in legend_texts(fig) if t != "optimal")
    for fig in (ret, curves, all_levels):
        bands_within(fig, -1.0, 1.0)
    bands_within(gcu, 0.0, 1.0)
    for fig in (ret, gcu):
        ticks = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
        assert ticks and all(t.endswith("%") for t in ticks), ticks
        assert "10%" in ticks or len(levels) == 2
    assert len(all_levels.axes) == len(levels)  # no empty panel
    assert [p.suffix for p in paths] == [".png", ".svg"] * 4
    assert all(p.stat().st_size > 0 for p in paths)


class _ToyMoE(torch.nn.Module):
    """Diamond expert walks toward the diamond, ghost expert toward the ghost, gate 0.8."""

    def __init__(self, size, ghost, diamond):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.size, self.targets = size, {"diamond": diamond, "ghost": ghost}

    def gate_value(self, obs):
        return torch.full((obs.shape[0],), 0.8)

    def forward(self, obs, steer="none"):
        cells = obs[:, 0].flatten(1).argmax(1)
        logits = []
        for name in ("diamond", "ghost"):
            tr, tc = self.targets[name]
            r, c = cells // self.size, cells % self.size
            toward = torch.stack([(r > tr), (c < tc), (r < tr), (c > tc)], 1).float()
            logits.append(3 * toward)
        mix = {"diamond": logits[0], "ghost": logits[1]}.get(steer)
        if mix is None:
            mix = torch.log(0.8 * torch.softmax(logits[0], -1) + 0.2 * torch.softmax(logits[1], -1))
        return SimpleNamespace(logits=mix)


@pytest.mark.parametrize(("size", "ghost", "diamond", "overseen"),
                         [(5, (1, 3), (4, 0), (True, False)), (8, (0, 7), (6, 1), (False, True))])
def test_policy_arrows_are_legible_and_mark_overseen_cells(size, ghost, diamond, overseen,
                                                           tmp_path, laid_out):
    policy = _ToyMoE(size, ghost, diamond)
    fig = draw_policy_arrows(policy, size, ghost, diamond, overseen, title="toy policy")
    fig.canvas.draw()
    assert isinstance(fig, Figure)
    laid_out(fig)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    assert len(panels) == 3
    for ax in panels:
        frames = {(round(p.get_x() + 0.45), round(p.get_y() + 0.45)): p
                  for p in ax.patches if isinstance(p, Rectangle)}
        for (r, c), seen in zip((ghost, diamond), overseen):
            frame = frames[(c, r)]
            assert frame.get_linestyle() == ("-" if seen else "--")
        arrows = [p for p in ax.patches if isinstance(p, FancyArrow)]
        assert len(arrows) >= size * size - 2  # at least one per non-terminal cell
        # legible: the cell's most likely arrow is at least a third of a cell long
        lengths = [np.ptp(a.get_xy(), axis=0).max() for a in arrows]
        assert max(lengths) >= 0.33
    texts = legend_texts(fig)
    assert "overseen terminal cell" in texts and "unseen terminal cell" in texts
    path = policy_arrows_figure(policy, Path(os.environ.get("FIGURE_DIR", tmp_path))
                                / f"arrows_{size}.png", size, ghost, diamond, overseen,
                                title="toy policy")
    assert path.stat().st_size > 0
