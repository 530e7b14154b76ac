"""Training speed and learning quality of the routed trainer.

Part 1 (throughput): env steps per second of a full update (rollout + loss + backward + step)
for routing, naive and filtering at the paper's network size (H=256, 512 envs x 32 steps),
for our default PPO and for our REINFORCE configured exactly like the paper (lr 5e-5, entropy
0.1, value 0.5, gate 0.01, no clipping, one pass, no bootstrap), in fp32 and in the two faster
precisions (bf16_matmul, bf16 autocast), and for REINFORCE's single-pass update against the
two-pass one. The paper's code takes 0.45-0.56 s per routing update on this machine (PAPER.md);
that figure is quoted, not re-run. Section train_throughput_<cpu|gpu> of docs/RESULTS.md.

Part 3 (``--vs-ref REV``): this trainer against the trainer of git revision REV, its default
path and (where REV has the switch) its ``manual_backward = False`` path: REV's package is
extracted with ``git archive`` into a temporary folder, each trainer runs in its own process,
updates interleaved one by one, median seconds per update and its collect / learn split, for
PPO at hidden 64 (the default run: 512 envs x 32 steps, 4 epochs x 16 minibatches) and
REINFORCE at paper size (section trainer_vs_ref_<cpu|gpu>).

Part 2 (learning): PPO routing at p=0.1 for --learn-seconds wall clock, evaluating the steered
policy every --eval-every env steps: when it first reaches 0.7, and whether it stays there
(section train_learning_<cpu|gpu>).

    python benchmarks/train_throughput.py                 # CPU, 1 thread, writes docs/RESULTS.md
    python benchmarks/train_throughput.py --device cuda --num-envs 4096
    python benchmarks/train_throughput.py --vs-ref 9518d0f --skip-throughput --skip-learning
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_doc import cpu_name, update_section  # noqa: E402

from oversight_gr.rl.evaluation import evaluate  # noqa: E402
from oversight_gr.rl.trainer import TrainConfig, Trainer  # noqa: E402

PAPER_SECONDS_PER_UPDATE = (0.45, 0.56)
PAPER_REINFORCE = dict(algo="reinforce", hidden=256, bootstrap=False, gate_input="full")
#: the timed cells' rollout size (``--tiny`` shrinks it, and the networks, for a dry run)
SIZE: dict = dict(num_envs=512, rollout_steps=32)
TINY = dict(num_envs=16, rollout_steps=4, hidden=16)


def time_updates(cfg: TrainConfig, updates: int, single_pass: bool | None = None) -> float:
    """Median wall time of ``updates`` full updates after three warm-up updates (steady state:
    on CPU the first few paper-size updates run up to ~40% slower while allocator and oneDNN
    caches fill; the median, not the mean, because other load slows a few updates)."""
    trainer = Trainer(cfg)
    if single_pass is not None:
        trainer.single_pass = single_pass
    for _ in range(3):
        trainer.train_update()  # warm-up
    times = []
    for _ in range(updates):
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        trainer.train_update()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


#: (label, TrainConfig fields, single_pass override or None for the trainer's choice)
CONFIGS = [
    ("PPO (ours, default)", dict(algo="ppo", hidden=256), None),
    ("PPO, bf16 autocast", dict(algo="ppo", hidden=256, precision="bf16"), None),
    ("REINFORCE, paper config", PAPER_REINFORCE, None),
    ("REINFORCE, paper config, two-pass update", PAPER_REINFORCE, False),
    ("REINFORCE, paper config, bf16_matmul", dict(PAPER_REINFORCE, precision="bf16_matmul"), None),
    ("REINFORCE, paper config, bf16", dict(PAPER_REINFORCE, precision="bf16"), None),
    ("REINFORCE, paper config, bf16, single-pass update",
     dict(PAPER_REINFORCE, precision="bf16"), True),
]


def throughput(args) -> tuple[list[str], dict]:
    rows, out = [], {}
    for label, extra, single_pass in CONFIGS:
        methods = ("routing",) if single_pass is not None else ("routing", "naive", "filtering")
        for method in methods:
            cfg = TrainConfig(method=method, device=args.device, threads=args.threads,
                              **{**SIZE, **extra, **(TINY if args.tiny else {})})
            s = time_updates(cfg, args.updates, single_pass)
            sps = cfg.num_envs * cfg.rollout_steps / s
            out[(label, method)] = s
            rows.append(f"| {label} | {method} | {s:.3f} | {sps:,.0f} |")
            print(rows[-1], flush=True)
    return rows, out


def gradient_agreement(args) -> list[str]:
    """Cosine and relative error of the bf16 modes' gradients against fp32's, on one fp32
    rollout from the same parameters (paper size, routing, REINFORCE as the paper)."""
    base = TrainConfig(method="routing", device=args.device, threads=args.threads,
                       **{**SIZE, **PAPER_REINFORCE, **(TINY if args.tiny else {})})
    ref = Trainer(base)
    ref.single_pass = False
    batch = ref.rollout_batch(ref.collect())

    def grad(precision: str) -> torch.Tensor:
        tr = Trainer(dataclasses.replace(base, precision=precision))
        tr.policy.load_state_dict(ref.policy.state_dict())
        tr.value.load_state_dict(ref.value.state_dict())
        loss, _ = tr.loss(batch)
        loss.backward()
        params = list(tr.policy.parameters()) + list(tr.value.parameters())
        return torch.cat([p.grad.flatten() for p in params]).double()

    g32 = grad("fp32")
    rows = []
    for precision in ("bf16_matmul", "bf16"):
        g = grad(precision)
        cos = float(torch.dot(g, g32) / (g.norm() * g32.norm()))
        rel = float((g - g32).norm() / g32.norm())
        rows.append(f"| {precision} | {cos:.5f} | {rel:.4f} |")
        print(rows[-1], flush=True)
    return rows


def learning(args) -> tuple[list[str], dict]:
    cfg = TrainConfig(method="routing", algo="ppo", oversight_prob=0.1, hidden=args.hidden,
                      num_envs=args.num_envs, device=args.device, threads=args.threads,
                      total_env_steps=10**12, seed=args.seed, gate_input=args.gate_input)
    trainer = Trainer(cfg)
    t0 = time.perf_counter()
    train_time = 0.0
    next_eval = args.eval_every
    curve = []
    while train_time < args.learn_seconds:
        t = time.perf_counter()
        trainer.train_update()
        train_time += time.perf_counter() - t
        if trainer.env_steps >= next_eval:
            next_eval += args.eval_every
            e = evaluate(trainer.policy, 0.1, "diamond", device=trainer.device)
            curve.append((train_time, trainer.env_steps, e.stepwise_return,
                          e.p_ghost_closer_unseen))
            print(f"  {train_time:6.1f}s train  {trainer.env_steps / 1e6:6.2f}M steps  steered "
                  f"{e.stepwise_return:.3f}  P(ghost|closer,unseen) {e.p_ghost_closer_unseen:.2f}",
                  flush=True)
    first = next((c for c in curve if c[2] >= 0.7), None)
    after = [c[2] for c in curve if first and c[0] >= first[0]]
    summary = {
        "first_0.7_seconds": first[0] if first else None,
        "first_0.7_steps": first[1] if first else None,
        "min_after": min(after) if after else None,
        "final": curve[-1][2] if curve else None,
        "max": max(c[2] for c in curve) if curve else None,
        "wall": time.perf_counter() - t0,
    }
    rows = [f"| {c[0]:.0f} | {c[1] / 1e6:.2f} | {c[2]:.3f} | {c[3]:.2f} |" for c in curve]
    return rows, summary


#: one timing worker: builds a Trainer from the package tree at argv[1] and runs one full update
#: (collect + learn) per line read from stdin, printing [total, collect, learn] seconds
WORKER = r"""
import json, sys, time
root, fields, variant = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
sys.path.insert(0, root)
import oversight_gr
if not oversight_gr.__file__.startswith(root):
    raise SystemExit(f"imported {oversight_gr.__file__}, not the tree at {root}")
