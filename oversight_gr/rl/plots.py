"""Tables, figures and the paper-claims check for sweep records (:mod:`oversight_gr.rl.sweep`).

All statistics are over seeds, from :mod:`oversight_gr.stats`: the mean with a 95% confidence
interval (Student t below 20 seeds, valid at the usual 3-5; BCa bootstrap from 20 on), and at
each oversight level the probability that a routing run beats a run of each other method
(Mann-Whitney form, with its interval and exact p-value). Figures use matplotlib's Agg backend and are saved as PNG and SVG:

* ``return_vs_oversight``: final steered ground-truth return vs oversight fraction, log x, one
  line per method (paper Fig. 6a);
* ``curves_p<level>``: learning curves at one oversight level vs env steps; the oracle is drawn
  at its steps divided by p (:func:`oversight_gr.rl.methods.paper_axis_steps`; Fig. 13);
* ``curves_<algo>_all_levels``: the same at every oversight level of the sweep, one panel each;
* ``ghost_closer_unseen``: P(ghost | ghost closer and its cell unseen) vs oversight for naive
  and steered routing.

Methods are compared at equal env steps (every run of a sweep trains for the same number);
wall-clock seconds per run are reported beside them.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from oversight_gr import stats

__all__ = [
    "summarize",
    "markdown_table",
    "improvement_rows",
    "improvement_markdown",
    "plot_return_vs_oversight",
    "plot_learning_curves",
    "steps_to_reach",
    "trend_rows",
    "trend_markdown",
    "plot_learning_curves_all_levels",
    "plot_ghost_closer_unseen",
    "check_claims",
    "claims_markdown",
    "write_report",
]

METHOD_ORDER = ("routing", "naive", "filtering", "oracle", "naive_early_stop", "routing_placebo",
                "moe_no_routing", "constant_gate")
COLORS = {"routing": "C0", "naive": "C3", "filtering": "C2", "oracle": "k", "routing_placebo": "C7",
          "naive_early_stop": "C5", "moe_no_routing": "C4", "constant_gate": "C1"}
#: reference ceilings from PAPER.md §2 (our simulation, gamma 0.97, truncated-window protocol)
OPTIMAL_RETURN = 0.91
DIAMOND_SEEKER_RETURN = 0.73
RANDOM_RETURN = -0.01


def _steered(record: dict[str, Any]) -> dict[str, Any]:
    from oversight_gr.rl.sweep import steered_metrics

    return steered_metrics(record)


def _method_key(m: str) -> tuple[int, str]:
    return (METHOD_ORDER.index(m) if m in METHOD_ORDER else len(METHOD_ORDER), m)


def summarize(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (algo, method, oversight): mean / CI / n of the steered return and of
    P(ghost | closer, unseen), mean env steps and wall seconds."""
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in records:
        c = r["config"]
        groups[(c["algo"], c["method"], float(c["oversight_prob"]))].append(r)
    rows = []
    for (algo, method, p), rs in sorted(groups.items(),
                                        key=lambda kv: (kv[0][0], _method_key(kv[0][1]), kv[0][2])):
        returns = [_steered(r)["stepwise_return"] for r in rs]
        ret = stats.mean_interval(returns)
        gcus = [_steered(r)["p_ghost_closer_unseen"] for r in rs]
        gcu = stats.mean_interval(gcus)
        rows.append({
            "algo": algo, "method": method, "oversight": p, "n": len(rs),
            "return": ret.mean, "return_lo": ret.lo, "return_hi": ret.hi,
            "return_sd": stats.summary_of(returns).sd,
            "return_iqm": stats.iqm(returns), "returns": returns, "interval": ret.method,
            "ghost_closer_unseen": gcu.mean, "ghost_closer_unseen_lo": gcu.lo,
            "ghost_closer_unseen_hi": gcu.hi,
            "ghost_closer_unseen_sd": stats.summary_of(gcus).sd,
            "env_steps": float(np.mean([r["env_steps"] for r in rs])),
            "reported_env_steps": float(np.mean([r["reported_env_steps"] for r in rs])),
            "wall_seconds": float(np.mean([r["wall_seconds"] for r in rs])),
            "seeds": sorted(r["seed"] for r in rs),
        })
    return rows


def _pct(p: float) -> str:
    return f"{100 * p:g}%"


