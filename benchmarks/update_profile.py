"""Where the time of a PPO update goes, measured by wall clock (no profiler), and what that
bounds: the single-run speed-up still available and the speed-up that training R runs as one
group can give on this device.

A PPO update (the default run: 512 envs x 32 steps, 4 epochs x 16 minibatches of 1,024 steps,
hidden 64) is one rollout plus 64 minibatch steps. One minibatch step is timed whole and in
parts, each part as its own loop over the same 16 minibatches of one rollout, interleaved
repeat by repeat, median of the repeats:

- ``step``: the routed loss, its backward through autograd, clipping and Adam (what the
  update runs 64 times: ``Trainer.learn_minibatch``);
- ``loss forward``: the loss without autograd;
- ``networks``: experts, gate, value and heads, forward and backward of a plain sum (no
  objective, no routing weights);
- ``MLPs``: the two experts' and the value net's two-layer bodies alone, forward + backward;
- ``matmul floor``: the matrix multiplies of one step (forward, weight and input gradients),
  recorded from a real step (a dispatch mode) and replayed as bare calls of the same operators
  on fixed tensors of the same shapes and strides: the arithmetic that no reorganisation of the
  same maths removes;
- ``clip + Adam``: gradient-norm clipping and the fused Adam step on the gradients of a step.

From these: the objective and routing (step - networks - clip + Adam), and everything
that is not arithmetic (step - matmul floor). Batching R runs into one group (``Trainer([cfg, ...])``) removes per-operation
overhead but not arithmetic, so ``step / matmul floor`` bounds its speed-up of the update
(Amdahl). The step is also timed at twice the samples, which splits it into a fixed part (per
operation: what a group shares) and a part that grows with the samples (arithmetic and memory
passes: a group does it R times), a finer estimate (a linear model); the group's measured
speed-up of updates is printed beside both (R runs of the profiled size, timed against one of
them alone in this run).

    python benchmarks/update_profile.py                   # ~1 min on one CPU thread
    python benchmarks/update_profile.py --tiny            # a few seconds (dry run)

Writes section ``update_profile_<cpu|gpu>`` of docs/RESULTS.md.

``--compile MODE ...`` instead times the minibatch step with the opt-in compiled loss
(``trainer.loss = torch.compile(trainer.loss, mode=MODE, dynamic=False)``: the same definition,
its backward derived by AOTAutograd) against the eager step, interleaved, and the two kernels
that explain the difference on CPU: a ReLU that also writes the boolean mask its backward
reads, and the comparison alone, eager and compiled (section ``compile_<cpu|gpu>``).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_doc import cpu_name, update_section  # noqa: E402

from oversight_gr.rl.losses import Minibatch  # noqa: E402
from oversight_gr.rl.networks import mlp_forward  # noqa: E402
from oversight_gr.rl.trainer import TrainConfig, Trainer  # noqa: E402


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _seconds(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Wall seconds of ``fn()`` (the device synchronised before and after) and its result."""
    _sync(device)
    t0 = time.perf_counter()
    result = fn()
    _sync(device)
    return time.perf_counter() - t0, result


def minibatches(trainer: Trainer) -> list[Minibatch]:
    """The 16 minibatches of one fresh rollout, each ``[R, N, ...]`` (unshuffled slices)."""
    full = trainer.rollout_batch(trainer.collect())
    n = full.obs.shape[1]
    k = trainer.cfg.resolved("minibatches")
    mb = n // k
    return [full.rows(i * mb, (i + 1) * mb) for i in range(k)]


#: the matrix-multiply operators the floor records and replays
MATMULS = ("mm", "addmm", "bmm", "baddbmm")


