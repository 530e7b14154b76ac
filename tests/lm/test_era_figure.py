"""The lm_era figure drawn at two sizes of input: no two texts (titles, axis labels, ticks,
legend entries) overlap or leave the canvas, the legend sits off the panels, and the points
carry no labels of their own (a legend names colour = method and marker = q)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402

from oversight_gr.lm import era as E  # noqa: E402


def rows(methods, qs, seed):
    rng = np.random.default_rng(seed)
    out = []
    for m in methods:
        for q in ([None] if m == "plain" else qs):
            # clustered points (the real figure's are within a few hundredths of a nat)
            out.append({"method": m, "q": q, "n": 3,
                        **{k: (4.3 + rng.normal(0, 0.01), 0.02) for k in E.METRICS}})
    return out


@pytest.mark.parametrize(("methods", "qs"), [
    (("sgtm", "sgtm_control"), (0.5,)),
    (E.METHODS, (0.1, 0.25, 0.5, 1.0)),
])
def test_lm_era_figure_has_no_overlapping_labels(methods, qs, tmp_path, laid_out):
    rs = rows(methods, qs, seed=len(methods))
    fig = E.forget_retain_figure(rs)
    FigureCanvasAgg(fig)
    fig.canvas.draw()
    assert all(not ax.texts for ax in fig.axes)  # no per-point labels
    legend = [t.get_text() for leg in fig.legends for t in leg.get_texts()]
    assert legend == [*dict.fromkeys(r["method"] for r in rs),
                      *[f"q={q:g}" for q in sorted(qs)], *(["no q"] if "plain" in methods else [])]
    laid_out(fig)
    # every (method, q) is drawn: one marker line per row per panel
    for ax in fig.axes:
        assert len(ax.containers) == len(rs)
    assert E.plot_forget_retain(rs, tmp_path / "f.png").stat().st_size > 0
