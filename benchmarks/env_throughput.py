"""Env steps per second of OversightGrid: the native vector env and the raw batched rules.

    python benchmarks/env_throughput.py [--device cpu|cuda] [--seconds 2] [--envs 512 4096 65536]

Random actions, torch at one thread. Two paths per batch size:

* ``vector env``: ``gym.make_vec("OversightGrid-v0", num_envs=n)`` stepped with numpy actions
  (what an RL library sees: validation, numpy conversion, info dicts);
* ``raw rules``: ``GridRules.step`` with torch actions already on the device (what the trainer
  sees).

Prints a table and writes it, with the command and the hardware, into docs/RESULTS.md
(section ``env_throughput``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_doc import cpu_name, update_section  # noqa: E402

import oversight_gr  # noqa: E402,F401  (registers the ids)
from oversight_gr.envs import GridRules  # noqa: E402

ACTION_BANK = 64  # pre-drawn action batches, cycled, so drawing actions is not timed
WINDOWS = 5  # each cell reports its fastest of this many time windows


def sync(device: torch.device) -> None:  # wait for queued GPU work
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_loop(step, seconds: float, device: torch.device, warmup: int = 20,
              windows: int = WINDOWS) -> tuple[float, float]:
    """Call ``step(i)`` for about ``seconds``; return calls per second of wall-clock time and
    per second of this thread's CPU time, each the best of ``windows`` equal time windows.

    On a shared machine the wall-clock rate counts the time other processes held the core;
    the CPU-time rate does not (it is what one free core would do, up to cache effects), but
    it does not see GPU work, so it is only meaningful on the CPU."""
    for i in range(warmup):
        step(i)
    sync(device)
    calls, best_wall, best_cpu = 0, 0.0, 0.0
    for _ in range(windows):
        start, cpu_start, done = time.perf_counter(), time.thread_time(), 0
        deadline = start + seconds / windows
        while True:
            for _ in range(20):
                step(calls)
                calls += 1
            done += 20
            sync(device)
            now = time.perf_counter()
            if now >= deadline:
                cpu = time.thread_time() - cpu_start
                best_wall = max(best_wall, done / (now - start))
                best_cpu = max(best_cpu, done / max(cpu, 1e-9))
                break
    return best_wall, best_cpu


def bench_vector_env(n: int, device: torch.device, seconds: float) -> tuple[float, float]:
    venv = gym.make_vec("OversightGrid-v0", num_envs=n, device=str(device))
    venv.reset(seed=0)
    bank = np.random.default_rng(0).integers(0, 4, (ACTION_BANK, n))
    wall, cpu = time_loop(lambda i: venv.step(bank[i % ACTION_BANK]), seconds, device)
    return n * wall, n * cpu


def bench_rules(n: int, device: torch.device, seconds: float) -> tuple[float, float]:
    rules = GridRules(n, device=device, seed=0)
    rules.reset()
    gen = torch.Generator(device=device).manual_seed(0)
    bank = torch.randint(4, (ACTION_BANK, n), generator=gen, device=device)
    wall, cpu = time_loop(lambda i: rules.step(bank[i % ACTION_BANK]), seconds, device)
    return n * wall, n * cpu


def hardware(device: torch.device) -> str:
    parts = [f"CPU {cpu_name()} ({os.cpu_count()} logical cores visible, torch threads 1)"]
    if device.type == "cuda":
        parts.append(f"GPU {torch.cuda.get_device_name(device)}")
    parts.append(f"torch {torch.__version__}, gymnasium {gym.__version__}, "
                 f"Python {platform.python_version()}")
    return "; ".join(parts)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    ap.add_argument("--seconds", type=float, default=2.0, help="seconds timed per table cell")
    ap.add_argument("--envs", type=int, nargs="+", default=[512, 4096, 65536],
                    help="batch sizes (default 512 4096 65536)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/RESULTS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA device")

    load = os.getloadavg()[0]
    cpu_col = device.type == "cpu"
    rows = []
    head = ["envs", "vector env", "raw rules"]
    if cpu_col:
        head += ["vector env (CPU time)", "raw rules (CPU time)"]
    print(" | ".join(f"{h:>21}" for h in head))
    for n in args.envs:
        vw, vc = bench_vector_env(n, device, args.seconds)
        rw, rc = bench_rules(n, device, args.seconds)
        row = [n, vw / 1e6, rw / 1e6] + ([vc / 1e6, rc / 1e6] if cpu_col else [])
        rows.append(row)
        print(" | ".join([f"{n:>21}"] + [f"{x:>21.2f}" for x in row[1:]]), flush=True)

    command = "python benchmarks/env_throughput.py " + shlex.join(sys.argv[1:] if argv is None
                                                                  else argv)
    lines = [
        "## Environment throughput",
        "",
        f"`{command.strip()}` ({datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC)",
        "",
        f"Hardware: {hardware(device)}. Device: `{device}`. Random actions; "
        f"{args.seconds:g} s per cell, the best of {WINDOWS} windows reported "
        f"(load average at start {load:.1f} on {os.cpu_count()} cores).",
        "",
        "Env steps per second, millions. *vector env*: `gym.make_vec(\"OversightGrid-v0\", "
        "num_envs=n)` stepped with numpy actions; *raw rules*: `GridRules.step` with torch "
        "actions on the device. Columns marked *CPU time* divide by this thread's CPU time "
        "instead of wall-clock time: on a shared machine they estimate what one free core does.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---:|" * len(head),
        *("| " + " | ".join([str(r[0])] + [f"{x:.2f}" for x in r[1:]]) + " |" for r in rows),
    ]
    if not args.no_write:
        path = update_section("env_throughput", "\n".join(lines))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
