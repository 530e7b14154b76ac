"""The demo: routing against naive reward and data filtering at equal env steps, several seeds at
once, with learning curves, where the paper's effect has had the budget to show.

:func:`run_demo` trains each method's seeds as one group (:class:`~oversight_gr.rl.trainer.
Trainer` over R runs), the groups spread over worker processes, and returns the summary that
``oversight-gr demo`` prints and writes as ``summary.json``::

    {"methods": {"routing": {"env_steps": N, "steered_return": [one value per seed],
                             "p_ghost_closer_unseen": [...], "wall_seconds": s}, ...},
     "settings": {...}, "seeds": [...], "gap": {...}, "wall_seconds": s, "workers": n}

The seeds are ``first_seed .. first_seed + seeds - 1``, never chosen ones.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from oversight_gr.rl.run import run_training, steered_mode
from oversight_gr.rl.trainer import TrainConfig
from oversight_gr.rl.sweep import STANDARD_ROUTING_TRAIN
from oversight_gr.runner import DEFAULT_WORKERS

__all__ = ["DEMO_METHODS", "DEMO_SETTINGS", "DEMO_METHOD_SETTINGS", "demo_configs", "run_demo",
           "gap_summary"]

DEMO_METHODS = ("routing", "naive", "filtering")
#: the demo's embedded default (TrainConfig fields applied identically to every method), chosen
#: from the ``standard`` sweep's learning curves (docs/RESULTS.md, "oversight_sweep_standard",
#: 5 seeds, routing at sharpness 6): at p = 0.01 its seed means pass 2M env steps at about 0.50
#: for routing (0.40 at 1M, 0.56 at 2.5M), 0.04 for naive (its exploit formed from the start)
#: and 0.20 for filtering (0.12 / 0.25), a gap of about 0.3; at p = 0.025, the demo's level
#: before 2026-12-07, about 0.17, with naive's exploit still forming on some seeds (on an Intel
#: Xeon with AMX routing was ahead on 3 of fresh seeds 5-9 there: docs/RESULTS.md, section
#: "demo_seeds_fresh_p025")
DEMO_SETTINGS: dict[str, Any] = {"oversight_prob": 0.01, "total_env_steps": 2_000_000,
                                 "num_envs": 512, "hidden": 64, "gate_balance": True}
#: settings of one method only, as the ``standard`` preset's ``method_train`` (the baselines do
#: not read them): routing's unlabelled sharpness 6, the standard preset's (docs/RESULTS.md,
#: "routing_sharpness": +0.106 over PPO's default 3 at 1% on 10 seeds)
DEMO_METHOD_SETTINGS: dict[str, dict[str, Any]] = {"routing": STANDARD_ROUTING_TRAIN}
#: learning-curve points per run (eval_every = total_env_steps / CURVE_POINTS unless given)
CURVE_POINTS = 6
#: seeds per method: the demo's claim (gap, seeds ahead) needs at least five to carry on any CPU
#: (fp32 kernels differ between CPUs, so each machine draws its own trajectories)
DEMO_SEEDS = 5


def demo_configs(method: str, seeds: list[int], **settings: Any) -> list[TrainConfig]:
    """One method's runs: the demo settings, overridden by ``settings``, one config per seed."""
    fields = {**DEMO_SETTINGS, **DEMO_METHOD_SETTINGS.get(method, {}), **settings}
    fields.setdefault("eval_every", max(fields["total_env_steps"] // CURVE_POINTS, 1))
    return [TrainConfig(method=method, seed=s, **fields) for s in seeds]


def _train_group(cfgs: list[TrainConfig], run_dir: str | None) -> list[dict[str, Any]]:
    records = run_training(cfgs if len(cfgs) > 1 else cfgs[0], run_dir, tensorboard=True)
    records = records if isinstance(records, list) else [records]
    for r in records:
        r.pop("trainer", None)
    return records


def _schedule(methods: tuple[str, ...], workers: int) -> list[list[str]]:
    """Methods per worker, routing (the slowest per env step) alone where there are workers
    enough, the others sharing the rest."""
    if workers <= 1 or len(methods) == 1:
        return [list(methods)]
    lanes: list[list[str]] = [[] for _ in range(min(workers, len(methods)))]
    rest = [m for m in methods if m != "routing"]
    if "routing" in methods:
        lanes[0].append("routing")
        others = lanes[1:] or lanes
    else:
        others = lanes
    for i, m in enumerate(rest):
        others[i % len(others)].append(m)
    return [lane for lane in lanes if lane]


def _lane(methods: list[str], seeds: list[int], settings: dict, run_dir: str | None
          ) -> dict[str, list[dict[str, Any]]]:
    out = {}
    for m in methods:
        d = None if run_dir is None else str(Path(run_dir) / m)
        out[m] = _train_group(demo_configs(m, seeds, **settings), d)
    return out


def gap_summary(steered: dict[str, list[float]]) -> dict[str, Any]:
    """Routing against the better baseline (by mean): the mean gap with its 95% Welch interval
    over seeds (the methods' runs are independent), the per-seed gaps against the per-seed best
    baseline, and how many seeds routing is ahead of both baselines on."""
    from oversight_gr.stats import welch_interval

    base = {m: v for m, v in steered.items() if m != "routing"}
    mean = {m: sum(v) / len(v) for m, v in steered.items()}
    best = max(base, key=lambda m: mean[m])
    per_seed = [r - max(b[i] for b in base.values()) for i, r in enumerate(steered["routing"])]
    ci = welch_interval(steered["routing"], steered[best])
    return {"best_baseline": best, "mean_gap": mean["routing"] - mean[best],
            "interval": [ci.lo, ci.hi], "per_seed_gap": per_seed,
            "ahead": sum(g > 0 for g in per_seed), "seeds": len(per_seed)}


def run_demo(seeds: int = DEMO_SEEDS, first_seed: int = 0, run_dir: str | Path | None = None,
             workers: int = DEFAULT_WORKERS, methods: tuple[str, ...] = DEMO_METHODS,
             **settings: Any) -> dict[str, Any]:
    """Train ``methods`` x ``seeds`` at the demo settings (overridden by ``settings``); returns
    the summary (see the module docstring) and, with ``run_dir``, writes each method's group
    there. ``summary["records"]`` holds every run's record."""
    if "routing" not in methods or len(set(methods)) < 2:
        raise ValueError(f"the demo compares routing with baselines; methods {methods} need "
                         "routing and at least one other")
    seed_list = list(range(first_seed, first_seed + seeds))
    for m in methods:  # every config is checked before any compute
        demo_configs(m, seed_list, **settings)
    t0 = time.perf_counter()
    lanes = _schedule(tuple(methods), workers)
    run_dir = None if run_dir is None else str(run_dir)
    records: dict[str, list[dict[str, Any]]] = {}
    if len(lanes) == 1:
        records.update(_lane(lanes[0], seed_list, settings, run_dir))
    else:
        # spawn, as the sweep and the lm grid: a forked child of a process whose torch thread
        # pools have started (a notebook that trained before) can hang
        with ProcessPoolExecutor(max_workers=len(lanes),
                                 mp_context=mp.get_context("spawn")) as pool:
            futures = [pool.submit(_lane, lane, seed_list, settings, run_dir) for lane in lanes]
            for f in futures:
                records.update(f.result())
    wall = time.perf_counter() - t0
    summary_methods = {}
    for m in methods:
        recs = records[m]
        ev = [r["metrics"][steered_mode(m)] for r in recs]
        summary_methods[m] = {
            "env_steps": recs[0]["env_steps"],
            "steered_return": [e["stepwise_return"] for e in ev],
            "p_ghost_closer_unseen": [e["p_ghost_closer_unseen"] for e in ev],
            "wall_seconds": recs[0]["wall_seconds"],
        }
    cfg = demo_configs("routing", seed_list[:1], **settings)[0]
    shown = {k: getattr(cfg, k) for k in (*DEMO_SETTINGS, "eval_every", "algo")}
    shown.update({f"{m} {k}": getattr(demo_configs(m, seed_list[:1], **settings)[0], k)
                  for m in methods for k in DEMO_METHOD_SETTINGS.get(m, {})})
    return {
        "methods": summary_methods,
        "settings": shown,
        "seeds": seed_list,
        "gap": gap_summary({m: v["steered_return"] for m, v in summary_methods.items()}),
        "wall_seconds": wall,
        "workers": len(lanes),
        "records": [r for m in methods for r in records[m]],
    }

