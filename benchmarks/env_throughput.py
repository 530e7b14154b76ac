"""Env steps per second of OversightGrid (native vector env, flat ids, raw rules) and memory.

    python benchmarks/env_throughput.py [--device cpu|cuda] [--seconds 2] [--envs 512 4096 65536]
        [--memory-sizes 5 8 20 64 128] [--baseline-core FILE]

Random actions, torch at one thread. Three paths per batch size:

* ``vector env``: ``gym.make_vec("OversightGrid-v0", num_envs=n)`` stepped with numpy actions
  (what an RL library sees: validation, numpy conversion, info dicts);
* ``flat vector env``: the same for ``OversightGrid-Flat-v0`` (flat observations);
* ``raw rules``: ``GridRules.step`` with torch actions already on the device (what the trainer
  sees).

Memory: peak resident memory of a fresh process that imports the package, makes
``gym.make("OversightGrid-v0", size=s)`` and ``gym.make_vec(..., num_envs=64, size=s)`` and
steps each 50 times, per grid size ``s``.

``--baseline-core FILE`` (e.g. ``git show main:oversight_gr/envs/core.py > /tmp/core.py``) also
times that file's ``GridRules.step`` against this tree's, interleaved in one process at sizes 5
and 8, and prints the ratios (not written to the results file).

Prints the tables and writes them, with the command and the hardware, into docs/RESULTS.md
(section ``env_throughput``).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import shlex
import subprocess
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


def bench_vector_env(n: int, device: torch.device, seconds: float,
                     env_id: str = "OversightGrid-v0") -> tuple[float, float]:
    venv = gym.make_vec(env_id, num_envs=n, device=str(device))
    venv.reset(seed=0)
    bank = np.random.default_rng(0).integers(0, 4, (ACTION_BANK, n))
    wall, cpu = time_loop(lambda i: venv.step(bank[i % ACTION_BANK]), seconds, device)
    return n * wall, n * cpu


def bench_rules(n: int, device: torch.device, seconds: float, rules_class=GridRules,
                size: int = 5) -> tuple[float, float]:
    rules = rules_class(n, size=size, device=device, seed=0)
    rules.reset()
    gen = torch.Generator(device=device).manual_seed(0)
    bank = torch.randint(4, (ACTION_BANK, n), generator=gen, device=device)
    wall, cpu = time_loop(lambda i: rules.step(bank[i % ACTION_BANK]), seconds, device)
    return n * wall, n * cpu


MEMORY_PROBE = """
import resource, sys, gymnasium as gym, numpy as np, torch
import oversight_gr
torch.set_num_threads(1)
size = int(sys.argv[1])
env = gym.make("OversightGrid-v0", size=size)
env.reset(seed=0)
venv = gym.make_vec("OversightGrid-v0", num_envs=64, size=size)
venv.reset(seed=0)
for _ in range(50):
    env.step(env.action_space.sample())
    venv.step(np.zeros(64, dtype=np.int64))
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""
IMPORT_PROBE = """
import resource, gymnasium, numpy, torch
import oversight_gr
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def peak_rss_mib(code: str, *args: str) -> float:
    """Peak resident memory (MiB) of a fresh Python running ``code``."""
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         check=True, timeout=600)
    return int(out.stdout.split()[-1]) / 1024  # ru_maxrss is in KiB on Linux


def load_core(path: str):
    """Import a core.py from ``path`` as its own module (the A/B baseline)."""
    spec = importlib.util.spec_from_file_location("baseline_core", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_core"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def compare_cores(path: str, envs: list[int], device: torch.device, seconds: float,
                  rounds: int = 3) -> None:
    """Interleave this tree's rules with ``path``'s, ``rounds`` times per cell; print the
    ratio of the best CPU-time rates (this tree / baseline)."""
    baseline = load_core(path).GridRules
    print(f"raw rules, this tree / {path} (best CPU-time rate of {rounds} interleaved rounds):")
    for size in (5, 8):
        for n in envs:
            new, old = 0.0, 0.0
            for _ in range(rounds):
                old = max(old, bench_rules(n, device, seconds, baseline, size)[1])
                new = max(new, bench_rules(n, device, seconds, GridRules, size)[1])
            print(f"  size {size}, {n:>6} envs: {new / 1e6:6.2f} / {old / 1e6:6.2f} M steps/s "
                  f"= {new / old:.3f}", flush=True)


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
    ap.add_argument("--memory-sizes", type=int, nargs="*", default=[5, 8, 20, 64, 128],
                    help="grid sizes whose peak memory is measured (default 5 8 20 64 128)")
    ap.add_argument("--baseline-core", metavar="FILE",
                    help="also A/B this tree's GridRules against the core.py in FILE (printed)")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/RESULTS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA device")

    if args.baseline_core:
        compare_cores(args.baseline_core, args.envs, device, args.seconds)
    load = os.getloadavg()[0]
    cpu_col = device.type == "cpu"
    rows = []
    head = ["envs", "vector env", "flat vector env", "raw rules"]
    if cpu_col:
        head += ["vector env (CPU time)", "flat vector env (CPU time)", "raw rules (CPU time)"]
    print(" | ".join(f"{h:>21}" for h in head))
    for n in args.envs:
        vw, vc = bench_vector_env(n, device, args.seconds)
        fw, fc = bench_vector_env(n, device, args.seconds, "OversightGrid-Flat-v0")
        rw, rc = bench_rules(n, device, args.seconds)
        row = [n, vw / 1e6, fw / 1e6, rw / 1e6] + (
            [vc / 1e6, fc / 1e6, rc / 1e6] if cpu_col else [])
        rows.append(row)
        print(" | ".join([f"{n:>21}"] + [f"{x:>21.2f}" for x in row[1:]]), flush=True)
    memory = []
    if args.memory_sizes:
        base = peak_rss_mib(IMPORT_PROBE)
        print(f"peak memory, MiB (import alone: {base:.0f})")
        for size in args.memory_sizes:
            memory.append((size, peak_rss_mib(MEMORY_PROBE, str(size))))
            print(f"  size {size:>3}: {memory[-1][1]:.0f}", flush=True)

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
        "num_envs=n)` stepped with numpy actions; *flat vector env*: the same for "
        "`OversightGrid-Flat-v0`; *raw rules*: `GridRules.step` with torch "
        "actions on the device. Columns marked *CPU time* divide by this thread's CPU time "
        "instead of wall-clock time: on a shared machine they estimate what one free core does.",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---:|" * len(head),
        *("| " + " | ".join([str(r[0])] + [f"{x:.2f}" for x in r[1:]]) + " |" for r in rows),
    ]
    if memory:
        lines += [
            "",
            "Peak resident memory of a fresh process that imports the package (alone: "
            f"{base:.0f} MiB), then makes `gym.make(\"OversightGrid-v0\", size=s)` and "
            "`gym.make_vec(..., num_envs=64, size=s)` and steps each 50 times "
            "(sizes are bounded to [2, 128]; memory grows as size^2):",
            "",
            "| size | peak MiB |",
            "|---:|---:|",
            *(f"| {s} | {m:.0f} |" for s, m in memory),
        ]
    if not args.no_write:
        path = update_section("env_throughput", "\n".join(lines))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
