"""CLI subcommands ``train``, ``eval``, ``steer`` and ``demo`` (flags generated from TrainConfig)."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import torch

from oversight_gr.config import add_arguments, from_arguments

from oversight_gr.rl.demo import DEMO_SEEDS, DEMO_SETTINGS
from oversight_gr.runner import DEFAULT_WORKERS, WORKERS_HELP


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _default_run_dir(prefix: str) -> Path:
    return Path("runs") / f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def cmd_train(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from oversight_gr.rl.run import run_training
    from oversight_gr.rl.trainer import TrainConfig

    from oversight_gr.rl.run import check_budget
    from oversight_gr.rl.tracking import tracking_from_arguments

    cfg = from_arguments(TrainConfig, args)
    check_budget(cfg)
    track = tracking_from_arguments(args)
    run_dir = Path(args.run_dir) if args.run_dir else _default_run_dir(
        f"{cfg.method}-{cfg.algo}-p{cfg.oversight_prob:g}-s{cfg.seed}")
    per_update = cfg.num_envs * cfg.rollout_steps
    planned = -(-cfg.total_env_steps // per_update) * per_update
    if planned != cfg.total_env_steps:
        print(f"note: training whole updates of {per_update:,} env steps (num_envs x "
              f"rollout_steps): {planned:,} env steps for --total-env-steps "
              f"{cfg.total_env_steps:,}")
    bars = []  # made at the first update, so that a refused run shows no progress bar

    def progress(trainer, scalars):
        if not bars:
            bars.append(tqdm(total=cfg.total_env_steps, unit="step", unit_scale=True,
                             desc=cfg.method, initial=0))
        bar = bars[0]
        bar.n = min(trainer.env_steps, cfg.total_env_steps)
        post = {"sps": f"{scalars['charts/sps']:.0f}",
                "ep_reward": f"{scalars['charts/episode_reward']:.2f}"}
        for k, v in scalars.items():
            if k.startswith("return_"):
                post[k] = f"{v:.3f}"
        bar.set_postfix(post, refresh=False)
        bar.refresh()

    try:
        record = run_training(cfg, run_dir, tensorboard=not args.no_tensorboard,
                              checkpoint_every=args.checkpoint_every, on_change=args.on_change,
                              progress=progress, track=track)
    finally:  # closed before any error or interrupt message, which then stands on its own line
        if bars:
            bars[0].close()
    if not bars:
        print(f"{run_dir} already holds this finished run; its results are unchanged")
    print(f"run directory: {run_dir}")
    _print_metrics(record["metrics"])
    return 0


def _print_metrics(metrics: dict) -> None:
    print(f"{'steer':<8} {'return [95% interval]':>24} {'P(diamond)':>10} {'P(ghost)':>9} "
          f"{'P(ghost|closer,unseen)':>23} {'length':>7} {'episodes':>9}")
    nan = float("nan")
    for steer, m in metrics.items():
        m = {"p_diamond": nan, "p_ghost": nan, "p_ghost_closer_unseen": nan,
             "n_closer_unseen": 0, "mean_length": nan, "n_episodes": 0, **m}
        ret = f"{m['stepwise_return']:.3f}"
        if "stepwise_return_lo" in m:  # records written before 2026-12-07 have none
            ret += f" [{m['stepwise_return_lo']:.3f}, {m['stepwise_return_hi']:.3f}]"
        print(f"{steer:<8} {ret:>24} {m['p_diamond']:10.3f} {m['p_ghost']:9.3f} "
              f"{m['p_ghost_closer_unseen']:16.3f} (n={m['n_closer_unseen']:>4}) "
              f"{m['mean_length']:7.2f} {m['n_episodes']:9d}")
    print("(the interval: 95% Student t over the evaluation's environments, each an independent "
          "window of episodes)")


def _load(run_dir: str):
    from oversight_gr.rl.run import load_trainer

    return load_trainer(run_dir, "--run-dir")


def _load_run(args: argparse.Namespace):
    """The trainer eval and steer read: ``--run-dir``, or a sweep's run (``--sweep-dir`` with
    the run's config, or ``--record``); returns it and the run's directory."""
    chosen = [f for f in ("run_dir", "sweep_dir", "record") if getattr(args, f) is not None]
    if len(chosen) != 1:
        raise ValueError("give one of --run-dir, --sweep-dir (with --method, --algo, "
                         "--oversight, --run-seed to pick the run) or --record"
                         + (f"; got {', '.join('--' + c.replace('_', '-') for c in chosen)}"
                            if chosen else ""))
    selectors = [f"--{f.replace('_', '-')}" for f in ("method", "algo", "oversight", "run_seed")
                 if getattr(args, f) is not None]
    if selectors and args.sweep_dir is None:  # --run-dir or --record: the run itself
        raise ValueError(f"{', '.join(selectors)} pick a run of --sweep-dir; "
                         f"--{chosen[0].replace('_', '-')} names the run itself")
    if args.run_dir is not None:
        return _load(args.run_dir), Path(args.run_dir)
    from oversight_gr.rl.sweep import find_run, load_run_trainer

    record = find_run(args.sweep_dir, method=args.method, algo=args.algo,
                      oversight=args.oversight, seed=args.run_seed, record=args.record)
    return load_run_trainer(record), Path(record["run_dir"])


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    """Which trained run eval and steer read: a run directory, or a run of a sweep kept with
    ``sweep --keep-checkpoints``."""
    from oversight_gr.rl.methods import METHODS
    from oversight_gr.rl.trainer import ALGOS

    p.add_argument("--run-dir", default=None, help="a directory written by `train`")
    p.add_argument("--sweep-dir", default=None,
                   help="a sweep's OUT (run with --keep-checkpoints): the run is the one "
                   "matching --method, --algo, --oversight and --run-seed (those given)")
    p.add_argument("--record", default=None,
                   help="a sweep's record file (OUT/records/KEY.json) naming the run")
    p.add_argument("--method", default=None, choices=tuple(METHODS),
                   help="with --sweep-dir: the run's method")
    p.add_argument("--algo", default=None, choices=ALGOS, help="with --sweep-dir: the run's "
                   "algorithm")
    p.add_argument("--oversight", type=float, default=None,
                   help="with --sweep-dir: the run's oversight fraction")
    p.add_argument("--run-seed", type=int, default=None,
                   help="with --sweep-dir: the run's training seed")


def cmd_eval(args: argparse.Namespace) -> int:
    from oversight_gr.rl.evaluation import eval_seed, evaluate
    from oversight_gr.envs.core import _check_prob, check_num_envs, check_seed

    if args.seed is not None:  # before loading anything
        check_seed(args.seed, "--seed")
    if args.num_envs is not None:
        check_num_envs(args.num_envs, "--num-envs")
    if args.oversight_prob is not None:
        _check_prob("--oversight-prob", args.oversight_prob)
    trainer, _ = _load_run(args)
    cfg = trainer.cfg
    p = cfg.oversight_prob if args.oversight_prob is None else args.oversight_prob
    # the run's own evaluation protocol unless told otherwise, so a finished run's figure is
    # reproduced exactly
    seed = eval_seed(cfg.seed) if args.seed is None else args.seed
    num_envs = cfg.eval_envs if args.num_envs is None else args.num_envs
    steers = ("diamond", "none", "ghost") if args.steer == "all" else (args.steer,)
    if cfg.method_spec.policy != "moe":
        if args.steer in ("diamond", "ghost"):
            raise ValueError(f"--steer {args.steer}: method {cfg.method!r} trains one network "
                             "without a gate, so there is nothing to steer (allowed: --steer "
                             "none or all; steering needs a mixture-of-experts method such as "
                             "routing)")
        steers = ("none",)
    metrics = {s: evaluate(trainer.policy, p, s, num_envs=num_envs, seed=seed, size=cfg.size,
                           max_episode_steps=cfg.max_episode_steps, gamma=cfg.gamma).as_dict()
               for s in steers}
    print(f"{cfg.method} ({cfg.algo}) at oversight {p:g}, {trainer.env_steps} env steps; "
          f"evaluation seed {seed}, {num_envs} environments")
    _print_metrics(metrics)
    if args.references:
        print_references(p, cfg.size, num_envs, seed)
    return 0


def print_references(p: float, size: int = 5, num_envs: int = 512, seed: int = 12345) -> None:
    from oversight_gr.rl.evaluation import evaluate
    from oversight_gr.rl.reference import diamond_seeker, optimal_policy

    opt = evaluate(optimal_policy(size), p, num_envs=num_envs, seed=seed, size=size)
    seek = evaluate(diamond_seeker(size), p, num_envs=num_envs, seed=seed, size=size)
    print(f"reference: exact optimal policy {opt.stepwise_return:.3f}; "
          f"ghost-ignoring diamond-seeker {seek.stepwise_return:.3f}")


def cmd_steer(args: argparse.Namespace) -> int:
    from oversight_gr.rl.figures import policy_arrows_figure

    from oversight_gr.config import check_output_file

    trainer, run_dir = _load_run(args)
    out = Path(args.out) if args.out else run_dir / "policy_arrows.png"
    try:  # before drawing: a read-only run directory needs --out
        check_output_file(out, "--out" if args.out else "the figure (RUN_DIR/policy_arrows.png)")
    except ValueError as exc:
        raise ValueError(f"{exc}{'' if args.out else '; pass --out PATH'}") from None
    policy_arrows_figure(trainer.policy, out, size=trainer.cfg.size,
                         title=f"{trainer.cfg.method}, p={trainer.cfg.oversight_prob:g}")
    print(f"wrote {out}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from oversight_gr.rl import plots
    from oversight_gr.rl.demo import DEMO_METHODS, run_demo
    from oversight_gr.rl.figures import policy_arrows_figure
    from oversight_gr.rl.trainer import Trainer
    from oversight_gr.config import check_output_dir
    from oversight_gr.rl.run import write_json_atomic
    from oversight_gr.rl.precision import cpu_description

    settings = {k: v for k, v in (("oversight_prob", args.oversight_prob),
                                  ("total_env_steps", args.env_steps)) if v is not None}
    run_dir = check_output_dir(args.run_dir or _default_run_dir("demo"), "--run-dir")
    from oversight_gr.rl.demo import demo_configs

    cfg = demo_configs("routing", [args.first_seed], **settings)[0]  # checks the settings
    from oversight_gr.rl.run import check_budget

    try:  # --env-steps below one update: refused before any run starts
        check_budget(cfg)
    except ValueError as exc:
        raise ValueError(f"--env-steps: {exc}") from None
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    print(f"demo: {' vs '.join(DEMO_METHODS)} at oversight p={cfg.oversight_prob:g}, "
          f"{cfg.total_env_steps:,} env steps per run, seeds {seeds[0]}-{seeds[-1]} (each "
          f"method's seeds trained together), PPO, hidden {cfg.hidden}, {cfg.num_envs} envs; "
          f"{args.workers} worker process(es); run directory {run_dir}", flush=True)
    load = [os.getloadavg()[0]]
    summary = run_demo(args.seeds, args.first_seed, run_dir, args.workers, **settings)
    summary["load"] = load + [os.getloadavg()[0]]  # other work on the machine, start and end
    summary["command"] = shlex.join(["oversight-gr", *sys.argv[1:]])
    summary["cpu"] = cpu_description()
    records = summary.pop("records")
    methods = summary["methods"]
    header = (f"{'method':<10} {'env steps':>10} " + " ".join(f"{'seed ' + str(s):>7}"
                                                              for s in seeds)
              + f" {'mean':>7}  {'P(ghost|closer,unseen)':>22}")
    lines = [header, "-" * len(header)]
    for m, v in methods.items():
        ret = v["steered_return"]
        pg = sum(v["p_ghost_closer_unseen"]) / len(ret)
        lines.append(f"{m:<10} {v['env_steps']:>10,} " + " ".join(f"{x:7.3f}" for x in ret)
                     + f" {sum(ret) / len(ret):7.3f}  {pg:22.3f}")
    table = "\n".join(lines)
    gap = summary["gap"]
    lo, hi = gap["interval"]
    interval = (f"95% Welch interval over seeds [{lo:+.3f}, {hi:+.3f}]" if lo == lo
                else "no interval with one seed")
    verdict = (f"routing (steered) minus the better baseline ({gap['best_baseline']}): mean "
               f"{gap['mean_gap']:+.3f}, {interval}; routing ahead of both baselines on "
               f"{gap['ahead']} of {gap['seeds']} seeds ({summary['cpu']}; "
               f"{summary['wall_seconds']:.0f} s)")
    if gap["mean_gap"] <= 0:
        verdict = "routing is NOT ahead at these settings. " + verdict
    elif not lo > 0:
        verdict = "routing's lead is NOT clear of zero at these settings. " + verdict
    print()
    print("steered ground-truth return (routing: gate fixed to the diamond expert)")
    print(table)
    print(verdict)
    print_references(cfg.oversight_prob)
    figures = plots.plot_learning_curves(records, cfg.algo, cfg.oversight_prob,
                                         run_dir / "learning_curves")
    policy, _ = Trainer.load(run_dir / "routing").unstack(0)
    arrows = policy_arrows_figure(policy, run_dir / "routing_policy_arrows.png",
                                  title=f"routing, p={cfg.oversight_prob:g}, seed {seeds[0]}")
    write_json_atomic(run_dir / "summary.json", summary)
    (run_dir / "demo_table.txt").write_text(table + "\n" + verdict + "\n")
    print(f"summary: {run_dir / 'summary.json'}\nfigures: {figures[0]}, {arrows}\n"
          f"TensorBoard: tensorboard --logdir {run_dir}\n"
          f"total wall time {summary['wall_seconds']:.0f}s")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    from oversight_gr.rl.tracking import add_tracking_arguments
    from oversight_gr.rl.trainer import TrainConfig

    p = sub.add_parser("train", help="train one method on OversightGrid",
                       description="Train one method; writes checkpoint, config, results JSON and "
                       "TensorBoard logs into --run-dir.")
    add_arguments(p, TrainConfig)
    p.add_argument("--run-dir", default=None, help="output directory (default: runs/<name>-<time>)")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    add_tracking_arguments(p)
    p.add_argument("--checkpoint-every", type=_non_negative, default=50,
                   help="checkpoint every N updates so an interrupted run resumes (0: only at "
                   "the end; default: 50)")
    change = p.add_mutually_exclusive_group()
    change.add_argument("--extend", dest="on_change", action="store_const", const="extend",
                        help="RUN_DIR holds this run with a smaller --total-env-steps: train it "
                        "on from its checkpoint")
    change.add_argument("--overwrite", dest="on_change", action="store_const",
                        const="overwrite", help="RUN_DIR holds a run with another config: "
                        "discard it and start again")
    p.set_defaults(func=cmd_train, on_change="refuse")

    p = sub.add_parser("eval", help="evaluate a trained run (steered and unsteered)")
    _add_run_arguments(p)
    p.add_argument("--oversight-prob", type=float, default=None,
                   help="oversight level to evaluate at (default: the run's)")
    p.add_argument("--steer", choices=("diamond", "ghost", "none", "all"), default="all",
                   help="fix the gate to 1 (diamond), 0 (ghost), learn it (none), or all three")
    p.add_argument("--num-envs", type=int, default=None,
                   help="evaluation environments (default: the run's eval_envs, as in its own "
                   "final evaluation)")
    p.add_argument("--seed", type=int, default=None,
                   help="evaluation seed (default: the run's own, 10000 + its training seed, "
                   "so a finished run's figure is reproduced)")
    p.add_argument("--references", action="store_true",
                   help="also print the optimal and diamond-seeker reference returns")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("steer", help="draw the per-expert action arrows of a trained run (PNG)")
    _add_run_arguments(p)
    p.add_argument("--out", default=None, help="PNG path (default: RUN_DIR/policy_arrows.png)")
    p.set_defaults(func=cmd_steer)

    p = sub.add_parser("demo", help="routing vs naive vs filtering on the embedded default",
                       description="Train routing, naive and filtering at equal env steps, "
                       "several seeds each, where naive's exploit has formed; print the "
                       "per-seed table, write summary.json, learning curves and TensorBoard "
                       "logs. Defaults: oversight_gr.rl.demo.DEMO_SETTINGS.")
    p.add_argument("--oversight-prob", type=float, default=None,
                   help=f"oversight level (default: {DEMO_SETTINGS['oversight_prob']})")
    p.add_argument("--env-steps", type=int, default=None,
                   help=f"env steps per run (default: {DEMO_SETTINGS['total_env_steps']:,})")
    p.add_argument("--seeds", type=_positive, default=DEMO_SEEDS,
                   help=f"seeds per method (default: {DEMO_SEEDS})")
    p.add_argument("--first-seed", type=_non_negative, default=0,
                   help="seeds are first_seed, first_seed + 1, ... (default: 0)")
    p.add_argument("--workers", type=_positive, default=DEFAULT_WORKERS,
                   help=WORKERS_HELP.replace("jobs", "method groups").replace("%", "%%"))
    p.add_argument("--run-dir", default=None, help="output directory (default: runs/demo-<time>)")
    p.set_defaults(func=cmd_demo)
