"""Every GPU figure of the package from one command with a hard time budget, then merged into
docs/RESULTS.md on another machine.

GPU time is short and starts slowly, so the evidence comes from one prepared command that runs
the package's own benchmark scripts, in order of value, each as a subprocess with the time that
is left, and writes everything into one output folder:

1. ``train_throughput_gpu``: trainer throughput at paper size (routing / naive / filtering, fp32
   and bf16), ``benchmarks/train_throughput.py``;
2. ``batched_runs_gpu``: batched groups of runs against the same runs one after another, and the
   paper preset's projected wall time, ``benchmarks/batched_runs.py``;
3. ``oversight_sweep_paper_gpu``: as much of the paper preset as the remaining budget allows, as
   batched groups (``oversight-gr sweep --preset paper --batch-runs N``), then its report;
4. ``vision_table2_gpu``: if time remains, one vision Table 2 setting at the paper's budget.

Budget: ``--budget-minutes`` (default 9) is the whole command's wall time. Before each step the
suite checks what is left against the step's minimum; a step gets at most its share of the rest
and is stopped (SIGTERM, then SIGKILL) when that runs out, keeping what it wrote (sweep records
are written per finished group). ``OUT/suite.json`` says what ran, how long, how it ended, and on
which device (``torch.cuda.get_device_name()``); ``OUT/logs/`` holds each step's output;
``OUT/sections.md`` the RESULTS.md sections; ``OUT/figures/`` their figures.

    python benchmarks/gpu_suite.py prepare                  # here: wheels + MNIST to carry
    python benchmarks/gpu_suite.py run --out gpu_results    # on the GPU machine
    python benchmarks/gpu_suite.py run --out /tmp/dry --device cpu --tiny  # CPU dry run (tests)
    python benchmarks/gpu_suite.py merge gpu_results        # here, into docs/ (or gpu.tar.gz)

The GPU machine has its own python3 with torch but reaches no package index: ``prepare`` puts
the pure-Python wheels the package needs there (gymnasium and its one missing dependency) into
``.whl/`` and MNIST into ``.cache/`` (both git-ignored), and prints the command to run there,
which installs the wheels into /tmp/site and runs the suite from the repository root.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from _results_doc import FIGURES_ENV, RESULTS_ENV, read_sections, update_section  # noqa: E402

#: seconds kept back at the end for writing suite.json
RESERVE_S = 5.0
#: seconds a stopped step gets between SIGTERM and SIGKILL
GRACE_S = 10.0


@dataclass(frozen=True)
class Step:
    """One benchmark of the suite.

    Attributes:
        name: the RESULTS.md section it produces.
        min_s: below this much time left the step is skipped.
        share: the fraction of the time left that the step may use (the last step that runs
            gets the rest).
    """

    name: str
    min_s: float
    share: float


STEPS = (
    Step("train_throughput_gpu", 60.0, 0.25),
    Step("batched_runs_gpu", 60.0, 0.30),
    Step("oversight_sweep_paper_gpu", 120.0, 0.85),
    Step("vision_table2_gpu", 60.0, 1.0),
)


def _py(script: str, *args: str) -> list[str]:
    return [sys.executable, str(HERE / script), *args]


def commands(step: str, device: str, tiny: bool, out: Path) -> list[list[str]]:
    """The command lines of one step (run in order; the RESULTS/FIGURES environment variables
    send their sections and figures into ``out``)."""
    sweep_dir = out / "sweep_paper"
    if step == "train_throughput_gpu":
        size = ["--tiny"] if tiny else []
        return [_py("train_throughput.py", "--device", device, "--skip-learning",
                    "--section", step, *size)]
    if step == "batched_runs_gpu":
        size = ["--tiny"] if tiny else ["--runs", "40"]
        return [_py("batched_runs.py", "--device", device, "--section", step, *size)]
    if step == "oversight_sweep_paper_gpu":
        grid = (["--total-env-steps", "2048", "--num-envs", "16", "--hidden", "16",
                 "--eval-every", "1024", "--oversight", "0.1", "0.4", "--seeds", "2",
                 "--batch-runs", "4"] if tiny else ["--batch-runs", "40"])
        sweep = [sys.executable, "-m", "oversight_gr.cli", "sweep", "--preset", "paper",
                 "--device", device, "--out", str(sweep_dir), *grid]
        return [sweep]
    if step == "vision_table2_gpu":
        size = (["--epochs", "1", "--runs", "1", "--batch-size", "256", "--train-subset", "2048"]
                if tiny else ["--epochs", "200", "--runs", "1"])
        return [_py("vision_table2.py", "--device", device, "--settings", "8",
                    "--section", step, *size)]
    raise ValueError(f"unknown step {step!r}; steps: {[s.name for s in STEPS]}")


def report_commands(step: str, device: str, tiny: bool, out: Path) -> list[list[str]]:
    """Commands run after a step even when it was stopped (they summarise what it left)."""
    if step == "oversight_sweep_paper_gpu":
        cmd = commands(step, device, tiny, out)[0]
        flags = cmd[cmd.index("sweep") + 1:]
        return [_py("oversight_sweep.py", *flags, "--report-only", "--section", step)]
    return []


def device_name(device: str) -> str:
    """What the device is, in words (``torch.cuda.get_device_name()`` on a GPU)."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.cuda.get_device_name(dev)
    return f"CPU: {platform.processor() or platform.machine()} ({os.cpu_count()} cores)"


