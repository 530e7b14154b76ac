"""One training run end to end: train, evaluate (steered and unsteered), log, checkpoint, and
write a results JSON. ``oversight-gr train``, the demo and sweeps all call :func:`run_training`."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from oversight_gr.agents.evaluation import evaluate
from oversight_gr.agents.trainer import TrainConfig, Trainer
from oversight_gr.records import curve_point, make_record, versions, write_json_atomic

__all__ = ["run_training", "versions", "write_json_atomic", "eval_steers", "steered_mode",
           "evaluate_all", "curve_point", "make_record"]

log = logging.getLogger(__name__)


def eval_steers(method: str) -> tuple[str, ...]:
    """Steering modes worth reporting for a method (only MoE policies have a gate)."""
    from oversight_gr.agents.methods import METHODS

    return ("diamond", "none", "ghost") if METHODS[method].policy == "moe" else ("none",)


def steered_mode(method: str) -> str:
    """The evaluation reported as "steered": gate fixed to the diamond expert for MoE methods,
    the policy as trained otherwise."""
    return "diamond" if "diamond" in eval_steers(method) else "none"


def _evaluate_all(trainer: Trainer) -> dict[str, dict]:
    return evaluate_all(trainer.cfg, trainer.policy, trainer.device)


def evaluate_all(cfg: TrainConfig, policy: torch.nn.Module,
                 device: str | torch.device) -> dict[str, dict]:
    """The run's evaluations, one per steering mode worth reporting (``{steer: EvalResult
    dict}``); the evaluation seed depends on ``cfg.seed`` only."""
    out = {}
    for steer in eval_steers(cfg.method):
        res = evaluate(
            policy,
            cfg.oversight_prob,
            steer,
            num_envs=cfg.eval_envs,
            size=cfg.size,
            max_episode_steps=cfg.max_episode_steps,
            gamma=cfg.gamma,
            seed=10_000 + cfg.seed,
            device=device,
        )
        out[steer] = res.as_dict()
    return out


def run_training(
    cfg: TrainConfig,
    run_dir: str | Path | None = None,
    *,
    tensorboard: bool = True,
    checkpoint_every: int = 0,
    resume: bool = True,
    progress: Callable[[Trainer, dict[str, float]], None] | None = None,
) -> dict[str, Any]:
    """Train ``cfg`` to ``cfg.total_env_steps`` and return the results record.

    Args:
        run_dir: where ``results.json``, ``checkpoint.pt``, ``config.json`` and TensorBoard
            events go (``None``: nothing is written).
        checkpoint_every: also checkpoint every N updates (0: only at the end).
        resume: continue from ``run_dir``'s checkpoint if one exists with the same config.
        progress: called after every update with the trainer and its scalars.

    Returns:
        ``{"config", "metrics": {"steered"/"unsteered"/...}, "curve": [...], "env_steps",
        "reported_env_steps", "wall_seconds", "versions", "seed"}``.
    """
    run_dir = Path(run_dir) if run_dir is not None else None
    trainer = None
    if run_dir is not None and resume and (run_dir / "checkpoint.pt").exists():
        saved = json.loads((run_dir / "config.json").read_text())
        if saved == json.loads(json.dumps(cfg.to_dict())):
            trainer = Trainer.load(run_dir)
            log.info("resumed %s at %d env steps", run_dir, trainer.env_steps)
    if trainer is None:
        trainer = Trainer(cfg)
    writer = None
    if run_dir is not None and tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(run_dir / "tb"))
    curve: list[dict[str, float]] = []
    if run_dir is not None and (run_dir / "curve.json").exists() and trainer.env_steps > 0:
        curve = json.loads((run_dir / "curve.json").read_text())
    t0 = time.perf_counter()
    next_eval = (trainer.env_steps // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every else None
    try:
        while trainer.updates < trainer.num_updates:
            scalars = trainer.train_update()
            if writer is not None:
                for k, v in scalars.items():
                    writer.add_scalar(k, v, trainer.env_steps)
            if next_eval is not None and trainer.env_steps >= next_eval:
                next_eval += cfg.eval_every
                evals = _evaluate_all(trainer)
                point = curve_point(evals, trainer.env_steps, trainer.reported_env_steps,
                                    time.perf_counter() - t0)
                for steer, res in evals.items():
                    if writer is not None:
                        writer.add_scalar(f"eval/return_{steer}", res["stepwise_return"],
                                          trainer.env_steps)
                curve.append(point)
                scalars = {**scalars, **{k: v for k, v in point.items() if k.startswith("return")}}
                if run_dir is not None:
                    write_json_atomic(run_dir / "curve.json", curve)
            if run_dir is not None and checkpoint_every and trainer.updates % checkpoint_every == 0:
                trainer.save(run_dir)
            if progress is not None:
                progress(trainer, scalars)
        wall = time.perf_counter() - t0
        evals = _evaluate_all(trainer)
        if writer is not None:
            for steer, res in evals.items():
                writer.add_scalar(f"eval/return_{steer}", res["stepwise_return"],
                                  trainer.env_steps)
    finally:
        if writer is not None:
            writer.close()
    record = make_record(cfg, evals, curve, trainer.env_steps, trainer.reported_env_steps, wall)
    if run_dir is not None:
        trainer.save(run_dir)
        write_json_atomic(run_dir / "results.json", record)
    record["trainer"] = trainer
    return record