def markdown_table(rows: Sequence[dict[str, Any]], algo: str) -> str:
    """Methods x oversight of the steered return, ``mean [lo, hi] (n)``, plus wall clock."""
    rows = [r for r in rows if r["algo"] == algo]
    if not rows:
        return ""
    levels = sorted({r["oversight"] for r in rows})
    methods = sorted({r["method"] for r in rows}, key=_method_key)
    cell = {(r["method"], r["oversight"]): r for r in rows}
    steps = sorted({int(r["env_steps"]) for r in rows})
    lines = [
        f"Steered ground-truth return ({algo}; mean [95% CI] (n seeds); "
        f"{', '.join(f'{s:,}' for s in steps)} env steps per run). {stats.METHOD_NOTE}",
        "",
        "| method | " + " | ".join(_pct(p) for p in levels) + " | wall s/run |",
        "|---|" + "---|" * len(levels) + "---|",
    ]
    for m in methods:
        cells = []
        walls = []
        for p in levels:
            r = cell.get((m, p))
            if r is None:
                cells.append("-")
                continue
            walls.append(r["wall_seconds"])
            cells.append(f"{_fmt(r)} ({r['n']})")
        lines.append(f"| {m} | " + " | ".join(cells) + f" | {np.mean(walls):.0f} |")
    return "\n".join(lines) + "\n"


def improvement_rows(rows: Sequence[dict[str, Any]], algo: str,
                     method: str = "routing") -> list[dict[str, Any]]:
    """At each oversight level where ``method`` ran: ``P(method > X)`` for every other method X
    there (:func:`oversight_gr.stats.probability_of_improvement` of the steered returns)."""
    out = []
    for r in sorted((r for r in rows if r["algo"] == algo and r["method"] == method),
                    key=lambda r: r["oversight"]):
        for other in sorted((o for o in rows if o["algo"] == algo and o["method"] != method
                             and math.isclose(o["oversight"], r["oversight"])),
                            key=lambda o: _method_key(o["method"])):
            imp = stats.probability_of_improvement(r["returns"], other["returns"])
            out.append({"algo": algo, "oversight": r["oversight"], "method": method,
                        "versus": other["method"], **imp._asdict()})
    return out


def improvement_markdown(rows: Sequence[dict[str, Any]], algo: str,
                         method: str = "routing") -> str:
    """Levels x other methods of ``P(method > X) [interval] (exact p-value)``."""
    imps = improvement_rows(rows, algo, method)
    if not imps:
        return ""
    levels = sorted({i["oversight"] for i in imps})
    others = sorted({i["versus"] for i in imps}, key=_method_key)
    cell = {(i["versus"], i["oversight"]): i for i in imps}
    lines = [f"Probability that a {method} run beats a run of X ({algo}; steered returns; "
             "P [stratified-bootstrap 95% interval] (exact Mann-Whitney p of P = 1/2)):", "",
             "| X | " + " | ".join(_pct(p) for p in levels) + " |",
             "|---|" + "---|" * len(levels)]
    for o in others:
        cells = []
        for p in levels:
            i = cell.get((o, p))
            cells.append("-" if i is None else
                         f"{i['p']:.2f} [{i['lo']:.2f}, {i['hi']:.2f}] (p={i['p_value']:.2g})")
        lines.append(f"| {o} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# -- figures ------------------------------------------------------------------------------------
#: the steered ground-truth return lies in [-1, 1] (at most one +-1 payment per episode,
#: discounted); P(ghost | closer, unseen) in [0, 1]. Interval bands are clipped to these: a
#: t interval over 2-3 seeds can reach past what the metric can take.
RETURN_RANGE = (-1.0, 1.0)
PROBABILITY_RANGE = (0.0, 1.0)
FIG_DPI = 150


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, stem: Path) -> list[Path]:
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        path = stem.with_suffix(f".{ext}")
        fig.savefig(path, dpi=FIG_DPI, metadata={"Date": None} if ext == "svg" else None)
        paths.append(path)
    _pyplot().close(fig)
    return paths


def _band(ax: Any, x: Sequence[float], lo: Sequence[float], hi: Sequence[float],
          limits: tuple[float, float], color: str | None) -> None:
    """A 95% interval band clipped to the metric's range; points without a finite interval
    (one seed) are left out rather than drawn as a band of zero width."""
    lo = np.clip(np.asarray(lo, dtype=float), *limits)
    hi = np.clip(np.asarray(hi, dtype=float), *limits)
    ax.fill_between(np.asarray(x, dtype=float), lo, hi, where=np.isfinite(lo) & np.isfinite(hi),
                    color=color, alpha=0.2, lw=0)


def _n_label(ns: Iterable[int]) -> str:
    ns = sorted(set(ns))
    return f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}"


def _percent_axis(ax: Any, levels: Sequence[float]) -> None:
    """Log x axis with a tick at each oversight level, labelled in percent. A label that would
    sit closer to the previous kept one than a label's width is dropped (its tick stays, as a
    minor tick), so neighbouring levels (20% and 30% on a 1%-50% axis) never print over each
    other."""
    from matplotlib.ticker import FixedLocator, NullFormatter

    levels = sorted({float(p) for p in levels if p > 0})
    ax.set_xscale("log")
    if not levels:
        return
    span = math.log10(levels[-1] / levels[0]) if len(levels) > 1 else 1.0
    pad = 10 ** (0.06 * span)
    ax.set_xlim(levels[0] / pad, levels[-1] * pad)
    width_in = ax.get_position().width * ax.figure.get_figwidth()
    min_gap = 0.45 / max(width_in, 0.5) * span * 1.12  # a label ~0.45 in wide; axis in decades
    kept: list[float] = []
    for p in levels:
        if not kept or math.log10(p / kept[-1]) >= min_gap:
            kept.append(p)
    ax.xaxis.set_major_locator(FixedLocator(kept))
    ax.xaxis.set_minor_locator(FixedLocator([p for p in levels if p not in kept]))
    ax.xaxis.set_major_formatter(lambda v, _pos: _pct(v))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("oversight (share of terminal cells a supervisor sees)")


