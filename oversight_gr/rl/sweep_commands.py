"""``oversight-gr sweep``: argparse and printing for :mod:`oversight_gr.rl.sweep`.

A module beside ``sweep.py`` rather than a ``sweep/`` package: every import of
``oversight_gr.rl.sweep`` (benchmarks, tests, user code) stays as it is, and the split is the one
the other domains use (``agents/commands.py``, ``vision/commands.py``, ``lm/commands.py``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from oversight_gr.rl import plots
from oversight_gr.config import add_arguments, from_arguments
from oversight_gr.interrupts import Interrupted
from oversight_gr.runner import watch_progress
from oversight_gr.rl.sweep import (
    PRESETS,
    SweepConfig,
    build_specs,
    finished_records,
    pending_specs,
    run_sweep,
    steered_metrics,
)

__all__ = ["add_sweep_arguments", "sweep_from_arguments", "command", "register"]


def add_sweep_arguments(parser: argparse.ArgumentParser) -> None:
    add_arguments(parser, SweepConfig)
    parser.add_argument("--report", action=argparse.BooleanOptionalAction, default=True,
                        help="write the table and figures to OUT/report after the runs "
                        "(default: on)")
    parser.add_argument("--curve-oversight", type=float, default=None,
                        help="oversight level of the learning-curve figure (default: the "
                        "level nearest 0.1)")
    parser.add_argument("--dry-run", action="store_true",
                        help="list the runs and how many are pending, run nothing")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def sweep_from_arguments(args: argparse.Namespace) -> SweepConfig:
    return from_arguments(SweepConfig, args)


def command(args: argparse.Namespace) -> int:
    """``oversight-gr sweep``: run (or resume) a sweep, then write its report."""
    sweep = sweep_from_arguments(args)
    specs = build_specs(sweep)
    if args.dry_run:
        pending = {s.key for s in pending_specs(sweep.out, specs)}
        for s in specs:
            print(f"{s.key}  {'pending' if s.key in pending else 'done   '}  {s.label}")
        print(f"{len(pending)} of {len(specs)} runs pending; results in {sweep.out}")
        return 0
    from tqdm import tqdm

    bar = tqdm(total=len(specs), unit="run", disable=args.quiet, dynamic_ncols=True)
    failed, elsewhere = [], []

    def on_start(n_pending: int, n_total: int) -> None:
        batched = f", batched groups of <= {sweep.batch_runs}" if sweep.batch_runs else ""
        bar.write(f"sweep {sweep.preset}: {n_total} runs, {n_total - n_pending} already done, "
                  f"backend {sweep.backend} x{sweep.workers}{batched}; records in "
                  f"{sweep.out}/records")

    t0 = time.perf_counter()

    def show_steps(done: int, total: int) -> None:  # a batched group ends at once: show steps
        bar.set_description_str(f"{done / 1e6:.1f}M of {total / 1e6:.1f}M env steps in "
                                "flight" if total else "", refresh=True)

    stored = []
    try:
        with watch_progress(sweep.out, show_steps, enabled=not args.quiet):
            for outcome in run_sweep(sweep, specs, on_start=on_start):
                bar.update(1)
                if outcome.status in ("done", "skipped"):
                    stored.append(outcome)
                if outcome.status == "failed":
                    failed.append(outcome)
                    bar.write(f"FAILED {outcome.spec.label}: {outcome.error.splitlines()[0]}")
                elif outcome.status == "claimed":
                    elsewhere.append(outcome)
                    bar.write(f"left to another sweep: {outcome.spec.label} ({outcome.error})")
                elif outcome.status == "done":
                    ret = steered_metrics(outcome.record)["stepwise_return"]
                    bar.set_postfix_str(f"{outcome.spec.label} return {ret:.3f}")
    except KeyboardInterrupt:
        folder = "OUT/runs" if sweep.keep_checkpoints else "OUT/work"
        kept = (f"their checkpoints in {folder} resume them" if sweep.checkpoint_every else
                "their progress is lost (--checkpoint-every N keeps it)").replace(
                    "OUT", str(sweep.out))
        raise Interrupted(f"sweep interrupted: {len(stored)} of {len(specs)} runs have records "
                          f"in {sweep.out}/records, which are kept; runs in flight were "
                          f"stopped and {kept}; the same command resumes") from None
    finally:
        bar.close()
    n_ok = len(specs) - len(failed) - len(elsewhere)
    print(f"{n_ok} of {len(specs)} runs done in {time.perf_counter() - t0:.0f} s "
          f"({len(failed)} failed, {len(elsewhere)} in progress in another process); records "
          f"in {sweep.out}/records", flush=True)
    if sweep.tensorboard:
        print(f"TensorBoard: tensorboard --logdir {Path(sweep.out) / 'tb'}")
    if args.report:
        found = list(finished_records(sweep.out, specs).values())
        written = plots.write_report(found, Path(sweep.out) / "report",
                                     curve_oversight=args.curve_oversight)
        for path in written:
            print(f"wrote {path}")
    return 1 if failed else 0


def register(subparsers) -> None:
    from oversight_gr.rl import sweep as sweep_module

    parser = subparsers.add_parser(
        "sweep",
        help="methods x oversight fractions x seeds, resumable, local pool or Ray",
        description=sweep_module.__doc__.split("\n\n")[0] + " Presets: " + ", ".join(
            f"{k} ({len(v['methods'])} methods x {len(v['oversight'])} levels x "
            f"{v['seeds']} seeds, {v['train']['total_env_steps']:,} env steps/run)"
            for k, v in PRESETS.items()),
    )
    add_sweep_arguments(parser)
    parser.set_defaults(func=command)
