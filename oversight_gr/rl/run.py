"""Training end to end, one run or a group: train, evaluate (steered and unsteered), log,
checkpoint, and write results JSON. ``oversight-gr train``, the demo and sweeps all call
:func:`run_training` (a sweep's ``--batch-runs`` groups pass a list of configs)."""

from __future__ import annotations

import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from oversight_gr.rl.evaluation import eval_seed, evaluate, evaluate_runs
from oversight_gr.rl.audit import Auditor
from oversight_gr.rl.methods import METHODS, method_reward
from oversight_gr.rl.tracking import RunLogger, Tracking, dashboard_scalars, require_wandb
from oversight_gr.rl.rundir import config_differences, hold_run_dir, plan_run_dir
from oversight_gr.rl.trainer import TrainConfig, Trainer
from oversight_gr.config import check_device, check_output_dir
from oversight_gr.interrupts import Interrupted, deferred_interrupt
from oversight_gr.records import (RecordError, WriteError, curve_point, make_record, read_json,
                                  versions)
from oversight_gr.records import load as load_record
from oversight_gr.records import write_json_atomic

__all__ = ["run_training", "load_trainer", "load_policy", "check_budget", "versions",
           "write_json_atomic", "eval_steers", "steered_mode", "evaluate_all",
           "evaluate_trainer", "curve_point", "make_record"]

log = logging.getLogger(__name__)


def eval_steers(method: str) -> tuple[str, ...]:
    """Steering modes worth reporting for a method (only MoE policies have a gate)."""
    return ("diamond", "none", "ghost") if METHODS[method].policy == "moe" else ("none",)


def steered_mode(method: str) -> str:
    """The evaluation reported as "steered": gate fixed to the diamond expert for MoE methods,
    the policy as trained otherwise."""
    return "diamond" if "diamond" in eval_steers(method) else "none"


def evaluate_trainer(trainer: Trainer) -> list[dict[str, dict]]:
    """:func:`evaluate_all` of every run of a trainer, in one batch of environments per
    steering mode; run r's numbers depend on its own config only (its seed gives the
    evaluation seed), not on the group it trains in."""
    cfg, cfgs = trainer.cfg, trainer.cfgs
    out: list[dict[str, dict]] = [{} for _ in cfgs]
    for steer in eval_steers(cfg.method):
        results = evaluate_runs(
            trainer.logits_fn(steer),
            [c.oversight_prob for c in cfgs],
            steer,
            [eval_seed(c.seed) for c in cfgs],
            num_envs=cfg.eval_envs,
            size=cfg.size,
            max_episode_steps=cfg.max_episode_steps,
            gamma=cfg.gamma,
            device=trainer.device,
        )
        for r, res in enumerate(results):
            out[r][steer] = res.as_dict()
    return out


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
            seed=eval_seed(cfg.seed),
            device=device,
        )
        out[steer] = res.as_dict()
    return out


def _run_dirs(run_dir: Path | None, trainer: Trainer) -> list[Path | None]:
    """Where each run's results.json, curve.json and TensorBoard events go: the run directory
    itself for one run, ``run_dir/run<r>`` for run r of a group (whose checkpoint and
    config.json stay in ``run_dir``)."""
    if run_dir is None:
        return [None] * trainer.R
    if trainer.single:
        return [run_dir]
    return [run_dir / f"run{r}" for r in range(trainer.R)]


def _tensorboard_dirs(tensorboard: Any, dirs: list[Path | None]) -> list[Path] | None:
    """Where each run's TensorBoard events go (None: nowhere), from ``run_training``'s
    ``tensorboard`` argument."""
    if isinstance(tensorboard, (str, Path)):
        tensorboard = [tensorboard]
    if isinstance(tensorboard, (list, tuple)):
        if len(tensorboard) != len(dirs):
            raise ValueError(f"tensorboard names {len(tensorboard)} folders for {len(dirs)} "
                             "runs; give one per run")
        return [Path(d) for d in tensorboard]
    if not tensorboard or dirs[0] is None:
        return None
    return [d / "tb" for d in dirs]


