"""SB3-trained routing (RoutedPPO) vs the native trainer: steered return and speed.

Both train the routed MoE with PPO on OversightGrid at the same oversight level, the same
hyperparameters (the native PPO defaults: 512 envs x 32 steps per update, 16 minibatches, 4
epochs, lr 3e-4, gamma 0.97, GAE 0.95, clip 0.2, entropy 0.01, value 0.5, grad norm 0.5, gate
BCE 0.3, unlabelled sharpness 3 through the same ``methods.route_weights``, gate without the
oversight plane) and the same number of env steps, then are evaluated
by ``oversight_gr.rl.evaluation.evaluate`` (the paper's stepwise ground-truth return, 512 x
32, gamma 0.97) with the gate steered to the diamond expert, learned, and steered to the ghost.

Known differences that remain: SB3 normalises advantages per minibatch (native: over the whole
rollout), draws minibatches from numpy's global RNG, and bootstraps truncated episodes by adding
``gamma * V(terminal_obs)`` to the reward (native: through the next-value term; the same
return).

Speed: env steps per second of the whole training loop (rollout + update) and of the rollouts
alone, one torch thread each, run one after the other on the same machine.

    python benchmarks/sb3_vs_native.py --steps 1000000 --seeds 0 1 2 3 4 --write
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch
from stable_baselines3.common.callbacks import BaseCallback
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _results_doc import cpu_name, update_section  # noqa: E402

import oversight_gr  # noqa: E402,F401
from oversight_gr import stats  # noqa: E402
from oversight_gr.rl.evaluation import evaluate  # noqa: E402
from oversight_gr.rl.sb3 import RoutedPPO  # noqa: E402
from oversight_gr.rl.trainer import TrainConfig, Trainer  # noqa: E402

STEERS = ("diamond", "none", "ghost")
#: the issue's target: SB3's mean steered return within this of the native trainer's
GAP_TARGET = 0.05


def _evaluate(actor, p: float, seed: int) -> dict[str, float]:
    return {s: evaluate(actor, p, s, num_envs=512, seed=10_000 + seed).stepwise_return
            for s in STEERS}


def run_native(cfg: TrainConfig, evaluate_returns: bool = True) -> dict:
    trainer = Trainer(cfg)
    collect_s = 0.0
    t0 = time.perf_counter()
    for _ in tqdm(range(trainer.num_updates), desc=f"native seed {cfg.seed}", leave=False):
        t1 = time.perf_counter()
        ro = trainer.collect()
        collect_s += time.perf_counter() - t1
        trainer.update(ro)
    wall = time.perf_counter() - t0
    out = {"env_steps": trainer.env_steps, "train_s": wall, "collect_s": collect_s}
    if evaluate_returns:
        out["returns"] = _evaluate(trainer.policy, cfg.oversight_prob, cfg.seed)
    return out


class _Timing(BaseCallback):
    """Rollout time (SB3 calls on_rollout_start/_end around collect_rollouts) and a bar."""

    def __init__(self, total: int, desc: str):
        super().__init__()
        self.collect_s, self._t = 0.0, 0.0
        self.bar = tqdm(total=total, desc=desc, leave=False)

    def _on_rollout_start(self) -> None:
        self._t = time.perf_counter()

    def _on_rollout_end(self) -> None:
        self.collect_s += time.perf_counter() - self._t
        self.bar.update(self.model.n_envs * self.model.n_steps)

    def _on_step(self) -> bool:
        return True


def run_sb3(cfg: TrainConfig, evaluate_returns: bool = True, rollout_norm: bool = False) -> dict:
    minibatch = cfg.num_envs * cfg.rollout_steps // cfg.resolved("minibatches")
    model = RoutedPPO(
        "MoEPolicy",
        "OversightGrid-v0",
        n_envs=cfg.num_envs,
        env_kwargs={"oversight_prob": cfg.oversight_prob, "size": cfg.size,
                    "max_episode_steps": cfg.max_episode_steps},
        learning_rate=cfg.resolved("lr"),
        n_steps=cfg.rollout_steps,
        batch_size=minibatch,
        n_epochs=cfg.resolved("update_epochs"),
        gamma=cfg.gamma,
        gae_lambda=cfg.gae_lambda,
        clip_range=cfg.clip_coef,
        ent_coef=cfg.resolved("ent_coef"),
        vf_coef=cfg.vf_coef,
        max_grad_norm=cfg.resolved("max_grad_norm"),
        gate_loss_coef=cfg.resolved("gate_loss_coef"),
        unlabelled_sharpness=cfg.resolved("unlabelled_sharpness"),
        unlabelled_gate_grad=cfg.unlabelled_gate_grad,
        policy_kwargs={"hidden": cfg.hidden, "gate_input": cfg.gate_input,
                       "ortho_init": getattr(cfg, "init", "torch") == "orthogonal"},
        normalize_advantage=not rollout_norm,
        rollout_buffer_kwargs={"normalize_advantage": rollout_norm},
        seed=cfg.seed,
        device=cfg.device,
    )
    timing = _Timing(cfg.total_env_steps, f"sb3 seed {cfg.seed}")
    t0 = time.perf_counter()
    model.learn(cfg.total_env_steps, callback=timing)
    wall = time.perf_counter() - t0
    timing.bar.close()
    out = {"env_steps": model.num_timesteps, "train_s": wall, "collect_s": timing.collect_s}
    if evaluate_returns:
        out["returns"] = _evaluate(model.policy.actor, cfg.oversight_prob, cfg.seed)
    return out


def run_sb3_rollout_norm(cfg: TrainConfig, evaluate_returns: bool = True) -> dict:
    return run_sb3(cfg, evaluate_returns, rollout_norm=True)


#: the configuration fields that put runs in the same table
GROUP_BY = ("method", "algo", "oversight_prob", "hidden", "num_envs", "rollout_steps", "threads",
            "device", "init")
TRAINERS = {"native": run_native, "sb3": run_sb3, "sb3_rollout_norm": run_sb3_rollout_norm}


def _config(run: dict, key: str):
    # runs recorded before TrainConfig had `init` used PyTorch's default initialisation
    return run["config"].get(key, "torch" if key == "init" else None)


def _host(note: str) -> str:
    text = f"{platform.machine()} {cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__}"
    return f"{text} ({note})" if note else text


def _summary(rs: list[dict]) -> dict[str, float]:
    iv = stats.t_interval([r["returns"]["diamond"] for r in rs])
    return {
        "diamond": iv.mean,
        "diamond_lo": iv.lo,
        "diamond_hi": iv.hi,
        "diamond_values": [r["returns"]["diamond"] for r in rs],
        "none": statistics.mean(r["returns"]["none"] for r in rs),
        "ghost": statistics.mean(r["returns"]["ghost"] for r in rs),
        "sps": statistics.mean(r["env_steps"] / r["train_s"] for r in rs),
        "rollout_sps": statistics.mean(r["env_steps"] / r["collect_s"] for r in rs),
    }


def _table(runs: list[dict]) -> list[str]:
    """One table for runs made on the same host with the same configuration."""
    cfg, host = runs[0]["config"], runs[0]["host"]
    names = [n for n in TRAINERS if any(n in run["results"] for run in runs)]
    results = {name: sorted((r for run in runs for r in run["results"].get(name, [])),
                            key=lambda r: r["seed"]) for name in names}
    seeds = [r["seed"] for r in results["native"]]
    lines = ["Commands: " + "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in runs)),
             "",
             f"Routing, PPO, oversight p = {cfg['oversight_prob']}, hidden {cfg['hidden']}, "
             f"{cfg['num_envs']} envs x {cfg['rollout_steps']} steps per update, the native PPO "
             f"defaults for both, initialisation `{_config(runs[0], 'init')}` for both, "
             f"{results['native'][0]['env_steps']:,} env steps per run, "
             f"seeds {', '.join(map(str, seeds))}, {cfg['threads']} torch thread per run; "
             f"{host}.",
             "",
             "| trainer | seed | steered diamond | learned gate | steered ghost | "
             "train env steps/s | rollout env steps/s |",
             "|---|---|---|---|---|---|---|"]
    for name in names:
        for r in results[name]:
            ret = r["returns"]
            lines.append(f"| {name} | {r['seed']} | {ret['diamond']:.3f} | {ret['none']:.3f} | "
                         f"{ret['ghost']:.3f} | {r['env_steps'] / r['train_s']:,.0f} | "
                         f"{r['env_steps'] / r['collect_s']:,.0f} |")
    summary = {name: _summary(rs) for name, rs in results.items()}
    for name, s in summary.items():
        ci = "" if s["diamond_lo"] != s["diamond_lo"] else \
            f" [{s['diamond_lo']:.3f}, {s['diamond_hi']:.3f}]"
        lines.append(f"| **{name} mean** | | **{s['diamond']:.3f}**{ci} | {s['none']:.3f} | "
                     f"{s['ghost']:.3f} | {s['sps']:,.0f} | {s['rollout_sps']:,.0f} |")
    lines += ["", "Means with 95% Student-t intervals over seeds; the gap with Welch's t "
              "interval (oversight_gr.stats)."]
    native = summary["native"]
    for name in names[1:]:
        other = summary[name]
        gap = stats.welch_interval(other["diamond_values"], native["diamond_values"])
        imp = stats.probability_of_improvement(other["diamond_values"],
                                               native["diamond_values"])
        lines.append(
            f"- {name}: mean steered (diamond) return minus native's **{gap.mean:+.3f}** "
            f"(95% CI [{gap.lo:+.3f}, {gap.hi:+.3f}]; "
            f"{'within' if abs(gap.mean) <= GAP_TARGET else 'NOT within'} the target "
            f"{GAP_TARGET}); P({name} run > native run) {imp.p:.2f} (exact Mann-Whitney p "
            f"{imp.p_value:.2g}); training throughput "
            f"{other['sps'] / native['sps']:.2f}x native's, rollouts alone "
            f"{other['rollout_sps'] / native['rollout_sps']:.2f}x.")
    return lines


def _speed_table(runs: list[dict]) -> list[str]:
    """Throughput-only runs: trainers alternated round by round, medians over rounds."""
    cfg, host = runs[0]["config"], runs[0]["host"]
    names = [n for n in TRAINERS if any(n in run["results"] for run in runs)]
    rs = {n: [r for run in runs for r in run["results"].get(n, [])] for n in names}
    med = {n: (statistics.median(r["env_steps"] / r["train_s"] for r in rs[n]),
               statistics.median(r["env_steps"] / r["collect_s"] for r in rs[n])) for n in names}
    lines = ["Commands: " + "; ".join(f"`{c}`" for c in dict.fromkeys(r["command"] for r in runs)),
             "",
             f"Speed only: {len(rs[names[0]])} rounds, the trainers alternating within each "
             f"round, {rs[names[0]][0]['env_steps']:,} env steps per run, {cfg['num_envs']} "
             f"envs x {cfg['rollout_steps']} steps per update, hidden {cfg['hidden']}, "
             f"{cfg['threads']} torch thread; {host}. Medians over rounds.",
             "",
             "| trainer | train env steps/s | rollout env steps/s | train vs native | "
             "rollout vs native |",
             "|---|---|---|---|---|"]
    for n in names:
        lines.append(f"| {n} | {med[n][0]:,.0f} | {med[n][1]:,.0f} | "
                     f"{med[n][0] / med['native'][0]:.2f}x | {med[n][1] / med['native'][1]:.2f}x |")
    return lines


def _markdown(runs: list[dict], merge_command: str | None) -> str:
    lines = [
        "## stable-baselines3 RoutedPPO vs the native trainer",
        "",
        "Both train the routed MoE with PPO from `oversight_gr` (RoutedPPO: "
        "`oversight_gr.rl.sb3`, SB3's PPO with route labels in its rollout buffer; native: "
        "`oversight_gr.rl.trainer.Trainer`) for the same env steps with the same "
        "hyperparameters; returns are the paper's stepwise ground-truth return "
        "(`oversight_gr.rl.evaluation.evaluate`, 512 envs x 32 steps, gamma 0.97, sampled "
        "actions, evaluation seed 10000 + seed) with the gate steered to the diamond expert, "
        "learned, or steered to the ghost expert. Steps/s count env steps over the whole "
        "training loop (rollouts + updates) and over the rollouts alone. `sb3` normalises "
        "advantages per minibatch (SB3's PPO); `sb3_rollout_norm` over the whole rollout, as "
        "the native trainer does (`normalize_advantage=False, "
        "rollout_buffer_kwargs={\"normalize_advantage\": True}`). RoutedPPO takes its routed "
        "loss from `oversight_gr.rl.methods.route_weights` with the gate, as the native "
        "trainer does, so both run the native PPO default unlabelled sharpness 3 (before that "
        "change RoutedPPO had only the paper's sharpness 1: measured then at sharpness 1 for "
        "both, SB3 0.562 vs native 0.642 over the same 5 seeds).",
    ]
    if merge_command:
        lines += ["", f"Report: `{merge_command}`"]
    groups: dict[str, list[dict]] = {}
    for run in runs:
        key = [run.get("kind", "learn"), run["host"]] + [_config(run, k) for k in GROUP_BY]
        groups.setdefault(json.dumps(key), []).append(run)
    for group in groups.values():
        lines += [""] + (_speed_table(group) if group[0].get("kind") == "speed"
                         else _table(group))
    if any(run.get("kind") == "speed" for run in runs) and len(groups) > 1:
        lines += ["", "The steps/s of the learning runs were taken whenever each run happened to "
                  "go, under the machine's changing load; the speed-only table, whose trainers "
                  "alternate round by round, is the side-by-side comparison."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--oversight", type=float, default=0.1)
    parser.add_argument("--steps", type=int, default=1_000_000, help="env steps per run")
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--num-envs", type=int, default=512)
    parser.add_argument("--rollout-steps", type=int, default=32)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--trainers", nargs="+", choices=tuple(TRAINERS),
                        default=["native", "sb3"])
    parser.add_argument("--speed", type=int, default=0, metavar="ROUNDS",
                        help="measure throughput only (no evaluation): ROUNDS rounds, the "
                             "trainers alternating within each round")
    parser.add_argument("--note", default="shared with other work",
                        help="said about the machine in the report")
    parser.add_argument("--json", type=Path, default=None, help="also write raw results here")
    parser.add_argument("--write", action="store_true", help="update docs/RESULTS.md")
    parser.add_argument("--merge", type=Path, nargs="+", default=None,
                        help="train nothing: report the --json files of earlier runs (one table "
                             "per machine and configuration)")
    args = parser.parse_args(argv)
    command = "python benchmarks/sb3_vs_native.py " + shlex.join(
        argv if argv is not None else sys.argv[1:])
    if args.merge:
        runs = [json.loads(path.read_text()) for path in args.merge]
        md = _markdown(runs, command)
    else:
        torch.set_num_threads(args.threads)
        cfg = TrainConfig(method="routing", algo="ppo", oversight_prob=args.oversight,
                          total_env_steps=args.steps, hidden=args.hidden,
                          num_envs=args.num_envs, rollout_steps=args.rollout_steps,
                          threads=args.threads)
        results: dict[str, list] = {name: [] for name in args.trainers}
        for seed in range(args.speed) if args.speed else args.seeds:
            for name in args.trainers:
                r = {"seed": seed, **TRAINERS[name](dataclasses.replace(cfg, seed=seed),
                                                    evaluate_returns=not args.speed)}
                results[name].append(r)
                print(name, json.dumps(r), flush=True)
        run = {"command": command, "kind": "speed" if args.speed else "learn",
               "host": _host(args.note),
               "config": {k: v for k, v in cfg.to_dict().items() if k != "seed"},
               "results": results}
        if args.json:
            args.json.write_text(json.dumps(run, indent=2))
        md = _markdown([run], None)
    print(md)
    if args.write:
        print("wrote", update_section("sb3", md))


if __name__ == "__main__":
    main()