class _RecordMatmuls(TorchDispatchMode):
    """Records ``(op name, [(shape, stride) of each tensor argument])`` of every matrix
    multiply dispatched while active (forward and backward alike)."""

    def __init__(self):
        super().__init__()
        self.calls: list[tuple[str, list[tuple[tuple, tuple]]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in MATMULS:
            self.calls.append((name, [(tuple(a.shape), tuple(a.stride())) for a in args
                                      if isinstance(a, torch.Tensor)]))
        return func(*args, **(kwargs or {}))


def record_matmuls(step, batch) -> list[tuple[str, list[tuple[tuple, tuple]]]]:
    """The matrix multiplies that ``step(batch)`` runs, in order."""
    with _RecordMatmuls() as rec:
        step(batch)
    return rec.calls


def matmul_flops(calls) -> int:
    """Multiply-add FLOPs (2 per multiply-add) of recorded calls."""
    total = 0
    for name, tensors in calls:
        a, b = tensors[-2][0], tensors[-1][0]  # the two factors (addmm's first is the bias)
        batch = a[0] if name in ("bmm", "baddbmm") else 1
        total += 2 * batch * a[-2] * a[-1] * b[-1]
    return total


def matmul_floor(calls, device: torch.device):
    """A function replaying the recorded multiplies back to back on fixed tensors of the
    same shapes and strides (so the same transposed / plain kernels run)."""
    gen = torch.Generator(device="cpu").manual_seed(0)

    def tensor(shape, stride):
        size = 1 + sum((n - 1) * st for n, st in zip(shape, stride))
        base = torch.randn(max(size, 1), generator=gen).to(device)
        return base.as_strided(shape, stride)

    ops = [(getattr(torch, name), [tensor(*t) for t in tensors]) for name, tensors in calls]

    def run(_batch) -> None:
        for op, tensors in ops:
            op(*tensors)

    return run


def parts(trainer: Trainer) -> dict:
    """name -> function(minibatch) for the timed parts of one minibatch step."""
    p, pv = trainer._policy_p, trainer._value_p

    def step(b):  # what the update runs
        trainer.learn_minibatch(b)

    def forward(b):
        with torch.no_grad():
            trainer.loss(b)

    def networks(b):
        x = trainer._x(b.obs)
        out = trainer.mix(trainer.features(x))
        (out.logits.sum() + trainer.values(x).sum() + out.gate.sum()).backward()

    def mlps(b):
        x = trainer._x(b.obs)
        (mlp_forward(x, p, "expert_diamond").sum() + mlp_forward(x, p, "expert_ghost").sum()
         + mlp_forward(x, pv, "net.0").sum()).backward()

    def clip_adam(_b):
        if trainer.cfg.resolved("max_grad_norm") > 0:
            trainer._clip(trainer.cfg.resolved("max_grad_norm"))
        trainer.optimizer.step()

    return {"step": step, "loss forward": forward,
            "networks": networks, "MLPs": mlps, "clip + Adam": clip_adam}


def time_parts(device: torch.device, jobs: dict, repeats: int) -> dict[str, float]:
    """Median over ``repeats`` of the mean seconds per minibatch of each part; ``jobs`` maps a
    name to ``(function, minibatches)``. Each repeat runs every part once over all its
    minibatches, in turn, so a change of the machine's speed reaches every part alike."""
    # gradients for clip + Adam (and warm-up of every part)
    for f, batches in jobs.values():
        for b in batches:
            f(b)
    times: dict[str, list[float]] = {k: [] for k in jobs}
    for _ in range(repeats):
        for name, (f, batches) in jobs.items():
            seconds, _ = _seconds(device, lambda f=f, batches=batches: [f(b) for b in batches])
            times[name].append(seconds / len(batches))
    return {k: statistics.median(v) for k, v in times.items()}


def update_times(trainers: list[Trainer], updates: int) -> list[tuple[float, float]]:
    """Median (collect, learn) seconds per update of each trainer after one warm-up update,
    the trainers' updates interleaved."""
    for trainer in trainers:
        trainer.train_update()
    cs: list[list[float]] = [[] for _ in trainers]
    ls: list[list[float]] = [[] for _ in trainers]
    for _ in range(updates):
        for i, trainer in enumerate(trainers):
            collect_s, ro = _seconds(trainer.device, trainer.collect)
            cs[i].append(collect_s)
            ls[i].append(_seconds(trainer.device, lambda: trainer.update(ro))[0])
    return [(statistics.median(c), statistics.median(v)) for c, v in zip(cs, ls)]


def compiled_step(cfg: TrainConfig, modes: list[str], repeats: int, device: torch.device):
    """Median ms per minibatch step, eager and with the loss compiled in each mode, interleaved
    (one trainer per mode, the same minibatches), and each mode's compile seconds."""
    trainers = {"eager": Trainer(cfg)}
    for mode in modes:
        trainers[mode] = Trainer(cfg)
        trainers[mode].loss = torch.compile(trainers[mode].loss, dynamic=False,
                                            mode=None if mode == "default" else mode)
    batches = minibatches(trainers["eager"])
    compile_s = {}
    for name, tr in trainers.items():
        compile_s[name], _ = _seconds(device, lambda tr=tr: tr.learn_minibatch(batches[0]))
    jobs = {name: (tr.learn_minibatch, batches) for name, tr in trainers.items()}
    return {k: v * 1e3 for k, v in time_parts(device, jobs, repeats).items()}, compile_s


def mask_kernels(device: torch.device, calls: int = 300) -> dict[str, float]:
    """Microseconds per call of a ReLU that also returns the boolean mask ``relu(x) <= 0`` (what
    the compiled forward saves for each ReLU's backward) and of the comparison alone, on one
    ``[1024, 64]`` activation, eager and compiled."""
    x = torch.randn(1024, 64, device=device)

    def relu_and_mask(t):
        r = torch.relu(t)
        return r, r <= 0

    def mask(t):
        return t <= 0

    out = {}
    for name, f in (("ReLU + boolean mask", relu_and_mask), ("boolean mask alone", mask)):
        c = torch.compile(f, dynamic=False)
        c(x)
        for label, g in (("eager", f), ("compiled", c)):
            g(x)
            seconds, _ = _seconds(device, lambda g=g: [g(x) for _ in range(calls)])
            out[f"{name}, {label}"] = seconds / calls * 1e6
    return out


def compile_report(cfg: TrainConfig, args, device: torch.device, command: str) -> str:
    t0 = time.time()
    ms, compile_s = compiled_step(cfg, args.compile, args.repeats, device)
    kernels = mask_kernels(device)
    lines = [
        f"`{command}` on "
        f"{cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name(device)}, "
        f"{args.threads} thread(s), torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}, {time.time() - t0:.0f} s.", "",
        f"PPO routing, hidden {cfg.hidden}, minibatch steps of "
        f"{cfg.num_envs * cfg.rollout_steps // cfg.resolved('minibatches'):,} samples: the "
        f"eager step against `trainer.loss = torch.compile(trainer.loss, mode=..., "
        f"dynamic=False)` (median of {args.repeats} interleaved repeats over one rollout's "
        f"minibatches; the first step's time includes compiling):", "",
        "| step | ms per minibatch step | vs eager | first step (s) |", "|---|---:|---:|---:|"]
    for name, v in ms.items():
        lines.append(f"| {name} | {v:.3f} | {ms['eager'] / v:.2f}x | {compile_s[name]:.1f} |")
    lines += ["", "Why (one `[1024, 64]` activation, microseconds per call):", "",
              "| kernel | us per call |", "|---|---:|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in kernels.items()]
    extra = RELUS * (kernels["boolean mask alone, compiled"]
                     - kernels["boolean mask alone, eager"]) / 1e3
    slowest = max(ms[m] for m in args.compile)
    lines += ["", f"The compiled forward saves, for each ReLU's backward, the boolean mask of "
              f"where it was zero, written by a generated kernel; routing's networks have "
              f"{RELUS} ReLUs (two per expert, gate and value net), so about {RELUS} x the "
              f"mask's extra cost = {extra:.1f} ms per step, against the compiled step's "
              f"{slowest - ms['eager']:.1f} ms over eager at most. First-step times count "
              f"compiling with inductor's on-disk cache as earlier runs left it."]
    return "\n".join(lines)


#: ReLUs in the routing method's networks: two per expert, two in the gate, two in the value net
RELUS = 8


def group_speedup(cfg: TrainConfig, args) -> tuple[float, float]:
    """Seconds per update of R runs of ``cfg`` (``--group-envs`` envs each, seeds x oversight
    levels) as one group and of one of them alone, medians, interleaved."""
    levels = (0.01, 0.05, 0.1, 0.3)
    cfgs = [dataclasses.replace(cfg, num_envs=args.group_envs, seed=i // len(levels),
                                oversight_prob=levels[i % len(levels)])
            for i in range(args.group)]
    group, alone = Trainer(cfgs), Trainer(cfgs[0])
    group.train_update(), alone.train_update()
    g, a = [], []
    for _ in range(args.updates):
        g.append(_seconds(group.device, group.train_update)[0])
        a.append(_seconds(alone.device, alone.train_update)[0])
    return statistics.median(g), statistics.median(a)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--num-envs", type=int, default=512)
    ap.add_argument("--rollout-steps", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=7, help="timed repeats of each part")
    ap.add_argument("--updates", type=int, default=7, help="timed whole updates")
    ap.add_argument("--group", type=int, default=8, help="runs R in the timed group")
    ap.add_argument("--group-envs", type=int, default=None,
                    help="envs per run in the group (default: --num-envs, the size profiled)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tiny", action="store_true", help="small sizes, a dry run")
    ap.add_argument("--section", default=None, help="default update_profile_<cpu|gpu>")
    ap.add_argument("--no-write", action="store_true", help="print only")
    ap.add_argument("--compile", nargs="+", metavar="MODE", default=None,
                    help="instead of the profile: time the step with the loss compiled in these "
                    "torch.compile modes ('default', 'max-autotune-no-cudagraphs', ...) against "
                    "eager (section compile_<cpu|gpu>)")
    args = ap.parse_args(argv)
    if args.tiny:
        args.hidden, args.num_envs, args.rollout_steps = 16, 64, 8
        args.repeats, args.updates, args.group, args.group_envs = 2, 2, 2, 32
    if args.group_envs is None:
        args.group_envs = args.num_envs
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    t_start = time.time()
    load0 = os.getloadavg()[0]

    cfg = TrainConfig(method="routing", algo="ppo", oversight_prob=0.1, hidden=args.hidden,
                      num_envs=args.num_envs, rollout_steps=args.rollout_steps,
                      device=args.device, threads=args.threads)
    if args.compile:
        command = shlex.join(["python", "benchmarks/update_profile.py",
                              *(sys.argv[1:] if argv is None else argv)])
        text = compile_report(cfg, args, device, command)
        print(text)
        if not args.no_write:
            section = f"compile_{'gpu' if device.type == 'cuda' else 'cpu'}"
            update_section(section, f"## The minibatch step under torch.compile ({section})"
                           f"\n\n{text}\n")
            print(f"wrote section {section}")
        return 0
    trainer = Trainer(cfg)
    [(collect_s, learn_s)] = update_times([trainer], args.updates)
    batches = minibatches(trainer)
    n = batches[0].obs.shape[1]
    funcs = parts(trainer)
    calls = record_matmuls(funcs["step"], batches[0])
    funcs["matmul floor"] = matmul_floor(calls, device)
    # the step at twice the samples, timed in the same repeats: its fixed (per-operation) and
    # per-sample parts
    cfg2 = dataclasses.replace(cfg, num_envs=2 * cfg.num_envs)
    trainer2 = Trainer(cfg2)
    trainer2.train_update()
    jobs = {k: (f, batches) for k, f in funcs.items()}
    jobs["step at 2x samples"] = (parts(trainer2)["step"], minibatches(trainer2))
    t = time_parts(device, jobs, args.repeats)
    t2 = t.pop("step at 2x samples")
    steps = cfg.resolved("update_epochs") * cfg.resolved("minibatches")
    flops = matmul_flops(calls)
    per_sample = (t2 - t["step"]) / n
    fixed = t["step"] - per_sample * n
    g_s, a_s = group_speedup(cfg, args)
    load1 = os.getloadavg()[0]

    ms = {k: v * 1e3 for k, v in t.items()}
    derived = {
        "objective and routing (step - networks - clip + Adam)":
            ms["step"] - ms["networks"] - ms["clip + Adam"],
        "gate, heads and mixture (networks - MLPs)": ms["networks"] - ms["MLPs"],
        "not arithmetic (step - matmul floor)": ms["step"] - ms["matmul floor"],
    }
    bound = ms["step"] / ms["matmul floor"]
    r = args.group
    # R runs as one group at best: the fixed part once, the per-sample part R times
    linear_bound = (r * t["step"] / (fixed + r * per_sample * n)
                    if fixed > 0 and per_sample > 0 else float("nan"))  # nan: noise at tiny sizes
    per_update = collect_s + learn_s
    sps = cfg.num_envs * cfg.rollout_steps / per_update
    group_x = args.group * a_s / g_s
    command = shlex.join(["python", "benchmarks/update_profile.py",
                          *(sys.argv[1:] if argv is None else argv)])
    lines = [
        f"`{command}` on "
        f"{cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name(device)}, "
        f"{args.threads} thread(s), torch {torch.__version__}, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}, {time.time() - t_start:.0f} s. 1-min load "
        f"average {load0:.1f} before and {load1:.1f} after.",
        "",
        f"PPO routing, hidden {cfg.hidden}, {cfg.num_envs} envs x {cfg.rollout_steps} steps per "
        f"update = {steps} minibatch steps of {n:,} samples. Whole update (median of "
        f"{args.updates}): collect {collect_s:.3f} s + learn {learn_s:.3f} s = "
        f"{per_update:.3f} s, **{sps:,.0f} env steps/s**.",
        "",
        "One minibatch step, by part (median of "
        f"{args.repeats} interleaved repeats over the rollout's {len(batches)} minibatches):",
        "",
        "| part | ms per minibatch step | share of the step |",
        "|---|---:|---:|",
    ]
    for k in ("step", "loss forward", "networks", "MLPs", "matmul floor",
              "clip + Adam"):
        lines.append(f"| {k} | {ms[k]:.3f} | {ms[k] / ms['step']:.0%} |")
    for k, v in derived.items():
        lines.append(f"| {k} | {v:.3f} | {v / ms['step']:.0%} |")
    gflops = flops / (ms["matmul floor"] * 1e-3) / 1e9
    lines += [
        "",
        f"- The matmul floor is {len(calls)} multiplies, {flops / 1e6:.0f} MFLOP per step, at "
        f"{gflops:.0f} GFLOP/s: "
        f"{ms['matmul floor'] / ms['step']:.0%} of the step is arithmetic that the same maths "
        f"cannot shed; removing every other cost would make the learning step at most "
        f"{bound:.2f}x faster.",
        f"- A group of R runs batches the arithmetic (the same FLOPs, R times over) and removes "
        f"only the rest, so on this device its speed-up of updates is bounded by about "
        f"{bound:.2f}x (Amdahl, at this rollout size). A finer estimate: the step at twice the "
        f"samples ({2 * n:,}) takes {t2 * 1e3:.3f} ms, so {fixed * 1e3:.3f} ms of the step is "
        f"fixed (per operation, what a group shares) and {per_sample * n * 1e3:.3f} ms grows "
        f"with the samples (arithmetic and memory passes, which a group of R runs does R "
        + (f"times); on this linear split of the step's time (a model: memory passes need not "
           f"scale linearly), a group of {r} would run about {linear_bound:.2f}x the env steps "
           f"per second of one run after another." if math.isfinite(linear_bound) else
           "times); here the split is not resolved (the two timings differ by less than their "
           "noise), so no tighter bound.")
        + f" Measured here: {args.group} routing runs "
        f"of {args.group_envs} envs as one group take {g_s:.3f} s per update against "
        f"{a_s:.3f} s for one of them alone: **{group_x:.2f}x** the env steps per second of "
        f"running them one after another.",
    ]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        section = args.section or f"update_profile_{'gpu' if device.type == 'cuda' else 'cpu'}"
        header = f"## Where a PPO update's time goes ({section})\n\n"
        update_section(section, header + text + "\n")
        print(f"wrote section {section}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