def _evaluate(trainer: Trainer, auditor: Auditor | None) -> list[dict[str, dict]]:
    """:func:`evaluate_trainer`; an audited method is evaluated with the parameters its audits
    selected (what it reports)."""
    if auditor is None:
        return evaluate_trainer(trainer)
    with auditor.selected():
        return evaluate_trainer(trainer)


def check_budget(cfg: TrainConfig) -> None:
    """Refuse a ``total_env_steps`` below one update (``num_envs x rollout_steps`` env steps):
    such a run would train a whole update, many times the steps asked for. A budget that is not
    a whole number of updates is rounded up to the next one (the record's ``env_steps`` says
    what trained)."""
    per_update = cfg.num_envs * cfg.rollout_steps
    if cfg.total_env_steps < per_update:
        raise ValueError(
            f"total_env_steps {cfg.total_env_steps:,} is less than one update (num_envs x "
            f"rollout_steps = {cfg.num_envs} x {cfg.rollout_steps} = {per_update:,} env steps); "
            f"allowed: >= {per_update:,}, or lower num_envs / rollout_steps")


def _save(trainer: Trainer, auditor: Auditor | None, run_dir: Path, curves: list,
          saved: list[int]) -> None:
    """Checkpoint (with the learning curves so far: a resumed run's record keeps the points
    before its checkpoint even if ``curve.json`` is lost). ``saved[0]`` holds the env steps
    of the last checkpoint written; a failed write names it (the last good state, kept)."""
    try:
        trainer.save(run_dir, extra={"curves": curves})
        if auditor is not None:
            auditor.save(run_dir)
    except WriteError as exc:
        kept = (f"the checkpoint at {saved[0]:,} env steps is kept" if saved[0] >= 0 else
                "no checkpoint had been written")
        raise WriteError(exc.errno, f"{exc}; {kept}, the {trainer.env_steps:,} env steps "
                         f"trained are not saved; make room and run the same command again "
                         "to resume") from exc
    saved[0] = trainer.env_steps


def _old_curve(d: Path, trainer: Trainer) -> list[dict[str, float]]:
    """The curve of a checkpoint written before checkpoints held their curves: curve.json,
    which must then be there and readable when points were due before the checkpoint."""
    cfg = trainer.cfg
    try:
        return list(read_json(d / "curve.json"))
    except RecordError:
        if cfg.eval_every and trainer.env_steps >= cfg.eval_every:
            raise ValueError(f"{d / 'curve.json'} is missing or unreadable and the checkpoint "
                             "does not hold the learning curve (written by an older version): "
                             "resuming would lose every point before it; pass --overwrite to "
                             "train the run again") from None
        return []


def _finished(run_dir: Path, single: bool, wanted: list[dict[str, Any]]
              ) -> dict[str, Any] | list[dict[str, Any]]:
    """The records of a finished run (or group) in ``run_dir``, untouched."""
    paths = [run_dir / "results.json"] if single else \
        [run_dir / f"run{r}" / "results.json" for r in range(len(wanted))]
    records = []
    for path in paths:
        try:
            records.append(load_record(path, "rl_run"))  # format and fields checked
        except RecordError as exc:
            raise ValueError(f"{exc}, or pass --overwrite to train the run again") from None
        if config_differences(records[-1]["config"], wanted[len(records) - 1]):
            raise ValueError(f"{path} is the record of another config than {run_dir}'s "
                             "config.json; pass --overwrite to train the run again")
    log.info("%s is already finished; its records are returned unchanged", run_dir)
    if not single:
        return records
    records[0]["trainer"] = Trainer.load(run_dir)
    return records[0]