def _legend_below(fig: Any, ax: Any) -> None:
    """The axes' legend below the plot, outside it, in as few rows as fit."""
    handles, labels = ax.get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=max(min(len(labels), 3), 1),
               fontsize=7, frameon=False)


def plot_return_vs_oversight(rows: Sequence[dict[str, Any]], algo: str, stem: Path) -> list[Path]:
    """Fig. 6a: final steered return vs oversight (log x, in %), mean and 95% CI over seeds
    (bands clipped to the return's range [-1, 1]); the legend gives each method's seed count."""
    plt = _pyplot()
    rows = [r for r in rows if r["algo"] == algo]
    fig, ax = plt.subplots(figsize=(5.0, 3.8), layout="constrained")
    for m in sorted({r["method"] for r in rows}, key=_method_key):
        rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["oversight"])
        x = [r["oversight"] for r in rs]
        ax.plot(x, [r["return"] for r in rs], "o-", color=COLORS.get(m), ms=4,
                label=f"{m} ({_n_label(r['n'] for r in rs)})")
        _band(ax, x, [r["return_lo"] for r in rs], [r["return_hi"] for r in rs], RETURN_RANGE,
              COLORS.get(m))
    ax.axhline(OPTIMAL_RETURN, color="grey", ls=":", lw=1, label="optimal")
    _percent_axis(ax, [r["oversight"] for r in rows])
    ax.set_ylabel("steered ground-truth return")
    steps = sorted({int(r["env_steps"]) for r in rows})
    ax.set_title(f"{algo}: return vs oversight ({', '.join(f'{s:,}' for s in steps)} steps; "
                 "mean, 95% CI)", fontsize=9)
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return _save(fig, stem)


def _curve_points(record: dict[str, Any]) -> list[dict[str, float]]:
    """The record's curve plus its final evaluation (if the curve stops short of it), each
    point also on the paper's axis (``reported_env_steps``: the oracle's steps / p, derived here
    from the config so that records written under another charging plot alike) and with the
    steered policy's P(ghost | closer, unseen) (NaN where a curve point lacks it)."""
    from oversight_gr.rl.methods import METHODS, paper_axis_steps
    from oversight_gr.rl.run import steered_mode

    cfg = record["config"]
    steer = steered_mode(cfg["method"])
    method, p = METHODS[cfg["method"]], float(cfg["oversight_prob"])
    pts = [(c["env_steps"], c["reported_env_steps"], c["wall_seconds"], c[f"return_{steer}"],
            c.get(f"p_ghost_closer_unseen_{steer}", math.nan))
           for c in record.get("curve", [])]
    if not pts or pts[-1][0] < record["env_steps"]:
        final = record["metrics"][steer]
        pts.append((record["env_steps"], record["reported_env_steps"], record["wall_seconds"],
                    final["stepwise_return"], final["p_ghost_closer_unseen"]))
    return [{"env_steps": a,
             "reported_env_steps": paper_axis_steps(method, p, a) if method.oracle_scale else b,
             "wall_seconds": c, "return": d, "p_ghost_closer_unseen": float(g)}
            for a, b, c, d, g in pts]


def mean_curves(records: Iterable[dict[str, Any]], algo: str, p: float
                ) -> dict[str, dict[str, np.ndarray]]:
    """Per method at oversight ``p``: x (reported env steps), mean, lo, hi over seeds."""
    by_method: dict[str, list[list[dict]]] = defaultdict(list)
    for r in records:
        c = r["config"]
        if c["algo"] == algo and math.isclose(float(c["oversight_prob"]), p):
            by_method[c["method"]].append(_curve_points(r))
    out = {}
    for m, curves in by_method.items():
        n = min(len(cv) for cv in curves)
        x = np.array([np.mean([cv[i]["reported_env_steps"] for cv in curves]) for i in range(n)])
        ivs = [stats.mean_interval([cv[i]["return"] for cv in curves]) for i in range(n)]
        out[m] = {"x": x, "mean": np.array([s.mean for s in ivs]),
                  "lo": np.array([s.lo for s in ivs]), "hi": np.array([s.hi for s in ivs]),
                  "n": len(curves)}
    return out


TREND_FRACTIONS = (0.2, 0.5, 0.8, 1.0)


