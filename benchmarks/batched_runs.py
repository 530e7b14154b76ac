"""Many runs in one process: R runs trained one after another (``Trainer(cfg)``) versus as one
group (``Trainer([cfg, ...])``), same configs, same env steps, on one device.

Two settings: the quick preset's network (PPO, hidden 64, 256 envs x 32 steps) and the paper
preset's (REINFORCE paper config, hidden 256, 512 envs x 32 steps). For each, routing (the MoE)
and naive (the single-expert network that filtering and oracle share): seconds per update per
run, sequential and batched, and the speed-up. Then the projection for the paper preset
(4 methods x 8 levels x 5 seeds, 20,000 updates per run, one batched group of 40 per method):
the batched per-update time of a group (scaled from R to 40 runs when R < 40: per-run cost is
flat in R once the device is busy, an assumption stated in the output) times 20,000 updates,
summed over the 4 groups, plus the evaluations (41 per run: every 500 updates and the end).

    python benchmarks/batched_runs.py                      # CPU, 1 thread, writes docs/RESULTS.md
    python benchmarks/batched_runs.py --device cuda --runs 40 --sequential-runs 4 \\
        --precision fp32 bf16 --section batched_runs_gpu  # one GPU, a few minutes
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_doc import cpu_name, update_section  # noqa: E402

from oversight_gr.rl.run import evaluate_all  # noqa: E402
from oversight_gr.rl.trainer import TrainConfig, Trainer  # noqa: E402
from oversight_gr.rl.sweep import PAPER_LEVELS, PAPER_UPDATES, PRESETS  # noqa: E402

SETTINGS = {
    "quick": dict(algo="ppo", hidden=64, num_envs=256, rollout_steps=32),
    "paper": dict(algo="reinforce", hidden=256, num_envs=512, rollout_steps=32, bootstrap=False,
                  gate_input="full"),
}
PAPER_GROUP = len(PAPER_LEVELS) * PRESETS["paper"]["seeds"]  # runs per method: 8 levels x 5 seeds
PAPER_METHODS = PRESETS["paper"]["methods"]
PAPER_EVALS = PAPER_UPDATES // 500 + 1  # eval_every = 500 updates, and the final evaluation


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def configs(setting: str, method: str, runs: int, args, precision: str) -> list[TrainConfig]:
    """R runs as a paper sweep lays them out: the 8 oversight levels of seed 0, then seed 1..."""
    lv = PAPER_LEVELS
    return [TrainConfig(method=method, seed=i // len(lv), oversight_prob=lv[i % len(lv)],
                        device=args.device, threads=args.threads, precision=precision,
                        **SETTINGS[setting]) for i in range(runs)]


def timed(trainer, updates: int) -> float:
    """Seconds per update after one warm-up update."""
    trainer.train_update()
    sync(trainer.device)
    t0 = time.perf_counter()
    for _ in range(updates):
        trainer.train_update()
    sync(trainer.device)
    return (time.perf_counter() - t0) / updates


def eval_seconds(cfg: TrainConfig, trainer: Trainer) -> float:
    """One evaluation of a run (every steering mode the record reports), as a sweep does it."""
    cfg = TrainConfig(**{**cfg.to_dict(), "eval_envs": 512})
    t0 = time.perf_counter()
    evaluate_all(cfg, trainer.policy, trainer.device)
    sync(trainer.device)
    return time.perf_counter() - t0


def sweep_command(method: str, batch_runs: int, env_steps: int, out: str) -> list[str]:
    """The sweep CLI for 8 quick-preset runs (hidden 64, 256 envs, PPO; 4 oversight levels x 2
    seeds), evaluation included, one worker on one thread."""
    return [sys.executable, "-m", "oversight_gr.cli", "sweep", "--preset", "quick", "--methods",
            method, "--oversight", "0.01", "0.05", "0.1", "0.3", "--seeds", "2",
            "--total-env-steps", str(env_steps), "--eval-every", str(env_steps // 2),
            "--workers", "1", "--threads", "1", "--batch-runs", str(batch_runs), "--no-report",
            "--quiet", "--out", out]


def whole_sweep(args) -> list[str]:
    """Wall time of the whole sweep command, 8 runs one by one and as one group of 8,
    alternating (one by one, group, group, one by one) to spread the machine's load."""
    rows = []
    for method in args.sweep_methods:
        walls: dict[int, list[float]] = {0: [], 8: []}
        for batch in (0, 8, 8, 0)[: 2 * args.sweep_repeats]:
            with tempfile.TemporaryDirectory() as out:
                t0 = time.perf_counter()
                subprocess.run(sweep_command(method, batch, args.sweep_env_steps, out), check=True,
                               stdout=subprocess.DEVNULL)
                walls[batch].append(time.perf_counter() - t0)
        steps = 8 * args.sweep_env_steps
        seq, grp = min(walls[0]), min(walls[8])
        rows.append(f"| {method} | {seq:.1f} | {steps / seq:,.0f} | {grp:.1f} | "
                    f"{steps / grp:,.0f} | {seq / grp:.2f}x |")
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--runs", type=int, default=8,
                    help="runs R per batched group (the paper preset's groups hold 40)")
    ap.add_argument("--sequential-runs", type=int, default=None,
                    help="time only this many of the R runs one by one (the sequential time is "
                    "their mean x R); default: all R")
    ap.add_argument("--updates", type=int, default=3, help="timed updates (after one warm-up)")
    ap.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    ap.add_argument("--methods", nargs="+", default=["routing", "naive"])
    ap.add_argument("--precision", nargs="+", default=["fp32"])
    ap.add_argument("--section", default="batched_runs", help="docs/RESULTS.md section")
    ap.add_argument("--tiny", action="store_true", help="tiny networks, 2 runs, one timed "
                    "update, no whole-sweep timing: a dry run (benchmarks/gpu_suite.py --tiny)")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--sweep-methods", nargs="*", default=["naive", "routing"],
                    help="also time the whole sweep command (8 runs, --batch-runs 8 vs 0) for "
                    "these methods (none: skip)")
    ap.add_argument("--sweep-env-steps", type=int, default=256 * 32 * 16,
                    help="env steps per run of the whole-sweep timing")
    ap.add_argument("--sweep-repeats", type=int, default=2, choices=(1, 2))
    args = ap.parse_args()
    if args.tiny:
        for setting in SETTINGS.values():
            setting.update(num_envs=16, rollout_steps=4, hidden=16)
        args.runs, args.updates, args.sweep_methods = 2, 1, []
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    R = args.runs
    n_seq = min(args.sequential_runs or R, R)
    load_before = os.getloadavg()
    t_start = time.perf_counter()
    rows, per_update, sequential, evals = [], {}, {}, {}
    for setting in args.settings:
        for precision in args.precision:
            for method in args.methods:
                cfgs = configs(setting, method, R, args, precision)
                seq = []
                for cfg in cfgs[:n_seq]:
                    trainer = Trainer(cfg)
                    seq.append(timed(trainer, args.updates))
                    if setting == "paper" and cfg is cfgs[0]:
                        evals[(precision, method)] = eval_seconds(cfg, trainer)
                    del trainer
                seq_run = sum(seq) / len(seq)  # seconds per update per run, one at a time
                bt = Trainer(cfgs)
                bat = timed(bt, args.updates)
                del bt
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                per_update[(setting, precision, method)] = bat
                sequential[(setting, precision, method)] = seq_run
                rows.append(f"| {setting} | {precision} | {method} | {R} | {seq_run:.4f} | "
                            f"{bat / R:.4f} | {bat:.3f} | {seq_run * R / bat:.1f}x |")
                print(rows[-1], flush=True)
    sweep_rows = whole_sweep(args) if args.sweep_methods and device.type == "cpu" else []
    load_after = os.getloadavg()
    head = ("| network | precision | method | runs R | sequential s/update/run | batched "
            "s/update/run | batched s/update (group) | speed-up |\n"
            "|---|---|---|---|---|---|---|---|")
    lines = []
    if "paper" in args.settings:
        scale = PAPER_GROUP / R
        for precision in args.precision:
            if not {"routing", "naive"} <= set(args.methods):
                continue
            # filtering and oracle train the same single-expert network as naive
            net = {m: "routing" if m == "routing" else "naive" for m in PAPER_METHODS}
            train_s = sum(per_update[("paper", precision, net[m])]
                          for m in PAPER_METHODS) * scale * PAPER_UPDATES
            seq_s = sum(sequential[("paper", precision, net[m])]
                        for m in PAPER_METHODS) * PAPER_GROUP * PAPER_UPDATES
            ev = {m: evals[(precision, net[m])] for m in PAPER_METHODS}
            eval_s = sum(ev.values()) * PAPER_GROUP * PAPER_EVALS
            how = (f"the measured group time x {PAPER_GROUP}/{R}" if R != PAPER_GROUP
                   else "the measured group time")
            lines.append(
                f"- **Projected `paper` preset on this device, {precision}**: training "
                f"{train_s / 3600:.2f} h = {PAPER_UPDATES:,} updates x sum over the "
                f"{len(PAPER_METHODS)} method groups of {PAPER_GROUP} runs ({how}; filtering "
                f"and oracle timed as naive, same network) + evaluation {eval_s / 3600:.2f} h "
                f"({PAPER_EVALS} evaluations x {len(PAPER_METHODS) * PAPER_GROUP} runs, "
                f"{ev['routing']:.2f} s per routing evaluation (3 steering modes), "
                f"{ev['naive']:.2f} s per single-expert one) = "
                f"**{(train_s + eval_s) / 3600:.2f} h**. One run after another on the same "
                f"device: {(seq_s + eval_s) / 3600:.1f} h.")
    if device.type == "cuda":
        where = torch.cuda.get_device_name(device)
    else:
        where = f"{cpu_name()}, {args.threads} thread(s)"
    cmd = "python benchmarks/batched_runs.py " + " ".join(sys.argv[1:])
    busy = max(load_before[0], load_after[0]) > 0.75 * (os.cpu_count() or 1)
    notes = [
        "Batching removes per-operation overhead (Python, op dispatch, and on a GPU kernel "
        "launches and host round trips), not arithmetic: on a CPU the matrix multiplies of "
        "the paper's network (hidden 256, 16,384 samples per run per update) dominate, so "
        "the gain there is small; the small quick-preset network gains more; a GPU, where "
        "one run leaves the device mostly idle, is where it is meant to pay.",
    ]
    if busy:
        notes.append("Other jobs were running during this measurement (1-min load above "
                     "the core count): the absolute times are inflated and the ratios noisy "
                     "(about +-30% between repeats).")
    if device.type != "cuda":
        notes.append(
            "Not yet measured on a GPU. To measure there (writes its own section): "
            "`python benchmarks/batched_runs.py --device cuda --runs 40 --sequential-runs 4 "
            "--precision fp32 bf16 --section batched_runs_gpu` (a few minutes); then the "
            "preset itself: `oversight-gr sweep --preset paper --device cuda --batch-runs 40 "
            "--out runs/paper_gpu` (adding `--workers 4` "
            "runs the 4 method groups as 4 processes sharing the GPU, which may hide launch "
            "overhead: compare both).")
    md = "\n".join([
        "## Batched runs: many runs in one process (`Trainer([cfg, ...])`)",
        "",
        f"`{cmd.strip()}` on {where} (torch {torch.__version__}, {platform.python_version()}), "
        f"{time.strftime('%Y-%m-%d')}, {time.perf_counter() - t_start:.0f} s. Load average "
        f"{load_before[0]:.1f} before and {load_after[0]:.1f} after (1-min; the machine has "
        f"{os.cpu_count()} cores, other jobs may have been running).",
        "",
        f"Each row trains the same R runs (seeds x oversight levels {PAPER_LEVELS[:min(R, 8)]}"
        f"{'...' if R > 8 else ''}) for {args.updates} updates after one warm-up update, "
        "one after another with `Trainer(cfg)` and together as one group, `Trainer(cfgs)`: the same configs "
        "and env steps. Seconds per update include the rollout and the learning step. "
        "`quick`: PPO, hidden 64, 256 envs x 32 steps (the quick preset's network); `paper`: "
        "REINFORCE paper config, hidden 256, 512 envs x 32 steps."
        + (f" Sequential times: the mean over the first {n_seq} runs (every run costs the "
           "same), times R." if n_seq < R else ""),
        "",
        head,
        *rows,
        "",
        *lines,
        "",
        *([f"**The whole sweep command**, evaluation and process start included: "
           f"`{' '.join(sweep_command('METHOD', 8, args.sweep_env_steps, 'OUT')[1:])}` "
           f"against the same with `--batch-runs 0` (8 runs one after another), the best of "
           f"{args.sweep_repeats} alternated repeats each:", "",
           "| method | one by one: s | env steps/s | group of 8: s | env steps/s | speed-up |",
           "|---|---|---|---|---|---|", *sweep_rows, ""] if sweep_rows else []),
        *[f"{n}\n" for n in notes],
        "A sweep uses it with `--batch-runs N` (e.g. `oversight-gr sweep --preset paper "
        "--device cuda --batch-runs 40`).",
    ])
    print(md)
    if not args.no_write:
        print(f"wrote {update_section(args.section, md)}")


if __name__ == "__main__":
    main()