def _run(cmd: list[str], log: Path, env: dict[str, str], timeout: float) -> tuple[str, int]:
    """Run ``cmd`` in its own process group with a deadline; ``(status, returncode)``."""
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                start_new_session=True)
        try:
            return ("ok" if proc.wait(timeout=max(timeout, 0.1)) == 0 else "failed"), \
                proc.returncode
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=GRACE_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return "stopped at budget", proc.returncode


def run_suite(out: Path, device: str, budget_s: float, tiny: bool,
              steps: tuple[Step, ...] = STEPS, clock=time.monotonic) -> dict:
    """Run ``steps`` within ``budget_s`` seconds; returns (and writes) ``OUT/suite.json``."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "logs").mkdir(exist_ok=True)
    (out / "figures").mkdir(exist_ok=True)
    env = {**os.environ, RESULTS_ENV: str(out / "sections.md"),
           FIGURES_ENV: str(out / "figures"), "PYTHONUNBUFFERED": "1"}
    start = clock()
    summary = {"device": device, "device_name": device_name(device), "tiny": tiny,
               "budget_s": budget_s, "python": platform.python_version(),
               "started": time.strftime("%Y-%m-%d %H:%M:%S"), "steps": []}

    def left() -> float:
        return budget_s - RESERVE_S - (clock() - start)

    def save() -> None:
        summary["wall_s"] = round(clock() - start, 1)
        tmp = out / f".suite.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(out / "suite.json")

    for i, step in enumerate(steps):
        entry = {"name": step.name, "status": "skipped: budget", "seconds": 0.0, "commands": []}
        summary["steps"].append(entry)
        if left() < step.min_s:
            save()
            continue
        last = i == len(steps) - 1
        t0 = clock()
        deadline = t0 + (left() if last else max(step.min_s, step.share * left()))
        log = out / "logs" / f"{step.name}.log"
        status = "ok"
        for cmd in commands(step.name, device, tiny, out):
            entry["commands"].append(" ".join(cmd))
            status, rc = _run(cmd, log, env, deadline - clock())
            entry["returncode"] = rc
            if status != "ok":
                break
        for cmd in report_commands(step.name, device, tiny, out):
            if left() <= 0:
                break
            entry["commands"].append(" ".join(cmd))
            report_status, _ = _run(cmd, log, env, left())
            entry["report"] = report_status
            if status == "ok" and report_status != "ok":
                status = f"report {report_status}"  # the section was not written
        entry["status"] = status
        entry["seconds"] = round(clock() - t0, 1)
        save()
    save()
    bundle(out)
    return summary


def bundle(out: Path) -> Path:
    """``OUT.tar.gz`` beside ``OUT``: the whole folder in one file (a device machine returns
    only a few files)."""
    import tarfile

    target = out.with_name(out.name + ".tar.gz")
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        tar.add(out, arcname=out.name)
    tmp.replace(target)
    return target


def _unpacked(path: Path) -> Path:
    """A suite folder, from the folder itself or its ``.tar.gz`` bundle."""
    if path.is_dir():
        return path
    import tarfile
    import tempfile

    dest = Path(tempfile.mkdtemp(prefix="gpu-suite-"))
    with tarfile.open(path) as tar:
        tar.extractall(dest, filter="data")
    found = [p.parent for p in dest.rglob("suite.json")]
    if not found:
        raise ValueError(f"{path} holds no suite.json")
    return found[0]


def merge(out: Path, results: Path | None = None) -> list[str]:
    """Copy ``OUT``'s sections into docs/RESULTS.md (each headed by the device and the suite's
    command) and its figures into docs/figures; returns the merged section names."""
    out = _unpacked(Path(out))
    suite = json.loads((out / "suite.json").read_text())
    sections_file = out / "sections.md"
    sections = read_sections(sections_file) if sections_file.exists() else {}
    figures = Path(results).parent / "figures" if results else ROOT / "docs" / "figures"
    if (out / "figures").is_dir():
        figures.mkdir(parents=True, exist_ok=True)
        for fig in (out / "figures").iterdir():
            shutil.copyfile(fig, figures / fig.name)
    status = {s["name"]: s for s in suite["steps"]}
    merged = []
    for name, md in sections.items():
        step = status.get(name, {})
        head = (f"Device: **{suite['device_name']}** (`{suite['device']}`), measured by "
                f"`python benchmarks/gpu_suite.py run` on {suite['started']}; step status: "
                f"{step.get('status', 'n/a')} after {step.get('seconds', 0)} s of a "
                f"{suite['budget_s']:.0f} s budget.")
        lines = md.splitlines()
        at = 1 if lines and lines[0].startswith("#") else 0
        body = "\n".join(lines[:at] + ["", head, ""] + lines[at:])
        update_section(name, body, results)
        merged.append(name)
    return merged


#: pure-Python wheels the GPU image lacks (its torch, numpy, matplotlib, scipy, tqdm, rich,
#: tensorboard and tokenizers serve as they are), pinned as in constraints.txt
CARRY_WHEELS = ("gymnasium", "farama-notifications")
CARRY = (".whl", ".cache")


def _pin(name: str) -> str:
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.split("==")[0].strip().lower() == name:
            return line.strip()
    return name


def prepare() -> str:
    """Download the wheels and MNIST to carry; returns the command to run on the GPU."""
    wheels = ROOT / ".whl"
    wheels.mkdir(exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--only-binary=:all:", "-d", str(wheels), *map(_pin, CARRY_WHEELS)],
                   check=True)
    sys.path.insert(0, str(ROOT))
    from oversight_gr.vision.data import load_mnist

    load_mnist(cache_dir=ROOT / ".cache")
    return ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir "
            "--target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD "
            "OVERSIGHT_GR_CACHE=$PWD/.cache PYTHONUNBUFFERED=1 && python3 benchmarks/gpu_suite.py "
            "run --out /tmp/gpu --budget-minutes 9; cp /tmp/gpu.tar.gz $OUT/")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run", help="run the suite within a time budget")
    run.add_argument("--out", required=True, type=Path, help="folder for every result file")
    run.add_argument("--device", default="cuda", help="torch device (default cuda)")
    run.add_argument("--budget-minutes", type=float, default=9.0,
                     help="wall-time budget of the whole command (default 9)")
    run.add_argument("--tiny", action="store_true",
                     help="tiny sizes: a dry run of every step in under a minute")
    run.add_argument("--steps", nargs="+", choices=[s.name for s in STEPS],
                     default=[s.name for s in STEPS], help="a subset of the steps, in order")
    sub.add_parser("prepare", help="download what the GPU machine lacks (carry .whl .cache)")
    mg = sub.add_parser("merge", help="merge a run's folder into docs/RESULTS.md")
    mg.add_argument("out", type=Path)
    mg.add_argument("--results", type=Path, default=None,
                    help="RESULTS.md to write (default docs/RESULTS.md)")
    args = ap.parse_args(argv)
    if args.cmd == "prepare":
        command = prepare()
        print(f"carry {list(CARRY)} and run on the GPU machine, from the repository root:\n"
              f"{command}")
        return 0
    if args.cmd == "merge":
        if not (args.out / "suite.json").is_file() and not args.out.name.endswith(".tar.gz"):
            ap.error(f"{args.out} holds no suite.json (run `gpu_suite.py run --out {args.out}`)")
        for name in merge(args.out, args.results):
            print(f"merged section {name}")
        return 0
    if not args.budget_minutes > 0:
        ap.error(f"--budget-minutes must be > 0, got {args.budget_minutes}")
    sys.path.insert(0, str(ROOT))
    from oversight_gr.config import check_device

    try:
        check_device(args.device, "--device")
    except ValueError as exc:
        ap.error(str(exc))
    steps = tuple(s for s in STEPS if s.name in args.steps)
    summary = run_suite(args.out, args.device, args.budget_minutes * 60, args.tiny, steps)
    for s in summary["steps"]:
        print(f"{s['name']:<28} {s['status']:<18} {s['seconds']:7.1f} s")
    print(f"results in {args.out} ({summary['device_name']}); merge with "
          f"`python benchmarks/gpu_suite.py merge {args.out}`")
    return 0 if all(s["status"] in ("ok", "stopped at budget", "skipped: budget")
                    for s in summary["steps"]) else 1


if __name__ == "__main__":
    sys.exit(main())