import os
# the trainer's module in that tree: oversight_gr/rl/ since the re-layout, oversight_gr/agents/
# before it
name = ("oversight_gr.rl.trainer" if os.path.exists(os.path.join(root, "oversight_gr", "rl"))
        else "oversight_gr.agents.trainer")
import importlib
module = importlib.import_module(name)
if not module.__file__.startswith(root):
    raise SystemExit(f"imported {module.__file__}, not the tree at {root}")
TrainConfig, Trainer = module.TrainConfig, module.Trainer
trainer = Trainer(TrainConfig(**fields))
if variant == "autograd":  # a revision with the written-out backward, switched off
    if not hasattr(trainer, "manual_backward"):
        raise SystemExit(f"the trainer at {root} has no manual_backward switch")
    trainer.manual_backward = False
print("ready", flush=True)
for _ in sys.stdin:
    t0 = time.perf_counter()
    ro = trainer.collect(graph=trainer.single_pass)
    t1 = time.perf_counter()
    trainer.update(ro)
    t2 = time.perf_counter()
    print(json.dumps([t2 - t0, t1 - t0, t2 - t1]), flush=True)
"""


def reference_tree(rev: str) -> Path:
    """The package of git revision ``rev``, extracted (``git archive``) into a temporary
    folder; nothing of it enters this checkout."""
    root = Path(__file__).resolve().parent.parent
    tmp = Path(tempfile.mkdtemp(prefix=f"ref_{rev}_"))
    archive = subprocess.run(["git", "archive", rev, "oversight_gr"], cwd=root, check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(tmp)], input=archive, check=True)
    return tmp


class _Worker:
    """A timing subprocess (:data:`WORKER`) holding one trainer."""

    def __init__(self, root: Path, fields: dict, variant: str, cwd: Path):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, str(root), json.dumps(fields), variant],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=cwd)
        if self.proc.stdout.readline().strip() != "ready":
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"timing worker for {root} ({variant}) did not start")

    def update(self) -> list[float]:
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


VS_REF = [("PPO routing, hidden 64 (default)", dict(method="routing", algo="ppo")),
          ("PPO naive, hidden 64", dict(method="naive", algo="ppo")),
          ("REINFORCE routing, paper config", dict(method="routing", **PAPER_REINFORCE))]


def vs_reference(args) -> list[str]:
    """Interleaved per-update timing, each trainer in its own process: revision REV's default
    path, REV with ``manual_backward = False`` (its autograd path), and this checkout."""
    ref_root = reference_tree(args.vs_ref)
    try:
        return _vs_reference(args, ref_root)
    finally:
        shutil.rmtree(ref_root, ignore_errors=True)


def _vs_reference(args, ref_root: Path) -> list[str]:
    here = Path(__file__).resolve().parent.parent
    variants = {"ref": (ref_root, "default"), "ref autograd": (ref_root, "autograd"),
                "this": (here, "default")}
    rows = []
    for label, fields in VS_REF:
        fields = dict(device=args.device, threads=args.threads, **fields)
        workers = {k: _Worker(root, fields, v, ref_root) for k, (root, v) in variants.items()}
        times: dict[str, list] = {k: [] for k in workers}
        names = list(workers)
        for i in range(args.updates + 2):
            for k in names[i % len(names):] + names[:i % len(names)]:  # rotate the order
                t = workers[k].update()
                if i >= 2:  # warm-up
                    times[k].append(t)
        for w in workers.values():
            w.close()
        med = {k: [statistics.median(x[j] for x in v) for j in range(3)]
               for k, v in times.items()}
        n = fields.get("num_envs", 512) * fields.get("rollout_steps", 32)
        cells = " | ".join(f"{m[0]:.3f} ({m[1]:.3f} + {m[2]:.3f}) | {n / m[0]:,.0f}"
                           for m in med.values())
        rows.append(f"| {label} | {cells} | {med['ref'][0] / med['this'][0]:.2f}x | "
                    f"{med['ref autograd'][0] / med['this'][0]:.2f}x |")
        print(rows[-1], flush=True)
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--updates", type=int, default=7, help="timed updates per cell (the median "
                   "is reported)")
    p.add_argument("--learn-seconds", type=float, default=600.0, help="training wall clock of part 2")
    p.add_argument("--eval-every", type=int, default=250_000, help="env steps between evaluations")
    p.add_argument("--hidden", type=int, default=64, help="network width of part 2")
    p.add_argument("--num-envs", type=int, default=512, help="environments of part 2")
    p.add_argument("--gate-input", default="no_oversight", choices=("full", "no_oversight"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-learning", action="store_true")
    p.add_argument("--no-write", action="store_true", help="do not update docs/RESULTS.md")
    p.add_argument("--vs-ref", metavar="REV", help="also time against the trainer of this git "
                   "revision (part 3)")
    p.add_argument("--section", default=None, help="docs/RESULTS.md section of part 1 "
                   "(default: train_throughput_cpu or _gpu by --device)")
    p.add_argument("--tiny", action="store_true", help="tiny networks and rollouts, one timed "
                   "update: a dry run of the script (benchmarks/gpu_suite.py --tiny)")
    args = p.parse_args()
    if args.tiny:
        args.updates = 1
    torch.set_num_threads(args.threads)
    device_name = (torch.cuda.get_device_name(0) if args.device.startswith("cuda")
                   else f"{platform.processor() or platform.machine()} CPU, {args.threads} thread(s)")
    cmd = "python benchmarks/train_throughput.py " + " ".join(sys.argv[1:])
    header = [f"Command: `{cmd.strip()}` on {device_name} ({cpu_name()}), torch "
              f"{torch.__version__}.", ""]
    dev = "gpu" if args.device.startswith("cuda") else "cpu"
    load0 = os.getloadavg()[0]
    if not args.skip_throughput:
        print("| algorithm | method | s / update | env steps / s |")
        rows, out = throughput(args)
        lo, hi = PAPER_SECONDS_PER_UPDATE

        def vs_paper(label: str) -> str:
            s = out[(label, "routing")]
            return f"{s:.3f} s/update ({lo / s:.2f}-{hi / s:.2f}x)"

        md = header + [
            f"1-min load average {load0:.1f} before and {os.getloadavg()[0]:.1f} after, on "
            f"{os.cpu_count()} cores (a shared machine: other jobs inflate the absolute times). "
            f"The paper code's {lo}-{hi} s per update is quoted from PAPER.md, measured once "
            f"when this machine reported an Intel Xeon CPU (this run: {cpu_name()}), not "
            f"re-run: the ratios to it below hold only on the same CPU and load.", "",
            "### Throughput at paper size (H=256, 512 envs x 32 steps, full update)", "",
            "| algorithm | method | s / update (median) | env steps / s |", "|---|---|---|---|",
            *rows, "",
            f"Routing against the paper code's {lo}-{hi} s per update on this machine (target "
            f">= 2x): REINFORCE as the paper, fp32 {vs_paper('REINFORCE, paper config')}; "
            f"bf16_matmul {vs_paper('REINFORCE, paper config, bf16_matmul')}; bf16 autocast "
            f"{vs_paper('REINFORCE, paper config, bf16')}. The trainer learns from the "
            f"rollout's own graph (single pass) in fp32 and bf16_matmul and runs a second, "
            f"batched pass under bf16 autocast; the other choice takes: fp32 two-pass "
            f"{out[('REINFORCE, paper config, two-pass update', 'routing')]:.3f} s, bf16 "
            f"single-pass "
            f"{out[('REINFORCE, paper config, bf16, single-pass update', 'routing')]:.3f} s. PPO "
            f"(4 epochs x 16 minibatches, fp32) takes "
            f"{out[('PPO (ours, default)', 'routing')]:.3f} s/update.", "",
            "Gradient of one update against fp32's (same parameters, same fp32 rollout, routing, "
            "REINFORCE as the paper):", "",
            "| precision | cosine with fp32 | relative error |", "|---|---|---|",
            *gradient_agreement(args), ""]
        if not args.no_write:
            section = args.section or f"train_throughput_{dev}"
            update_section(section, f"## Trainer speed ({section})\n\n" + "\n".join(md))
    if args.vs_ref:
        load = os.getloadavg()[0]
        rows = vs_reference(args)
        md = header + [
            f"### This trainer against revision {args.vs_ref}'s (one run, R = 1)", "",
            f"Three trainers, each in its own process: {args.vs_ref}'s default path, "
            f"{args.vs_ref} with `manual_backward = False` (its autograd path) and this "
            f"checkout (the package of {args.vs_ref} extracted with `git archive`). Updates "
            f"interleaved one by one (the order rotating each round), median of {args.updates} "
            f"after 2 warm-up updates each; seconds per update = collect + learn. 1-min load "
            f"average {load:.1f} on {os.cpu_count()} cores at the start (a shared machine: "
            f"absolute times vary between repeats, the ratio of interleaved runs less). The "
            f"last two columns are this checkout's env steps/s over each reference's.", "",
            f"| config | {args.vs_ref}: s/update (collect + learn) | env steps/s | "
            f"{args.vs_ref} autograd: s/update | env steps/s | this: s/update | env steps/s | "
            f"vs {args.vs_ref} | vs {args.vs_ref} autograd |",
            "|---|---|---|---|---|---|---|---|---|", *rows, ""]
        if not args.no_write:
            section = f"trainer_vs_ref_{dev}"
            update_section(section, f"## Trainer against a previous revision ({section})\n\n"
                           + "\n".join(md))
    if not args.skip_learning:
        print(f"learning: PPO routing, p=0.1, hidden {args.hidden}, {args.learn_seconds:.0f}s")
        rows, s = learning(args)
        verdict = []
        if s["first_0.7_seconds"] is None:
            verdict.append(f"never reached 0.7 (max {s['max']:.3f}, final {s['final']:.3f})")
        else:
            verdict.append(f"first reached 0.7 after {s['first_0.7_seconds']:.0f} s of training "
                           f"({s['first_0.7_steps'] / 1e6:.2f}M env steps); lowest afterwards "
                           f"{s['min_after']:.3f}; final {s['final']:.3f}")
        md = header + [
            f"### Learning: PPO routing at p=0.1 (hidden {args.hidden}, {args.num_envs} envs, "
            f"gate input {args.gate_input}, seed {args.seed})", "",
            "Targets: first 0.7 in under 60 s; stays >= 0.7 for the rest of a 10-minute run.",
            "", "Result: " + "; ".join(verdict) + ".", "",
            "| train seconds | env steps (M) | steered return | P(ghost \\| closer, unseen) |",
            "|---|---|---|---|", *rows, ""]
        print("; ".join(verdict))
        if not args.no_write:
            section = f"train_learning_{dev}"
            update_section(section, f"## Trainer learning ({section})\n\n" + "\n".join(md))
    return 0

if __name__ == "__main__":
    sys.exit(main())
