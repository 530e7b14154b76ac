"""Torch's default thread count vs one thread, for the loops users write around the envs.

Each case runs in a fresh interpreter (so "default" is torch's own choice, one thread per core)
and reports env steps per second of the whole loop; the cases alternate, ``--repeats`` times,
and the ratio of medians is printed. Cases:

* ``routedppo``: ``RoutedPPO("MoEPolicy", "OversightGrid-v0", n_envs=64, n_steps=32)`` learning,
  its ``threads=None`` (the process's setting) vs ``threads=1`` (the default);
* ``plain``: a CleanRL-style PPO loop in plain torch over ``gym.make_vec("OversightGrid-Flat-v0",
  64)``: an MLP actor-critic (64-64), 32-step rollouts, 4 epochs of 4 minibatches.

    flock /tmp/oversight_heavy.lock python benchmarks/threads.py --repeats 3
    flock /tmp/oversight_heavy.lock python benchmarks/threads.py --repeats 3 --busy 1

``--busy N`` keeps N pure-Python busy loops running beside the measured process (a machine
where other jobs want the cores too). Timings taken while other jobs share the machine are
noisy; the ratios within one run, and the slowest run of each setting, are the numbers to read.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

CASES = ("routedppo", "plain")


def run_routedppo(threads: int | None, steps: int) -> float:
    from oversight_gr.rl.sb3 import RoutedPPO

    model = RoutedPPO("MoEPolicy", "OversightGrid-v0", n_envs=64, n_steps=32, batch_size=512,
                      n_epochs=4, seed=0, device="cpu", threads=threads)
    model.learn(64 * 32)  # warm-up update
    start = time.perf_counter()
    model.learn(steps)
    return steps / (time.perf_counter() - start)


def run_plain(threads: int | None, steps: int) -> float:
    import gymnasium as gym
    import numpy as np
    import torch
    from torch import nn

    import oversight_gr  # noqa: F401

    if threads is not None:
        torch.set_num_threads(threads)
    n, T = 64, 32
    envs = gym.make_vec("OversightGrid-Flat-v0", num_envs=n)
    d = int(np.prod(envs.single_observation_space.shape))
    torch.manual_seed(0)
    actor = nn.Sequential(nn.Linear(d, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                          nn.Linear(64, 4))
    critic = nn.Sequential(nn.Linear(d, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(),
                           nn.Linear(64, 1))
    opt = torch.optim.Adam([*actor.parameters(), *critic.parameters()], lr=2.5e-4)
    obs = torch.as_tensor(envs.reset(seed=0)[0], dtype=torch.float32)

    def update():
        nonlocal obs
        bo, ba, blp, br = [], [], [], []
        for _ in range(T):
            with torch.no_grad():
                dist = torch.distributions.Categorical(logits=actor(obs))
                a = dist.sample()
            nxt, r, *_ = envs.step(a.numpy())
            bo.append(obs), ba.append(a), blp.append(dist.log_prob(a))
            br.append(torch.as_tensor(r, dtype=torch.float32))
            obs = torch.as_tensor(nxt, dtype=torch.float32)
        o, a, lp = torch.cat(bo), torch.cat(ba), torch.cat(blp)
        ret = torch.cat(br)  # stand-in for GAE: the loop's cost, not its maths, is measured
        for _ in range(4):
            for idx in torch.randperm(len(o)).chunk(4):
                dist = torch.distributions.Categorical(logits=actor(o[idx]))
                v = critic(o[idx]).squeeze(-1)
                adv = ret[idx] - v.detach()
                ratio = (dist.log_prob(a[idx]) - lp[idx]).exp()
                loss = -(ratio.clamp(0.8, 1.2) * adv).mean() + 0.5 * (ret[idx] - v).pow(2).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()

    update()  # warm-up
    start = time.perf_counter()
    for _ in range(max(1, steps // (n * T))):
        update()
    return max(1, steps // (n * T)) * n * T / (time.perf_counter() - start)


def _spin() -> None:
    while True:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=64 * 32 * 8, help="env steps timed per run")
    ap.add_argument("--busy", type=int, default=0, help="busy-loop processes beside each run")
    ap.add_argument("--case", choices=CASES, help=argparse.SUPPRESS)  # one run, in a child
    ap.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)  # 0: default
    args = ap.parse_args()
    if args.case:
        fn = run_routedppo if args.case == "routedppo" else run_plain
        print(fn(args.threads or None, args.steps))
        return
    import multiprocessing as mp

    import torch

    print(f"cores {os.cpu_count()}, torch default threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}, {args.busy} busy loop(s) beside each run")
    spinners = [mp.get_context("spawn").Process(target=_spin, daemon=True)
                for _ in range(args.busy)]
    for p in spinners:
        p.start()
    for case in CASES:
        sps: dict[int, list[float]] = {0: [], 1: []}
        for _ in range(args.repeats):
            for threads in (0, 1):
                out = subprocess.run(
                    [sys.executable, __file__, "--case", case, "--threads", str(threads),
                     "--steps", str(args.steps)],
                    capture_output=True, text=True, check=True,
                )
                sps[threads].append(float(out.stdout.strip().splitlines()[-1]))
        d, one = statistics.median(sps[0]), statistics.median(sps[1])
        print(f"{case:10s} median: default threads {d:9.0f} env steps/s, 1 thread {one:9.0f}"
              f" ({one / d:.1f}x); slowest: {min(sps[0]):9.0f} vs {min(sps[1]):9.0f} "
              f"({min(sps[1]) / min(sps[0]):.1f}x)   runs: "
              + ", ".join(f"{k or 'default'}: {[round(v) for v in vs]}" for k, vs in sps.items()))
    for p in spinners:
        p.terminate()


if __name__ == "__main__":
    main()