def run_training(
    cfg: TrainConfig | list[TrainConfig],
    run_dir: str | Path | None = None,
    *,
    tensorboard: bool | str | Path | list[str | Path] = True,
    checkpoint_every: int = 0,
    on_change: str = "refuse",
    progress: Callable[[Trainer, Any], None] | None = None,
    track: Tracking | None = None,
) -> dict[str, Any] | list[dict[str, Any]]:
    """Train ``cfg`` to ``cfg.total_env_steps`` and return the results record; given a list of
    configs (a group, see :class:`Trainer`), train them together and return one record per
    run, each with ``"batched"``: the group's size, the run's position, the group's (seed,
    oversight) list.

    Args:
        run_dir: where ``results.json``, ``curve.json``, ``checkpoint.pt``, ``config.json`` and
            TensorBoard events go (``None``: nothing is written); a group's per-run files go to
            ``run_dir/run<r>``.
        tensorboard: write TensorBoard events to ``run_dir/tb`` (``run_dir/run<r>/tb`` for run
            r of a group); a folder (one run) or a list of folders (one per run): write them
            there instead, with or without ``run_dir`` (a sweep's ``OUT/tb/<run name>``). Tags:
            :mod:`oversight_gr.rl.tracking`.
        checkpoint_every: also checkpoint every N updates (0: only at the end).
        on_change: what to do when ``run_dir`` holds a run (see
            :func:`oversight_gr.rl.rundir.plan_run_dir`, decided before any compute): the
            same config resumes from its checkpoint (curve points past the checkpoint are
            dropped, wall time accumulates) or, finished, is returned as it is; another config
            is refused (``"refuse"``), trained on to the new ``total_env_steps``
            (``"extend"``), or discarded (``"overwrite"``).
        progress: called after every update with the trainer and its scalars.
        track: also log the same scalars and the config to Weights & Biases, one W&B run per
            training run, files in the run directory (needs ``run_dir`` and the ``tracking``
            extra).

    Returns:
        ``{"config", "metrics": {"steered"/"unsteered"/...}, "curve": [...], "env_steps",
        "reported_env_steps", "wall_seconds", "versions", "seed"}`` (and ``"trainer"``), or a
        list of such records (without ``"trainer"``) for a group.
    """
    for c in [cfg] if isinstance(cfg, TrainConfig) else list(cfg):
        if isinstance(c, TrainConfig):
            check_budget(c)
    if track is not None:
        if not isinstance(track, Tracking):
            raise ValueError(f"track must be an oversight_gr.rl.tracking.Tracking or None, got "
                             f"{track!r}")
        if run_dir is None:
            raise ValueError("track (Weights & Biases) needs a run_dir for its files; got "
                             "run_dir=None")
        require_wandb()  # before any compute
    options = (tensorboard, checkpoint_every, on_change, progress, track)
    with deferred_interrupt() as stop:
        if run_dir is None:
            return _run_training(cfg, None, *options, stop)
        run_dir = check_output_dir(run_dir, "run_dir")
        with hold_run_dir(run_dir):  # one training process per run directory
            return _run_training(cfg, run_dir, *options, stop)