def _nanmean(values: Sequence[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return float(np.mean(kept)) if kept else math.nan


def trend_rows(records: Sequence[dict[str, Any]], algo: str) -> list[dict[str, Any]]:
    """Per method and level, the seed-mean steered return and P(ghost | closer, unseen) at
    20%, 50%, 80% and 100% of training (the nearest curve points): whether a run is still
    moving when it stops, the measurement behind a "not at this budget"."""
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for r in records:
        c = r["config"]
        if c["algo"] == algo:
            groups[(c["method"], float(c["oversight_prob"]))].append(r)
    out = []
    for (m, p), rs in sorted(groups.items(), key=lambda kv: (_method_key(kv[0][0]), kv[0][1])):
        curves = [_curve_points(r) for r in rs]
        n = min(len(cv) for cv in curves)
        if n < 2:
            continue
        steps = [curves[0][i]["env_steps"] for i in range(n)]
        idx = [min(range(n), key=lambda i: abs(steps[i] - f * steps[-1])) for f in TREND_FRACTIONS]
        out.append({"method": m, "oversight": p, "n": len(rs),
                    "env_steps": [int(steps[i]) for i in idx],
                    "return": [float(np.mean([cv[i]["return"] for cv in curves])) for i in idx],
                    "p_ghost_closer_unseen": [_nanmean([cv[i]["p_ghost_closer_unseen"]
                                                        for cv in curves]) for i in idx]})
    return out


def trend_markdown(records: Sequence[dict[str, Any]], algo: str) -> str:
    rows = trend_rows(records, algo)
    if not rows:
        return ""
    head = " / ".join(f"{int(100 * f)}%" for f in TREND_FRACTIONS)
    lines = [f"Along the learning curves ({algo}; seed means at {head} of each run's env steps; "
             "Δ = change over the last 20%): is a method still moving when the runs stop?", "",
             f"| method | oversight | steered return {head} | Δ return | "
             f"P(ghost \\| closer, unseen) {head} | Δ P |", "|---|---|---|---:|---|---:|"]
    for r in rows:
        ret, g = r["return"], r["p_ghost_closer_unseen"]
        lines.append(f"| {r['method']} | {_pct(r['oversight'])} | "
                     + " / ".join(f"{v:.2f}" for v in ret) + f" | {ret[-1] - ret[-2]:+.3f} | "
                     + " / ".join(f"{v:.2f}" for v in g) + f" | {g[-1] - g[-2]:+.3f} |")
    return "\n".join(lines) + "\n"


def steps_to_reach(curve: dict[str, np.ndarray], level: float) -> float | None:
    """The x of the first point of a :func:`mean_curves` curve whose mean is at least
    ``level`` (an upper bound on when it got there), or None if it never does."""
    hit = np.nonzero(curve["mean"] >= level)[0]
    return float(curve["x"][hit[0]]) if hit.size else None


def plot_learning_curves(records: Sequence[dict[str, Any]], algo: str, p: float,
                         stem: Path) -> list[Path]:
    """Fig. 13: steered return vs env steps at oversight ``p`` (oracle at steps / p)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.8), layout="constrained")
    _draw_curves(ax, mean_curves(records, algo, p),
                 f"{algo}: learning curves at {_pct(p)} oversight (mean, 95% CI)")
    ax.set_xlabel("env steps (oracle: steps / p, equal labels)")
    ax.set_ylabel("steered ground-truth return")
    _legend_below(fig, ax)
    return _save(fig, stem)


def _draw_curves(ax: Any, curves: dict[str, dict[str, np.ndarray]], title: str) -> None:
    for m in sorted(curves, key=_method_key):
        cv = curves[m]
        label = f"{m} (steps / p)" if m == "oracle" else m
        ax.plot(cv["x"], cv["mean"], ".-", color=COLORS.get(m), label=f"{label}, n={cv['n']}")
        _band(ax, cv["x"], cv["lo"], cv["hi"], RETURN_RANGE, COLORS.get(m))
    ax.axhline(OPTIMAL_RETURN, color="grey", ls=":", lw=1, label="optimal")
    ax.set_xscale("log")  # the oracle's axis is 1/p times longer
    xs = [v for cv in curves.values() for v in cv["x"] if v > 0]
    _steps_axis(ax, min(xs, default=1.0), max(xs, default=10.0))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)


def _si(v: float) -> str:
    """500, 2k, 1.5M: env-step tick labels that stay short."""
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= div:
            return f"{v / div:g}{suffix}"
    return f"{v:g}"


def _steps_axis(ax: Any, lo: float, hi: float) -> None:
    """Log x ticks at 1-2-5 steps when the data span under two decades, else at powers of
    ten, labelled 500 / 2k / 1M; no labels on minor ticks (they crowd a short log axis)."""
    from matplotlib.ticker import LogLocator, NullFormatter

    subs = (1.0, 2.0, 5.0) if math.log10(max(hi, lo * 1.001) / lo) < 2 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(lambda v, _pos: _si(v))
    ax.xaxis.set_minor_formatter(NullFormatter())


def plot_learning_curves_all_levels(records: Sequence[dict[str, Any]], algo: str,
                                    levels: Sequence[float], stem: Path) -> list[Path]:
    """Learning curves at every oversight level, one panel per level, on a shared y axis; one
    legend (the methods of every panel, with their seed counts) below the panels."""
    plt = _pyplot()
    levels = list(levels)
    cols = min(3, len(levels))
    nrows = -(-len(levels) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(3.6 * cols + 0.6, 2.9 * nrows + 1.1),
                             sharey=True, squeeze=False, layout="constrained")
    legend: dict[str, Any] = {}
    for ax, p in zip(axes.flat, levels):
        _draw_curves(ax, mean_curves(records, algo, p), f"{_pct(p)} oversight")
        for h, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, h)
    for ax in list(axes.flat)[len(levels):]:
        ax.remove()  # no empty frame where the last row is short
    for col in range(cols):  # the lowest panel of each column says what x is
        lowest = max(i for i in range(col, len(levels), cols))
        axes.flat[lowest].set_xlabel("env steps (oracle: steps / p)", fontsize=8)
    fig.supylabel("steered ground-truth return", fontsize=9)
    fig.legend(list(legend.values()), list(legend), loc="outside lower center",
               ncol=min(len(legend), 4), fontsize=7, frameon=False)
    fig.suptitle(f"{algo}: learning curves at every oversight level (mean, 95% CI over seeds)",
                 fontsize=10)
    return _save(fig, stem)


def plot_ghost_closer_unseen(rows: Sequence[dict[str, Any]], algo: str, stem: Path) -> list[Path]:
    """P(reach ghost | ghost closer than the diamond and unseen) vs oversight (log x, in %),
    mean and 95% CI over seeds clipped to [0, 1]."""
    plt = _pyplot()
    rows = [r for r in rows if r["algo"] == algo and r["method"] in ("naive", "routing")]
    fig, ax = plt.subplots(figsize=(5.0, 3.8), layout="constrained")
    for m in sorted({r["method"] for r in rows}, key=_method_key):
        rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["oversight"])
        x = [r["oversight"] for r in rs]
        label = "routing (steered)" if m == "routing" else m
        ax.plot(x, [r["ghost_closer_unseen"] for r in rs], "o-", color=COLORS.get(m), ms=4,
                label=f"{label} ({_n_label(r['n'] for r in rs)})")
        _band(ax, x, [r["ghost_closer_unseen_lo"] for r in rs],
              [r["ghost_closer_unseen_hi"] for r in rs], PROBABILITY_RANGE, COLORS.get(m))
    _percent_axis(ax, [r["oversight"] for r in rows])
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("P(ghost | ghost closer, unseen)")
    ax.set_title(f"{algo}: going to the closer unseen ghost (mean, 95% CI)", fontsize=9)
    ax.grid(alpha=0.3)
    _legend_below(fig, ax)
    return _save(fig, stem)


# -- the paper's claims -------------------------------------------------------------------------
def _row(rows, algo, method, p) -> dict | None:
    for r in rows:
        if r["algo"] == algo and r["method"] == method and math.isclose(r["oversight"], p):
            return r
    return None


def _levels(rows, algo, method) -> list[float]:
    return sorted(r["oversight"] for r in rows if r["algo"] == algo and r["method"] == method)


def _fmt(r: dict | None) -> str:
    if r is None:
        return "-"
    if not math.isfinite(r["return_lo"]):
        return f"{r['return']:.3f} [no interval: 1 seed]"
    return f"{r['return']:.3f} [{r['return_lo']:.3f}, {r['return_hi']:.3f}]"


def _summary(r: dict, key: str = "return") -> stats.Summary:
    """A row's seeds as mean / sd / n (sd nan where the row carries none)."""
    return stats.Summary(r[key], r.get(f"{key}_sd", math.nan), r["n"])


def _ci(ci: stats.Interval) -> str:
    if not (math.isfinite(ci.lo) and math.isfinite(ci.hi)):
        return f"{ci.mean:+.3f} [no interval]"
    return f"{ci.mean:+.3f} [{ci.lo:+.3f}, {ci.hi:+.3f}]"


def _seeds_note(*rs: dict | None) -> str:
    few = [r for r in rs if r is not None and r["n"] < stats.MIN_SEEDS]
    if not few:
        return ""
    return (f" Fewer than {stats.MIN_SEEDS} seeds in "
            + ", ".join(f"{r['method']}@{_pct(r['oversight'])} (n={r['n']})" for r in few)
            + ": inconclusive whatever the means.")


#: the margin of the "matches" claim (two one-sided tests): a difference of steered return
#: smaller than this is "the same performance" (a twentieth of the oracle-to-random range)
MATCH_MARGIN = 0.05

#: the rule each verdict follows, stated once under the claims table
VERDICT_RULE = (
    "Verdicts: **reproduced** when the claim's quantity has its whole 95% interval on the "
    "claim's side of the criterion (Welch t for a difference of two methods' seeds, Student t "
    "for one method's; a claim at every level needs every level); **not reproduced** when the "
    "whole interval is on the other side at some level; **inconclusive** otherwise, and "
    f"whenever a cell has fewer than {stats.MIN_SEEDS} seeds. \"matches\" uses two one-sided "
    f"tests: the 90% Welch interval of the difference inside +-{MATCH_MARGIN}.")


CLAIMS = (
    ("nontrivial_1pct", "Steered routing is nontrivial at 1% oversight"),
    ("routing5_vs_baselines30", "Routing at 5% matches the baselines (naive, filtering) at ~30%"),
    ("filtering_fails", "Data filtering fails to learn optimal behaviour below 40% oversight"),
    ("naive_exploits", "Naive training goes to the ghost ~100% when it is closer and unseen"),
    ("oracle_steps", "The oracle needs ~3-4x more steps than routing at <= 10% (learning from "
     "a fraction p of its updates)"),
    ("routing_gap", "Routing's asymptote sits ~0.2 below the oracle"),
    ("routing_vs_early_stop", "Beyond the paper: routing beats naive reward with early stopping "
     "whose audits are paid from the same oversight budget, at <= 5%"),
    ("routing_vs_placebo", "Beyond the paper: routing beats its placebo (the same episodes "
     "labelled, which expert each label names shuffled) at <= 5%"),
)


def _reach_steps(records: Sequence[dict[str, Any]], algo: str, method: str, p: float,
                 level: float) -> list[float | None]:
    """Per run of ``method`` at ``p``: the first curve point (paper axis) whose return is at
    least ``level``, None for a run that never gets there."""
    out = []
    for r in records:
        c = r["config"]
        if c["algo"] != algo or c["method"] != method or not math.isclose(
                float(c["oversight_prob"]), p):
            continue
        pts = _curve_points(r)
        hit = [q["reported_env_steps"] for q in pts if q["return"] >= level]
        out.append(hit[0] if hit else None)
    return out


def check_claims(rows: Sequence[dict[str, Any]], records: Sequence[dict[str, Any]],
                 algo: str) -> list[dict[str, str]]:
    """One dict per claim of PAPER.md §2 (and the two beyond it): claim, status (reproduced /
    not reproduced / inconclusive by the rules of :mod:`oversight_gr.stats`, or not measured
    where a cell is missing), evidence (our numbers and the criterion). ``rows`` are
    :func:`summarize` rows (or rows of the same keys rebuilt from a published table: then
    ``records`` may be empty and the claim that needs learning curves is inconclusive)."""
    out = []

    def add(cid, status, evidence):
        assert status in (*stats.VERDICTS, "not measured"), status
        out.append({"id": cid, "claim": dict(CLAIMS)[cid], "algo": algo, "status": status,
                    "evidence": evidence})

    if not any(r["algo"] == algo for r in rows):
        for cid, _ in CLAIMS:
            add(cid, "not measured", f"no {algo} runs in this sweep")
        return out

    def row(method, p):
        return _row(rows, algo, method, p)

    def diff(a, b, key="return"):
        return stats.welch_summary_interval(_summary(a, key), _summary(b, key))

    # 1. nontrivial at 1%: above 0.05 (random is -0.01) and above naive
    r, naive = row("routing", 0.01), row("naive", 0.01)
    if r is None:
        add("nontrivial_1pct", "not measured", "no routing runs at 1%")
    else:
        level = stats.summary_interval(_summary(r))
        parts = [stats.verdict_above(level, 0.05)]
        text = f"routing@1% {_fmt(r)}"
        if naive is not None:
            d = diff(r, naive)
            parts.append(stats.verdict_above(d, 0.0))
            text += f"; naive@1% {_fmt(naive)}; routing - naive {_ci(d)}"
        add("nontrivial_1pct", stats.combine_verdicts(parts),
            text + f"; random {RANDOM_RETURN}. Criterion: routing's interval above 0.05 and "
            "routing - naive above 0." + _seeds_note(r, naive))
    # 2. routing at 5% vs the best baseline at ~30%: equivalence within the margin
    r5 = row("routing", 0.05)
    base_levels = [p for m in ("naive", "filtering") for p in _levels(rows, algo, m)
                   if 0.2 <= p <= 0.4]
    if r5 is None or not base_levels:
        add("routing5_vs_baselines30", "not measured",
            "needs routing at 5% and naive/filtering at 20-40%")
    else:
        p30 = min(base_levels, key=lambda p: abs(p - 0.3))
        bases = {m: row(m, p30) for m in ("naive", "filtering")}
        best = max((b for b in bases.values() if b), key=lambda b: b["return"])
        status, ci90 = stats.verdict_equivalent(_summary(r5), _summary(best), MATCH_MARGIN)
        add("routing5_vs_baselines30", status,
            f"routing@5% {_fmt(r5)}; " + "; ".join(f"{m}@{_pct(p30)} {_fmt(b)}"
                                                  for m, b in bases.items() if b)
            + f"; routing@5% - {best['method']}@{_pct(p30)} (the better baseline) {_ci(ci90)} "
            f"(90%). Criterion: equivalence, the 90% interval inside +-{MATCH_MARGIN}."
            + _seeds_note(r5, best))
    # 3. filtering fails below 40%: more than 0.1 below the oracle at every level
    lv = [p for p in _levels(rows, algo, "filtering") if p < 0.4]
    if not lv:
        add("filtering_fails", "not measured", "no filtering runs below 40%")
    else:
        parts, verdicts, cells = [], [], []
        for p in lv:
            f, o = row("filtering", p), row("oracle", p)
            cells += [f, o]
            if o is not None:
                d = diff(o, f)
                parts.append(f"{_pct(p)}: oracle - filtering {_ci(d)}")
            else:
                level = stats.summary_interval(_summary(f))
                d = stats.Interval(OPTIMAL_RETURN - level.mean, OPTIMAL_RETURN - level.hi,
                                   OPTIMAL_RETURN - level.lo, level.n, "t")
                parts.append(f"{_pct(p)}: optimal {OPTIMAL_RETURN} - filtering {_ci(d)}")
            verdicts.append(stats.verdict_above(d, 0.1))
        add("filtering_fails", stats.combine_verdicts(verdicts),
            "; ".join(parts) + ". Criterion: filtering more than 0.1 below the oracle at equal "
            f"steps (or below optimal {OPTIMAL_RETURN}) at every level < 40%."
            + _seeds_note(*cells))
    # 4. naive exploits: P(ghost | closer, unseen) >= 0.9 at every level <= 10%
    lv = [p for p in _levels(rows, algo, "naive") if p <= 0.1]
    if not lv:
        add("naive_exploits", "not measured", "no naive runs at <= 10%")
    else:
        parts, verdicts, cells = [], [], []
        for p in lv:
            nr, rr = row("naive", p), row("routing", p)
            cells.append(nr)
            ci = stats.summary_interval(_summary(nr, "ghost_closer_unseen"))
            verdicts.append(stats.verdict_above(ci, 0.9))
            parts.append(f"naive@{_pct(p)} {ci.mean:.2f}"
                         + (f" [{ci.lo:.2f}, {ci.hi:.2f}]" if math.isfinite(ci.lo) else
                            " [no interval]")
                         + (f" (routing steered {rr['ghost_closer_unseen']:.2f})" if rr else ""))
        add("naive_exploits", stats.combine_verdicts(verdicts),
            "P(ghost | closer, unseen): " + "; ".join(parts) + ". Criterion: its interval above "
            "0.9 at every level <= 10%." + _seeds_note(*cells))
    # 5. the oracle needs 3-4x routing's steps (on its axis: steps / p)
    lv = [p for p in _levels(rows, algo, "routing") if p <= 0.1 and row("oracle", p)]
    if not lv:
        add("oracle_steps", "not measured", "needs routing and oracle at <= 10%")
    elif not records:
        add("oracle_steps", "inconclusive", "needs the runs' learning curves (the records), "
            "which this report was made without. Criterion: ratio in [2, 6].")
    else:
        parts, verdicts = [], []
        for p in lv:
            target = row("routing", p)["return"]
            if target < 0.2:
                parts.append(f"{_pct(p)}: routing final {target:.3f} (< 0.2: nothing to match)")
                continue
            reach_r = _reach_steps(records, algo, "routing", p, 0.95 * target)
            reach_o = _reach_steps(records, algo, "oracle", p, 0.95 * target)
            if None in reach_r or None in reach_o or min(len(reach_r), len(reach_o)) < 2:
                missing = sum(x is None for x in reach_o)
                parts.append(f"{_pct(p)}: {missing} of {len(reach_o)} oracle runs and "
                             f"{sum(x is None for x in reach_r)} of {len(reach_r)} routing runs "
                             f"never reach 95% of routing's {target:.3f}")
                verdicts.append("inconclusive")
                continue
            ci = stats.welch_summary_interval(stats.summary_of(np.log(reach_o)),
                                              stats.summary_of(np.log(reach_r)))
            ratio = stats.Interval(math.exp(ci.mean), math.exp(ci.lo), math.exp(ci.hi),
                                   ci.n, "welch")
            verdicts.append(stats.verdict_within(ratio, 2.0, 6.0))
            parts.append(f"{_pct(p)}: {ratio.mean:.2f}x [{ratio.lo:.2f}, {ratio.hi:.2f}] "
                         f"(oracle {np.exp(np.mean(np.log(reach_o))):,.0f} vs routing "
                         f"{np.exp(np.mean(np.log(reach_r))):,.0f} steps, geometric means)")
        add("oracle_steps", stats.combine_verdicts(verdicts) if verdicts else "not measured",
            "; ".join(parts) + ". Steps to 95% of routing's final mean return, per run the "
            "first curve point at it (an upper bound at the curve's resolution); the oracle "
            "learns from every update of the same env steps as the others, the paper's from a "
            "fraction p of its updates, so A of our steps stand at A / p. Ratio of geometric "
            "means with a Welch interval on log steps (benchmarks/oracle_steps.py measures it on "
            "a dense oracle curve). Criterion: ratio in [2, 6] at every level.")
    # 6. routing ~0.2 below the oracle
    lv = [p for p in _levels(rows, algo, "routing") if row("oracle", p)]
    if not lv:
        add("routing_gap", "not measured", "needs routing and oracle at the same level")
    else:
        gaps = {p: diff(row("oracle", p), row("routing", p)) for p in lv}
        add("routing_gap",
            stats.combine_verdicts([stats.verdict_within(g, 0.1, 0.3) for g in gaps.values()]),
            "oracle - routing at equal env steps: " + "; ".join(
                f"{_pct(p)} {_ci(g)}" for p, g in gaps.items())
            + ". Criterion: the gap's interval inside [0.1, 0.3] at every level (not an "
            "asymptote unless the runs have converged)."
            + _seeds_note(*(row(m, p) for p in lv for m in ("oracle", "routing"))))
    # 7-8. beyond the paper: routing against a baseline at every level <= 5%
    for cid, other in (("routing_vs_early_stop", "naive_early_stop"),
                       ("routing_vs_placebo", "routing_placebo")):
        lv = [p for p in _levels(rows, algo, "routing") if p <= 0.05 and row(other, p)]
        if not lv:
            add(cid, "not measured", f"needs routing and {other} at <= 5%")
            continue
        ds = {p: diff(row("routing", p), row(other, p)) for p in lv}
        add(cid, stats.combine_verdicts([stats.verdict_above(d, 0.0) for d in ds.values()]),
            "; ".join(f"{_pct(p)}: routing {_fmt(row('routing', p))} vs {other} "
                      f"{_fmt(row(other, p))}, difference {_ci(d)}" for p, d in ds.items())
            + f". Criterion: routing - {other} above 0 at every level <= 5%."
            + _seeds_note(*(row(m, p) for p in lv for m in ("routing", other))))
    return out


def claims_markdown(claims: Sequence[dict[str, str]]) -> str:
    lines = ["| claim (PAPER.md §2) | algo | status | our numbers |", "|---|---|---|---|"]
    for c in claims:
        evidence = c["evidence"].replace("|", "\\|")
        lines.append(f"| {c['claim']} | {c['algo']} | **{c['status']}** | {evidence} |")
    return "\n".join(lines) + "\n\n" + VERDICT_RULE + "\n"


def _nearest(levels: Sequence[float], target: float) -> float:
    return min(levels, key=lambda p: abs(math.log(p) - math.log(target)) if p > 0 else math.inf)


def write_report(records: Sequence[dict[str, Any]], out_dir: str | Path, *,
                 curve_oversight: float | None = None, prefix: str = "") -> list[Path]:
    """Write ``table.md`` (tables + claims), ``summary.json`` and the figures; return paths."""
    import json

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = summarize(records)
    written: list[Path] = []
    md = []
    for algo in sorted({r["algo"] for r in rows}):
        written += plot_return_vs_oversight(rows, algo, out_dir / f"{prefix}return_vs_oversight_{algo}")
        levels = sorted({r["oversight"] for r in rows if r["algo"] == algo})
        p = curve_oversight if curve_oversight is not None else _nearest(levels, 0.1)
        tag = f"{100 * p:g}pct".replace(".", "_")
        written += plot_learning_curves(records, algo, p, out_dir / f"{prefix}curves_{algo}_{tag}")
        if len(levels) > 1:
            written += plot_learning_curves_all_levels(
                records, algo, levels, out_dir / f"{prefix}curves_{algo}_all_levels")
        if any(r["method"] in ("naive", "routing") for r in rows if r["algo"] == algo):
            written += plot_ghost_closer_unseen(rows, algo,
                                                out_dir / f"{prefix}ghost_closer_unseen_{algo}")
        improvement = improvement_markdown(rows, algo)
        trend = trend_markdown(records, algo)
        md.append(f"## {algo}\n\n" + markdown_table(rows, algo) + "\n"
                  + (improvement + "\n" if improvement else "")
                  + (trend + "\n" if trend else "")
                  + claims_markdown(check_claims(rows, records, algo)))
    table = out_dir / "table.md"
    table.write_text("\n".join(md))
    summary = out_dir / "summary.json"
    improvements = [i for algo in sorted({r["algo"] for r in rows})
                    for i in improvement_rows(rows, algo)]
    summary.write_text(json.dumps({"rows": rows, "probability_of_improvement": improvements,
                                   "method": stats.METHOD_NOTE}, indent=2))
    return [table, summary, *written]
