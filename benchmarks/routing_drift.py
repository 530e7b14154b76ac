"""Why does steered routing degrade with training? Train PPO routing variants side by side.

Each variant is a set of TrainConfig overrides; every (variant, seed) trains in its own process
(one torch thread) for --env-steps, evaluating the steered policy every --eval-every steps.
Printed per variant: first env step at which steered return >= 0.7, the best, the final, the
lowest after the best, and P(ghost | ghost closer and unseen) at the end.

    python benchmarks/routing_drift.py --workers 2 --env-steps 2000000 --seeds 0
    python benchmarks/routing_drift.py --workers 14 --env-steps 4000000 --seeds 0 1   # 16 cores
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _results_doc import update_section  # noqa: E402

VARIANTS = {
    "default": {},
    "gate_full_obs": {"gate_input": "full"},
    "gate_coef_0.01": {"gate_loss_coef": 0.01},
    "gate_coef_1": {"gate_loss_coef": 1.0},
    "anneal_lr": {"anneal_lr": True},
    "minibatches_4": {"minibatches": 4},
    "no_pg_into_gate": {"unlabelled_gate_grad": 0.0},
    "ent_0.03": {"ent_coef": 0.03},
    "lr_1e-3": {"lr": 1e-3},
    "hidden_128": {"hidden": 128},
    "torch_init": {"init": "torch"},
    "torch_init_sharpen_3": {"init": "torch", "unlabelled_sharpness": 3.0},
    "reinforce_paper": {"algo": "reinforce"},
    "reinforce_lr_3e-4": {"algo": "reinforce", "lr": 3e-4},
    "sharpen_2": {"unlabelled_sharpness": 2.0},
    "sharpen_3": {"unlabelled_sharpness": 3.0},
    "paper_rule": {"unlabelled_sharpness": 1.0},
    "bf16": {"precision": "bf16"},
    "bf16_matmul": {"precision": "bf16_matmul"},
}


def run_one(variant: str, seed: int, env_steps: int, eval_every: int, p: float) -> dict:
    import torch

    torch.set_num_threads(1)
    from oversight_gr.rl.evaluation import evaluate
    from oversight_gr.rl.trainer import TrainConfig, Trainer

    fields = dict(method="routing", algo="ppo", oversight_prob=p, seed=seed,
                  total_env_steps=env_steps)
    cfg = TrainConfig(**{**fields, **VARIANTS[variant]})
    trainer = Trainer(cfg)
    curve = []
    t0 = time.perf_counter()
    next_eval = eval_every
    while trainer.updates < trainer.num_updates:
        trainer.train_update()
        if trainer.env_steps >= next_eval:
            next_eval += eval_every
            e = evaluate(trainer.policy, p, "diamond")
            curve.append([trainer.env_steps, e.stepwise_return, e.p_ghost_closer_unseen,
                          time.perf_counter() - t0])
    return {"variant": variant, "seed": seed, "curve": curve}


def summarize(curve: list) -> dict:
    rets = [c[1] for c in curve]
    best = max(range(len(rets)), key=rets.__getitem__)
    first = next((c for c in curve if c[1] >= 0.7), None)
    return {"first_0.7": first[0] if first else None,
            "first_0.7_seconds": first[3] if first else None,
            "best": rets[best], "final": rets[-1],
            "min_after_best": min(rets[best:]), "pgc_final": curve[-1][2]}


def train_all(args) -> list[dict]:
    jobs = [(v, s) for v in args.variants for s in args.seeds]
    results = []
    with ProcessPoolExecutor(args.workers) as pool:
        futs = [pool.submit(run_one, v, s, args.env_steps, args.eval_every, args.oversight_prob)
                for v, s in jobs]
        for i, f in enumerate(as_completed(futs), 1):
            r = f.result()
            results.append(r)
            s = summarize(r["curve"])
            print(f"[{i}/{len(jobs)}] {r['variant']} seed {r['seed']}: best {s['best']:.3f} "
                  f"final {s['final']:.3f} first>=0.7 {s['first_0.7']}", flush=True)
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--env-steps", type=int, default=2_000_000)
    ap.add_argument("--eval-every", type=int, default=250_000)
    ap.add_argument("--oversight-prob", type=float, default=0.1)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default="docs/routing_drift.json")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--section", default="routing_drift", help="docs/RESULTS.md section name")
    ap.add_argument("--report-only", action="store_true",
                    help="train nothing: rebuild the table from the curves in --out")
    args = ap.parse_args()
    if args.report_only:
        results = json.loads(Path(args.out).read_text())
    else:
        results = train_all(args)
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(results))
    rows = []
    for v in args.variants:
        ss = [summarize(r["curve"]) for r in results if r["variant"] == v]
        if not ss:
            continue
        mean = lambda k: statistics.mean(x[k] for x in ss)  # noqa: E731
        firsts = [x["first_0.7"] for x in ss]
        first = ", ".join("never" if f is None else f"{f / 1e6:.2f}M" for f in firsts)
        rows.append(f"| {v} | {VARIANTS[v]} | {len(ss)} | {first} | {mean('best'):.3f} | "
                    f"{mean('final'):.3f} | {mean('min_after_best'):.3f} | {mean('pgc_final'):.2f} |")
        print(rows[-1])
    cmd = "python benchmarks/routing_drift.py " + " ".join(
        a for a in sys.argv[1:] if a != "--report-only")
    md = [f"## Routing variants ({args.section})", "",
          f"Command: `{cmd}` on {os.cpu_count()} CPUs ({platform.machine()}), "
          f"{args.env_steps:,} env steps per run, p={args.oversight_prob}, evaluation every "
          f"{args.eval_every:,} steps (512 envs x 32 steps, steered gate=1). Curves: `{args.out}`.",
          "", "| variant | overrides | seeds | first steered >= 0.7 | best | final | lowest after best"
          " | P(ghost \\| closer, unseen) final |", "|---|---|---|---|---|---|---|---|", *rows]
    if not args.no_write:
        update_section(args.section, "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