class _Episodes:
    """The training episodes as the dashboards read them: after each update, per run, the mean
    return (the method's reward: what the learner trains on), the mean ground-truth return and
    the mean length of the episodes that ended in the update's window (:attr:`last`, a list of
    ``{tag: value}``, empty for a run whose episodes all went on).

    Lengths are exact across windows and resumes (the environments count each episode's moves);
    returns add up each episode's rewards from the first window this process saw, which is the
    whole episode here: OversightGrid rewards only an episode's last step."""

    def __init__(self, trainer: Trainer):
        self.trainer = trainer
        n = sum(rules.t.numel() for rules in trainer.rules)
        dev = trainer.rules[0].t.device
        self.carry = torch.zeros(2, n, device=dev)  # [learner, true] return so far, per env
        self.last: list[dict[str, float]] = [{} for _ in range(trainer.R)]

    @contextlib.contextmanager
    def watch(self) -> Iterator[None]:
        """Within the block, every rollout the trainer collects updates :attr:`last`."""
        trainer = self.trainer
        collect = trainer.collect

        def watched(*args, **kwargs):
            starts = torch.cat([rules.t for rules in trainer.rules])  # moves before the window
            ro = collect(*args, **kwargs)
            self._window(ro, starts)
            return ro

        trainer.collect = watched  # an instance attribute: the class's method is untouched
        try:
            yield
        finally:
            del trainer.collect

    def _window(self, ro, starts: torch.Tensor) -> None:
        done = ro.done
        T, N = done.shape
        true_r = method_reward(METHODS["oracle"], ro.outcome, ro.true_outcome)
        rewards = torch.stack([ro.rewards.float(), true_r.float()])  # [2, T, N]
        idx = torch.arange(T, device=done.device).unsqueeze(1).expand(T, N)
        ended_at = torch.where(done, idx, -1)
        # the last step before t at which an episode ended in this window (-1: none)
        prev = torch.cat([ended_at.new_full((1, N), -1), ended_at[:-1]]).cummax(0).values
        lengths = torch.where(prev >= 0, idx - prev, idx + 1 + starts)
        cum = rewards.cumsum(1)
        before = torch.where(prev >= 0, cum.gather(1, prev.clamp_min(0).expand(2, T, N)),
                             -self.carry.unsqueeze(1))
        returns = cum - before  # [2, T, N]: the episode's return where it ends at t
        last_end = ended_at.max(0).values  # [N]
        self.carry = torch.where(last_end >= 0, cum[:, -1] - cum.gather(
            1, last_end.clamp_min(0).expand(2, 1, N)).squeeze(1), self.carry + cum[:, -1])
        R = self.trainer.R
        d = done.view(T, R, -1).float()
        n = d.sum((0, 2))
        stats = torch.stack([(returns[0].view(T, R, -1) * d).sum((0, 2)),
                             (returns[1].view(T, R, -1) * d).sum((0, 2)),
                             (lengths.view(T, R, -1).float() * d).sum((0, 2))]) / n.clamp_min(1)
        table, counts = stats.tolist(), n.tolist()  # one host transfer each
        self.last = [{} if counts[r] == 0 else
                     {"charts/episodic_return": table[0][r],
                      "charts/episodic_return_true": table[1][r],
                      "charts/episodic_length": table[2][r]} for r in range(R)]


