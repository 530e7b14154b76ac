"""Env steps per second of OversightGrid (native vector env, flat ids, raw rules) and memory.

    python benchmarks/env_throughput.py [--device cpu|cuda] [--seconds 2] [--envs 512 4096 65536]
        [--memory-sizes 5 8 10 12 20 64 128] [--baseline-rev REV]

Random actions, torch at one thread. Three paths per batch size:

* ``vector env``: ``gym.make_vec("OversightGrid-v0", num_envs=n)`` stepped with numpy actions
  (what an RL library sees: validation, numpy conversion, info dicts);
* ``flat vector env``: the same for ``OversightGrid-Flat-v0`` (flat observations);
* ``raw rules``: ``GridRules.step`` with torch actions already on the device (what the trainer
  sees).

Memory: peak resident memory of a fresh process that imports the package, makes
``gym.make("OversightGrid-v0", size=s)`` and ``gym.make_vec(..., num_envs=64, size=s)`` and
steps each 50 times, per grid size ``s``.

``--baseline-rev REV`` (a git revision of this repository) also times that revision's
``GridRules.step`` (its ``oversight_gr/envs/core.py``) against this tree's, interleaved in one
process at sizes 5 and 8, and measures its memory next to this tree's; both go into the
results file.

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
import tempfile
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


# Run in a fresh process: imports first, then the peak resident memory is reset (Linux
# clear_refs) so that what is measured is what the rules take: 64 envs of the given size made,
# reset and stepped 50 times, with spurious marks on (their [B, C] state is the largest part).
MEMORY_PROBE = """
import importlib.util, sys, torch
path, size = sys.argv[1], int(sys.argv[2])
if path == "-":
    from oversight_gr.envs.core import GridRules
else:
    spec = importlib.util.spec_from_file_location("baseline_core", path)
    core = importlib.util.module_from_spec(spec)
    sys.modules["baseline_core"] = core
    spec.loader.exec_module(core)
    GridRules = core.GridRules
torch.set_num_threads(1)

def kib(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])

base = kib("VmRSS:")
open("/proc/self/clear_refs", "w").write("5")
rules = GridRules(64, size=size, spurious_prob=0.1, seed=0)
rules.reset()
for _ in range(50):
    rules.step(torch.zeros(64, dtype=torch.long))
print(kib("VmHWM:") - base)
"""


def rules_peak_mib(size: int, core_path: str | None = None) -> float:
    """Resident memory (MiB) the rules of ``size`` add at their peak, in a fresh process
    (``core_path``: a baseline core.py; default this tree's)."""
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, core_path or "-", str(size)],
                         capture_output=True, text=True, check=True, timeout=600)
    return int(out.stdout.split()[-1]) / 1024


def load_core(path: str):
    """Import a core.py from ``path`` as its own module (the A/B baseline)."""
    spec = importlib.util.spec_from_file_location("baseline_core", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["baseline_core"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def core_at(rev: str) -> str:
    """``oversight_gr/envs/core.py`` at git revision ``rev``, written to a temporary file."""
    root = Path(__file__).resolve().parent.parent
    text = subprocess.run(["git", "-C", str(root), "show", f"{rev}:oversight_gr/envs/core.py"],
                          capture_output=True, text=True, check=True).stdout
    fd, path = tempfile.mkstemp(prefix="core_", suffix=".py")
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    return path


def rev_hash(rev: str) -> str:
    root = Path(__file__).resolve().parent.parent
    return subprocess.run(["git", "-C", str(root), "rev-parse", "--short", rev],
                          capture_output=True, text=True, check=True).stdout.strip()


def compare_cores(path: str, envs: list[int], device: torch.device, seconds: float,
                  rounds: int = 3) -> list[tuple[int, int, float, float]]:
    """Interleave this tree's rules with ``path``'s, ``rounds`` times per cell; return rows
    (size, envs, this tree's and the baseline's best CPU-time rate)."""
    baseline = load_core(path).GridRules
    print(f"raw rules, this tree / baseline (best CPU-time rate of {rounds} interleaved rounds):")
    rows = []
    for size in (5, 8):
        for n in envs:
            new, old = 0.0, 0.0
            for _ in range(rounds):
                old = max(old, bench_rules(n, device, seconds, baseline, size)[1])
                new = max(new, bench_rules(n, device, seconds, GridRules, size)[1])
            rows.append((size, n, new, old))
            print(f"  size {size}, {n:>6} envs: {new / 1e6:6.2f} / {old / 1e6:6.2f} M steps/s "
                  f"= {new / old:.3f}", flush=True)
    return rows


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
    ap.add_argument("--memory-sizes", type=int, nargs="*", default=[5, 8, 10, 12, 20, 64, 128],
                    help="grid sizes whose peak memory is measured (default 5 8 10 12 20 64 128)")
    ap.add_argument("--baseline-memory-max-size", type=int, default=12,
                    help="largest size whose memory is measured with --baseline-rev (the old "
                         "tables grew as size^6: 24 GB at size 20); default 12")
    ap.add_argument("--baseline-rev", metavar="REV",
                    help="also A/B this tree's GridRules against git revision REV's")
    ap.add_argument("--no-write", action="store_true", help="print only; leave docs/RESULTS.md")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        ap.error("--device cuda but torch sees no CUDA device")

    baseline_core = core_at(args.baseline_rev) if args.baseline_rev else None
    ab = compare_cores(baseline_core, args.envs, device, args.seconds) if baseline_core else []
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
        print("peak memory the rules add, MiB (this tree / baseline)")
        for size in args.memory_sizes:
            old = None
            if baseline_core and size <= args.baseline_memory_max_size:
                old = rules_peak_mib(size, baseline_core)
            memory.append((size, rules_peak_mib(size), old))
            print(f"  size {size:>3}: {memory[-1][1]:8.1f} / "
                  f"{'not run' if old is None else f'{old:.1f}'}", flush=True)

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
    if ab:
        lines += [
            "",
            f"Raw rules against `{args.baseline_rev}`"
            + ("" if rev_hash(args.baseline_rev).startswith(args.baseline_rev)
               else f" ({rev_hash(args.baseline_rev)})")
            + " (`--baseline-rev`): the best CPU-time "
            "rate of 3 rounds, the two interleaved in one process, M steps/s:",
            "",
            "| size | envs | this tree | baseline | ratio |",
            "|---:|---:|---:|---:|---:|",
            *(f"| {s} | {n} | {a / 1e6:.2f} | {b / 1e6:.2f} | {a / b:.3f} |" for s, n, a, b in ab),
        ]
    if memory:
        baseline = baseline_core is not None
        lines += [
            "",
            "Memory: the resident memory that `GridRules(64, size=s, spurious_prob=0.1)` adds at "
            "its peak while made, reset and stepped 50 times, in a fresh process after the "
            "imports, MiB (sizes are bounded to [2, 128]; tables indexed by state or layout, "
            "which grow as size^6, exist only up to size 10)"
            + (f"; *before*: the same with `{args.baseline_rev}`'s rules "
               f"(run up to size {args.baseline_memory_max_size})" if baseline else "") + ":",
            "",
            "| size | MiB |" + (" before, MiB |" if baseline else ""),
            "|---:|---:|" + ("---:|" if baseline else ""),
            *(f"| {s} | {m:.1f} |" + (f" {'-' if o is None else f'{o:.1f}'} |" if baseline
                                      else "") for s, m, o in memory),
        ]
    if baseline_core:
        os.unlink(baseline_core)
    if not args.no_write:
        path = update_section("env_throughput", "\n".join(lines))
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
