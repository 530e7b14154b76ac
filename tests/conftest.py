"""Shared test settings."""

import itertools

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    # on shared cores, intra-op threads spin against each other; small ops run far faster on one
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _boxes(fig):
    """(name, window extent) of every text and legend drawn on ``fig``."""
    r = fig.canvas.get_renderer()
    out = []

    def add(name, artist):
        if artist is not None and artist.get_visible() and artist.get_text().strip():
            out.append((f"{name} {artist.get_text()!r}", artist.get_window_extent(r)))

    for i, ax in enumerate(fig.axes):
        add(f"ax{i} title", ax.title)
        add(f"ax{i} xlabel", ax.xaxis.label)
        add(f"ax{i} ylabel", ax.yaxis.label)
        for axis, lim in ((ax.xaxis, ax.get_xlim()), (ax.yaxis, ax.get_ylim())):
            lo, hi = sorted(lim)
            for tick in [*axis.get_major_ticks(), *axis.get_minor_ticks()]:
                if lo <= tick.get_loc() <= hi:
                    add(f"ax{i} tick", tick.label1)
        if ax.get_legend() is not None:
            out.append((f"ax{i} legend", ax.get_legend().get_window_extent(r)))
    for name in ("_suptitle", "_supxlabel", "_supylabel"):
        add(name, getattr(fig, name, None))
    for i, leg in enumerate(fig.legends):
        out.append((f"figure legend {i}", leg.get_window_extent(r)))
    return out


def assert_laid_out(fig):
    """No two texts overlap, all inside the canvas, no legend over a plot."""
    boxes = _boxes(fig)
    canvas = fig.bbox
    for name, b in boxes:
        assert (b.x0 >= canvas.x0 - 1 and b.y0 >= canvas.y0 - 1 and b.x1 <= canvas.x1 + 1
                and b.y1 <= canvas.y1 + 1), f"{name} leaves the canvas: {b} vs {canvas}"
    for (n1, b1), (n2, b2) in itertools.combinations(boxes, 2):
        shrunk = b1.padded(-1.0)  # touching is fine, overlapping is not
        assert not shrunk.overlaps(b2), f"{n1} overlaps {n2}"
    legends = [(n, b) for n, b in boxes if "legend" in n]
    plots_ = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    for (name, b), ax in itertools.product(legends, plots_):
        if name.startswith("figure"):
            assert not b.padded(-1.0).overlaps(ax.bbox), f"{name} covers a plot"


@pytest.fixture
def laid_out():
    """The figure check every figure test uses: ``laid_out(fig)`` asserts no two texts
    (titles, axis labels, ticks, legends) overlap, all lie inside the canvas and no figure legend
    covers a plot (``fig`` drawn on an Agg canvas)."""
    return assert_laid_out