def _run_training(cfg, run_dir: Path | None, tensorboard, checkpoint_every, on_change, progress,
                  track, stop):
    """:func:`run_training`'s body, with ``run_dir`` checked and held; ``stop`` is the
    :func:`~oversight_gr.interrupts.deferred_interrupt` request (Ctrl-C)."""
    single = isinstance(cfg, TrainConfig)
    cfgs = [cfg] if single else list(cfg)
    for c in cfgs:
        check_device(c.device, "TrainConfig.device")
    trainer = None
    if run_dir is not None:
        wanted = cfgs[0].to_dict() if single else [c.to_dict() for c in cfgs]
        results = ("results.json",) if single else tuple(
            f"run{r}/results.json" for r in range(len(cfgs)))
        plan = plan_run_dir(run_dir, wanted, on_change, results)
        if plan.action == "finished":
            return _finished(run_dir, single, [c.to_dict() for c in cfgs])
        if plan.action in ("resume", "extend"):
            trainer = Trainer.load(run_dir, total_env_steps=cfgs[0].total_env_steps)
            log.info("%s %s at %d env steps", "extending" if plan.action == "extend" else
                     "resumed", run_dir, trainer.env_steps)
    if trainer is None:
        trainer = Trainer(cfgs[0] if single else cfgs)
        if run_dir is not None:
            # the directory is this config's from the start: a run stopped before its first
            # checkpoint is started again by the same command, not refused as unknown files
            write_json_atomic(run_dir / "config.json", trainer.config_json())
    R, cfg = trainer.R, trainer.cfg
    auditor = Auditor.for_trainer(trainer)
    if auditor is not None and run_dir is not None and trainer.env_steps > 0:
        auditor.load(run_dir)
    dirs = _run_dirs(run_dir, trainer)
    writers: list[RunLogger | None] = [None] * R
    tb_dirs = _tensorboard_dirs(tensorboard, dirs)
    if tb_dirs or (run_dir is not None and track is not None):
        metrics = [f"eval/return_{s}" for s in eval_steers(cfg.method)]
        writers = []
        try:
            for r, (d, c) in enumerate(zip(dirs, trainer.cfgs)):
                tb = tb_dirs[r] if tb_dirs else None
                if d is None:  # no run directory: only TensorBoard, in the folder given
                    writers.append(RunLogger(tb.parent, c.to_dict(), metrics, tensorboard=tb))
                    continue
                writers.append(RunLogger(d, c.to_dict(), metrics, track,
                                         name=d.name if single else f"{run_dir.name}/{d.name}",
                                         tensorboard=tb, group=None if single else run_dir.name))
        except BaseException:  # a W&B run that cannot start: close those that did
            for w in writers:
                w.close(failed=True)
            raise
    # the training episodes' returns and lengths, only for a dashboard that shows them
    episodes = _Episodes(trainer) if any(w is not None for w in writers) else None
    steps0 = trainer.env_steps
    curves: list[list[dict[str, float]]] = [[] for _ in range(R)]
    if trainer.env_steps > 0:
        # the checkpoint holds the curves up to itself (curve.json is an output, rewritten);
        # points evaluated after the checkpoint was written are re-evaluated, not repeated
        saved_curves = getattr(trainer, "saved_extra", {}).get("curves")
        if not isinstance(saved_curves, list) or len(saved_curves) != R:
            saved_curves = [_old_curve(d, trainer) for d in dirs]  # an older checkpoint
        curves = [[p for p in c if p["env_steps"] <= trainer.env_steps] for c in saved_curves]
    saved = [trainer.env_steps if trainer.env_steps > 0 else -1]  # last checkpoint's env steps
    wall0, t0 = trainer.wall_seconds, time.perf_counter()

    def reported(r: int) -> float:  # audits are env steps too
        return trainer.reported_steps(r) + (auditor.env_steps[r] if auditor else 0)

    def wall() -> float:
        return wall0 + time.perf_counter() - t0

    def log_evals(evals: list[dict[str, dict]]) -> None:
        for w, ev in zip(writers, evals):
            if w is not None:
                w.scalars({f"eval/return_{steer}": res["stepwise_return"]
                           for steer, res in ev.items()}, trainer.env_steps)

    def stopped(during: str) -> Interrupted:
        total = trainer.num_updates * cfg.num_envs * cfg.rollout_steps
        where = f"interrupted {during} at {trainer.env_steps:,} of {total:,} env steps"
        if run_dir is None:
            return Interrupted(f"{where}; nothing was saved (no run directory)")
        if saved[0] < 0:
            return Interrupted(f"{where}; nothing was saved yet (no checkpoint in {run_dir}); "
                               "the same command starts it again")
        lost = (f"the {trainer.env_steps - saved[0]:,} env steps since are lost; "
                if trainer.env_steps > saved[0] else "")
        return Interrupted(f"{where}; {run_dir} keeps the checkpoint at {saved[0]:,} env "
                           f"steps; {lost}the same command resumes from it")

    next_eval = (trainer.env_steps // cfg.eval_every + 1) * cfg.eval_every if cfg.eval_every else None
    try:
        while trainer.updates < trainer.num_updates:
            with episodes.watch() if episodes is not None else contextlib.nullcontext():
                scalars = trainer.train_update()
            runs = [scalars] if single else scalars
            if auditor is not None:
                auditor.observe(runs)
            if episodes is not None:
                sps = (trainer.env_steps - steps0) / max(time.perf_counter() - t0, 1e-9)
                for w, sc, ep in zip(writers, runs, episodes.last):
                    if w is not None:
                        w.scalars({**dashboard_scalars(sc), **ep, "charts/SPS": sps},
                                  trainer.env_steps)
            if next_eval is not None and trainer.env_steps >= next_eval:
                next_eval += cfg.eval_every
                evals = _evaluate(trainer, auditor)
                log_evals(evals)
                for r, ev in enumerate(evals):
                    point = curve_point(ev, trainer.env_steps, reported(r), wall())
                    curves[r].append(point)
                    runs[r].update({k: v for k, v in point.items() if k.startswith("return")})
                    if dirs[r] is not None:
                        write_json_atomic(dirs[r] / "curve.json", curves[r])
            if run_dir is not None and (stop.requested or checkpoint_every
                                        and trainer.updates % checkpoint_every == 0):
                trainer.wall_seconds = wall()
                _save(trainer, auditor, run_dir, curves, saved)
            if stop.requested:  # Ctrl-C: stopped after the update in progress, checkpointed
                raise stopped("during training")
            if progress is not None:
                progress(trainer, scalars)
        if auditor is not None:
            auditor.audit()  # the final parameters are a candidate too
        trainer.wall_seconds = elapsed = wall()
        if run_dir is not None:  # training is done: keep it before the final evaluation
            _save(trainer, auditor, run_dir, curves, saved)
        evals = _evaluate(trainer, auditor)
        log_evals(evals)
    except Interrupted:
        raise
    except KeyboardInterrupt:  # a second Ctrl-C: stopped at once, say what is kept
        raise stopped("(twice)") from None
    finally:
        failed = sys.exc_info()[0] is not None
        for w in writers:
            if w is not None:
                w.close(failed)
    records = [make_record(c, ev, curves[r], trainer.env_steps, reported(r), elapsed)
               for r, (c, ev) in enumerate(zip(trainer.cfgs, evals))]
    if auditor is not None:
        for r, record in enumerate(records):
            record["audit"] = auditor.summary(r)
    if not single:
        group = {"runs": R, "axes": [[c.seed, c.oversight_prob] for c in trainer.cfgs]}
        for r, record in enumerate(records):
            record["batched"] = {**group, "position": r}
    if run_dir is not None:
        for d, record in zip(dirs, records):
            write_json_atomic(d / "results.json", record)
    if stop.requested and stop.outermost:
        raise Interrupted(f"interrupted as the run ended; it finished"
                          f"{f' and its results are in {run_dir}' if run_dir else ''}")
    if not single:
        return records
    records[0]["trainer"] = trainer
    return records[0]


def load_trainer(run_dir: str | Path, name: str = "run_dir") -> Trainer:
    """The one-run trainer saved in ``run_dir`` by ``oversight-gr train`` / :func:`run_training`,
    with the parameters its method reports (an audited method's: those its audits selected).
    ``name`` is how error messages call the argument."""
    d = Path(run_dir)
    try:
        found = (d / "checkpoint.pt").is_file()
    except OSError as exc:  # a name too long, ...
        raise ValueError(f"{name} cannot be read ({exc.strerror})") from None
    if not found:
        text = str(run_dir)
        shown = repr(text) if len(text) <= 200 else f"{text[:80]!r}... ({len(text)} characters)"
        raise ValueError(f"{name} {shown} holds no checkpoint.pt (train a run first)")
    trainer = Trainer.load(d)
    if trainer.R > 1:
        raise ValueError(f"{name} {str(run_dir)!r} holds a group of {trainer.R} runs; their "
                         "records are in its run<r>/ folders (evaluate with "
                         "oversight_gr.rl.run.evaluate_trainer)")
    if trainer.method.audit:  # what the method reports: the parameters its audits selected
        auditor = Auditor(trainer)
        if auditor.load(d) and auditor.best[0].state is not None:
            auditor.best[0].restore(torch.nn.ModuleList([trainer.policy, trainer.value]))
    return trainer


def load_policy(run_dir: str | Path) -> torch.nn.Module:
    """The trained policy of a run directory, in eval mode: ``policy(obs, steer=...)`` gives
    ``.logits`` (``steer`` "diamond" / "ghost" / "none" for routed MoE policies), and
    :func:`oversight_gr.rl.evaluation.evaluate` takes it as it is."""
    return load_trainer(run_dir).policy.eval()
